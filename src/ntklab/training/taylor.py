"""Taylor expansions of a network in its parameters around theta_0, as torch modules.

    f_lin(x; theta) = f(x; theta_0) + J_theta0(x) (theta - theta_0)          (`linearize`)

(Lee et al. 2019, "Wide neural networks of any depth evolve as linear models under gradient
descent", eq. 5): trained by gradient descent on the MSE it follows exactly the function-space
dynamics of its empirical NTK at theta_0, i.e. `predict.gradient_descent_mse` with that kernel
in the continuous-time limit.  `taylor_expand(model, degree)` keeps the terms up to
`degree`, sum_k (1/k!) d^k/ds^k f(x; theta_0 + s delta) at s = 0 with delta = theta - theta_0
(degree 2 is the quadratic model of Dyer & Gur-Ari 2019 and Roberts, Yaida & Hanin ch. 11),
each derivative a nested `torch.func.jvp` along the one direction delta.
"""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call, jvp

from .._core.validation import positive_int
from ..kernels.model_inputs import (refuse_batch_statistics, rng_states, select_parameters,
                                   set_rng_states)


class TaylorExpansion(nn.Module):
    """`sum_{k <= degree} (1/k!) d^k/ds^k f(x; theta_0 + s (theta - theta_0))|_{s=0}` of `model`
    at its current parameters theta_0; `self.parameters()` are theta (and only theta),
    trainable by any torch optimizer.

    A copy of the network is the submodule `network`, with all its parameters turned into
    buffers: there they hold theta_0 (`self.theta0`) and the parameters kept fixed, beside the
    network's own buffers (e.g. BatchNorm running statistics).  So `state_dict()` /
    `load_state_dict()` save and restore theta, theta_0 and the buffers; `.to(dtype or device)`
    converts all of them; and `train()` / `eval()` reach the network's modules (Dropout is off
    in eval mode, where the expansion is a deterministic function).  BatchNorm in train mode is
    refused, as by `empirical_ntk`: batch statistics are updated in place, which the
    forward-mode derivatives cannot do.

    Parameters
    ----------
    model : nn.Module
    degree : int
    params : sequence of str, optional
        As `taylor_expand`.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> model = nk.mlp(1, 16, activation=nk.Tanh()).module(2, seed=0, dtype=torch.float64)
    >>> quadratic = nk.taylor_expand(model, 2)
    >>> x = torch.randn(3, 2, dtype=torch.float64)
    >>> bool(torch.allclose(quadratic(x), model(x)))
    True
    """

    def __init__(self, model: nn.Module, degree: int, params: Sequence[str] | None = None):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.degree = positive_int(degree, "degree")
        chosen = select_parameters(model, None if params is None else list(params))
        refuse_batch_statistics(model)
        self._names = list(chosen)
        # every name of each chosen tensor (tied weights), so all its uses see theta
        every_name = list(model.named_parameters(remove_duplicate=False))
        self._aliases = [[alias for alias, q in every_name if q is chosen[name]] for name in self._names]
        self.network = _with_parameters_as_buffers(copy.deepcopy(model))
        self.theta = nn.ParameterList([nn.Parameter(chosen[name].detach().clone()) for name in self._names])
        self.training = model.training

    def get_extra_state(self) -> dict:
        """The parameters' names and the degree, saved with `state_dict` (theta is keyed by
        position: `theta.0`, `theta.1`, ...)."""
        return {"parameters": list(self._names), "degree": self.degree}

    def set_extra_state(self, state: dict) -> None:
        """Refuse a state dict of another expansion (other parameters, another order or degree),
        whose positional theta would otherwise load without error into the wrong tensors."""
        mine = self.get_extra_state()
        if state != mine:
            raise ValueError(f"this state dict is of an expansion over {state.get('parameters')} "
                             f"(degree {state.get('degree')}), not {mine['parameters']} (degree "
                             f"{mine['degree']}); build the expansion with the same params and degree")

    @property
    def theta0(self) -> tuple[torch.Tensor, ...]:
        """The expansion point theta_0, in the order of `self.parameters()`."""
        return tuple(self.network.get_buffer(name) for name in self._names)

    def _at(self, values, x: torch.Tensor) -> torch.Tensor:
        """f(x; theta = values)."""
        named = {alias: v for aliases, v in zip(self._aliases, values, strict=True) for alias in aliases}
        return functional_call(self.network, named, (x,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The Taylor model's output at `x`."""
        refuse_batch_statistics(self.network)
        theta0 = self.theta0
        delta = tuple(p - p0 for p, p0 in zip(self.theta, theta0, strict=True))
        if self.degree == 1:   # one jvp in parameter space (no scalar s needed)
            # without has_aux, jvp returns (output, tangent); its annotation also allows an aux item
            output, change = jvp(lambda *values: self._at(values, x), theta0, delta)[:2]
            return output + change

        def along(s: torch.Tensor) -> torch.Tensor:   # f(x; theta_0 + s delta)
            return self._at(tuple(p0 + s * d for p0, d in zip(theta0, delta, strict=True)), x)

        zero = torch.zeros((), dtype=theta0[0].dtype, device=theta0[0].device)
        one = torch.ones_like(zero)
        replay = _SameRandomDraws(x.device)   # every term sees one network: one Dropout mask
        derivative, total = along, replay(along, zero)
        for k in range(1, self.degree + 1):
            derivative = _derivative(derivative, one)
            total = total + replay(derivative, zero) / math.factorial(k)
        replay.finish()
        return total


class _SameRandomDraws:
    """Calls that all start from the random state of the first one (`rng_states`: the CPU
    generator's and the device's), so that a network that draws random numbers (Dropout in
    train mode) is the same function in each term of a Taylor polynomial; `finish` leaves
    the state as one forward would."""

    def __init__(self, device: torch.device):
        self.device = device
        self.start = rng_states(device)
        self.after: list[torch.Tensor] | None = None

    def __call__(self, fn, *args):
        set_rng_states(self.device, self.start)
        value = fn(*args)
        if self.after is None:
            self.after = rng_states(self.device)
        return value

    def finish(self) -> None:
        if self.after is not None:   # nothing was replayed: nothing was drawn
            set_rng_states(self.device, self.after)


def _with_parameters_as_buffers(network: nn.Module) -> nn.Module:
    """`network` with each parameter replaced by a buffer of the same name and value (a
    tensor shared by several modules stays one tensor)."""
    buffers: dict[int, torch.Tensor] = {}
    for module in network.modules():
        for name, parameter in list(module._parameters.items()):
            if parameter is not None:
                del module._parameters[name]
                module.register_buffer(name, buffers.setdefault(id(parameter), parameter.detach()))
    return network


def _derivative(fn, one: torch.Tensor):
    """s -> d fn / ds (s), by forward mode."""
    return lambda s: jvp(fn, (s,), (one,))[1]


class Linearized(TaylorExpansion):
    """`f_lin(x) = f(x; theta_0) + J(x) (theta - theta_0)`: the degree-1 Taylor expansion.

    Parameters
    ----------
    model : nn.Module
    params : sequence of str, optional
        As `linearize`.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> model = nk.mlp(1, 16).module(2, seed=0, dtype=torch.float64)
    >>> lin = nk.linearize(model)
    >>> count = lambda module: sum(p.numel() for p in module.parameters())
    >>> isinstance(lin, nk.Linearized), count(lin) == count(model)
    (True, True)
    """

    def __init__(self, model: nn.Module, params: Sequence[str] | None = None):
        super().__init__(model, 1, params)


def linearize(model: nn.Module, params: Sequence[str] | None = None) -> Linearized:
    """`nk.linearize(model)`: the linearized network of `model` at its current parameters
    (in all parameters with requires_grad, or the named `params`; the others stay fixed).

    Parameters
    ----------
    model : nn.Module
    params : sequence of str, optional
        The parameters to linearize in (default: all that require grad).

    Returns
    -------
    Linearized

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> model = nk.mlp(1, 32).module(3, seed=0, dtype=torch.float64)
    >>> lin = nk.linearize(model)          # f(x; w0) + J0 (w - w0), a module of its own
    >>> x = torch.randn(4, 3, dtype=torch.float64)
    >>> bool(torch.allclose(lin(x), model(x)))                   # equal at w = w0
    True
    """
    return Linearized(model, params)


def taylor_expand(model: nn.Module, degree: int, params: Sequence[str] | None = None) -> TaylorExpansion:
    """`nk.taylor_expand(model, degree)`: the network's Taylor polynomial in its parameters.

    Parameters
    ----------
    model : nn.Module
    degree : int
        The polynomial's degree in the parameters (1: `linearize`).
    params : sequence of str, optional

    Returns
    -------
    TaylorExpansion

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> model = nk.mlp(1, 32, activation=nk.Tanh()).module(2, seed=0, dtype=torch.float64)
    >>> quadratic = nk.taylor_expand(model, 2)
    >>> x = torch.randn(3, 2, dtype=torch.float64)
    >>> bool(torch.allclose(quadratic(x), model(x)))      # equal at the expansion point
    True
    """
    return TaylorExpansion(model, degree, params)
