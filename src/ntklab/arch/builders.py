"""Architecture builders for the shapes the experiments and estimators use."""
from __future__ import annotations

from .._core.validation import positive_int
from .activations import Relu
from .branching import Identity
from .dense import Dense
from .layer import Layer
from .serial import Serial, serial


class _Same:
    """The default of the readout's standard deviations: the hidden layers'."""


_SAME = _Same()


def mlp(depth: int, width: int, *, W_std: float = 1.0, b_std: float | None = None,
        activation: Layer | None = None, out: int = 1, readout_W_std: float | _Same = _SAME,
        readout_b_std: float | None | _Same = _SAME, parameterization: str = "ntk") -> Serial:
    """`depth` hidden layers `Dense(width, W_std, b_std)` + `activation` (default ReLU),
    then a readout `Dense(out, readout_W_std, readout_b_std)` (default: the hidden
    layers' W_std and b_std).  The infinite-width kernels do not depend on `width`.

    Parameters
    ----------
    depth : int
        Number of hidden layers (>= 1).
    width : int
        Their width (the finite network's; the kernels do not depend on it).
    W_std, b_std : float, float or None
        Weight and bias standard deviations of the hidden layers (`b_std=None`: no bias).
    activation : Layer, optional
        The nonlinearity after each hidden layer (default `Relu()`).
    out : int
        Number of outputs.
    readout_W_std, readout_b_std : float, float or None
        The readout's standard deviations (default: the hidden layers').
    parameterization : {"ntk", "standard"}

    Returns
    -------
    Serial

    Examples
    --------
    >>> import ntklab as nk
    >>> nk.mlp(2, 128, W_std=1.5, b_std=0.1)  # doctest: +NORMALIZE_WHITESPACE
    serial(Dense(128, W_std=1.5, b_std=0.1), Relu(), Dense(128, W_std=1.5, b_std=0.1), Relu(),
           Dense(1, W_std=1.5, b_std=0.1))
    """
    activation = Relu() if activation is None else activation
    hidden = [Dense(positive_int(width, "width"), W_std, b_std, parameterization)
              for _ in range(positive_int(depth, "depth"))]
    readout = Dense(positive_int(out, "out"), W_std if isinstance(readout_W_std, _Same) else readout_W_std,
                    b_std if isinstance(readout_b_std, _Same) else readout_b_std, parameterization)
    return serial(*(layer for dense in hidden for layer in (dense, activation)), readout)


def repeat(layer: Layer, n: int) -> Serial:
    """`layer` composed `n` times, each copy with its own weights (neural-tangents'
    `stax.repeat`, equivalent to `serial(*([layer] * n))`; `n=0` is the identity).

    Parameters
    ----------
    layer : Layer
        The block to repeat (e.g. `nk.serial(nk.Dense(512), nk.Relu())`).
    n : int
        How many times (>= 0).

    Returns
    -------
    Serial

    Examples
    --------
    >>> import ntklab as nk
    >>> nk.repeat(nk.serial(nk.Dense(64), nk.Relu()), 2)
    serial(Dense(64), Relu(), Dense(64), Relu())
    """
    if not isinstance(layer, Layer):
        raise ValueError(f"repeat() layer must be an ntklab layer such as nk.Dense(512), got {layer!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"repeat() n must be a non-negative integer, got {n!r}")
    return serial(*([layer] * n)) if n else serial(Identity())
