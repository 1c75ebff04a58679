"""`serial(*layers)`: an architecture described once, giving both a finite
torch network (`.module`) and its infinite-width kernels (`.kernel`)."""
from __future__ import annotations

import copy
import functools
import math
from contextlib import contextmanager
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .._core.validation import (as_inputs, check_result_fits, check_same_features, input_dtype,
                           parse_memory, positive_int, resolve_device)
from .._core.tiling import tiled_pairs
from .layer import ArchitectureError, Layer
from .numerics import in_float_range, out_of_range_message
from .state import Kernel, KernelState

GETS = ("nngp", "ntk")
CPU = torch.device("cpu")
MAX_BLOCK = 512           # rows of a block of pairs (vectors: 512 x 512 pairs)
STATE_COPIES = 8          # live tensors of a block's size during a layer map (NNGP, NTK, temporaries)
MIN_CPU_PAIRS = 9          # at least 3 x 3 pairs: an off-diagonal block also maps its inputs' own
                            # states (var1, var2: 2/b of the work for b x b pairs); measured 9-40%
                            # faster than 2 x 2 for all-pixel-pairs CNNs on 16x16 and 32x32 images
CPU_TENSOR_BYTES = 2 ** 21  # on CPU, one state tensor of a block stays cache-sized: the maps are
                            # memory-bound (measured fastest at 1-4 MiB on a 2-core EPYC, 1 MiB L2)


def canonical_get(get: str | Sequence[str] | None) -> tuple[str, ...]:
    """`None` -> ("nngp", "ntk"); a name or a sequence of names -> a tuple."""
    names = GETS if get is None else (get,) if isinstance(get, str) else tuple(get)
    for name in names:
        if name not in GETS:
            raise ValueError(f"get must be 'nngp', 'ntk' or a tuple of them, got {get!r}")
    return names


class SymmetricModule(nn.Module):
    """f(x) = (g(x; theta_1) - g(x; theta_2)) / sqrt(2) with theta_2 = theta_1 at
    initialization: f(x; theta_0) = 0 exactly, by mirrored units (the
    `a_j = -a_{m-j}`, `w_j = w_{m-j}` initialization of Damian, Lee &
    Soltanolkotabi 2022, applied to whole copies so that it also holds for deep
    nets).  Its NTK at initialization equals that of g, since the two copies
    have separate parameters: H_f = (H_g1 + H_g2) / 2 = H_g."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.first, self.second = net, copy.deepcopy(net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.first(x) - self.second(x)) / math.sqrt(2.0)


@contextmanager
def located(container: "Container", position: int, layer: Layer):
    """Re-raise a ValueError from `layer` naming its position in `container` (once: the
    innermost container names it)."""
    try:
        yield
    except ArchitectureError:
        raise
    except ValueError as err:
        message = str(err)
        named = message if message.startswith(layer.label) else f"{layer.label}: {message}"
        raise ArchitectureError(f"{container.name}(...) layer {position}, {named}") from err


def check_branching(layer: Layer, state_or_shape) -> None:
    """A layer that takes branches gets a list (from FanOut); any other layer gets one input."""
    branches = isinstance(state_or_shape, list)
    if branches and not layer.takes_branches:
        raise ValueError(f"it gets {len(state_or_shape)} branches (from FanOut); follow FanOut(n) "
                         f"with nk.parallel(...) of n layers and merge the branches with "
                         f"nk.FanInSum(), nk.FanInConcat() or nk.FanInProd() before this layer")
    if not branches and layer.takes_branches:
        raise ValueError("it needs branches: put nk.FanOut(n) before it")


def check_merged(state_or_shape) -> None:
    """The architecture's output is one representation, not the branches of a FanOut."""
    if isinstance(state_or_shape, list):
        raise ValueError(f"the architecture ends with {len(state_or_shape)} branches (from FanOut); "
                         f"merge them with nk.FanInSum() or nk.FanInConcat()")


class Container(Layer[Any, Any]):
    """Layers made of layers (`serial`, `parallel`): requirements are the union of theirs."""

    name = "serial"

    def __init__(self, *layers: Layer):
        flat: list[Layer] = []
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise ValueError(f"{self.name}() argument {i} must be an ntklab layer such as "
                                 f"nk.Dense(512) or nk.Relu(), got {layer!r}")
            flat.extend(layer.layers if isinstance(self, Serial) and isinstance(layer, Serial) else [layer])
        if not flat:
            raise ValueError(f"{self.name}() needs at least one layer")
        self.layers: tuple[Layer, ...] = tuple(flat)
        # requirements: the union of the layers' (declared once, as each layer's class attributes)
        self.takes_images = any(layer.takes_images for layer in self.layers)
        self.takes_sequences = any(layer.takes_sequences for layer in self.layers)
        self.needs_all_pixel_pairs = any(layer.needs_all_pixel_pairs for layer in self.layers)
        self.quadrature_points = max(layer.quadrature_points for layer in self.layers)
        self.position_growth = math.prod(layer.position_growth for layer in self.layers)

    def __repr__(self):
        return f"{self.name}(" + ", ".join(map(repr, self.layers)) + ")"

    @property
    def label(self) -> str:
        return f"{self.name}(...)"

    @property
    def identity(self) -> str | None:
        parts = [part for layer in self.layers if (part := layer.identity) is not None]
        return f"{self.name}(" + ", ".join(parts) + ")" if len(parts) == len(self.layers) else None

    def hyperparameter_tensors(self) -> list[torch.Tensor]:
        return [t for layer in self.layers for t in layer.hyperparameter_tensors()]



class Serial(Container):
    """A sequence of layers (neural-tangents' `stax.serial`).

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> net = nk.serial(nk.Dense(16), nk.Relu(), nk.Dense(1))
    >>> isinstance(net, nk.Serial), len(net.layers)
    (True, 3)
    >>> nk.serial(net, nk.Relu(), nk.Dense(1))     # nested descriptions stay one network
    serial(Dense(16), Relu(), Dense(1), Relu(), Dense(1))
    """

    # -- finite network ------------------------------------------------------

    def build(self, in_shape, generator, dtype):
        modules = []
        for i, layer in enumerate(self.layers):
            with located(self, i, layer):
                check_branching(layer, in_shape)
                module, in_shape = layer.build(in_shape, generator, dtype)
            modules.append(module)
        return nn.Sequential(*modules), in_shape

    def module(self, in_shape: Sequence[int] | int, *, seed: int = 0, symmetric: bool = False,
               dtype: torch.dtype | None = None, device: str | torch.device | None = None
               ) -> nn.Module:
        """Finite-width network with this architecture, initialized from `seed`;
        `in_shape` is one sample's shape: `(d,)` (or `d`) for vectors, `(C, H, W)` for images.

        `symmetric=True` wraps it in `SymmetricModule`, so that f(x; theta_0) = 0.
        As torch's own modules: `dtype=None` is torch's default dtype
        (`torch.get_default_dtype()`, float32 unless changed), `device=None` torch's default
        device (`torch.get_default_device()`).  The weights are drawn on the CPU from `seed`
        and then moved, so one seed gives the same network on every device.

        Parameters
        ----------
        in_shape : int or sequence of int
            One sample's shape.
        seed : int
        symmetric : bool
        dtype, device : optional

        Returns
        -------
        nn.Module

        Examples
        --------
        >>> import torch, ntklab as nk
        >>> net = nk.serial(nk.Dense(256), nk.Relu(), nk.Dense(1))
        >>> model = net.module(in_shape=3, seed=0, dtype=torch.float64)
        >>> model(torch.randn(4, 3, dtype=torch.float64)).shape
        torch.Size([4, 1])
        >>> symmetric = net.module(in_shape=3, symmetric=True)   # f(x; theta_0) = 0
        >>> float(symmetric(torch.randn(4, 3)).detach().abs().max())
        0.0
        """
        shape = (in_shape,) if isinstance(in_shape, int) else tuple(in_shape)
        needed = (3, 4) if self.takes_images else (2,) if self.takes_sequences else (1, 2, 3, 4)
        if len(shape) not in needed:
            kind = (" (this architecture takes images or volumes)" if self.takes_images else
                    " (this architecture takes token sequences)" if self.takes_sequences else "")
            raise ValueError(f"in_shape must be (d,) for vectors, (T, C) for token sequences, "
                             f"(C, H, W) for images or (C, D, H, W) for volumes{kind}, got {shape}")
        shape = tuple(positive_int(s, "in_shape") for s in shape)
        if self.takes_images and shape[-1] in (1, 3, 4) and shape[0] > 4:
            raise ValueError(f"in_shape={shape} looks channels-last (H, W, C); ntklab takes images "
                             f"as (C, H, W) (NCHW batches, torch's layout): pass "
                             f"in_shape={(shape[-1], *shape[:-1])}")
        if dtype is None:
            dtype = torch.get_default_dtype()
        elif not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype must be a floating torch dtype such as torch.float64, got {dtype!r}")
        generator = torch.Generator().manual_seed(int(seed))
        with torch.device("cpu"):   # drawn on the CPU from `seed`: the same weights on every device
            net, out_shape = self.build(shape, generator, dtype)
        check_merged(out_shape)
        net = SymmetricModule(net) if symmetric else net
        return net.to(torch.get_default_device() if device is None else resolve_device(device))

    # -- infinite-width kernels ----------------------------------------------
    def kernel_map(self, k: KernelState, start: int = 0,
                   after_layer: Callable[[int, KernelState], None] | None = None) -> KernelState:
        """The layers' recursions from layer `start` on; `after_layer(i, state)` is called
        with each layer's output state."""
        for i, layer in enumerate(self.layers[start:], start):
            with located(self, i, layer):
                check_branching(layer, k)
                k = layer.kernel_map(k)
            if after_layer is not None:
                after_layer(i, k)
        return k

    def inputs_map(self, x1: torch.Tensor, x2: torch.Tensor | None, *, need_ntk: bool,
                   full: bool, fused: bool = False,
                   after_layer: Callable[[int, KernelState], None] | None = None) -> KernelState:
        """The output state of the whole architecture for inputs `x1`, `x2` (the first layer
        may compute its state from the inputs directly, `Layer.input_state`); `after_layer`
        as in `kernel_map`."""
        with located(self, 0, self.layers[0]):
            state = self.layers[0].input_state(x1, x2, need_ntk=need_ntk, full=full)
        start = 0 if state is None else 1
        if state is None:
            state = KernelState.from_inputs(x1, x2, need_ntk=need_ntk, full=full)
        elif after_layer is not None:
            after_layer(0, state)
        return self.kernel_map(state.replace(fused=fused), start=start, after_layer=after_layer)

    def pair_entries(self, sample_shape: Sequence[int]) -> int:
        """Numbers held per pair of inputs by the largest layer state (for block sizes): images
        `(C, H, W)` have H W positions, token sequences `(T, C)` T, vectors one."""
        sample_shape = self.layers[0].input_state_shape(tuple(sample_shape)) or sample_shape
        positions = (math.prod(sample_shape[1:]) if len(sample_shape) >= 3 else
                     sample_shape[0] if len(sample_shape) == 2 else 1)
        positions *= self.position_growth   # upsampling layers (ConvTranspose) hold more
        spatial = positions ** 2 if self.needs_all_pixel_pairs else positions
        return spatial * self.quadrature_points

    def block_size_for(self, sample_shape: Sequence[int], max_memory, dtype: torch.dtype,
                       device: torch.device = CPU) -> int:
        """Rows (= columns) of a block of pairs whose layer states fit in `max_memory`
        (and, on CPU, whose state tensors stay about cache-sized)."""
        pair_bytes = torch.empty((), dtype=dtype).element_size() * self.pair_entries(sample_shape)
        pairs = parse_memory(max_memory) / (STATE_COPIES * pair_bytes)
        if device.type == "cpu":
            pairs = min(pairs, max(MIN_CPU_PAIRS, CPU_TENSOR_BYTES // pair_bytes))
        return int(min(MAX_BLOCK, max(1, math.isqrt(int(pairs)))))

    def kernel(self, x1, x2=None, get: str | Sequence[str] | None = None, *,
               block_size: int | None = None, max_memory: int | str | None = None,
               dtype: torch.dtype | None = None, device: str | torch.device | None = None,
               progress: bool | None = None, workers: int | None = None,
               fused: bool = False) -> Kernel | torch.Tensor:
        """NNGP and NTK of the infinitely wide network between the samples of `x1`
        and `x2` (`x2=None`: `x1` with itself, computed once per pair).  Samples are
        rows `[N, d]`, NCHW images `[N, C, H, W]` for convolutional architectures, or token
        sequences `[N, T, C]` (batch first, channels last).

        Differentiable: when an input or a tensor hyperparameter (`nk.Dense(512,
        W_std=torch.tensor(1.5, requires_grad=True))`) requires grad and grad mode is on, the
        kernel is computed with autograd (tensors saved for the backward pass are copied, as
        the recursions update in place), e.g. to fit W_std, b_std by maximizing a GP marginal
        likelihood; otherwise under `torch.no_grad()`.

        Computed by the layer recursions in blocks of pairs (`block_size` rows and columns, by
        default the largest whose layer states fit in `max_memory`, default None: ntklab's one
        default, 1 GiB, as everywhere; a GlobalAvgPool network carries `[HW x HW]` numbers per
        pair), so working memory stays bounded for any N. On CPU the blocks are shared by `workers`
        threads (default: torch's thread count), each running torch single-threaded: the recursions
        are chains of small memory-bound operations, whose intra-op parallel regions collapse when
        other work shares the cores (12x slower measured), while independent blocks do not;
        `workers=1` runs the blocks in turn with torch's own threads.

        `fused=True` runs each activation's map as one compiled loop (`torch.compile`, see
        `ntklab.arch.fused`; not under autograd): measured 1.15-1.26x faster on one CPU core for
        CNTK-GAP after seconds of compilation per activation and block shape (cached on disk by
        inductor), no gain with all cores, so off by default.  The numbers agree to rounding
        (2e-16 relative measured).

        Returns the tensor `[N1, N2]` when `get` is a name ("nngp" or "ntk", as
        neural-tangents' `kernel_fn`), else a `Kernel` with `.nngp` and `.ntk` (the one
        not asked for in a tuple `get` is None).  dtype: `dtype`, or the input's when it
        is a floating torch tensor (float32 in, float32 out: relative error about 1e-6
        on these recursions), float64 for numpy, integer and list inputs; with `x2` the
        promotion of both (float32 with float64 is float64).  Device:
        `device`, or the input tensor's.

        Parameters
        ----------
        x1, x2 : tensor or array
            Samples `[N1, ...]`, `[N2, ...]`; `x2=None` is `x1` with itself.
        get : {"nngp", "ntk"}, tuple of them, or None
            A name returns that tensor, a tuple or None a `Kernel`.
        block_size, max_memory, workers, fused, progress
            How the blocks of pairs are computed (see above); they change the numbers only by
            rounding (1e-16 relative), and the same settings give bitwise the same kernel in every run.
        dtype, device
            Of the result (default: the input's).

        Returns
        -------
        Kernel or torch.Tensor
            `[N1, N2]` kernels.

        Raises
        ------
        ValueError
            For inputs the architecture cannot take (the message names the layer and the fix).

        Examples
        --------
        >>> import torch, ntklab as nk
        >>> net = nk.serial(nk.Dense(512, W_std=1.5, b_std=0.05), nk.Relu(), nk.Dense(1))
        >>> x = torch.randn(5, 3, dtype=torch.float64)
        >>> k = net.kernel(x)
        >>> k.nngp.shape, k.ntk.shape
        (torch.Size([5, 5]), torch.Size([5, 5]))
        >>> bool(torch.equal(net.kernel(x, get="ntk"), k.ntk))
        True
        """
        names = canonical_get(get)
        dtype = input_dtype(x1, dtype, x2)
        differentiable = torch.is_grad_enabled() and any(
            isinstance(t, torch.Tensor) and t.requires_grad
            for t in (x1, x2, *self.hyperparameter_tensors()))
        x1 = self._inputs(x1, "x1", dtype, device, differentiable)
        if x2 is not None:
            x2 = self._inputs(x2, "x2", dtype, x1.device, differentiable)
            check_same_features(x1, x2)
        check_result_fits((len(x1), len(x1 if x2 is None else x2)), len(names), dtype, x1.device,
                          "compute it tile by tile into a zarr store with "
                          "nk.kernels.compute_kernel(net, x1, x2, store='k.zarr') (or `ntklab "
                          "kernel --out k.zarr`), or ask for one kernel with get='ntk'")
        block_size, workers = self._execution(x1, x2, block_size, max_memory, workers, differentiable)
        maths = functools.partial(self._block_kernels, need_ntk="ntk" in names, full=self.needs_all_pixel_pairs,
                                  fused=bool(fused) and not differentiable)
        # autograd through the in-place recursions: the tensors saved for backward are copies
        context = (torch.autograd.graph.saved_tensors_hooks(torch.clone, lambda t: t)
                   if differentiable else torch.no_grad())
        with context:
            out = tiled_pairs(maths, x1, x2, names, block_size=block_size,
                              progress=progress, workers=workers, steps_per_tile=len(self.layers))
        return out[get] if isinstance(get, str) else Kernel(nngp=out.get("nngp"), ntk=out.get("ntk"))

    def _execution(self, x1: torch.Tensor, x2: torch.Tensor | None, block_size: int | None, max_memory,
                   workers: int | None, differentiable: bool) -> tuple[int, int]:
        """How `kernel` runs (see its docstring): the block size and the worker threads."""
        if differentiable:  # autograd's saved-tensor hooks (in `kernel`) hold in this thread only
            workers = 1
        elif workers is None:  # tiles in parallel, one thread each: robust on a busy machine
            workers = 1 if x1.device.type != "cpu" else torch.get_num_threads()
        workers = positive_int(workers, "workers")
        if block_size is None:
            block_size = self.block_size_for(x1.shape[1:], max_memory, x1.dtype, x1.device)
            if workers > 1:  # at least two blocks per side, so that the workers share the tiles
                longest = max(len(x1), len(x1 if x2 is None else x2))
                block_size = min(block_size, max(1, math.ceil(longest / 2)))
        return positive_int(block_size, "block_size"), workers

    def _block_kernels(self, b1: torch.Tensor, b2: torch.Tensor | None, advance: Callable[[], None], *,
                       need_ntk: bool, full: bool, fused: bool) -> dict[str, torch.Tensor]:
        """The maths of `kernel` for one block of pairs: the layers' recursions from the inputs
        `b1`, `b2` (`advance()` after each layer, for progress), checked to have stayed in the
        floating range and to end on vectors; the NTK identically zero when no layer carried one."""
        state = self.inputs_map(b1, b2, need_ntk=need_ntk, full=full, fused=fused,
                                after_layer=lambda i, k: advance())
        check_merged(state)
        problem = None if in_float_range(state) else out_of_range_message(
            self, b1, b2, need_ntk=need_ntk, full=full)
        if problem is not None:
            raise ArchitectureError(problem)
        if state.spatial:
            kind = {1: "token sequences", 2: "images", 3: "volumes"}[len(state.spatial)]
            raise ValueError(f"the architecture ends on {kind} of spatial shape "
                             f"{state.spatial}; end it with nk.Flatten() or "
                             f"nk.GlobalAvgPool() (and a Dense readout) to get a kernel matrix")
        blocks = {"nngp": state.nngp}
        if isinstance(state.ntk, float):  # no layer carried an NTK
            blocks["ntk"] = torch.full_like(state.nngp, state.ntk)
        elif state.ntk is not None:       # None: not requested
            blocks["ntk"] = state.ntk
        return blocks

    def _inputs(self, x, name: str, dtype: torch.dtype, device, differentiable: bool) -> torch.Tensor:
        """Validated inputs; a tensor that requires grad keeps its graph when differentiating."""
        checked = as_inputs(x, name, images=self.takes_images, sequences=self.takes_sequences,
                            dtype=dtype, device=device)
        if differentiable and isinstance(x, torch.Tensor) and x.requires_grad:
            return x.to(dtype=checked.dtype, device=checked.device)
        return checked


def serial(*layers: Layer) -> Serial:
    """Compose layers: `nk.serial(nk.Dense(512), nk.Relu(), nk.Dense(1))`.

    Parameters
    ----------
    *layers : Layer
        Layers (or nested `serial`/`parallel` blocks) applied in order.

    Returns
    -------
    Serial
        One description: `.kernel(...)` for the infinite-width kernels, `.module(...)` for the
        finite network.

    Examples
    --------
    >>> import ntklab as nk
    >>> net = nk.serial(nk.Dense(512, W_std=1.5), nk.Relu(), nk.Dense(1))
    >>> net
    serial(Dense(512, W_std=1.5), Relu(), Dense(1))
    """
    return Serial(*layers)
