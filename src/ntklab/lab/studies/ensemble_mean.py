"""Monte Carlo of the trained ensemble (Roberts, Yaida & Hanin 2022, ch. ∞): many finite-width
networks, each trained by the gradient flow of its own parameters, batched over networks.

Each network is a pair (antithetic variates): the network drawn from its seed and its mirror, the
same network with the readout layer's weights and bias negated. The mirror computes -f(x), has the
same NTK, and is as likely under the initialization, so the pair's mean output is an unbiased
sample of E f that cancels exactly every term odd in the initial function (the O(1) noise of
f(x; θ₀), which the trained mean keeps through z(0) - G_t(Ĥ) z(0)).

The flow θ̇ = -(learning_rate / N) ∇_θ ½ ||f(X) - y||² (`ntklab.conventions`) is integrated by the
classical Runge-Kutta method (RK4) in the flow time τ = learning_rate t / N, in equal steps of at
most `max_step` between the requested times, on the parameters of all networks at once
(`torch.func.vmap` of `grad` over `functional_call` on stacked parameters).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import functional_call, grad, jacfwd, jacrev, stack_module_state, vmap

from ..._core.validation import positive, positive_int
from ...arch.serial import Serial
from ...conventions import flow_times
from ...theory.ensemble import kernel_solution

Parameters = dict[str, torch.Tensor]


def antithetic_parameters(arch: Serial, d: int, seeds: Sequence[int], *,
                          dtype: torch.dtype = torch.float64) -> tuple[torch.nn.Module, Parameters]:
    """The networks of `arch` drawn from `seeds` followed by their mirrors (readout negated):
    a stateless copy of the module (on the meta device, for `functional_call`) and the stacked
    parameters [2 len(seeds), ...]."""
    models = [arch.module(d, seed=seed, dtype=dtype) for seed in seeds]
    params, buffers = stack_module_state(models)   # type: ignore[arg-type]
    if buffers:
        raise ValueError("the trained ensemble needs networks without buffers (an MLP of Dense layers)")
    last, layer = list(models[0].named_children())[-1]
    readout = {f"{last}.{name}" for name, _ in layer.named_parameters()}
    if not readout:
        raise ValueError(f"the last layer of {arch} has no parameters to negate; end the network with a Dense")
    mirrored = {name: torch.cat([value, -value if name in readout else value]).detach()
                for name, value in params.items()}
    return copy.deepcopy(models[0]).to("meta"), mirrored


def rk4_flow(gradient: Callable[[Parameters], Parameters], params: Parameters, taus: np.ndarray,
             max_step: float, observe: Callable[[Parameters], torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Integrate θ̇ = -gradient(θ) by RK4 from τ = 0 through the increasing flow times `taus`, in
    equal steps of at most `max_step` between consecutive times; `observe(θ)` at each of them,
    stacked on axis 1, and the number of steps taken."""
    observed, now, steps = [], 0.0, 0
    for target in taus:
        count = math.ceil((target - now) / max_step - 1e-9)
        h = (target - now) / count
        for _ in range(count):
            k1 = gradient(params)
            k2 = gradient({k: v - 0.5 * h * k1[k] for k, v in params.items()})
            k3 = gradient({k: v - 0.5 * h * k2[k] for k, v in params.items()})
            k4 = gradient({k: v - h * k3[k] for k, v in params.items()})
            params = {k: v - h / 6 * (k1[k] + 2 * k2[k] + 2 * k3[k] + k4[k]) for k, v in params.items()}
        steps += count
        now = float(target)
        observed.append(observe(params))
    return torch.stack(observed, 1), steps


@dataclass(frozen=True)
class TrainedPairs:
    """Antithetic pairs trained by gradient flow (`trained_pairs`).

    Attributes
    ----------
    outputs : ndarray [P, T, M]
        Each pair's mean output at the test points and times.
    ntk : ndarray [P, N + M, N]
        Each pair's NTK at initialization between all points and the training points (the same
        for both networks of a pair).
    steps : int
        RK4 steps per network.
    """

    outputs: np.ndarray
    ntk: np.ndarray
    steps: int


def trained_pairs(arch: Serial, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, times,
                  pairs: int, *, learning_rate: float, max_step: float, first_seed: int = 0,
                  batch: int = 256) -> TrainedPairs:
    """Train `pairs` antithetic pairs of single-output networks of `arch` (seeds first_seed, ...)
    by gradient flow on (x_train, y_train): their outputs at the test points at `times` (steps of
    size `learning_rate` on ||f - y||²/(2N), `ntklab.conventions`), with RK4 steps of at most
    `max_step` in flow time τ = learning_rate t / N, `batch` pairs at once."""
    pairs, batch = positive_int(pairs, "pairs"), positive_int(batch, "batch")
    x_train, x_test = (torch.as_tensor(v, dtype=torch.float64) for v in (x_train, x_test))
    y = torch.as_tensor(y_train, dtype=torch.float64).reshape(-1)
    taus = flow_times(times, learning_rate, len(y))
    max_step = positive(max_step, "max_step")
    x = torch.cat([x_train, x_test])
    outputs, ntks, steps = [], [], 0
    for start in range(first_seed, first_seed + pairs, batch):
        seeds = range(start, min(start + batch, first_seed + pairs))
        model, params = antithetic_parameters(arch, x.shape[1], seeds)

        def f(p: Parameters, inputs: torch.Tensor, model=model) -> torch.Tensor:
            return functional_call(model, p, (inputs,)).reshape(-1)

        def loss(p: Parameters) -> torch.Tensor:
            return 0.5 * (f(p, x_train) - y).square().sum()

        jacobian = vmap(jacrev(f), in_dims=(0, None))({k: v[:len(seeds)] for k, v in params.items()}, x)
        ntks.append(torch.stack([torch.einsum("pi...,pj...->pij", j.flatten(2), j[:, :len(y)].flatten(2))
                                 for j in jacobian.values()]).sum(0))
        trained, steps = rk4_flow(vmap(grad(loss)), params, taus, max_step,
                                  lambda p: vmap(f, in_dims=(0, None))(p, x_test))
        outputs.append(0.5 * (trained[:len(seeds)] + trained[len(seeds):]))
    return TrainedPairs(torch.cat(outputs).numpy(), torch.cat(ntks).numpy(), steps)


def kernel_derivative(theta: torch.Tensor, y_train: torch.Tensor, taus) -> torch.Tensor:
    """DG_τ(Θ), the derivative of the frozen-kernel solution G_τ(H) y (`kernel_solution`) in the
    NTK H [N + M, N] at Θ, per flow time: [T, M, N + M, N]."""
    y = torch.as_tensor(y_train, dtype=torch.float64).reshape(-1)
    return torch.stack([jacfwd(lambda ntk, t=float(t): kernel_solution(ntk, y, t))(theta) for t in taus])
