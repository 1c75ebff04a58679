"""Infinite ensembles of infinitely wide networks trained by gradient flow on the MSE
(Lee et al. 2019): mean and covariance at any time, from an architecture or a kernel function."""
from __future__ import annotations

from typing import Any, Callable, Literal, Sequence, overload

import torch

from .._core.validation import as_inputs, as_targets, input_dtype, positive, positive_int
from ..arch.serial import Serial, canonical_get
from ..conventions import prediction_times
from .iterative import as_operator
from .lanczos import lanczos_apply
from .linalg import GradientFlow, ridge
from .results import Gaussian, PerGet, per_get


KernelFn = Callable[[torch.Tensor, "torch.Tensor | None", tuple[str, ...]], dict[str, torch.Tensor]]
"""(x1, x2, get) -> {name: [N1, N2]} for the names in `get` (x2=None: x1 with itself)."""

EnsembleOutput = torch.Tensor | Gaussian | PerGet
"""What `EnsemblePredictor` returns (neural-tangents' contract): the mean, or
`Gaussian(mean, covariance)` with `compute_cov`; for `get` a sequence of names (or None: both),
a `PerGet` named tuple of those over the names (`.nngp`, `.ntk`; `result["ntk"]` too)."""


def _kernel_callable(net_or_kernel_fn: Any) -> KernelFn:
    """(x1, x2, get) -> {name: [N1, N2]} from an architecture or a kernel function."""
    if isinstance(net_or_kernel_fn, Serial):
        def architecture_kernel(x1, x2, get):  # the NNGP comes free with the NTK: return both
            k = net_or_kernel_fn.kernel(x1, x2, None if "ntk" in get else get)
            return {g: v for g, v in (("nngp", k.nngp), ("ntk", k.ntk)) if v is not None}
        return architecture_kernel
    if not callable(net_or_kernel_fn):
        raise ValueError("net_or_kernel_fn must be an ntklab architecture (nk.serial(...)) or a "
                         f"callable kernel_fn(x1, x2), got {net_or_kernel_fn!r}")

    def kernel(x1, x2, get):
        k = net_or_kernel_fn(x1, x2)
        if isinstance(k, torch.Tensor):   # one kernel: it serves as the one `get` names
            kernel.tensor_valued = True   # type: ignore[attr-defined]  # read by EnsemblePredictor
            return {g: k for g in get}
        missing = [g for g in get if getattr(k, g, None) is None]
        if missing:
            raise ValueError(f"kernel_fn did not return {missing} (needed for get={get})")
        return {g: getattr(k, g) for g in get}
    return kernel


TEST_BLOCK = 1024   # test points per block of Theta(x, X) with solver="lanczos"


def _time_grid(t) -> tuple[torch.Tensor, tuple[int, ...]]:
    array, shape = prediction_times(t)
    return torch.as_tensor(array), shape


def gradient_descent_mse_ensemble(net_or_kernel_fn, x_train, y_train, *, learning_rate: float = 1.0,
                                  diag_reg: float = 0.0, diag_reg_absolute_scale: bool = False,
                                  dtype: torch.dtype | None = None, device=None, solver: str = "eigh",
                                  store=None, rtol: float | None = None, max_iterations: int | None = None,
                                  progress: bool | None = None) -> EnsemblePredictor:
    """Predictive mean (and covariance) of an infinite ensemble of infinitely wide
    networks trained by gradient flow on L = ||f(X) - Y||^2 / (2 |Y|) for time t.

    With Theta = NTK, K = NNGP (Lee et al. 2019), n = y_train.size, and the
    regularized train-train kernel G = Theta + diag_reg * mean(diag Theta) I:
        mean_t(x) = Theta(x, X) G^-1 (I - e^{-lr G t / n}) Y
        cov_t     = K(x, x') + T_t(x)^T K(X, X) T_t(x') - [Theta(x, X) G^-1 (I - e^{-lr G t/n}) K(X, x') + transpose]
        with T_t(x) = G^-1 (I - e^{-lr G t / n}) Theta(X, x)     ("ntk")
    and for "nngp" (Bayesian-like NNGP dynamics) mean with K in place of Theta and
        cov_t = K(x, x') - K(x, X) G^-1 (I - e^{-2 lr G t / n}) K(X, x').
    G is checked as in `gradient_descent_mse` (symmetric and positive semi-definite up to
    rounding, `linalg.checked_kernel`) when first used.

    `solver="eigh"` (default) decomposes G once for every time and the covariance.  `solver="lanczos"`
    never holds G: the vectors G^-1 (I - e^{-lr G t / n}) Y (all times at once) come from the Lanczos
    process on products G V (`nk.predict.lanczos`), with G streamed from `store` (a kernel store of the
    architecture on x_train, `nk.kernels.compute_kernel(net, x_train, store=...)`) or computed dense
    without one; Theta(x, X) is computed in blocks of 1024 test points.  It gives the means only
    (compute_cov=True is refused).
    Returns `predict(t=None, x_test=None, get=None, compute_cov=False)`.

    Parameters
    ----------
    net_or_kernel_fn : Serial or callable
        An ntklab description, or `kernel_fn(x1, x2)` (x2 may be None: x1 with itself) returning an
        object with `.nngp` and `.ntk` (e.g. a `Kernel`, or neural-tangents' `Kernel`), or one tensor,
        which then serves as the kernel `get` names (the NTK's covariance, which needs both, is refused).
    x_train, y_train : tensor or array
    learning_rate : float
        The step on ||f(X) - Y||^2 / (2 |Y|).
    diag_reg : float
        Ridge, relative to the mean diagonal unless `diag_reg_absolute_scale`.
    dtype, device : optional
    solver : {"eigh", "lanczos"}
    store : KernelStore, optional
        With solver="lanczos": the train-train kernels (`nk.kernels.compute_kernel(net, x_train, store=...)`
        or `nk.kernels.KernelStore.open(path)`; checked: the same architecture and x_train).
    rtol, max_iterations, progress
        solver="lanczos": its stopping rule (relative change of the coefficients, default 1e-10; not an
        error bound, see `nk.predict.lanczos`), step limit and bar.

    Returns
    -------
    callable
        `predict(t=None, x_test=None, get=None, compute_cov=False)`: means `[T, N, O]` (or
        `[N, O]` for one time); `Gaussian(mean, covariance)` when `compute_cov`; for `get` a
        tuple of names (or None: both), a named tuple over them (`.nngp`, `.ntk`).

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> net = nk.mlp(1, 512, W_std=1.5, b_std=0.1)
    >>> x_train, y_train = torch.randn(10, 3, dtype=torch.float64), torch.randn(10, 1, dtype=torch.float64)
    >>> predict = nk.predict.gradient_descent_mse_ensemble(net, x_train, y_train)
    >>> mean, cov = predict(t=None, x_test=x_train[:4], get="ntk", compute_cov=True)   # a Gaussian
    >>> bool(torch.allclose(mean, y_train[:4], atol=1e-6))          # t = inf interpolates
    True
    >>> predict(t=[1.0, 10.0], x_test=x_train[:4], get="nngp").shape
    torch.Size([2, 4, 1])
    >>> both = predict(t=1.0, x_test=x_train[:4], get=("nngp", "ntk"), compute_cov=True)
    >>> both.ntk.covariance.shape                                   # named tuples, as neural-tangents
    torch.Size([4, 4])
    """
    return EnsemblePredictor(_kernel_callable(net_or_kernel_fn), x_train, y_train,
                               images=getattr(net_or_kernel_fn, "takes_images", False),
                               sequences=getattr(net_or_kernel_fn, "takes_sequences", False),
                               learning_rate=learning_rate, diag_reg=diag_reg,
                               diag_reg_absolute_scale=diag_reg_absolute_scale, dtype=dtype, device=device,
                               iterative=_iterative_options(net_or_kernel_fn, solver, store, rtol, max_iterations,
                                                           progress))


def _iterative_options(net_or_kernel_fn, solver: str, store, rtol: float | None, max_iterations: int | None,
                       progress: bool | None) -> dict | None:
    """None for solver="eigh"; the Lanczos settings (with the store opened) for solver="lanczos"."""
    if solver not in ("eigh", "lanczos"):
        raise ValueError(f"solver must be 'eigh' or 'lanczos', got {solver!r}")
    if solver == "eigh":
        given = [name for name, value in (("store", store), ("rtol", rtol), ("max_iterations", max_iterations),
                                          ("progress", progress)) if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} = ... are read by solver='lanczos' only; give solver='lanczos' "
                             f"(or leave them out)")
        return None
    if store is not None:
        if not isinstance(net_or_kernel_fn, Serial):
            raise ValueError("store= needs an ntklab architecture as net_or_kernel_fn: with a kernel function nothing "
                             "ties the store's kernel to the one the test points get")
        if not all(hasattr(store, attribute) for attribute in ("config", "computed_from", "operator")):
            raise ValueError(f"store must be a kernel store (nk.kernels.compute_kernel(net, x_train, store=...) or "
                             f"nk.kernels.KernelStore.open(path)), got {store!r}")
        if store.config["architecture"] != net_or_kernel_fn.identity:
            raise ValueError(f"the store {store.path} holds the kernels of another architecture; compute it with "
                             f"nk.kernels.compute_kernel(net, x_train, store=...) for this one")
    return {"store": store, "rtol": positive(1e-10 if rtol is None else rtol, "rtol"),
            "max_iterations": None if max_iterations is None else positive_int(max_iterations, "max_iterations"),
            "progress": progress}


class EnsemblePredictor:
    """`predict(t=None, x_test=None, get=None, compute_cov=False)` of
    `gradient_descent_mse_ensemble`: the validated training set, the train-train kernels and
    their gradient flows, each computed once."""

    def __init__(self, kernel: KernelFn, x_train: Any, y_train: Any, *, images: bool, sequences: bool,
                 learning_rate: float, diag_reg: float, diag_reg_absolute_scale: bool,
                 dtype: torch.dtype | None, device: Any, iterative: dict | None = None):
        self.kernel, self.images, self.sequences = kernel, images, sequences
        self.dtype = input_dtype(x_train, dtype)
        self.x_train = as_inputs(x_train, "x_train", images=images, sequences=sequences, dtype=self.dtype,
                                 device=device)
        self.y, self.vector = as_targets(y_train, self.x_train.shape[0], "y_train", self.dtype,
                                         self.x_train.device)
        self.lr = positive(learning_rate, "learning_rate")
        self.diag_reg = positive(diag_reg, "diag_reg", allow_zero=True)
        self.diag_reg_absolute_scale = diag_reg_absolute_scale
        self.size = self.y.numel()
        self.cache: dict[str, torch.Tensor] = {}
        self.flows: dict[str, GradientFlow] = {}
        self.iterative = iterative
        if iterative is not None and iterative["store"] is not None:
            self._check_store(iterative["store"])

    def _check_store(self, store) -> None:
        if not store.computed_from(self.x_train):
            raise ValueError(f"the store {store.path} does not hold the kernels of x_train with itself (its inputs "
                             f"differ, in values or order); compute it with nk.kernels.compute_kernel(net, x_train, "
                             f"store=...)")

    def train_operator(self, g: str):
        """G's kernel ("nngp" or "ntk") as an operator: streamed from the store, or the dense matrix."""
        store = self.iterative["store"] if self.iterative is not None else None
        if store is None:
            return as_operator(self.k_train(g), name=f"k_train_train ({g})")
        return store.operator(g, dtype=self.dtype, device=self.x_train.device)

    def lanczos(self, g: str, times: torch.Tensor | None, on_train: bool) -> torch.Tensor:
        """[T, N, O]: G^-1 (I - e^{-lr G t / n}) Y (for test predictions) at every time (t=None: infinity)
        by the Lanczos process on G, or G times it, (I - e^{-lr G t / n}) Y (on the training set; the
        Lanczos process on 1 - e^{-x} itself would need about sqrt(lr t ||G|| / n) steps)."""
        assert self.iterative is not None
        operator = self.train_operator(g)
        shift = ridge(self.diag_reg, self.diag_reg_absolute_scale, lambda: float(operator.diagonal().mean()))
        rate = self.lr / self.size
        tau = (torch.tensor([torch.inf]) if times is None else times).to(self.dtype)[:, None] * rate

        def flow(theta: torch.Tensor) -> torch.Tensor:     # [T, k]
            smallest, largest = float(theta.min()), float(theta.max())
            if times is None and smallest <= len(self.y) * torch.finfo(theta.dtype).eps * largest:
                raise ValueError(f"k_train_train ({g}) plus its ridge is singular (the Lanczos process found an "
                                 f"eigenvalue {smallest:.3g}, largest {largest:.3g}): t=None needs its inverse; pass "
                                 f"a positive diag_reg (e.g. diag_reg=1e-6, relative to the mean diagonal)")
            times_, theta = torch.broadcast_tensors(tau.to(theta.device), theta.to(self.dtype)[None, :])
            kept = -torch.expm1(-times_ * theta)
            # (1 - e^{-tau theta}) / theta -> tau as tau theta -> 0
            return torch.where(times_ * theta < 1e-12, times_, kept / theta.clamp_min(torch.finfo(theta.dtype).tiny))
        out, _ = lanczos_apply(operator, self.y, flow, shift=shift, rtol=self.iterative["rtol"],
                               max_iterations=self.iterative["max_iterations"], progress=self.iterative["progress"])
        if on_train:   # one product for every time and output (one pass over a store)
            flat = out.permute(1, 0, 2).reshape(out.shape[1], -1)
            out = (operator.matmul(flat) + shift * flat).reshape(out.shape[1], *out.shape[::2]).permute(1, 0, 2)
        return out

    def k_train(self, g: str) -> torch.Tensor:
        """The train-train kernel `g` ("nngp" or "ntk"), computed once."""
        if g not in self.cache:
            self.cache.update(self.kernel(self.x_train, None, (g,)))
        return self.cache[g]

    def dynamics(self, g: str) -> GradientFlow:
        """The gradient flow on the train-train kernel `g`, set up once."""
        if g not in self.flows:
            self.flows[g] = GradientFlow(self.k_train(g), self.size, learning_rate=self.lr,
                                         diag_reg=self.diag_reg,
                                         diag_reg_absolute_scale=self.diag_reg_absolute_scale,
                                         name=f"k_train_train ({g})")
        return self.flows[g]

    def on_train(self, g: str, times: torch.Tensor | None,
                 compute_cov: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mean and covariance on the training set (unregularized, as neural-tangents)."""
        y, size = self.y, self.size
        if times is None:
            n = size // y.shape[1]
            return y.clone(), (torch.zeros(n, n, dtype=self.dtype, device=y.device) if compute_cov else None)
        if self.iterative is not None:
            return self.lanczos(g, times, on_train=True), None
        evals, evecs = self.dynamics(g).eigenspace      # >= 0: GradientFlow checks the kernel
        keep = -torch.expm1(-self.lr / size * times[:, None] * evals[None, :])
        mean = torch.einsum("ij,tj,kj,km->tim", evecs, keep, evecs, y)
        if not compute_cov:
            return mean, None
        if g == "nngp":
            return mean, torch.einsum("ij,tj,kj->tik", evecs,
                                      evals * torch.exp(-2 * evals * times[:, None] * self.lr / size), evecs)
        e = self.dynamics(g).decay(times)
        return mean, e @ self.k_train("nngp") @ e.transpose(1, 2)

    def on_test(self, g: str, times: torch.Tensor | None, x_test: torch.Tensor,
                compute_cov: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mean and covariance at `x_test` (the formulas of `gradient_descent_mse_ensemble`)."""
        if self.iterative is not None:
            coefficients = self.lanczos(g, times, on_train=False)         # [T, N, O]
            mean = torch.cat([self.kernel(x_test[start:start + TEST_BLOCK], self.x_train, (g,))[g] @ coefficients
                              for start in range(0, len(x_test), TEST_BLOCK)], dim=-2)
            return (mean if times is not None else mean[0]), None
        flow = self.dynamics(g).solve
        kt = self.kernel(x_test, self.x_train, ("nngp", g) if compute_cov else (g,))
        mean = kt[g] @ flow(self.y, times)
        if not compute_cov:
            return mean, None
        k_tt = self.kernel(x_test, None, ("nngp",))["nngp"]
        if g == "nngp":
            return mean, k_tt - kt[g] @ flow(kt[g].T, times, doubled=True)
        term_1 = flow(kt[g].T, times)                     # [T?, N, Nt]
        term_2 = kt[g] @ flow(kt["nngp"].T, times)        # [T?, Nt, Nt]
        return mean, term_1.transpose(-1, -2) @ self.k_train("nngp") @ term_1 - term_2 - term_2.transpose(-1, -2) + k_tt

    @overload
    def __call__(self, t: Any = ..., x_test: Any = ..., *, get: str,
                 compute_cov: Literal[False] = ...) -> torch.Tensor: ...

    @overload
    def __call__(self, t: Any = ..., x_test: Any = ..., *, get: str,
                 compute_cov: Literal[True]) -> Gaussian: ...

    @overload
    def __call__(self, t: Any = ..., x_test: Any = ..., get: str | Sequence[str] | None = ...,
                 compute_cov: bool = ...) -> EnsembleOutput: ...

    def __call__(self, t: Any = None, x_test: Any = None, get: str | Sequence[str] | None = None,
                 compute_cov: bool = False) -> EnsembleOutput:
        """Mean (or `Gaussian(mean, covariance)`) at time(s) t; a `PerGet` named tuple over the
        names when `get` is a sequence of names or None (both), as neural-tangents.

        Shapes: mean [*t.shape, N_test, K] ([*t.shape, N_test] for 1-D y_train),
        cov [*t.shape, N_test, N_test]; `x_test=None` predicts on x_train."""
        names = canonical_get(get)
        if x_test is not None:
            x_test = as_inputs(x_test, "x_test", images=self.images, sequences=self.sequences,
                               dtype=self.dtype, device=self.x_train.device)
            if x_test.shape[1:] != self.x_train.shape[1:]:
                raise ValueError(f"x_test must have samples of shape {tuple(self.x_train.shape[1:])} "
                                 f"like x_train, got shape {tuple(x_test.shape)}")
        times, t_shape = (None, ()) if t is None else _time_grid(t)
        times = None if times is None else times.to(dtype=self.dtype, device=self.x_train.device)
        means: dict[str, torch.Tensor] = {}
        covs: dict[str, torch.Tensor] = {}     # filled when compute_cov
        if compute_cov and self.iterative is not None:
            raise ValueError("compute_cov=True needs solver='eigh' (the covariance takes the eigendecomposition); "
                             "solver='lanczos' gives the means")
        if compute_cov and "ntk" in names:
            self.kernel(self.x_train[:1], None, ("ntk",))   # what kernel_fn returns
            if getattr(self.kernel, "tensor_valued", False):
                raise ValueError("compute_cov=True with get='ntk' needs the NNGP and the NTK, but kernel_fn "
                                 "returns one tensor; return an object with .nngp and .ntk (e.g. nk.Kernel)")
        for g in names:
            mean, cov = (self.on_train(g, times, compute_cov) if x_test is None
                         else self.on_test(g, times, x_test, compute_cov))
            if times is not None:
                mean = mean.reshape(t_shape + mean.shape[-2:])
                cov = None if cov is None else cov.reshape(t_shape + cov.shape[-2:])
            means[g] = mean[..., 0] if self.vector else mean
            if cov is not None:
                covs[g] = cov
        results = {g: Gaussian(means[g], covs[g]) if compute_cov else means[g] for g in names}
        return results[names[0]] if isinstance(get, str) else per_get(results)
