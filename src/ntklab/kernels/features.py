"""Random features of the NNGP and NTK of fully connected ReLU networks: a map x -> phi(x) in R^D
with phi(x) . phi(x') ~ the kernel, so that kernel regression is ridge regression on D features,
linear in the number of samples (`nk.predict.feature_regression`).

The construction composes per layer, following the kernel recursion (NTK parameterization):

* input: phi = x / sqrt(d) (the inputs' NNGP x . x' / d), psi empty (the NTK is 0);
* `Dense(W_std, b_std)`: K' = W_std^2 K + b_std^2 and Theta' = K' + W_std^2 Theta are sums and
  scalings, exact on features: phi' = [W_std phi, b_std], psi' = [phi', W_std psi]
  (psi' = W_std psi when the layer is not trainable);
* `Relu()`: with W and G independent standard Gaussian matrices of `features` rows,

      phi' = relu(W phi) / sqrt(m),      psi' = step(W phi) * (G psi) / sqrt(m).

  Given the features below, E[phi'(x) . phi'(x')] = E_w[relu(w . phi) relu(w . phi')] is the
  arc-cosine kernel of order 1 (Cho & Saul 2009) of the features' kernel phi . phi', and
  E[psi' . psi'] = E_w[step step] E_g[(g . psi)(g . psi')] = (arc-cosine of order 0) x (psi . psi'):
  the recursions K' = E[relu relu], Theta' = Theta E[step step] applied to the layer below's
  features.  phi is the forward pass of a random ReLU network of width m (Cho & Saul 2009;
  Daniely, Frostig & Singer 2016); psi is the NTK random-feature map of Zandieh, Han, Avron, Shoham,
  Mohri & Karbasi ("Scaling neural tangent kernels via sketching and random features", NeurIPS
  2021, NTKRF), whose tensor product psi (x) step(W phi) is sketched here by pairing each step
  feature with its own Gaussian projection g_i . psi (a Gaussian Khatri-Rao sketch, unbiased).

What is unbiased: with one ReLU layer the features below it are exact, so E[phi . phi'] and
E[psi . psi'] equal the NNGP and the NTK exactly.  With more ReLU layers each layer applies the
(nonlinear) arc-cosine maps to a random estimate of the kernel below, so the expectation differs
from the kernel by O(1/m) (the finite-width correction of a random network, Hanin & Nica 2020;
Roberts, Yaida & Hanin 2022).  Measured on 5 points with 3 ReLU layers (4000 draws): ||E[Phi Phi^T] - K|| /
||K|| = 5 % for the NNGP at m = 8 (standard error 3 %) and 2.6 % at m = 32 (1.1 %), 3 % and 1 % (not
significant) for the NTK; a single draw's error, O(1/sqrt(m)), is larger: 57 % and 79 % at m = 32, 24 % and
21 % at m = 256 (`tests/kernels/test_random_features.py`).
"""
from __future__ import annotations

import math

import torch

from .._core.validation import DEFAULT_DTYPE, as_matrix, one_of, positive_int
from ..arch.activations import Relu
from ..arch.dense import Dense
from ..arch.serial import Serial


class RandomFeatures:
    """The random-feature map of an architecture's NNGP or NTK (module docstring), its Gaussian
    matrices drawn once (seeded) so that training and test inputs share them.

    Parameters
    ----------
    net : Serial
        Dense layers (NTK parameterization) and ReLUs, each ReLU after a Dense (e.g. `nk.mlp`).
    in_features : int
        d, the inputs' dimension.
    features : int
        m, the random features per ReLU layer.  The map has dimension `dimension`: m (+ 1 with a
        readout bias) for the NNGP, about 2m for the NTK.
    get : {"ntk", "nngp"}
    seed : int
    dtype : torch.dtype
    device : optional

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> net = nk.mlp(1, 512, b_std=0.1)
    >>> phi = nk.kernels.RandomFeatures(net, 3, features=4096, get="ntk", seed=0)(x)
    >>> phi.shape
    torch.Size([4, 8193])
    >>> exact = net.kernel(x, get="ntk")
    >>> float((phi @ phi.T - exact).norm() / exact.norm()) < 0.05     # error ~ 1/sqrt(features)
    True
    """

    def __init__(self, net: Serial, in_features: int, *, features: int = 1024, get: str = "ntk",
                 seed: int = 0, dtype: torch.dtype = DEFAULT_DTYPE, device=None):
        self.layers = supported_layers(net)
        self.in_features = positive_int(in_features, "in_features")
        self.features = positive_int(features, "features (random features per ReLU layer)")
        self.get = one_of(get, "get", ("ntk", "nngp"))
        generator = torch.Generator().manual_seed(seed)
        self.matrices: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        nngp_width, ntk_width = self.in_features, 0
        for layer in self.layers:
            if isinstance(layer, Dense):
                nngp_width += layer.b_std is not None
                ntk_width += nngp_width if layer.trainable else 0
            else:
                w = torch.randn(self.features, nngp_width, generator=generator, dtype=dtype)
                g = (torch.randn(self.features, ntk_width, generator=generator, dtype=dtype)
                     if self.get == "ntk" else None)
                self.matrices.append((w.to(device), None if g is None else g.to(device)))
                nngp_width, ntk_width = self.features, self.features
        self.dimension = nngp_width if self.get == "nngp" else ntk_width
        self.dtype, self.device = dtype, device

    def __call__(self, x) -> torch.Tensor:
        """phi(x), `[N, dimension]`, for inputs `[N, in_features]`."""
        x = as_matrix(x, "x", dtype=self.dtype, device=self.device)
        if x.shape[1] != self.in_features:
            raise ValueError(f"x has {x.shape[1]} features per sample, but these random features were drawn "
                             f"for in_features={self.in_features}")
        nngp = x / math.sqrt(self.in_features)
        ntk = nngp[:, :0]
        matrices = iter(self.matrices)
        for layer in self.layers:
            if isinstance(layer, Dense):
                nngp = float(layer.W_std) * nngp
                if layer.b_std is not None:
                    nngp = torch.cat([nngp, torch.full_like(nngp[:, :1], float(layer.b_std))], dim=1)
                ntk = float(layer.W_std) * ntk
                ntk = torch.cat([nngp, ntk], dim=1) if layer.trainable else ntk
            else:
                w, g = next(matrices)
                pre = nngp @ w.T
                scale = 1 / math.sqrt(self.features)
                ntk = (pre > 0) * (ntk @ g.T) * scale if g is not None else ntk
                nngp = torch.relu(pre) * scale
        return nngp if self.get == "nngp" else ntk


def supported_layers(net: Serial) -> tuple:
    """The layers of `net`, checked: Dense (NTK parameterization) and Relu, each Relu after a Dense;
    ValueError naming the first other layer."""
    if not isinstance(net, Serial):
        raise ValueError(f"net must be an ntklab architecture of Dense and Relu layers (e.g. nk.mlp(3, 512)), "
                         f"got {net!r}")
    previous = None
    for i, layer in enumerate(net.layers):
        if isinstance(layer, Dense) and layer.parameterization != "ntk":
            raise ValueError(f"random features: layer {i} ({layer!r}) uses the {layer.parameterization!r} "
                             f"parameterization; they are built for parameterization='ntk'")
        if type(layer) is Relu and not isinstance(previous, Dense):
            raise ValueError(f"random features: layer {i} (Relu) must follow a Dense layer (its input must be "
                             f"Gaussian)")
        if not isinstance(layer, Dense) and type(layer) is not Relu:
            raise ValueError(f"random features are built for fully connected ReLU networks (Dense and Relu "
                             f"layers), but layer {i} is {layer!r}; use the exact kernel (net.kernel), "
                             f"nk.predict.nystrom_regression or nk.predict.conjugate_gradients")
        previous = layer
    if not net.layers:
        raise ValueError("random features need at least one Dense layer, got an empty architecture")
    return net.layers
