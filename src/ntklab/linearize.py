"""The linearized network (Lee et al. 2019, "Wide neural networks of any depth evolve as
linear models under gradient descent", eq. 5):

    f_lin(x; theta) = f(x; theta_0) + J_theta0(x) (theta - theta_0),

a torch module whose parameters are theta (initialized at theta_0) and whose forward pass is
one `torch.func.jvp` of the original network at theta_0.  Trained by gradient descent on the
MSE it follows exactly the function-space dynamics of its empirical NTK at theta_0, i.e.
`predict.gradient_descent_mse` with that kernel (in the continuous-time limit).
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, jvp


class Linearized(nn.Module):
    """`f_lin(x) = f(x; theta_0) + J(x) (theta - theta_0)` of `model` at its current
    parameters theta_0; `self.parameters()` are theta (and only theta), trainable by any torch
    optimizer.  theta_0 are buffers; the network itself is held unregistered (its own
    parameters are never used), so linearize a model already on its device and dtype."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self._names = [name for name, p in model.named_parameters() if p.requires_grad]
        if not self._names:
            raise ValueError("the model has no parameter with requires_grad=True to linearize in")
        self.__dict__["network"] = copy.deepcopy(model).requires_grad_(False)   # not a submodule
        named = dict(model.named_parameters())
        for i, name in enumerate(self._names):
            self.register_buffer(f"theta0_{i}", named[name].detach().clone())
        self.theta = nn.ParameterList([nn.Parameter(named[name].detach().clone()) for name in self._names])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        primals = tuple(getattr(self, f"theta0_{i}") for i in range(len(self._names)))
        tangents = tuple(p - p0 for p, p0 in zip(self.theta, primals))

        def f(*values):
            return functional_call(self.network, dict(zip(self._names, values)), (x,))
        output, change = jvp(f, primals, tangents)
        return output + change


def linearize(model: nn.Module) -> Linearized:
    """`nk.linearize(model)`: the linearized network of `model` at its current parameters."""
    return Linearized(model)
