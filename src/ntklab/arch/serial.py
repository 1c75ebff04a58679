"""`serial(*layers)`: an architecture described once, giving both a finite
torch network (`.module`) and its infinite-width kernels (`.kernel`)."""
from __future__ import annotations

import contextlib
import copy
import functools
import math
import threading
from contextlib import contextmanager
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .._core.validation import (as_inputs, check_result_fits, check_same_features, input_dtype,
                           parse_memory, positive_int, resolve_device)
from .._core import transforms
from .._core.tiling import TileFn, symmetrized, tiled_pairs
from .buffers import BufferPool
from .layer import ArchitectureError, Layer
from .masking import MaskingSequential, check_unmasked, first_refused, mask_value, masked_inputs, remasked
from .numerics import in_float_range, out_of_range_message
from .state import Kernel, KernelState

GETS = ("nngp", "ntk")
CPU = torch.device("cpu")
MAX_BLOCK = 512           # rows of a block of pairs (vectors: 512 x 512 pairs)
STATE_COPIES = 8          # live tensors of a block's size during a layer map (NNGP, NTK, temporaries)
MIN_CPU_PAIRS = 9          # at least 3 x 3 pairs: an off-diagonal block also maps its inputs' own
                            # states (var1, var2: 2/b of the work for b x b pairs); measured 9-40%
                            # faster than 2 x 2 for all-pixel-pairs CNNs on 16x16 and 32x32 images.
                            # Not for states with same-position variances (their own states cost
                            # ~nothing): there one cache-sized pair wins (CNTK-GAP, 21 layers, 32x32:
                            # 1 x 1 blocks 1.55x faster than 3 x 3, benchmarks/bench_cntk.py)
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


class PatternSequential(nn.Sequential):
    """`nn.Sequential` whose forward takes the graphs of the samples, `pattern=`, and passes
    them to the modules that read them (`Aggregate`'s): `model(x, pattern=p)`."""

    takes_pattern = True

    def forward(self, x, pattern: torch.Tensor | None = None):   # type: ignore[override]
        for module in self:
            x = module(x, pattern=pattern) if getattr(module, "takes_pattern", False) else module(x)
        return x


class Patterned:
    """Graphs travelling with the inputs through the tiling of `Serial.kernel`: each sample's
    features and its graph as one row `[x.flatten(), pattern.flatten()]`, so that a block of
    rows carries its samples' graphs (`pack` and `unpack`)."""

    def __init__(self, sample_shape: tuple[int, ...], pattern_shape: tuple[int, ...]):
        self.sample_shape, self.pattern_shape = sample_shape, pattern_shape
        self.features = math.prod(sample_shape)

    def pack(self, x: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.flatten(1), pattern.flatten(1)], 1)

    def unpack(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (rows[:, :self.features].reshape(-1, *self.sample_shape),
                rows[:, self.features:].reshape(-1, *self.pattern_shape))


def check_patterns(pattern, x1: torch.Tensor, x2: torch.Tensor | None, takes_pattern: bool
                   ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """`pattern=(p1, p2)` of `Serial.kernel` as tensors of the inputs' dtype and device:
    one graph per sample of x1 and x2 (`p2` None when `x2` is None); None without Aggregate."""
    if pattern is None:
        if takes_pattern:
            raise ValueError("this architecture has Aggregate layers: pass the graphs of the "
                             "samples, pattern=(p1, p2) (p2=None when x2 is None)")
        return None
    if not takes_pattern:
        raise ValueError("pattern= is read by Aggregate layers only, and this architecture has none")
    if not isinstance(pattern, (tuple, list)) or len(pattern) != 2:
        raise ValueError(f"pattern must be a pair (p1, p2) of graphs for x1 and x2 (p2=None when "
                         f"x2 is None), got {type(pattern).__name__}")
    if (pattern[1] is None) != (x2 is None):
        raise ValueError("pattern=(p1, p2) needs p2=None exactly when x2 is None")
    p1 = _graphs(pattern[0], x1, "p1")
    p2 = None if x2 is None else _graphs(pattern[1], x2, "p2")
    if p2 is not None and p1.shape[1:] != p2.shape[1:]:
        raise ValueError(f"pattern's p1 and p2 must have the same graph shape, got "
                         f"{tuple(p1.shape[1:])} and {tuple(p2.shape[1:])}")
    return p1, p2


def _graphs(p, x: torch.Tensor, name: str) -> torch.Tensor:
    """One graph per sample of `x`, finite, in its dtype and on its device."""
    p = torch.as_tensor(p).to(dtype=x.dtype, device=x.device)
    if p.ndim < 3 or len(p) != len(x) or not bool(torch.isfinite(p).all()):
        raise ValueError(f"pattern's {name} must be finite graphs [N, ...], one per sample "
                         f"({len(x)}), got shape {tuple(p.shape)}")
    return p


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


def one_block(maths: TileFn, x1: torch.Tensor, x2: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """`maths` on all pairs of `x1`, `x2` as one block (under torch.func transforms, which cannot
    write tiles in place), symmetrized for `x2=None` as `tiled_pairs` symmetrizes a diagonal tile."""
    blocks = maths(x1, x2, lambda: None)
    return blocks if x2 is not None else {name: symmetrized(block) for name, block in blocks.items()}


def position_mixing(container: "Container") -> str | None:
    """Where the first layer that needs every pixel pair (`needs_all_pixel_pairs`: its map mixes
    positions) sits in `container`, e.g. "serial(...) layer 3, GlobalAvgPool()"; None if none."""
    for i, layer in enumerate(container.layers):
        if layer.needs_all_pixel_pairs:
            inner = position_mixing(layer) if isinstance(layer, Container) else None
            return f"{container.name}(...) layer {i}, {inner or layer.label}"   # as `located` names it
    return None


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
        self.takes_pattern = any(layer.takes_pattern for layer in self.layers)
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

    @property
    def carries_same_position_variances(self) -> bool:
        """The all-pairs states of `kernel` may carry their variances on same positions only
        (`KernelState.same_position_variances`): every layer takes such states, and no layer
        after the first one that mixes positions (a global pool) reads variances."""
        mixing = [i for i, layer in enumerate(self.layers) if layer.needs_all_pixel_pairs]
        return (bool(mixing) and all(layer.same_position_variances for layer in self.layers)
                and not any(layer.reads_variances for layer in self.layers[mixing[0] + 1:]))



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
        if self.takes_pattern:
            return PatternSequential(*modules), in_shape
        return MaskingSequential(*modules, rules=[layer.mask_rule for layer in self.layers],
                                 refusal=self.mask_refusal()), in_shape

    def mask_refusal(self) -> str | None:
        """Why this architecture cannot take masked inputs (`mask_constant=`, `arch.masking`),
        naming the layer as `located` does; None when it can."""
        refused = first_refused(self.layers)
        if refused is None:
            return None
        i, reason = refused
        return f"{self.name}(...) layer {i}, {self.layers[i].label}: {reason}"

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
                if isinstance(k, KernelState) and k.mask is not None:
                    k = remasked(layer.mask_rule, k)
            if after_layer is not None:
                after_layer(i, k)
        return k

    def inputs_map(self, x1: torch.Tensor, x2: torch.Tensor | None, *, need_ntk: bool,
                   full: bool, fused: bool = False,
                   after_layer: Callable[[int, KernelState], None] | None = None,
                   pattern: tuple[torch.Tensor, torch.Tensor | None] | None = None,
                   mask: tuple[torch.Tensor, torch.Tensor | None] | None = None) -> KernelState:
        """The output state of the whole architecture for inputs `x1`, `x2` (the first layer
        may compute its state from the inputs directly, `Layer.input_state`); `after_layer`
        as in `kernel_map`; `pattern` the samples' graphs (`KernelState.pattern`), `mask` their
        masked positions (`KernelState.mask`, the inputs' masked entries already zeroed)."""
        with located(self, 0, self.layers[0]):
            state = self.layers[0].input_state(x1, x2, need_ntk=need_ntk, full=full)
        start = 0 if state is None else 1
        if state is None:
            state = KernelState.from_inputs(x1, x2, need_ntk=need_ntk, full=full)
        elif after_layer is not None:
            after_layer(0, state)
        if pattern is None and mask is None and self.carries_same_position_variances:
            state = state.with_same_position_variances()
        return self.kernel_map(state.replace(fused=fused, pattern=pattern, mask=mask), start=start,
                               after_layer=after_layer)

    def pair_entries(self, sample_shape: Sequence[int]) -> int:
        """Numbers held per pair of inputs by the largest layer state (for block sizes): images
        `(C, H, W)` have H W positions, token sequences `(T, C)` T, vectors one."""
        sample_shape = self.layers[0].input_state_shape(tuple(sample_shape)) or sample_shape
        positions = (math.prod(sample_shape[1:]) if len(sample_shape) >= 3 else
                     sample_shape[0] if len(sample_shape) == 2 else 1)
        positions *= self.position_growth   # upsampling layers (ConvTranspose) hold more
        spatial = positions ** 2 if self.needs_all_pixel_pairs else positions
        return spatial * self.quadrature_points

    def pairs_in_memory(self, sample_shape: Sequence[int], max_memory, dtype: torch.dtype) -> int:
        """Pairs of inputs whose layer states fit in `max_memory` at once (at least one)."""
        pair_bytes = torch.empty((), dtype=dtype).element_size() * self.pair_entries(sample_shape)
        return max(1, parse_memory(max_memory) // (STATE_COPIES * pair_bytes))

    def block_size_for(self, sample_shape: Sequence[int], max_memory, dtype: torch.dtype,
                       device: torch.device = CPU) -> int:
        """Rows (= columns) of a block of pairs whose layer states fit in `max_memory`
        (and, on CPU, whose state tensors stay about cache-sized)."""
        pair_bytes = torch.empty((), dtype=dtype).element_size() * self.pair_entries(sample_shape)
        pairs = self.pairs_in_memory(sample_shape, max_memory, dtype)
        if device.type == "cpu":
            least = 1 if self.carries_same_position_variances else MIN_CPU_PAIRS
            pairs = min(pairs, max(least, CPU_TENSOR_BYTES // pair_bytes))
        return int(min(MAX_BLOCK, max(1, math.isqrt(int(pairs)))))

    def kernel(self, x1, x2=None, get: str | Sequence[str] | None = None, *,
               block_size: int | None = None, max_memory: int | str | None = None,
               dtype: torch.dtype | None = None, device: str | torch.device | None = None,
               progress: bool | None = None, workers: int | None = None,
               fused: bool = False, diagonal_spatial: bool = False, pattern=None,
               mask_constant: float | None = None) -> Kernel | torch.Tensor:
        """NNGP and NTK of the infinitely wide network between the samples of `x1`
        and `x2` (`x2=None`: `x1` with itself, computed once per pair).  Samples are
        rows `[N, d]`, NCHW images `[N, C, H, W]` for convolutional architectures, or token
        sequences `[N, T, C]` (batch first, channels last).

        Differentiable: when an input or a tensor hyperparameter (`nk.Dense(512,
        W_std=torch.tensor(1.5, requires_grad=True))`) requires grad and grad mode is on, the
        kernel is computed with autograd (tensors saved for the backward pass are copied, as
        the recursions update in place), e.g. to fit W_std, b_std by maximizing a GP marginal
        likelihood; otherwise under `torch.no_grad()`.  It also runs under `torch.func`
        transforms (as neural-tangents' `kernel_fn` under `jax.grad` and `jax.vmap`):
        `torch.func.grad`, `jacrev`, `vmap` over a batch of input sets, and their compositions,
        with respect to the inputs and to tensor hyperparameters; there the pairs are one block
        (no tiles, threads or `fused`) and the in-place recursions run out of place
        (`torch.func.functionalize`).

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
        diagonal_spatial : bool
            neural-tangents' `diagonal_spatial=True`: only same-position pixel (token) pairs, so
            that an architecture may end on images or sequences and give `[N1, N2, *spatial]`,
            the kernel of each output position with the same position.  Defined when no layer
            mixes positions (every layer but pooling, attention and global pooling, whose maps
            need every pixel pair): such a layer is refused by name before any work.  Vectors
            and `Flatten` endings give `[N1, N2]` as without it.
        dtype, device
            Of the result (default: the input's).
        pattern : (tensor, tensor or None), optional
            The graphs of the samples of x1 and x2 for `Aggregate` layers (`p2=None` when `x2` is
            None), as neural-tangents' `kernel_fn(..., pattern=(p1, p2))`.
        mask_constant : float, optional
            The value of padded entries, as neural-tangents' `kernel_fn(..., mask_constant=c)`:
            a token of `[N, T, C]` (pixel of `[N, C, H, W]`) whose channels all equal it is
            masked, excluded from global pooling and attention (`ntklab.arch.masking`; the
            finite network takes it too, `model(x, mask_constant=c)`).  Layers that cannot take
            a mask are refused by name before any work.

        Returns
        -------
        Kernel or torch.Tensor
            `[N1, N2]` kernels (`[N1, N2, *spatial]` with `diagonal_spatial` on images or sequences).

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
        self._check_diagonal_spatial(diagonal_spatial)
        dtype = input_dtype(x1, dtype, x2)
        differentiable = self._differentiable(x1, x2)
        x1 = self._inputs(x1, "x1", dtype, device, differentiable)
        if x2 is not None:
            x2 = self._inputs(x2, "x2", dtype, x1.device, differentiable)
            check_same_features(x1, x2)
        patterns = check_patterns(pattern, x1, x2, self.takes_pattern)
        if mask_constant is not None:
            mask_constant = self._check_masking(mask_constant, x1, x2)
        check_result_fits((len(x1), len(x1 if x2 is None else x2)), len(names), dtype, x1.device,
                          "compute it tile by tile into a zarr store with "
                          "nk.kernels.compute_kernel(net, x1, x2, store='k.zarr') (or `ntklab "
                          "kernel --out k.zarr`), or ask for one kernel with get='ntk'")
        transformed = transforms.transformed(x1, x2, *self.hyperparameter_tensors())
        block_size, workers = self._execution(x1, x2, block_size, max_memory, workers,
                                              differentiable or transformed)
        packing = None if patterns is None else Patterned(tuple(x1.shape[1:]), tuple(patterns[0].shape[1:]))
        maths = self._maths(names, diagonal_spatial, fused=bool(fused) and not (differentiable or transformed),
                            packing=packing, mask_constant=mask_constant)
        if packing is not None and patterns is not None:   # each block of rows carries its graphs
            x1 = packing.pack(x1, patterns[0])
            x2 = None if x2 is None or patterns[1] is None else packing.pack(x2, patterns[1])
        if transformed:   # torch.func: one block, the in-place recursions run out of place
            with contextlib.nullcontext() if differentiable else torch.no_grad():
                return self._result(torch.func.functionalize(functools.partial(one_block, maths))(x1, x2), get)
        context = (torch.autograd.graph.saved_tensors_hooks(torch.clone, lambda t: t)
                   if differentiable else torch.no_grad())   # autograd: saved tensors are copies
        with context:   # (the recursions update in place)
            out = tiled_pairs(maths, x1, x2, names, block_size=block_size, progress=progress,
                              workers=workers, steps_per_tile=len(self.layers))
        return self._result(out, get)

    def kernel_diagonal(self, x, get: str | Sequence[str] | None = None, *, diagonal_spatial: bool = False,
                        max_memory: int | str | None = None, dtype: torch.dtype | None = None,
                        device: str | torch.device | None = None) -> Kernel | torch.Tensor:
        """Only each sample with itself, k(x_i, x_i): the diagonal of `kernel(x)` in O(N)
        work and memory instead of O(N^2) (predictive variances, normalizations, the mean
        diagonal of a ridge).  neural-tangents reaches the NNGP part as `kernel_fn(x, None,
        "cov1")` (its `diagonal_batch=True` variances, after all N^2 pairs unless jit removes
        them); the NTK diagonal has no counterpart there.

        The same layer recursions as `kernel`, on the one pair (x_i, x_i) of each sample,
        batched over the samples by `torch.func.vmap` (in chunks whose layer states fit in
        `max_memory`): equal to `kernel(x)`'s diagonal to rounding (1e-16 relative), and, like
        it, differentiable and usable under torch.func transforms.

        Parameters
        ----------
        x : tensor or array
            Samples `[N, ...]`, as `kernel`'s `x1`.
        get : {"nngp", "ntk"}, tuple of them, or None
            As in `kernel`.
        diagonal_spatial : bool
            As in `kernel`: an architecture ending on images or sequences gives `[N, *spatial]`,
            each position with itself (neural-tangents' `cov1` with `diagonal_spatial=True`).
        max_memory, dtype, device
            As in `kernel`.

        Returns
        -------
        Kernel or torch.Tensor
            `[N]` (or `[N, *spatial]`) tensors.

        Examples
        --------
        >>> import torch, ntklab as nk
        >>> net = nk.serial(nk.Dense(512, W_std=1.5, b_std=0.05), nk.Relu(), nk.Dense(1))
        >>> x = torch.randn(5, 3, dtype=torch.float64)
        >>> diagonal = net.kernel_diagonal(x)
        >>> diagonal.ntk.shape
        torch.Size([5])
        >>> bool(torch.allclose(diagonal.ntk, net.kernel(x, get="ntk").diagonal(), rtol=1e-14))
        True
        """
        names = canonical_get(get)
        if self.takes_pattern:
            raise ArchitectureError("kernel_diagonal does not take graphs (the network has an Aggregate layer): "
                                    "use net.kernel(x, pattern=(graphs, None)) and its diagonal")
        self._check_diagonal_spatial(diagonal_spatial)
        dtype = input_dtype(x, dtype)
        differentiable = self._differentiable(x, None)
        x = self._inputs(x, "x", dtype, device, differentiable)
        maths = self._maths(names, diagonal_spatial, fused=False)
        one_pair = torch.func.functionalize(lambda xi: one_block(maths, xi[None], None))
        chunk = self.pairs_in_memory(x.shape[1:], max_memory, dtype)
        with contextlib.nullcontext() if differentiable else torch.no_grad():
            out = torch.func.vmap(one_pair, chunk_size=min(chunk, len(x)))(x)
        return self._result({name: block[:, 0, 0] for name, block in out.items()}, get)

    def _check_diagonal_spatial(self, diagonal_spatial: bool) -> None:
        """Refuse `diagonal_spatial=True` (before any work) for an architecture with a layer whose
        map needs every pixel pair, naming it."""
        if not isinstance(diagonal_spatial, bool):
            raise ValueError(f"diagonal_spatial must be True or False, got {diagonal_spatial!r}")
        mixing = position_mixing(self) if diagonal_spatial else None
        if mixing is not None:
            raise ArchitectureError(
                f"diagonal_spatial=True keeps only same-position pixel (token) pairs, but "
                f"{mixing} mixes positions: its map needs the covariance of every pair of "
                f"positions; pass diagonal_spatial=False (the default), which computes them")

    def _check_masking(self, mask_constant, x1: torch.Tensor, x2: torch.Tensor | None) -> float:
        """`mask_constant` as a float, after refusing (before any work) an architecture with a
        layer that cannot take masked inputs and samples whose positions are all masked."""
        refusal = self.mask_refusal()
        if refusal is not None:
            raise ArchitectureError(refusal)
        value = mask_value(mask_constant)
        for x, name in ((x1, "x1"), (x2, "x2")):
            if x is not None:
                check_unmasked(masked_inputs(x, value)[1], name, value)
        return value

    def _differentiable(self, x1, x2) -> bool:
        """Autograd is on and an input or a tensor hyperparameter requires grad."""
        return torch.is_grad_enabled() and any(
            isinstance(t, torch.Tensor) and t.requires_grad
            for t in (x1, x2, *self.hyperparameter_tensors()))

    def _maths(self, names: tuple[str, ...], diagonal_spatial: bool, fused: bool,
               packing: Patterned | None = None, mask_constant: float | None = None) -> TileFn:
        """`maths(b1, b2, advance)`: the kernels `names` of one block of pairs (rows packed with
        their graphs by `packing`, if given; positions masked by `mask_constant`, if given).
        Each thread that runs it keeps one `BufferPool` of scratch tensors from block to block."""
        pools = threading.local()

        def maths(b1: torch.Tensor, b2: torch.Tensor | None, advance: Callable[[], None]
                  ) -> dict[str, torch.Tensor]:
            if not hasattr(pools, "pool"):
                pools.pool = BufferPool()
            with pools.pool.active():
                blocks = self._block_kernels(b1, b2, advance, need_ntk="ntk" in names,
                                             full=self.needs_all_pixel_pairs, fused=fused,
                                             diagonal_spatial=diagonal_spatial, packing=packing,
                                             mask_constant=mask_constant)
            return {name: blocks[name] for name in names}
        return maths

    @staticmethod
    def _result(out: dict[str, torch.Tensor], get) -> Kernel | torch.Tensor:
        return out[get] if isinstance(get, str) else Kernel(nngp=out.get("nngp"), ntk=out.get("ntk"))

    def _execution(self, x1: torch.Tensor, x2: torch.Tensor | None, block_size: int | None, max_memory,
                   workers: int | None, differentiable: bool) -> tuple[int, int]:
        """How `kernel` runs (see its docstring): the block size and the worker threads."""
        if differentiable:  # autograd's saved-tensor hooks and torch.func's transforms hold in this thread only
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
                       need_ntk: bool, full: bool, fused: bool, diagonal_spatial: bool = False,
                       packing: Patterned | None = None, mask_constant: float | None = None
                       ) -> dict[str, torch.Tensor]:
        """The maths of `kernel` for one block of pairs: the layers' recursions from the inputs
        `b1`, `b2` (`advance()` after each layer, for progress), checked to have stayed in the
        floating range and to end on vectors (or, with `diagonal_spatial`, on the same-position
        pairs of images or sequences); the NTK identically zero when no layer carried one.
        With `packing`, each row also carries its sample's graph (`Patterned`); with
        `mask_constant`, each row's masked positions are read from it (`masking.masked_inputs`)."""
        pattern = mask = None
        if packing is not None:
            (b1, p1), (b2, p2) = packing.unpack(b1), (None, None) if b2 is None else packing.unpack(b2)
            pattern = (p1, p2)
        if mask_constant is not None:
            (b1, m1), (b2, m2) = (masked_inputs(b1, mask_constant),
                                  (None, None) if b2 is None else masked_inputs(b2, mask_constant))
            mask = (m1, m2)
        state = self.inputs_map(b1, b2, need_ntk=need_ntk, full=full, fused=fused,
                                after_layer=lambda i, k: advance(), pattern=pattern, mask=mask)
        check_merged(state)
        problem = None if in_float_range(state) else out_of_range_message(
            self, b1, b2, need_ntk=need_ntk, full=full, pattern=pattern, mask=mask)
        if problem is not None:
            raise ArchitectureError(problem)
        if state.spatial and not diagonal_spatial:
            kind = {1: "token sequences", 2: "images", 3: "volumes"}[len(state.spatial)]
            same = "" if self.needs_all_pixel_pairs else (
                f", or pass diagonal_spatial=True for each position's kernel [N1, N2, "
                f"{', '.join(map(str, state.spatial))}]")
            raise ValueError(f"the architecture ends on {kind} of spatial shape "
                             f"{state.spatial}; end it with nk.Flatten() or "
                             f"nk.GlobalAvgPool() (and a Dense readout) to get a kernel matrix{same}")
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
