"""A trained network against its own NTK hierarchy at initialization: the kernel prediction
(error O(1/n)) and the book's nearly-kernel prediction at first order in 1/n (error O(1/n²)),
Roberts, Yaida & Hanin 2022, ch. 11 and ∞.

Gradient flow on L = ½ Σ_a (z_a - y_a)² (θ̇ = -Σ_a ε_a ∂z_a/∂θ, ε_a = z_a - y_a, the learning-rate
tensor λ = 1: the network's own parameterization carries the 1/√n factors), run for the flow time
τ = learning_rate t / N, which is ntklab's convention (`ntklab.conventions`: L = ||z - y||²/(2N),
t counts steps and multiplies the learning rate) at time t, moves any output as

    ż_δ        = -Σ_a H_δa ε_a,         H_δa      = Σ_μ ∂_μ z_δ ∂_μ z_a          (the NTK)
    Ḣ_δa       = -Σ_b dH_bδa ε_b,       dH_bδa    = Σ_μ ∂_μ z_b ∂_μ H_δa         (the dNTK)
    (dH_bδa)˙  = -Σ_c ddH_cbδa ε_c,     ddH_cbδa  = Σ_μ ∂_μ z_c ∂_μ dH_bδa       (the ddNTKs)

(a, b, c training points, δ any point; ch. 11 defines the dNTK and the two ddNTKs as these
derivatives along the gradient -- ddH here is their sum, ddI + ddII with its index pairings --
and shows that dH and ddH are O(1/n) while ddH's own derivative is O(1/n²)). To first order in
1/n (ch. ∞): the kernel solution with the network's NTK at initialization,
    ż_F = -H(0) ε_F,
plus the 1/n correction z₁ driven by the kernel's residual ε_F,
    (dH)˙ = -ddH(0)·ε_F,    Ḣ₁ = -dH·ε_F,    ż₁ = -H(0) ε₁ - H₁ ε_F,
all linear, integrated together (DOP853, rtol 1e-12). The frozen-kernel solution z_F has error
O(1/n) against the trained network; z_F + z₁ has error O(1/n²) (measured by `nearly-kernel`).

The tensors are exact directional derivatives by `torch.func`: H's column a is the forward-mode
derivative of all outputs along ∂z_a/∂θ, dH and ddH are forward-mode derivatives of H and dH along
the training gradients (which themselves depend on θ), so no D x P Jacobian is formed.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from scipy.integrate import solve_ivp
from torch import nn
from torch.func import functional_call, grad, jvp, vmap

from .._core.validation import as_matrix
from ..conventions import flow_times

TERMS = ("dntk", "ddntk")


@dataclass(frozen=True)
class NTKHierarchy:
    """A single-output network's outputs and NTK hierarchy at its parameters (`nk.ntk_hierarchy`),
    over D = N + M points, the N training points first.

    Attributes
    ----------
    output : Tensor [D]
        f(x_δ).
    ntk : Tensor [D, N]
        H_δa = Σ_μ ∂_μ z_δ ∂_μ z_a.
    dntk : Tensor [N, D, N]
        dH[b, δ, a] = Σ_μ ∂_μ z_b ∂_μ H_δa.
    ddntk : Tensor [N, N, D, N] or None
        ddH[c, b, δ, a] = Σ_μ ∂_μ z_c ∂_μ dH_bδa (None when not computed).
    """

    output: torch.Tensor
    ntk: torch.Tensor
    dntk: torch.Tensor
    ddntk: torch.Tensor | None

    @property
    def n_train(self) -> int:
        """Number of training inputs."""
        return self.ntk.shape[1]


def _single_output(model: nn.Module, points: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        output = model(points).reshape(len(points), -1)
    if output.shape[1] != 1:
        raise ValueError(f"model must have one output, got {output.shape[1]}")
    return output[:, 0]


def _parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach() for name, p in model.named_parameters()}


def ntk_hierarchy(model: nn.Module, x_train: torch.Tensor, x_test: torch.Tensor, *,
                  ddntk: bool = True) -> NTKHierarchy:
    """`nk.ntk_hierarchy(model, x_train, x_test)`: the NTK, dNTK and ddNTK of a single-output
    torch model at its current parameters -- the kernels whose evolution under gradient flow is
    ż = -Hε, Ḣ = -dH·ε, (dH)˙ = -ddH·ε (Roberts, Yaida & Hanin 2022, ch. 11; module docstring).

    The hierarchy describes training for smooth activations (tanh, GELU, erf, ...): a ReLU
    network's derivatives at a point miss its kinks, which gradient flow crosses.

    Exact (nested forward-mode `torch.func` derivatives along the training gradients); cost N²
    forward-over-forward-over-reverse passes over the D = N + M points, memory N x P per level.
    The tensors are on the model's device.

    Parameters
    ----------
    model : nn.Module
        One output per input.
    x_train : Tensor [N, d]
        The points whose gradients drive training (the indices a, b, c).
    x_test : Tensor [M, d]
        Further points at which to predict (the index δ also runs over them); may be empty
        (`x_train[:0]`).
    ddntk : bool, default True
        False stops at the dNTK (`ddntk` None; about a third of the cost at N = 3).

    Returns
    -------
    NTKHierarchy

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> model = nk.mlp(1, 16, activation=nk.Tanh()).module(2, seed=0, dtype=torch.float64)
    >>> x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> h = nk.ntk_hierarchy(model, x[:2], x[2:])
    >>> h.ntk.shape, h.dntk.shape, h.ddntk.shape
    (torch.Size([3, 2]), torch.Size([2, 3, 2]), torch.Size([2, 2, 3, 2]))
    >>> bool(torch.allclose(h.ntk, nk.empirical_ntk(model, x)[:, :2]))
    True
    """
    reference = next(model.parameters())
    x_train = as_matrix(x_train, "x_train", dtype=reference.dtype, device=reference.device)
    x_test = as_matrix(x_test, "x_test", dtype=x_train.dtype, device=reference.device, min_rows=0)
    points = torch.cat([x_train, x_test])
    output = _single_output(model, points)
    params = _parameters(model)

    def outputs(p):
        return functional_call(model, p, (points,))[:, 0]

    def one(p, x):
        return functional_call(model, p, (x[None],))[0, 0]

    def train_gradients(p):                                           # ∂z_a/∂θ, a = 1..N
        return vmap(grad(one), (None, 0))(p, x_train)

    def along_train_gradients(function):                              # [N, *function(p).shape]
        return lambda p: vmap(lambda tangent: jvp(function, (p,), (tangent,))[1])(train_gradients(p))

    ntk = along_train_gradients(outputs)                              # [N, D]: H_δa as [a, δ]
    dntk = along_train_gradients(lambda p: ntk(p).T)                  # [N, D, N]
    second = None
    if ddntk:
        gradients = train_gradients(params)
        second = torch.stack([jvp(dntk, (params,), ({k: v[c] for k, v in gradients.items()},))[1]
                              for c in range(len(x_train))]).detach()
    return NTKHierarchy(output, ntk(params).T.detach(), dntk(params).detach(), second)


def nearly_kernel_flow(hierarchy: NTKHierarchy, y_train: torch.Tensor, times: Sequence[float], *,
                       learning_rate: float = 1.0, terms: Sequence[str] = TERMS) -> dict[str, torch.Tensor]:
    """`nk.nearly_kernel_flow(hierarchy, y_train, times)`: the test outputs of the network
    trained by gradient flow on (x_train, y_train), predicted from its NTK hierarchy at
    initialization (Roberts, Yaida & Hanin 2022, ch. ∞; module docstring): the kernel solution
    z_F (the NTK frozen, error O(1/n)) and z_F + z₁, first order in 1/n (error O(1/n²)):

        ż_F = -H ε_F,  (dH)˙ = -ddH·ε_F,  Ḣ₁ = -dH·ε_F,  ż₁ = -H ε₁ - H₁ ε_F.

    Integrated on the CPU in float64 by scipy's DOP853 (rtol 1e-12); the tensors are small.

    Parameters
    ----------
    hierarchy : NTKHierarchy
        From `nk.ntk_hierarchy` at the initialization.
    y_train : Tensor [N]
        The training targets.
    times : sequence of float
        Positive, increasing training times in steps of size learning_rate (`ntklab.conventions`).
    learning_rate : float
        On L = ||z - y||² / (2N); the book's unit rate on ½ Σ is learning_rate = N.
    terms : sequence of str, default ("dntk", "ddntk")
        The 1/n sources entering z₁; one alone is an ablation.

    Returns
    -------
    dict
        "kernel" and "nearly_kernel": Tensor [len(times), M] of test outputs (float64, on the
        hierarchy's device).

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> model = nk.mlp(1, 64, activation=nk.Tanh()).module(2, seed=0, dtype=torch.float64)
    >>> x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> y = torch.sin(x[:3, 0])
    >>> predicted = nk.nearly_kernel_flow(nk.ntk_hierarchy(model, x[:3], x[3:]), y, [2.0])
    >>> trained = nk.train_gradient_flow(model, x[:3], y, [2.0], x[3:])
    >>> bool((trained - predicted["nearly_kernel"]).abs().max() < (trained - predicted["kernel"]).abs().max())
    True
    """
    unknown = set(terms) - set(TERMS)
    if unknown:
        raise ValueError(f"terms must be a subset of {TERMS}, got {sorted(unknown)}")
    if hierarchy.ddntk is None and "ddntk" in terms:
        raise ValueError("the hierarchy has no ddNTK: compute it with nk.ntk_hierarchy(..., ddntk=True) "
                         "or pass terms=('dntk',)")
    D, N = hierarchy.ntk.shape
    y = torch.as_tensor(y_train).detach().to("cpu", torch.float64).reshape(-1)
    if len(y) != N:
        raise ValueError(f"y_train has {len(y)} values for {N} training points")
    return flow_in_book_time(hierarchy, y, flow_times(times, learning_rate, N), terms)


def flow_in_book_time(hierarchy: NTKHierarchy, y: torch.Tensor, taus, terms: Sequence[str] = TERMS
                      ) -> dict[str, torch.Tensor]:
    """`nearly_kernel_flow` at the flow times `taus` of ½ Σ with unit rate (validated, float64 y)."""
    D, N = hierarchy.ntk.shape
    shapes = {"dntk": (N, D, N), "ddntk": (N, N, D, N)}
    ntk = hierarchy.ntk.detach().to("cpu", torch.float64)
    dntk, ddntk = (getattr(hierarchy, name).detach().to("cpu", torch.float64) if name in terms
                   else torch.zeros(shapes[name], dtype=torch.float64) for name in TERMS)
    sizes = [D, D, D * N, N * D * N]

    def velocity(_, state):
        z_kernel, z_first, ntk_first, dntk_now = torch.split(torch.from_numpy(state), sizes)
        residual = z_kernel[:N] - y
        return torch.cat([-ntk @ residual,
                          -ntk @ z_first[:N] - ntk_first.reshape(D, N) @ residual,
                          -torch.einsum("bda,b->da", dntk_now.reshape(N, D, N), residual).reshape(-1),
                          -torch.einsum("cbda,c->bda", ddntk, residual).reshape(-1)]).numpy()

    output = hierarchy.output.detach().to("cpu", torch.float64)
    start = torch.cat([output, torch.zeros(D + D * N, dtype=ntk.dtype), dntk.reshape(-1)])
    flow = solve_ivp(velocity, (0.0, taus[-1]), start.numpy(), method="DOP853",
                     rtol=1e-12, atol=1e-14, t_eval=taus)
    device = hierarchy.ntk.device   # results where the hierarchy is, as every ntklab result
    z_kernel, z_first = (torch.from_numpy(values.T).to(device) for values in (flow.y[:D], flow.y[D:2 * D]))
    return {"kernel": z_kernel[:, N:], "nearly_kernel": (z_kernel + z_first)[:, N:]}


def train_gradient_flow(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
                        times: Sequence[float], x_eval: torch.Tensor, *,
                        learning_rate: float = 1.0) -> torch.Tensor:
    """`nk.train_gradient_flow(model, x_train, y_train, times, x_eval)`: the outputs at `x_eval`
    of `model` trained by gradient flow on L = ||f - y||² / (2N) (GD as the step goes to 0; time
    t in steps of size learning_rate, `ntklab.conventions`), i.e. θ̇ = -∇_θ ½ Σ_a (f(x_a) - y_a)² for
    the flow time τ = learning_rate t / N, from its current parameters, which are left unchanged.
    Integrated by scipy's DOP853 (rtol 1e-11, atol 1e-12); gradients on the model's device, the
    integrator's state on the CPU.

    Parameters
    ----------
    model : nn.Module
        One output per input; float64 parameters for tolerances below float32's resolution.
    x_train : Tensor [N, d]
    y_train : Tensor [N]
    times : sequence of float
        Positive, increasing training times in steps of size learning_rate.
    x_eval : Tensor [M, d]
    learning_rate : float
        On L = ||f - y||² / (2N); the book's unit rate on ½ Σ is learning_rate = N.

    Returns
    -------
    Tensor [len(times), M]
        On the model's device.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> model = nk.mlp(1, 32, activation=nk.Tanh()).module(2, seed=0, dtype=torch.float64)
    >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    >>> y = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    >>> fitted = nk.train_gradient_flow(model, x, y, [900.0], x)[0]    # τ = t/3 = 300, λ_min(NTK) ≈ 0.05
    >>> bool((fitted - y).abs().max() < 1e-4)
    True
    """
    reference = next(model.parameters())
    x_train = as_matrix(x_train, "x_train", dtype=reference.dtype, device=reference.device)
    x_eval = as_matrix(x_eval, "x_eval", dtype=reference.dtype, device=reference.device)
    y = torch.as_tensor(y_train, dtype=x_train.dtype, device=x_train.device).reshape(-1)
    taus = flow_times(times, learning_rate, len(x_train))
    _single_output(model, x_train[:1])
    params = _parameters(model)
    names, shapes = list(params), [p.shape for p in params.values()]
    sizes = [p.numel() for p in params.values()]

    def unflatten(vector):
        return {n: c.reshape(s) for n, c, s in zip(names, torch.split(vector, sizes), shapes, strict=True)}

    def loss(vector):
        return 0.5 * (functional_call(model, unflatten(vector), (x_train,))[:, 0] - y).square().sum()

    gradient = grad(loss)

    def on_device(v):
        return torch.from_numpy(v).to(reference.device, reference.dtype)

    start = torch.cat([p.reshape(-1) for p in params.values()])
    flow = solve_ivp(lambda _, v: (-gradient(on_device(v))).cpu().numpy(), (0.0, taus[-1]),
                     start.cpu().numpy(), method="DOP853", rtol=1e-11, atol=1e-12, t_eval=taus)
    with torch.no_grad():
        return torch.stack([functional_call(model, unflatten(on_device(v)), (x_eval,))[:, 0]
                            for v in flow.y.T])   # on the model's device, as every ntklab result
