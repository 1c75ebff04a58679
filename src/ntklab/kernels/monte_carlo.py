"""Monte Carlo kernels: empirical NNGP/NTK averaged over initializations of finite networks
(neural-tangents' `monte_carlo_kernel_fn`; Novak et al. 2019, Lee et al. 2019).

    K_MC(x, x')     = (1/S) sum_s (1/O) f_s(x) . f_s(x')         (empirical NNGP, per output)
    Theta_MC(x, x') = (1/S) sum_s Theta_s(x, x')                  (empirical NTK, trace mode)

over S networks drawn independently.  Both converge to the infinite-width kernels as the
width grows (the NNGP needs the readout's width, i.e. O, to be large, or many samples).
The average streams (Welford's update: one network and the running moments in memory at a
time), so memory does not grow with S, and it returns the standard error of the mean.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .._core.validation import input_device, input_dtype, positive_int
from ..arch.serial import Serial, canonical_get
from .empirical import empirical_ntk
from .model_inputs import check_model, model_input, reference_tensor, takes_indices


def empirical_nngp(model: nn.Module, x1, x2=None) -> torch.Tensor:
    """(1/O) f(x1) . f(x2), `[N1, N2]`: the covariance of the model's O outputs at x1 and x2,
    averaged over outputs (neural-tangents' `empirical_nngp_fn` with `trace_axes=(-1,)`).
    Per-sample, deterministic models only (eval mode), as `empirical_ntk`.

    Parameters
    ----------
    model : nn.Module
    x1, x2 : tensor or array
        Samples; `x2=None`: `x1` with itself.

    Returns
    -------
    torch.Tensor
        `[N1, N2]`.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> model = nk.mlp(1, 64).module(3, seed=0)
    >>> nk.empirical_nngp(model, torch.randn(5, 3)).shape
    torch.Size([5, 5])
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    reference, indices = reference_tensor(model), takes_indices(model)
    x1 = model_input(x1, "x1", reference, indices=indices)
    check_model(model, x1, "x1")
    with torch.no_grad():
        f1 = model(x1).reshape(len(x1), -1)
        f2 = f1 if x2 is None else model(model_input(x2, "x2", reference, indices=indices)).reshape(-1, f1.shape[1])
    return f1 @ f2.T / f1.shape[1]


@dataclass(frozen=True)
class MonteCarloKernel:
    """Means over `n_samples` networks and their standard errors (sample std / sqrt(S),
    elementwise); a kernel not asked for is None.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> mc = nk.monte_carlo_kernel(nk.mlp(1, 64), torch.randn(3, 2), n_samples=4, progress=False)
    >>> type(mc).__name__, mc.n_samples, mc.nngp.shape
    ('MonteCarloKernel', 4, torch.Size([3, 3]))
    """

    nngp: torch.Tensor | None
    ntk: torch.Tensor | None
    nngp_standard_error: torch.Tensor | None
    ntk_standard_error: torch.Tensor | None
    n_samples: int


def _network_factory(net_or_factory, x1, x2, dtype) -> Callable[[int], nn.Module]:
    """seed -> network: an architecture's seeded module (the inputs' dtype and device), or the
    user's factory."""
    if isinstance(net_or_factory, Serial):
        shape = tuple(torch.as_tensor(x1).shape[1:])
        dtype, device = input_dtype(x1, dtype, x2), input_device(x1)
        return lambda s: net_or_factory.module(shape, seed=s, dtype=dtype, device=device)
    if callable(net_or_factory):
        return net_or_factory
    raise ValueError("net_or_factory must be an ntklab architecture (nk.serial(...)) or a "
                     f"function seed -> torch.nn.Module, got {net_or_factory!r}")


def monte_carlo_kernel(net_or_factory: Serial | Callable[[int], nn.Module], x1, x2=None, *,
                       n_samples: int, get: str | Sequence[str] | None = None, seed: int = 0,
                       dtype: torch.dtype | None = None, progress: bool | None = None,
                       each: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
                       **empirical_ntk_options) -> MonteCarloKernel:
    """Average the empirical NNGP/NTK of `n_samples` independently initialized networks.

    `net_or_factory`: an ntklab architecture (network s is `net.module(x1.shape[1:],
    seed=seed + s, dtype=dtype)`, dtype by default the input's, as for kernels, on the
    input's device: a torch tensor's, else torch's default device) or any
    function `factory(seed) -> nn.Module` (called with seed + s).
    `get`: "nngp", "ntk" or both (default).  Further options go to
    `empirical_ntk` (e.g. `implementation`, `max_memory`).  `each(s, kernels)`, if given, sees
    every network's kernels ({"nngp": ..., "ntk": ...}) as they stream by (per-sample
    statistics without keeping the samples).  A progress bar shows for more than 10 samples
    (`progress` forces it on or off).

    Parameters
    ----------
    net_or_factory : Serial or callable
        An ntklab description (its `.module`, seeded) or a function `seed -> nn.Module`.
    x1, x2 : tensor or array
    n_samples : int
        Number of initializations.
    get : {"nngp", "ntk"} or tuple, optional
    seed : int
        Seeds `seed, seed + 1, ...`.
    dtype, progress
    each : callable, optional
        Called as `each(sample_index, {"nngp": ..., "ntk": ...})` with every sample's kernels.
    **empirical_ntk_options
        Passed to `empirical_ntk`.

    Returns
    -------
    MonteCarloKernel
        The means and their standard errors.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> net = nk.mlp(2, 256, W_std=1.5, b_std=0.1)
    >>> x = torch.randn(4, 3, dtype=torch.float64)
    >>> mc = nk.monte_carlo_kernel(net, x, n_samples=8, progress=False)
    >>> mc.ntk.shape, mc.ntk_standard_error.shape
    (torch.Size([4, 4]), torch.Size([4, 4]))
    >>> bool(((mc.ntk - net.kernel(x, get="ntk")).abs() < 6 * mc.ntk_standard_error + 1e-9).all())
    True
    """
    n_samples = positive_int(n_samples, "n_samples")
    names = canonical_get(get)
    factory = _network_factory(net_or_factory, x1, x2, dtype)
    count, mean, second = 0, {}, {}
    show = n_samples > 10 if progress is None else progress
    for s in tqdm(range(n_samples), desc="monte carlo kernel", unit="net", disable=not show, leave=False):
        model = factory(seed + s)
        if not isinstance(model, nn.Module):
            raise ValueError(f"the factory must return a torch.nn.Module, got {type(model).__name__}")
        samples = {}
        if "nngp" in names:
            samples["nngp"] = empirical_nngp(model, x1, x2)
        if "ntk" in names:
            samples["ntk"] = empirical_ntk(model, x1, x2, mode="trace", progress=False,
                                           **empirical_ntk_options)
        count += 1
        if each is not None:
            each(s, samples)
        for name, value in samples.items():   # Welford: running mean and sum of squared deviations
            if name not in mean:
                mean[name], second[name] = value.clone(), torch.zeros_like(value)
                continue
            delta = value - mean[name]
            mean[name] += delta / count
            second[name] += delta * (value - mean[name])
    error = {name: (second[name] / (count - 1)).sqrt() / count ** 0.5 if count > 1 else None
             for name in mean}
    return MonteCarloKernel(mean.get("nngp"), mean.get("ntk"), error.get("nngp"), error.get("ntk"),
                            count)
