"""Predictions on finite (given) kernels, neural-tangents' `predict` API: the outputs of a
network trained in function space with its tangent kernel (Jacot et al. 2018; Lee et al.
2019, "Wide neural networks of any depth evolve as linear models under gradient descent").

Conventions (neural-tangents'): kernels are `[N, N]` over samples and act on every output
column alike; `learning_rate` multiplies time (absolute time = learning_rate * t); the
dynamics are gradient flow in function space

    df/dt = -learning_rate * K dloss/df,        f = (f(X_train), f(X_test)),

so a loss that averages over its |Y| entries carries the 1/|Y| (for MSE,
L = ||f - y||^2 / (2 |Y|): df/dt = -(learning_rate / |Y|) K (f - y), as everywhere in ntklab).

Every entry point checks the train-train kernel once, by `linalg.checked_kernel`: symmetric
and positive semi-definite up to rounding, or refused with the size of the asymmetry or the
most negative eigenvalue and the fix.  `gradient_descent_mse` and `gradient_descent` take
`allow_indefinite=True` to follow an indefinite kernel exactly (the flow then grows along
its negative eigenvalues, in the closed form as in the ODE).

* `gradient_descent_mse`: the closed form for the MSE at any array of times (one
  eigendecomposition; a Cholesky solve for t=None, i.e. infinity).
* `gradient_descent`: any differentiable loss (cross-entropy included), by integrating the
  ODE with `scipy.integrate.solve_ivp` (DOP853: an adaptive 8th-order Runge-Kutta method
  with error control, so the tolerance is met and a failure is reported; the state is only
  N x outputs numbers, so a CPU ODE solver is the right tool and no extra dependency is
  needed).  A stiff flow (lr lambda_max t / |Y| large, where an explicit method needs about
  that many steps) is integrated by LSODA instead (stiff BDF while the flow is stiff, Adams
  after), with the exact Jacobian.  `momentum` solves the heavy-ball ODE in neural-tangents' units: time in units
  of sqrt(learning_rate), friction (momentum - 1) / sqrt(learning_rate).
* `gp_inference`: the Gaussian-process posterior mean and covariance for given kernels.
* `max_learning_rate`: 2 (1 + momentum) |Y| / lambda_max(K).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Protocol, cast, overload

import math

import torch
from scipy.integrate import solve_ivp
from tqdm.auto import tqdm

from .._core.validation import as_tensor, positive
from ..conventions import prediction_times
from .._core.tiling import PROGRESS_DELAY
from .linalg import Factorization, GradientFlow, checked_kernel, square_kernel
from .results import Gaussian

Prediction = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
"""What `gradient_descent_mse`'s and `gradient_descent`'s predict return (neural-tangents'
contract): `fx_train_t` alone without `fx_test_0`, `fx_test_t` alone with `fx_train_0=None`,
the pair `(fx_train_t, fx_test_t)` when both are asked for."""


class MSEPredictor(Protocol):
    """The `predict` that `gradient_descent_mse` returns."""

    @overload
    def __call__(self, t: Any = None, fx_train_0: Any = 0.0, fx_test_0: None = None,
                 k_test_train: Any = None) -> torch.Tensor: ...

    @overload
    def __call__(self, t: Any, fx_train_0: Any, fx_test_0: Any, k_test_train: Any = None) -> Prediction: ...

    def __call__(self, t: Any = None, fx_train_0: Any = 0.0, fx_test_0: Any = None,
                 k_test_train: Any = None) -> Prediction:
        """f_train, f_test or (f_train, f_test) at the time(s) `t` (None: infinite time)."""


class ODEPredictor(Protocol):
    """The `predict` that `gradient_descent` returns."""

    @overload
    def __call__(self, t: Any, fx_train_0: Any = 0.0, fx_test_0: None = None,
                 k_test_train: Any = None) -> torch.Tensor: ...

    @overload
    def __call__(self, t: Any, fx_train_0: Any, fx_test_0: Any, k_test_train: Any = None) -> Prediction: ...

    def __call__(self, t: Any, fx_train_0: Any = 0.0, fx_test_0: Any = None,
                 k_test_train: Any = None) -> Prediction:
        """f_train, f_test or (f_train, f_test) at the finite time(s) `t`."""


class GPPredictor(Protocol):
    """The `predict` that `gp_inference` returns."""

    @overload
    def __call__(self, k_test_train: Any = None, k_test_test: None = None, get: None = None) -> torch.Tensor: ...

    @overload
    def __call__(self, k_test_train: Any, k_test_test: Any, get: None = None) -> Gaussian: ...

    def __call__(self, k_test_train: Any = None, k_test_test: Any = None, get: Any = None) -> torch.Tensor | Gaussian:
        """The posterior mean, or `Gaussian(mean, covariance)` with `k_test_test` (`get`: refused)."""


@dataclass(frozen=True)
class _Problem:
    """Validated train kernel and targets (y as [N, K], whether it was 1-D)."""

    k_train_train: torch.Tensor
    y_train: torch.Tensor
    vector: bool


def _problem(k_train_train, y_train) -> _Problem:
    k = square_kernel(k_train_train, "k_train_train")
    y = as_tensor(y_train, "y_train", dtype=k.dtype, device=k.device)
    vector = y.ndim == 1
    y = y[:, None] if vector else y
    if y.ndim != 2 or y.shape[0] != k.shape[0]:
        raise ValueError(f"y_train must have shape [N] or [N, K] with N = {k.shape[0]} (the size of "
                         f"k_train_train), got {tuple(y.shape)}")
    return _Problem(k, y, vector)


def _outputs(value, shape: tuple[int, ...], name: str, like: torch.Tensor) -> torch.Tensor:
    """Initial outputs: a scalar (broadcast) or an array of `shape` ([N] allowed for K = 1)."""
    t = as_tensor(value, name, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        return t.expand(shape).clone()
    if t.shape == shape[:1] and shape[1] == 1:
        return t[:, None].clone()
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape} (or be a scalar), got {tuple(t.shape)}")
    return t.clone()


class _TestSet(NamedTuple):
    """The test-train kernel `[N_test, N]` and the test outputs at t = 0 `[N_test, K]`."""

    k_test_train: torch.Tensor
    fx_test_0: torch.Tensor


def _test_train_kernel(k_test_train, problem: _Problem) -> torch.Tensor:
    """`k_test_train` as a `[N_test, N]` tensor like the train kernel."""
    k = problem.k_train_train
    if k_test_train is None:
        raise ValueError(f"k_test_train is None: pass the test-train kernel [N_test, {k.shape[0]}]")
    k_td = as_tensor(k_test_train, "k_test_train", dtype=k.dtype, device=k.device)
    if k_td.ndim != 2 or k_td.shape[1] != k.shape[0]:
        raise ValueError(f"k_test_train must have shape [N_test, {k.shape[0]}], got {tuple(k_td.shape)}")
    return k_td


def _test_set(k_test_train, fx_test_0, problem: _Problem) -> _TestSet | None:
    """The validated test set, None without `fx_test_0` (no test prediction)."""
    if fx_test_0 is None:
        return None
    if k_test_train is None:
        raise ValueError("fx_test_0 is given but k_test_train is not: pass the test-train kernel "
                         "[N_test, N_train] to predict on the test set")
    k_td = _test_train_kernel(k_test_train, problem)
    k_outputs = problem.y_train.shape[1]
    return _TestSet(k_td, _outputs(fx_test_0, (k_td.shape[0], k_outputs), "fx_test_0", k_td))


def _times(t, learning_rate: float, like: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """learning_rate x t (`conventions.prediction_times`) as a flat tensor like `like`, and t's shape."""
    array, shape = prediction_times(t)
    return torch.as_tensor(array * learning_rate, dtype=like.dtype, device=like.device), shape


def _finish(problem: _Problem, shape: tuple[int, ...], train: torch.Tensor | None,
            test: torch.Tensor | None) -> Prediction:
    """The outputs shaped `[*t.shape, N, K]` (`[..., N]` for 1-D y_train), returned as
    neural-tangents does: the train outputs alone when no test outputs were asked for
    (`fx_test_0=None`), the test outputs alone with `fx_train_0=None`, else the pair."""
    def reshape(value: torch.Tensor) -> torch.Tensor:
        value = value.reshape(shape + value.shape[-2:])
        return value[..., 0] if problem.vector else value
    if test is None:
        assert train is not None   # predict refuses fx_train_0 = fx_test_0 = None
        return reshape(train)
    return reshape(test) if train is None else (reshape(train), reshape(test))


def gradient_descent_mse(k_train_train, y_train, learning_rate: float = 1.0, diag_reg: float = 0.0,
                         diag_reg_absolute_scale: bool = False, *, allow_indefinite: bool = False) -> MSEPredictor:
    """Outputs of gradient flow on L = ||f - y||^2 / (2 |Y|) with the kernel `k_train_train`
    (`[N, N]`) in closed form.  With G = K + diag_reg s I (s = mean(diag K) unless
    `diag_reg_absolute_scale`), r_0 = y - f_train(0) and c = learning_rate / |Y|:

        f_train(t) = y - e^{-c G t} r_0
        f_test(t)  = f_test(0) + K_test G^-1 (I - e^{-c G t}) r_0      (t=None: G^-1 r_0)

    Returns `predict(t=None, fx_train_0=0.0, fx_test_0=None, k_test_train=None)` ->
    outputs `[*t.shape, N, K]` (`[..., N]` for 1-D `y_train`), as neural-tangents: `fx_train_t`
    alone without `fx_test_0`, `fx_test_t` alone with `fx_train_0=None`, else the pair
    `(fx_train_t, fx_test_t)`.

    G must be symmetric and positive semi-definite up to rounding (`checked_kernel`);
    `allow_indefinite=True` takes an indefinite G exactly: e^{-c G t} by the
    eigendecomposition with nothing clamped, so the outputs grow as e^{c |lambda_min| t}
    (as `torch.linalg.matrix_exp` and the ODE of `gradient_descent`), times whose outputs
    overflow are refused, and so is t=None (G^-1 exists, but the flow has no limit).

    >>> import torch
    >>> k = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    >>> predict = gradient_descent_mse(k, torch.tensor([1.0, -1.0], dtype=torch.float64))
    >>> predict(None)                              # no test set: the train outputs alone
    tensor([ 1., -1.], dtype=torch.float64)

    Parameters
    ----------
    k_train_train : tensor [N, N]
    y_train : tensor [N, O]
    learning_rate, diag_reg, diag_reg_absolute_scale
        As `gradient_descent_mse_ensemble`.
    allow_indefinite : bool
        Follow an indefinite kernel exactly instead of refusing it.

    Returns
    -------
    callable
        `predict(t, fx_train_0=0.0, fx_test_0=None, k_test_train=None)` -> `f_train`,
        `f_test` (`fx_train_0=None`) or `(f_train, f_test)` (both asked for).

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> theta = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    >>> y = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    >>> predict = nk.predict.gradient_descent_mse(theta, y, learning_rate=1.0)
    >>> f_train = predict(None, torch.zeros(2, 1, dtype=torch.float64))   # t = infinity
    >>> bool(torch.allclose(f_train, y))
    True
    >>> f_train, f_test = predict(1.0, 0.0, torch.zeros(1, 1, dtype=torch.float64), theta[:1])
    >>> f_test.shape
    torch.Size([1, 1])
    """
    problem = _problem(k_train_train, y_train)
    learning_rate = positive(learning_rate, "learning_rate")
    flow = GradientFlow(problem.k_train_train, problem.y_train.numel(), learning_rate=1.0,
                        diag_reg=diag_reg, diag_reg_absolute_scale=diag_reg_absolute_scale,
                        allow_indefinite=allow_indefinite)

    def predict(t=None, fx_train_0=0.0, fx_test_0=None, k_test_train=None) -> Prediction:
        if fx_train_0 is None and fx_test_0 is None:
            raise ValueError("fx_train_0 and fx_test_0 are both None: nothing to predict")
        y = problem.y_train
        f_train = torch.zeros_like(y) if fx_train_0 is None else _outputs(fx_train_0, tuple(y.shape),
                                                                        "fx_train_0", y)
        test_set = _test_set(k_test_train, fx_test_0, problem)
        residual = y - f_train
        if t is None:
            # beyond rounding (`GradientFlow.tolerance`); only an opted-in kernel can be indefinite
            if allow_indefinite and float(flow.eigenspace[0][0]) < 0:
                raise ValueError(
                    f"t=None (infinite time) does not exist for the indefinite k_train_train "
                    f"(most negative eigenvalue {float(flow.eigenspace[0][0]):.3g}): gradient flow "
                    f"diverges along its negative eigenvalues; give finite times")
            _ = flow.factorization   # factorized now: a singular G is refused (its null space never reaches y)
            train = None if fx_train_0 is None else y.clone()
            test = None if test_set is None else test_set.fx_test_0 + test_set.k_test_train @ flow.solve(residual)
            return _finish(problem, (), train, test)
        times, shape = _times(t, learning_rate, y)
        train = None if fx_train_0 is None else y - flow.decay(times) @ residual
        test = (None if test_set is None else
                test_set.fx_test_0 + test_set.k_test_train @ flow.solve(residual, times))
        return _finish(problem, shape, train, test)

    return cast(MSEPredictor, predict)   # what it returns follows MSEPredictor's overloads


STIFF = 1e3
"""`gradient_descent` switches from DOP853 to LSODA when T rho > STIFF, T the last time (in
the solver's units) and rho the spectral radius of the flow's Jacobian at the start.  An
explicit method's steps are bounded by its stability, about 1 / rho, so its work grows as
T rho (measured for the MSE on N = 20: 2 s at T rho = 1e3, 14 s at 1e4, 112 s at 1e5), while
LSODA with the exact Jacobian takes about a second at any T rho (1e2 to 1e9, for the MSE and
cross-entropy, within 2e-10 of the closed form at rtol = atol = 1e-10)."""


def _spectral_radius(field: Callable[[torch.Tensor], torch.Tensor], state: torch.Tensor,
                     iterations: int = 30) -> float:
    """|largest eigenvalue| of the Jacobian of `field` at `state`, by power iteration on
    Jacobian-vector products (the geometric mean of the growth over the last half of the
    iterations, so complex pairs, as with momentum, are measured too); a factor of about 2
    is all that choosing a method needs."""
    v = torch.randn(state.shape, generator=torch.Generator().manual_seed(0), dtype=state.dtype)
    v = v.to(state.device) / v.norm()
    logs = []
    for _ in range(iterations):
        v = torch.func.jvp(field, (state,), (v,))[1]
        norm = float(v.norm())
        if not 0 < norm < math.inf:
            return norm
        logs.append(math.log(norm))
        v = v / norm
    return math.exp(sum(logs[iterations // 2:]) / (iterations - iterations // 2))


def _loss_gradient(loss, y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """f -> dloss(f, y)/df, after checking that `loss` is a function returning a scalar tensor."""
    if not callable(loss):
        raise ValueError(f"loss must be a function loss(fx, y) returning a scalar, got {loss!r}")
    value = loss(y.clone(), y)
    if not (isinstance(value, torch.Tensor) and value.ndim == 0):
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else ""
        raise ValueError(f"loss(fx, y) must return a scalar tensor, got {type(value).__name__}{shape}")
    return torch.func.grad(lambda f: loss(f, y))


def _integrate(field: Callable[[torch.Tensor], torch.Tensor], state0: torch.Tensor, times: torch.Tensor, *,
               scale: float, rtol: float, atol: float, progress: bool | None) -> torch.Tensor:
    """The solution of state' = field(state), state(0) = state0, at `times` (any order; in the
    solver's units, reported divided by `scale`): `[T, S]`.  DOP853, or LSODA with the exact
    Jacobian when the flow is stiff (`STIFF`); failures raise with the time reached."""
    end = float(times.max())
    if end == 0:
        return state0[None].expand(len(times), -1)
    stiff = end * _spectral_radius(field, state0) > STIFF
    reached, last, stalled = [0.0], [-1.0], [0]
    bar = tqdm(total=end / scale, desc=f"gradient descent ODE ({'LSODA' if stiff else 'DOP853'})",
               bar_format="{desc}: {percentage:3.0f}% of t = {total:.4g} [{elapsed}<{remaining}]",
               leave=False, delay=0 if progress else PROGRESS_DELAY, disable=progress is False)

    def failure(reason: str) -> RuntimeError:
        return RuntimeError(f"the ODE solver failed at time {reached[0] / scale:.4g} of "
                            f"{end / scale:.4g} ({reason}); the loss may diverge, or loosen "
                            f"rtol/atol")

    def rhs(time, state):
        if time > reached[0]:
            bar.update((time - reached[0]) / scale)
            reached[0] = time
        stalled[0] = stalled[0] + 1 if time == last[0] else 0
        last[0] = time
        if stalled[0] >= 1000:   # LSODA can stall at one time without failing
            raise failure("1000 evaluations at one time: the step size underflowed or the "
                          "outputs overflowed")
        return field(torch.from_numpy(state).to(state0)).cpu().numpy()

    def jacobian(_, state):
        jac = torch.func.jacfwd(field)(torch.from_numpy(state).to(state0))
        if not bool(torch.isfinite(jac).all()):
            raise failure("the Jacobian of the flow is not finite")
        return jac.cpu().numpy()

    order = torch.argsort(times)
    try:
        with bar:
            result = solve_ivp(rhs, (0.0, end), state0.cpu().numpy(),
                               method="LSODA" if stiff else "DOP853", t_eval=times[order].cpu().numpy(),
                               rtol=rtol, atol=atol, **({"jac": jacobian} if stiff else {}))
    except ValueError as err:   # scipy refuses non-finite values (e.g. in an LU)
        raise failure(str(err)) from err
    if not result.success:
        raise failure(result.message)
    solution = torch.empty(len(times), state0.numel(), dtype=state0.dtype, device=state0.device)
    solution[order] = torch.from_numpy(result.y.T.copy()).to(state0)
    return solution


def gradient_descent(loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], k_train_train, y_train,
                     learning_rate: float = 1.0, momentum: float | None = None, *,
                     rtol: float = 1e-10, atol: float = 1e-10, allow_indefinite: bool = False,
                     progress: bool | None = None) -> ODEPredictor:
    """Outputs of gradient flow df/dt = -learning_rate K dloss/df for any differentiable
    `loss(f_train, y_train)` (a torch function returning a scalar; a loss that averages over
    samples carries its 1/N), integrated by `scipy.integrate.solve_ivp` (DOP853, `rtol`,
    `atol`; LSODA with the exact Jacobian, by `torch.func.jacfwd`, when the flow is stiff,
    see `STIFF`).  Test outputs follow df_test/dt = -learning_rate K_test dloss/df_train.
    K must be symmetric and positive semi-definite up to rounding (`checked_kernel`);
    `allow_indefinite=True` integrates an indefinite K as it is.

    `momentum` (heavy ball, neural-tangents' continuous-time form): with s = sqrt(lr),
    time in units of s and friction mu = (momentum - 1) / s, f' = q, q' = -K dloss/df + mu q.

    Returns `predict(t, fx_train_0=0.0, fx_test_0=None, k_test_train=None)` ->
    the outputs as `gradient_descent_mse` (`f_train`, `f_test` or the pair); `t` must be finite (an ODE has no
    t = infinity).  A solver failure (e.g. a diverging flow) raises with the time it reached.
    A progress bar over time shows on solves longer than 2 s (`progress=None`), always
    (`True`) or never (`False`).

    Parameters
    ----------
    loss : callable
        `loss(f, y)`, a scalar torch function.
    k_train_train, y_train : tensors
    learning_rate : float
    momentum : float, optional
    rtol, atol : float
        The solver's tolerances.
    allow_indefinite : bool
        Integrate an indefinite kernel instead of refusing it.
    progress : bool, optional

    Returns
    -------
    callable
        `predict(t, fx_train_0=0.0, fx_test_0=None, k_test_train=None)` -> `f_train`,
        `f_test` or `(f_train, f_test)`, as `gradient_descent_mse`.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> theta = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    >>> y = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    >>> mse = lambda f, y: 0.5 * ((f - y) ** 2).mean()
    >>> predict = nk.predict.gradient_descent(mse, theta, y, learning_rate=1.0)
    >>> f_train = predict(20.0, torch.zeros(2, 1, dtype=torch.float64))
    >>> f_train.shape
    torch.Size([2, 1])
    """
    problem = _problem(checked_kernel(k_train_train, diag_reg=None, allow_indefinite=allow_indefinite),
                       y_train)
    learning_rate = positive(learning_rate, "learning_rate")
    if momentum is not None:
        momentum = positive(momentum, "momentum", allow_zero=True)
    y = problem.y_train
    grad_loss = _loss_gradient(loss, y)
    scale = learning_rate ** 0.5 if momentum is not None else learning_rate
    friction = None if momentum is None else (momentum - 1.0) / scale

    def predict(t, fx_train_0=0.0, fx_test_0=None, k_test_train=None) -> Prediction:
        if t is None:
            raise ValueError("t=None (infinite time) is available for gradient_descent_mse only; "
                             "give finite times for a general loss")
        if fx_train_0 is None and fx_test_0 is None:
            raise ValueError("fx_train_0 and fx_test_0 are both None: nothing to predict")
        f_train = torch.zeros_like(y) if fx_train_0 is None else _outputs(fx_train_0, tuple(y.shape),
                                                                        "fx_train_0", y)
        test_set = _test_set(k_test_train, fx_test_0, problem)
        times, shape = _times(t, scale, y)
        parts = [f_train] + ([] if test_set is None else [test_set.fx_test_0])
        sizes = [p.numel() for p in parts]
        state0 = torch.cat([p.reshape(-1) for p in parts])
        if momentum is not None:
            state0 = torch.cat([state0, torch.zeros_like(state0)])
        n_f = sum(sizes)
        k = problem.k_train_train

        def field(state: torch.Tensor) -> torch.Tensor:
            g = grad_loss(state[:sizes[0]].reshape(y.shape))
            force = torch.cat([-(k @ g).reshape(-1)]
                              + ([] if test_set is None else [-(test_set.k_test_train @ g).reshape(-1)]))
            if friction is None:   # no momentum
                return force
            q = state[n_f:]
            return torch.cat([q, force + friction * q])

        solution = _integrate(field, state0, times, scale=scale, rtol=rtol, atol=atol, progress=progress)
        train = solution[:, :sizes[0]].reshape(len(times), *y.shape) if fx_train_0 is not None else None
        test = (None if test_set is None else
                solution[:, sizes[0]:n_f].reshape(len(times), *test_set.fx_test_0.shape))
        return _finish(problem, shape, train, test)

    return cast(ODEPredictor, predict)


def gp_inference(k_train_train, y_train, diag_reg: float = 0.0,
                 diag_reg_absolute_scale: bool = False) -> GPPredictor:
    """Gaussian-process posterior given the train kernel K (`[N, N]`, NNGP or NTK):

        mean(x)     = K(x, X) G^-1 y,       G = K + diag_reg s I
        cov(x, x')  = K(x, x') - K(x, X) G^-1 K(X, x')

    (Rasmussen & Williams 2006, eqs. 2.23-2.24; the NNGP posterior is the exact Bayesian
    posterior of an infinitely wide network, Lee et al. 2018).  G must be symmetric and
    positive definite (`checked_kernel`; a prior covariance is never indefinite).  Returns
    `predict(k_test_train=None, k_test_test=None)` -> the mean, or `Gaussian(mean, covariance)`
    when `k_test_test` is given (neural-tangents' contract).  `k_test_train=None` predicts on
    the training set, unregularized as neural-tangents: mean y_train, covariance 0 (ask for it
    with any `k_test_test`, e.g. True).  neural-tangents' `get` (its first argument) is not
    taken: this `gp_inference` holds one kernel, so `predict_fn(get, k_td, k_tt)` ports to
    `predict(k_td, k_tt)` with the kernel `get` named.

    Parameters
    ----------
    k_train_train, y_train : tensors
    diag_reg, diag_reg_absolute_scale
        The observation noise, relative to the mean diagonal by default.

    Returns
    -------
    callable
        `predict(k_test_train=None, k_test_test=None)` -> `mean`, or `Gaussian(mean, covariance)`
        with `k_test_test`.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> theta = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    >>> y = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    >>> predict = nk.predict.gp_inference(theta, y, diag_reg=1e-3)
    >>> mean, cov = predict(theta, theta)              # a Gaussian(mean, covariance)
    >>> mean.shape, cov.shape
    (torch.Size([2, 1]), torch.Size([2, 2]))
    >>> predict(theta).shape                           # the mean alone
    torch.Size([2, 1])
    """
    problem = _problem(k_train_train, y_train)
    k, cholesky = checked_kernel(problem.k_train_train, diag_reg=diag_reg,
                                 diag_reg_absolute_scale=diag_reg_absolute_scale,
                                 allow_indefinite=None, with_cholesky=True)
    factorization = Factorization(k, assume_psd=None, cholesky=cholesky)
    alpha = factorization.solve(problem.y_train)

    def predict(k_test_train: Any = None, k_test_test: Any = None, get: Any = None) -> torch.Tensor | Gaussian:
        if isinstance(k_test_train, str) or get is not None:
            named = k_test_train if isinstance(k_test_train, str) else get
            raise ValueError(f"get={named!r}: neural-tangents' "
                             f"predict_fn(get, k_test_train, k_test_test) is predict(k_test_train, "
                             f"k_test_test) here (gp_inference holds the one kernel you gave it): drop get")
        if k_test_train is None:   # the training set, unregularized (neural-tangents)
            train = (problem.y_train[:, 0] if problem.vector else problem.y_train).clone()
            return train if k_test_test is None else Gaussian(train, torch.zeros_like(problem.k_train_train))
        k_td = _test_train_kernel(k_test_train, problem)
        mean = k_td @ alpha
        mean = mean[:, 0] if problem.vector else mean
        if k_test_test is None:
            return mean
        k_tt = square_kernel(k_test_test, "k_test_test")
        if k_tt.shape[0] != k_td.shape[0]:
            raise ValueError(f"k_test_test must be [{k_td.shape[0]}, {k_td.shape[0]}] like the rows of "
                             f"k_test_train, got {tuple(k_tt.shape)}")
        return Gaussian(mean, k_tt.to(k_td) - k_td @ factorization.solve(k_td.T))

    return cast(GPPredictor, predict)


def max_learning_rate(k_train_train, y_train_size: int | None = None, momentum: float = 0.0,
                      eps: float = 1e-12) -> float:
    """The largest stable learning rate of (momentum) gradient descent on the MSE with
    ntklab's loss ||f - y||^2 / (2 |Y|): eta < 2 (1 + momentum) |Y| / lambda_max(K)
    (the contraction bound; with momentum, Goh 2017, "Why momentum really works").
    `y_train_size=None`: |Y| = N (one output).  The bound holds for a symmetric positive
    semi-definite K (`checked_kernel`); an indefinite K (gradient descent diverges at every
    learning rate) and a zero K (no step moves the outputs) are refused.

    Parameters
    ----------
    k_train_train : tensor
    y_train_size : int, optional
        |Y| of ntklab's loss convention (default: the kernel's size).
    momentum : float
    eps : float
        Guards the division when lambda_max is (numerically) zero.

    Returns
    -------
    float

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> theta = torch.diag(torch.tensor([4.0, 1.0], dtype=torch.float64))
    >>> round(nk.predict.max_learning_rate(theta, y_train_size=2), 9)      # 2 |Y| / lambda_max
    1.0
    """
    k = checked_kernel(k_train_train, diag_reg=None, allow_indefinite=None)
    size = k.shape[0] if y_train_size is None else int(y_train_size)
    if size <= 0:
        raise ValueError(f"y_train_size must be a positive integer, got {y_train_size!r}")
    momentum = positive(momentum, "momentum", allow_zero=True)
    largest = float(torch.linalg.eigvalsh(k)[-1])
    if largest <= 0:
        raise ValueError(f"k_train_train is zero (largest eigenvalue {largest:.3g}): gradient descent "
                         f"does not move the outputs at any learning rate, so none is the largest "
                         f"stable one; pass the train-train kernel of the data (a zero kernel comes "
                         f"from zero inputs with b_std = 0, or from get= the wrong kernel)")
    return 2.0 * (1.0 + momentum) * size / (largest + eps)
