"""Training a network with its tangent kernel tracked (lectures 20-22; Lee et al. 2019).

`train` runs any torch optimizer (default: plain gradient descent, `torch.optim.SGD` at
`learning_rate`) on any loss (default: ntklab's one convention, the mean squared loss
L = ||f(X) - Y||^2 / (2 |Y|)), full batch, on seeded random mini-batches (`batch_size`), or
on the batches of any iterable such as a `DataLoader` (`batches`, cycled).  For a mini-batch
the loss is the same mean over the batch (an unbiased estimate of L).  At the steps in
`record` it stores train/test loss and error, the empirical NTK
H_t(x, x') = <grad_w f(w_t; x), grad_w f(w_t; x')> on a probe set, the relative kernel change
||H_t - H_0||_F / ||H_0||_F and the relative weight change ||w_t - w_0|| / ||w_0||.

The linearized network f_lin(x; w) = f(x; w_0) + J_0(x) (w - w_0) is trained alongside on
the same batches.  With plain gradient descent on the MSE (the defaults) its gradient J_0^T r is
constant in w, so its outputs evolve exactly as
    f_lin(x) <- f_lin(x) - (eta / |Y_B|) Theta_0(x, X_B) (f_lin(X_B) - y_B)
with the empirical NTK at initialization (Lee et al. 2019, eq. 8-9): that is what is computed
(no second network).  With another optimizer, loss or batch source it is an `nk.linearize`
module trained by a second optimizer of the same kind.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .._core.validation import as_targets, positive, positive_int, record_steps
from ..conventions import mean_squared_loss
from ..kernels.empirical import empirical_ntk
from ..kernels.model_inputs import model_input, probe_outputs, select_parameters, takes_indices
from .taylor import TaylorExpansion

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OptimizerFactory = Callable[[list], torch.optim.Optimizer]


@dataclass
class TrainingHistory:
    """What `train` recorded; `rows` is one dict of scalars per recorded step.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> model = nk.mlp(1, 32).module(2, seed=0)
    >>> history = nk.train(model, torch.randn(8, 2), torch.randn(8, 1), steps=10, learning_rate=0.1,
    ...                    record=[0, 10], progress=False)
    >>> history.steps, history.column("train_loss").shape
    ([0, 10], (2,))
    """

    steps: list[int]
    rows: list[dict[str, float]]
    kernels: list[torch.Tensor]            # empirical NTK (trace mode) on the probe set
    test_predictions: list[torch.Tensor]   # f(w_t; x_test) [N_test, O]
    linear_test_predictions: list[torch.Tensor] = field(default_factory=list)

    def column(self, name: str) -> np.ndarray:
        """One recorded quantity over the recorded steps, as a float array."""
        return np.array([row[name] for row in self.rows], dtype=float)


def classification_error(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Sign disagreement for one output, arg-max disagreement for several."""
    if prediction.shape[1] == 1:
        return float((torch.sign(prediction) != torch.sign(target)).double().mean())
    return float((prediction.argmax(1) != target.argmax(1)).double().mean())


def _batches(batches: Iterable | None, x_train, y, batch: int, generator, reference, indices: bool):
    """Endless (indices or None, x, y) batches: from `batches` (cycled, converted like the
    training data; no indices), or all the data (full batch), or seeded random subsets of
    `batch` samples."""
    if batches is not None:
        for xb, yb in itertools.cycle(batches):
            xb = model_input(xb, "a batch's x", reference, indices=indices)
            yield None, xb, as_targets(yb, len(xb), "a batch's y", reference.dtype, reference.device)[0]
    n = len(x_train)
    while True:
        index = (torch.arange(n) if batch == n else
                 torch.randperm(n, generator=generator)[:batch]).to(x_train.device)
        yield index, x_train[index], y[index]


def train(model: nn.Module, x_train, y_train, *, steps: int, learning_rate: float | None = None,
          optimizer: OptimizerFactory | None = None, loss: Loss | None = None,
          batch_size: int | None = None, batches: Iterable | None = None, x_test=None, y_test=None,
          x_probe=None, record: int | Sequence[int] = 20, params: Sequence[str] | None = None,
          track_kernel: bool = True, linearized: bool = True, seed: int = 0,
          max_memory: int | str | None = None, progress: bool | None = None) -> TrainingHistory:
    """Train `model` in place for `steps` optimizer steps and record the kernel drift.

    `optimizer`: a function `parameters -> torch.optim.Optimizer`, e.g.
    `lambda p: torch.optim.Adam(p, lr=1e-3)` (a factory, so that the linearized network gets
    its own optimizer of the same kind); default `torch.optim.SGD(p, lr=learning_rate)`, i.e.
    gradient descent with ntklab's learning-rate convention.  `loss(f, y)`: a scalar torch
    function (default `mean_squared_loss`, ||f - y||^2 / (2 |y|)).  `batches`: any iterable of
    (x, y) batches (e.g. a `DataLoader`), cycled; else `batch_size` random samples per step
    (seeded), or the whole training set.  `record`: a count of geometrically spaced steps, or a
    list of steps (as in `predict.gradient_descent_alpha`).  `x_probe` (default: up to 64
    training points) is where the empirical NTK is tracked; `params` restricts training (and
    the kernel, and the linearization) to named parameters.
    The rows hold: step, train_loss (the loss), train_mse, test_mse, train_error, test_error,
    kernel_change, weight_change, and with `linearized`, lin_train_loss, lin_test_mse and
    lin_distance = ||f - f_lin|| / ||f_lin|| on x_test.

    Parameters
    ----------
    model : nn.Module
        Trained in place.
    x_train, y_train : tensor or array
        Training inputs and targets `[N, O]`.
    steps : int
        Optimizer steps.
    learning_rate : float, optional
        The step on ||f - y||^2 / (2 |y|) for the default optimizer.
    optimizer, loss, batch_size, batches, record, params
        See above.
    x_test, y_test, x_probe : optional
        Evaluation sets; the kernel is tracked on `x_probe`.
    track_kernel, linearized : bool
        Record the kernel drift; train the linearization alongside.
    seed : int
    max_memory, progress
        As `empirical_ntk`.

    Returns
    -------
    TrainingHistory

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> model = nk.mlp(1, 256).module(3, seed=0)
    >>> x, y = torch.randn(20, 3), torch.randn(20, 1)
    >>> history = nk.train(model, x, y, steps=50, learning_rate=0.5, record=5, progress=False)
    >>> history.steps
    [0, 1, 3, 7, 19, 50]
    >>> history.rows[-1]["train_loss"] < history.rows[0]["train_loss"]
    True
    """
    steps = int(steps)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    optimizer, eta = _optimizer_factory(optimizer, learning_rate)
    loss_fn = mean_squared_loss if loss is None else loss
    if not callable(loss_fn):
        raise ValueError(f"loss must be a function loss(f, y) returning a scalar, got {loss!r}")
    chosen = select_parameters(model, params)
    data = _training_data(model, chosen, x_train, y_train, x_test, y_test, x_probe, batch_size, loss_fn)
    recorders: list = [_FunctionRecorder(model, chosen, data, loss_fn)]
    if track_kernel:
        recorders.append(_KernelRecorder(model, chosen, data.x_probe, max_memory))
    tangent: _Linearization | None = None
    if linearized and eta is not None and loss is None and batches is None:
        tangent = _FunctionSpaceLinearization(model, chosen, data, eta, max_memory)
    elif linearized:
        tangent = _TaylorLinearization(model, chosen, data, loss_fn, optimizer)
    recorders += [tangent] if tangent is not None else []
    opt = optimizer(list(chosen.values()))
    record_at = set(record_steps(record, steps))
    history = TrainingHistory([], [], [], [])
    stream = _batches(batches, data.x_train, data.y, data.batch, torch.Generator().manual_seed(seed),
                      data.reference, data.indices)
    bar = tqdm(range(steps + 1), desc="train", leave=False,
               disable=(steps < 200) if progress is None else not progress)
    for step in bar:
        if step in record_at:
            _snapshot(history, step, recorders)
        if step == steps:
            break
        index, xb, yb = next(stream)
        _descend(model, opt, loss_fn, xb, yb)
        if tangent is not None:
            tangent.step(index, xb, yb)
    return history


def _optimizer_factory(optimizer, learning_rate) -> tuple[OptimizerFactory, float | None]:
    """The optimizer factory, and the learning rate when it is plain gradient descent (default)."""
    if optimizer is None:
        if learning_rate is None:
            raise ValueError("give learning_rate (plain gradient descent) or an optimizer factory, "
                             "e.g. optimizer=lambda p: torch.optim.Adam(p, lr=1e-3)")
        eta = positive(learning_rate, "learning_rate")
        return (lambda parameters: torch.optim.SGD(parameters, lr=eta)), eta
    if isinstance(optimizer, torch.optim.Optimizer) or not callable(optimizer):
        raise ValueError("optimizer must be a function parameters -> torch.optim.Optimizer, e.g. "
                         "optimizer=lambda p: torch.optim.Adam(p, lr=1e-3), so that the linearized "
                         "network can get an optimizer of its own")
    return optimizer, None


@dataclass
class _TrainingData:
    """The validated training, test and probe sets, in the model's dtype and device."""

    x_train: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor | None
    y_test: torch.Tensor | None
    x_probe: torch.Tensor
    batch: int
    reference: torch.Tensor
    indices: bool


def _training_data(model, chosen, x_train, y_train, x_test, y_test, x_probe, batch_size, loss_fn):
    reference = next(iter(chosen.values()))
    indices = takes_indices(model)
    x_train = model_input(x_train, "x_train", reference, indices=indices)
    y, _ = as_targets(y_train, len(x_train), "y_train", reference.dtype, reference.device)
    n = len(x_train)
    y_te = None
    if x_test is not None:
        x_test = model_input(x_test, "x_test", reference, indices=indices)
        if x_test.shape[1:] != x_train.shape[1:]:
            raise ValueError(f"x_test must have samples of shape {tuple(x_train.shape[1:])} like x_train, "
                             f"got {tuple(x_test.shape)}")
        if y_test is not None:
            y_te = as_targets(y_test, len(x_test), "y_test", reference.dtype, reference.device)[0]
    batch = n if batch_size is None else positive_int(batch_size, "batch_size")
    if batch > n:
        raise ValueError(f"batch_size={batch} exceeds the {n} training samples")
    x_probe = (x_train[:min(n, 64)] if x_probe is None
               else model_input(x_probe, "x_probe", reference, indices=indices))
    with torch.no_grad():
        f0_train = probe_outputs(model, x_train, "x_train", deterministic=False)
        if f0_train.shape[1] != y.shape[1]:
            raise ValueError(f"the model has {f0_train.shape[1]} outputs but y_train has "
                             f"{y.shape[1]} columns")
    value = loss_fn(f0_train, y)
    if not (isinstance(value, torch.Tensor) and value.ndim == 0):
        raise ValueError("loss(f, y) must return a scalar tensor")
    return _TrainingData(x_train, y, x_test, y_te, x_probe, batch, reference, indices)


def _outputs(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return net(x).reshape(len(x), -1)


def _descend(net: nn.Module, opt: torch.optim.Optimizer, loss_fn: Loss, xb, yb) -> None:
    """One optimizer step on the loss of a batch."""
    net.zero_grad(set_to_none=True)
    loss_fn(_outputs(net, xb), yb).backward()
    opt.step()


def _snapshot(history: TrainingHistory, step: int, recorders) -> None:
    """One recorded row: each recorder adds its columns (and tensors to the history)."""
    row: dict[str, float] = {"step": step}
    with torch.no_grad():
        f_test = None
        for recorder in recorders:
            f_test = recorder.record(row, history, f_test)
    history.steps.append(step)
    history.rows.append(row)
    if not math.isfinite(row["train_loss"]):
        raise FloatingPointError(f"training diverged at step {step} (loss is not finite); "
                                 f"lower the learning rate")


class _FunctionRecorder:
    """train_loss, train_mse, train_error, test_mse, test_error and weight_change."""

    def __init__(self, model, chosen, data: _TrainingData, loss_fn: Loss):
        self.model, self.chosen, self.data, self.loss_fn = model, chosen, data, loss_fn
        self.w0 = {name: p.detach().clone() for name, p in chosen.items()}
        self.w0_norm = math.sqrt(sum(float(p.square().sum()) for p in self.w0.values()))

    def record(self, row, history, f_test):
        data = self.data
        f_train = _outputs(self.model, data.x_train)
        row.update(train_loss=float(self.loss_fn(f_train, data.y)),
                   train_mse=float((f_train - data.y).square().mean()),
                   train_error=classification_error(f_train, data.y))
        if data.x_test is not None:
            f_test = _outputs(self.model, data.x_test)
            history.test_predictions.append(f_test.clone())
            if data.y_test is not None:
                row["test_mse"] = float((f_test - data.y_test).square().mean())
                row["test_error"] = classification_error(f_test, data.y_test)
        row["weight_change"] = math.sqrt(sum(float((p - self.w0[name]).square().sum())
                                             for name, p in self.chosen.items())) / self.w0_norm
        return f_test


class _KernelRecorder:
    """kernel_change = ||H_t - H_0||_F / ||H_0||_F of the empirical NTK (trace) on the probe set."""

    def __init__(self, model, chosen, x_probe, max_memory):
        self.kernel = lambda: empirical_ntk(model, x_probe, mode="trace", params=list(chosen),
                                            max_memory=max_memory, progress=False)
        self.h0 = self.kernel()

    def record(self, row, history, f_test):
        with torch.enable_grad():
            h = self.kernel()
        history.kernels.append(h)
        row["kernel_change"] = float((h - self.h0).norm() / self.h0.norm())
        return f_test


class _Linearization:
    """The linearized network trained alongside: lin_train_loss, lin_test_mse, lin_distance."""

    def __init__(self, data: _TrainingData, loss_fn: Loss):
        self.data, self.loss_fn = data, loss_fn

    def outputs(self, x_name: str) -> torch.Tensor:
        """f_lin on the training (`x_name="train"`) or test inputs."""
        raise NotImplementedError

    def step(self, index: torch.Tensor | None, xb: torch.Tensor, yb: torch.Tensor) -> None:
        """One training step of the linearized network on a batch (`index` into x_train, if any)."""
        raise NotImplementedError

    def record(self, row, history, f_test):
        data = self.data
        row["lin_train_loss"] = float(self.loss_fn(self.outputs("train"), data.y))
        if data.x_test is not None:
            lin_test = self.outputs("test")
            history.linear_test_predictions.append(lin_test.clone())
            row["lin_distance"] = float((f_test - lin_test).norm() / lin_test.norm().clamp_min(1e-300))
            if data.y_test is not None:
                row["lin_test_mse"] = float((lin_test - data.y_test).square().mean())
        return f_test


class _FunctionSpaceLinearization(_Linearization):
    """Plain gradient descent on the MSE: f_lin <- f_lin - (eta/|Y_B|) Theta_0(., X_B) r_B, exactly."""

    def __init__(self, model, chosen, data: _TrainingData, eta: float, max_memory):
        super().__init__(data, mean_squared_loss)
        x_all = data.x_train if data.x_test is None else torch.cat([data.x_train, data.x_test])
        self.theta0 = empirical_ntk(model, x_all, data.x_train, mode="full", params=list(chosen),
                                    max_memory=max_memory, progress=False)      # [N_all, N, O, O]
        with torch.no_grad():
            self.values = _outputs(model, x_all)
        self.eta = eta

    def outputs(self, x_name):
        n = len(self.data.x_train)
        return self.values[:n] if x_name == "train" else self.values[n:]

    def step(self, index, xb, yb):
        with torch.no_grad():
            residual = self.values[index] - yb                                          # [B, O]
            self.values -= self.eta / residual.numel() * torch.einsum("ijab,jb->ia", self.theta0[:, index],
                                                                      residual)


class _TaylorLinearization(_Linearization):
    """Any optimizer, loss or batches: an `nk.linearize` module trained by its own optimizer."""

    def __init__(self, model, chosen, data: _TrainingData, loss_fn: Loss, optimizer: OptimizerFactory):
        super().__init__(data, loss_fn)
        self.network = TaylorExpansion(model, 1, params=list(chosen))
        self.optimizer = optimizer(list(self.network.parameters()))

    def outputs(self, x_name):
        return _outputs(self.network, self.data.x_train if x_name == "train" else self.data.x_test)

    def step(self, index, xb, yb):
        _descend(self.network, self.optimizer, self.loss_fn, xb, yb)
