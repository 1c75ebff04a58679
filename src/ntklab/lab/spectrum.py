"""The largest eigenvalue of a tangent kernel, and the gradient-descent step it allows.

For gradient descent on L = 1/2 sum_i ||f(x_i) - y_i||^2 the linearized dynamics
f_{t+1} - y = (I - eta Theta)(f_t - y) are stable for eta < 2 / lambda_max(Theta)
(lecture 21; Lee et al. 2019); ntklab's experiments take eta = 1 / lambda_max, the
step that damps the top eigendirection in one step.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, jvp, vjp

from .._core.validation import positive_int
from ..kernels.model_inputs import model_input, select_parameters, takes_indices


def largest_ntk_eigenvalue(model: nn.Module, x, *, params=None, iterations: int = 100,
                           rtol: float = 1e-3, seed: int = 0) -> float:
    """lambda_max of the empirical NTK over all outputs of `x`, Theta = J J^T
    ([N*O x N*O], J the Jacobian of the outputs in the parameters), by power
    iteration on Theta v = J (J^T v): one vjp and one jvp per step, no kernel
    matrix formed."""
    chosen = select_parameters(model, params)
    reference = next(iter(chosen.values()))
    x = model_input(x, "x", reference, indices=takes_indices(model))
    names, primals = list(chosen), tuple(p.detach() for p in chosen.values())

    def outputs(*values):
        return functional_call(model, dict(zip(names, values, strict=True)), (x,))

    out, pullback = vjp(outputs, *primals)[:2]
    generator = torch.Generator(device=out.device).manual_seed(seed)
    v = torch.randn(out.shape, generator=generator, dtype=out.dtype, device=out.device)
    v /= v.norm()
    estimate = 0.0
    for _ in range(positive_int(iterations, "iterations")):
        theta_v = jvp(outputs, primals, pullback(v))[1]
        previous, estimate = estimate, float((v * theta_v).sum())  # Rayleigh quotient
        v = theta_v / theta_v.norm()
        if abs(estimate - previous) <= rtol * abs(estimate):
            break
    return estimate


def inverse_largest_eigenvalue(kernel: torch.Tensor | nn.Module, x=None, **power_iteration) -> float:
    """The step eta = 1 / lambda_max: of a kernel matrix (symmetric, exact eigenvalue), or
    of the empirical NTK of a torch model on `x` (power iteration, `largest_ntk_eigenvalue`)."""
    if isinstance(kernel, nn.Module):
        if x is None:
            raise ValueError("inverse_largest_eigenvalue(model, x): give the inputs x of the kernel")
        return 1.0 / largest_ntk_eigenvalue(kernel, x, **power_iteration)
    largest = float(torch.linalg.eigvalsh(kernel)[-1])
    if not largest > 0:
        raise ValueError(f"the kernel's largest eigenvalue is {largest:.3g}; a step 1/lambda_max "
                         f"needs a kernel with a positive eigenvalue")
    return 1.0 / largest
