"""Deep networks that leave the floating-point range are refused with the layer and the fix
(issue 27: 1000 ReLU layers at W_std = 3 returned an all-NaN kernel), and long kernels show
progress layer by layer."""
import math

import pytest
import torch

import ntklab as nk

X = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def deep(depth, w_std, activation=None, b_std=0.0):
    activation = activation or nk.Relu()
    return nk.serial(*[layer for _ in range(depth)
                       for layer in (nk.Dense(8, W_std=w_std, b_std=b_std), activation)], nk.Dense(1))


def test_overflow_names_the_layer_and_the_w_std():
    # ReLU multiplies the variance by W_std^2 / 2 = 4.5 per Dense + Relu pair, from ~|x|^2/d * 9:
    # var1 * var2 passes 1.8e308 once var > 1.3e154, i.e. after about log(1.3e154 / 9) / log 4.5
    # = 234 pairs = layer ~468.  Predicted: the first failing layer lies in [460, 476].
    with pytest.raises(ValueError, match=r"NaN.*float64 at layer (\d+), Relu\(\) \(after Dense\(8, "
                                         r"W_std=3.0, b_std=0.0\)\).*x2.12 per layer.*smaller W_std") as err:
        deep(1000, 3.0).kernel(X)
    layer = int(err.value.args[0].split("at layer ")[1].split(",")[0])
    assert 460 <= layer <= 476, layer


def test_float32_overflows_much_earlier_and_says_float64_helps():
    # float32's largest number 3.4e38: var > 1.8e19 after ~log(1.8e19 / 9) / log 4.5 = 28 pairs
    with pytest.raises(ValueError, match=r"float32 at layer 5\d, .*or float64 inputs"):
        deep(40, 3.0).kernel(X.float())


def test_underflow_is_refused_not_returned_as_zeros():
    # ReLU at W_std = 0.2, b_std = 0: x 0.02 per pair, below 2.2e-308 after ~180 pairs
    with pytest.raises(ValueError, match=r"underflows torch.float64 at layer 3\d\d, Dense\(8, "
                                         r"W_std=0.2, b_std=0.0\).*larger W_std or b_std"):
        deep(600, 0.2).kernel(X)


def test_exact_zeros_and_deep_critical_networks_are_not_refused():
    """Negative controls: an all-zero input with b_std = 0 has the exact kernel 0; ReLU at the
    critical W_std = sqrt(2) keeps the variance: Dense doubles it, Relu halves it, and the Dense(1)
    readout (W_std = 1) returns the input's |x|^2 / d after 1001 layers."""
    assert torch.equal(nk.mlp(2, 8).kernel(torch.zeros(2, 3, dtype=torch.float64)).nngp, torch.zeros(2, 2))
    k = deep(500, math.sqrt(2)).kernel(X, get="nngp")
    torch.testing.assert_close(k.diagonal(), (X * X).mean(1), rtol=1e-10, atol=0)


def test_progress_counts_layers_of_every_block(monkeypatch):
    from ntklab._core import tiling
    bars = []

    class Recorded(tiling.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.shown = (kwargs["disable"], kwargs["delay"])

        def close(self):
            if self.shown is not None:   # once per bar (tqdm closes again when collected)
                bars.append((self.n, self.total, *self.shown))
                self.shown = None
            super().close()

    monkeypatch.setattr(tiling, "tqdm", Recorded)
    net = deep(30, 1.0)                              # 61 layers
    net.kernel(X, block_size=2, progress=True)       # 3 tiles of the symmetric 2 x 2 tiling
    net.kernel(X, block_size=2)                      # default: shown after PROGRESS_DELAY seconds
    net.kernel(X, block_size=2, progress=False)
    assert bars == [(183, 183, False, 0.0), (183, 183, False, tiling.PROGRESS_DELAY), (0, 183, True, 0.0)]


def test_float32_underflow_straight_to_zero_is_refused():
    """A layer that multiplies the variance by 1e-12 jumps over float32's subnormals to exact 0
    (review of issue 27: 80 silent zero kernels in a W_std x depth scan); float64 keeps ~1e-49."""
    net = nk.serial(*[layer for _ in range(3) for layer in (nk.Dense(1, W_std=1e-6), nk.Relu())],
                    nk.Dense(1, W_std=1e-6))
    assert float(net.kernel(X, get="nngp")[0, 0]) > 0
    with pytest.raises(ValueError, match=r"underflows torch.float32 at layer \d, .*W_std=1e-06"):
        net.kernel(X.float())


def test_underflow_of_the_inputs_names_their_scale():
    with pytest.raises(ValueError, match=r"underflows torch.float32 at layer 0.*rescale the inputs"):
        nk.mlp(1, 8).kernel(X.float() * 1e-20)



def test_a_pool_whose_positions_cancel_exactly_is_not_an_underflow():
    """LayerNorm over the channels of one-channel-wide pixels gives +-1 per pixel; a sum pool of a sample
    whose two pixels have opposite signs is exactly 0 in every finite network (the same seed's outputs are 0),
    so its kernel is 0: computed, not refused as an underflow (a differential test against neural-tangents
    found the refusal). The underflow checks of the other tests in this file still refuse real underflows."""
    x = torch.tensor([[1., -1.], [2., 1.]], dtype=torch.float64).reshape(2, 1, 1, 2)
    net = nk.serial(nk.Dense(8, W_std=1.5), nk.LayerNorm(axis=1), nk.GlobalSumPool(), nk.Dense(1))
    kernel = net.kernel(x)
    assert kernel.nngp[0, 0] == 0 and kernel.ntk[0, 0] == 0 and kernel.nngp[1, 1] > 1
    for seed in range(3):
        assert net.module((1, 1, 2), seed=seed, dtype=torch.float64)(x)[0].abs().max() < 1e-12
