"""The kernel state that flows through an architecture's layer recursions.

For fully connected networks the state of a block of input pairs is
`nngp[i, j] = E[z(x1_i) z(x2_j)]` (pre-activation covariance of one unit), the
NTK block `ntk[i, j]`, the marginal variances `var1[i] = E[z(x1_i)^2]`,
`var2[j] = E[z(x2_j)^2]` (needed by the nonlinear maps) and the `width`
(number of channels of the current representation, i.e. the fan-in of the next
`Dense`; only the standard parameterization's NTK depends on it).
Conventions follow neural-tangents (Novak et al. 2020): the input kernel is
`x . x' / d`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class KernelState:
    """Kernel of a block of input pairs at one point of the architecture.

    Layouts (N1, N2 samples; `spatial` = (H, W) for images, (D, H, W) for volumes, (T,) for
    token sequences `[N, T, C]`, () for vectors; images shown, the others alike):
      * vectors:            nngp/ntk [N1, N2],               var1 [N1]
      * images, diagonal:   nngp/ntk [N1, N2, H, W],         var1 [N1, H, W]
        (same-position pixel pairs only: enough when the readout is `Flatten`)
      * images, `full`:     nngp/ntk [N1, N2, H, W, H, W],   var1 [N1, H, W, H, W]
        (all pixel pairs: needed by `GlobalAvgPool`, Arora et al. 2019).
    `var1`/`var2` hold each input with itself in the layout of one pair, so a
    layer treats them exactly like `nngp` (for `x2=None` they are bitwise the
    diagonal of `nngp`, which keeps identical inputs at correlation exactly 1).

    Declared facts a layer may rely on (and must keep true in the state it returns):
      * `symmetric`: the block pairs inputs with themselves (`x2=None`), so `var2` is
        `var1` (one tensor; a layer computes it once and sets both);
      * `is_gaussian`: the current representation is a Gaussian process (true after an
        affine layer, false for the inputs and after a nonlinearity): the activations'
        dual formulas require it (neural-tangents' `Kernel.is_gaussian`).
      * `fresh`: between a `FanOut` and its fan-in layer, this branch has passed through an affine
        layer with its own weights (Dense, Conv, attention's output projection) since the
        `FanOut`, so that at infinite width each of its units is independent of the same unit of
        every other branch (a fresh Gaussian's unit i is sum_j W_ij h_j / sqrt(n): h_i's share
        vanishes); what follows (activations, pooling, Flatten, LayerNorm: functions of that
        representation, with normalizers deterministic at infinite width) keeps it.  Set by the
        affine layers, cleared on every copy by `FanOut`, kept by every other layer.  `FanInSum`
        and `FanInProd` add / multiply kernels only when at most one branch is not `fresh`
        (neural-tangents assumes it without checking: `FanOut(2)` then two `Identity` branches
        summed is 2z, kernel 4K, not 2K).  `outer_fresh` is the stack of the enclosing
        branches' `fresh`, pushed by `FanOut` and popped by the fan-in layer (`merged_freshness`).
      * `positions`: set by `Flatten` of images or token sequences.  This state is then the
        flattened vector's (the mean over positions), and `positions` the same-position layout
        it is the mean of, for the layers that act on each flattened feature (activations,
        LayerNorm, FanInSum/FanInProd) to map before averaging; any other layer drops it.
      * `positions_lost`: why a flattened vector's features sit at positions of no layout this
        state can keep (a `FanInConcat` of flattened token sequences, say), or None: a merge
        acting on each feature (FanInSum, FanInProd) refuses to pair it with a flattened
        branch.  A layer that sets `positions` (None when it drops them) clears it, unless it
        sets it too (`replace`).
      * `is_input`: no affine layer has acted yet, so the representation is the inputs' own
        finitely many features (set by `from_inputs`, cleared by the affine layers): a layer
        whose map holds only for infinitely many units (`Dropout`'s independent masks) refuses it.
      * `pattern`: the graphs given with the inputs (`net.kernel(..., pattern=(p1, p2))`), one
        per sample of the block (`p2` None when `symmetric`), for `Aggregate`; every layer keeps it.
      * `same_position_variances`: in the `full` layout, `var1`/`var2` hold only each position
        with itself (`[N, *spatial]`, the `marginal`) while `nngp`/`ntk` hold all position pairs.
        Exact for the layers that read a variance only on same-position pairs (a convolution's
        joint shifts keep i = j, an activation reads `marginal`): `Serial` sets it when every
        layer before the global pool is a `Conv`, `Dense` or activation and only `Dense` layers
        follow it (`Serial.same_position_variances`); it saves the all-pairs recursion of each
        input with itself, which an off-diagonal 3 x 3 block of pairs would otherwise add 2/3 to.
        The pool's output variance is then the mean of the per-position variances (the pooled
        variance needs all pairs), which only the range checks read (`numerics`).
      * `mask`: the masked positions of the block's samples (`net.kernel(..., mask_constant=c)`),
        `(m1, m2)` booleans `[N, *spatial]` (`m2` None when `symmetric`), until a global pooling
        or Dense ends them; `Serial` applies them after each layer (`arch.masking`).
    The state is frozen: a layer returns a new one (`replace`).  Its tensors are not copied on
    the way: a layer consumes the tensors of the state it is given (in-place updates, to keep
    one block's memory bounded), so a caller that needs them afterwards `clone()`s first (as
    FanOut does for its branches).  `fused` asks
    them to run their maps compiled (`arch.fused`): the same numbers, to rounding.
    """

    nngp: torch.Tensor
    ntk: torch.Tensor | float | None  # None: NTK not requested; 0.0: identically zero
    var1: torch.Tensor
    var2: torch.Tensor
    width: int
    spatial: tuple[int, ...] = ()
    full: bool = False
    symmetric: bool = False
    is_gaussian: bool = False
    fused: bool = False  # run the layer maps compiled (`fused.fusible`)
    positions: "KernelState | None" = None  # after Flatten: the per-position layout (above)
    fresh: bool = False                      # independent of the other branches (above)
    outer_fresh: tuple[bool, ...] = ()       # `fresh` of the enclosing FanOuts' branches
    positions_lost: str | None = None        # after FanInConcat: why `positions` is None (above)
    is_input: bool = False                   # no affine layer yet: finitely many features (above)
    pattern: tuple[torch.Tensor, torch.Tensor | None] | None = None   # graphs, for Aggregate (above)
    mask: tuple[torch.Tensor, torch.Tensor | None] | None = None      # masked positions (above)
    same_position_variances: bool = False    # full layout, variances on same positions only (above)

    def replace(self, **changes) -> "KernelState":
        """A copy with `changes`; a new `positions` clears `positions_lost` unless it is given."""
        if "positions" in changes:
            changes.setdefault("positions_lost", None)
        return replace(self, **changes)

    @classmethod
    def from_inputs(cls, x1: torch.Tensor, x2: torch.Tensor | None, *,
                    need_ntk: bool, full: bool = False) -> "KernelState":
        """`K_0(x, x') = x . x' / d` with `d` the number of input features
        (for images, per pair of pixels, `d` = channels: neural-tangents' convention).

        `x2=None` means the block of `x1` with itself: the variances are then
        taken from the diagonal of the same product, so that identical inputs
        keep correlation exactly 1 through every layer (no rounding noise at
        the arc-cosine's singular point)."""
        if x1.ndim == 3:  # token sequences [N, T, C] -> channels second, as images
            x1, x2 = x1.transpose(1, 2), None if x2 is None else x2.transpose(1, 2)
        other = x1 if x2 is None else x2
        d = x1.shape[1]
        if x1.ndim == 2:
            nngp = (x1 @ other.T).div_(d)
            self_pairs = None
        else:
            nngp = _pixel_products(x1, other, full).div_(d)
            self_pairs = lambda x: _self_pixel_products(x, full).div_(d)  # noqa: E731
        if x2 is None:
            var1 = nngp.diagonal(0, 0, 1).movedim(-1, 0).clone()
            var2 = var1
        elif self_pairs is None:
            var1, var2 = (x1 * x1).sum(1).div_(d), (x2 * x2).sum(1).div_(d)
        else:
            var1, var2 = self_pairs(x1), self_pairs(x2)
        return cls(nngp=nngp, ntk=0.0 if need_ntk else None, var1=var1, var2=var2, width=d,
                   spatial=tuple(x1.shape[2:]), full=bool(full) and x1.ndim >= 3,
                   symmetric=x2 is None, is_gaussian=False, is_input=True)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """One sample's shape in the finite network's layout (`sample_shape`)."""
        return sample_shape(self.width, self.spatial)

    def clone(self) -> "KernelState":
        """An independent copy (for a branch: layers consume their input state)."""
        var1, var2 = self.map_variances(torch.clone)
        return self.replace(nngp=self.nngp.clone(), ntk=self.map_ntk(torch.clone), var1=var1, var2=var2,
                            positions=None if self.positions is None else self.positions.clone(),
                            positions_lost=self.positions_lost)

    def fanned_out(self) -> "KernelState":
        """The state of one branch of a `FanOut` of this one: not `fresh` (every branch is its input), the
        enclosing branch's `fresh` pushed on `outer_fresh` (the per-position layout too)."""
        return self.replace(fresh=False, outer_fresh=(*self.outer_fresh, self.fresh),
                            positions=None if self.positions is None else self.positions.fanned_out(),
                            positions_lost=self.positions_lost)

    def map_ntk(self, fn) -> torch.Tensor | float | None:
        """`fn(ntk)` for a linear map of the NTK tensor; None (not requested) and the
        identically-zero 0.0 stay as they are."""
        return self.ntk if self.ntk is None or isinstance(self.ntk, float) else fn(self.ntk)

    def map_variances(self, fn) -> tuple[torch.Tensor, torch.Tensor]:
        """`(fn(var1), fn(var2))`, computed once when the block is symmetric."""
        var1 = fn(self.var1)
        return var1, var1 if self.symmetric else fn(self.var2)

    def with_same_position_variances(self) -> "KernelState":
        """The state with its variances on same positions only (`same_position_variances`)."""
        if not self.full or self.same_position_variances:
            return self
        var1, var2 = self.map_variances(lambda var: self.marginal(var).clone())
        return self.replace(var1=var1, var2=var2, same_position_variances=True,
                            positions_lost=self.positions_lost)

    def holds_pairs(self, t: torch.Tensor) -> bool:
        """`t` (this state's nngp, ntk or a variance) holds all position pairs: the `full` layout,
        except the variances of a `same_position_variances` state (`[N, *spatial]`)."""
        return self.full and not (self.same_position_variances and t.ndim == 1 + len(self.spatial))

    def marginal(self, cov: torch.Tensor) -> torch.Tensor:
        """Per-position variances `[N, *spatial]` of a self-covariance `[N, *pairs]`."""
        if not self.holds_pairs(cov):
            return cov
        n, positions = cov.shape[0], math.prod(self.spatial)
        return cov.reshape(n, positions, positions).diagonal(0, 1, 2).reshape(n, *self.spatial)

    def _as_position(self, marginal: torch.Tensor, which: int) -> torch.Tensor:
        """Variances `[N, *spatial]` shaped to broadcast against `[N, *pairs]` as the
        first (`which=0`) or second (`which=1`) position of each pixel pair."""
        if not self.full:
            return marginal
        ones = (1,) * len(self.spatial)
        shape = marginal.shape + ones if which == 0 else marginal.shape[:1] + ones + marginal.shape[1:]
        return marginal.reshape(shape)

    def pair_variances(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`(E[z(x1)^2], E[z(x2)^2])` broadcastable against `nngp`."""
        return (self._as_position(self.marginal(self.var1), 0).unsqueeze(1),
                self._as_position(self.marginal(self.var2), 1).unsqueeze(0))

    def self_variances(self, cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two variances of each pair in a self-covariance `cov` ([N, *pairs], or
        `[N, *spatial]` with `same_position_variances`: both are `cov`)."""
        marginal = self.marginal(cov)
        if not self.holds_pairs(cov):
            return marginal, marginal
        return self._as_position(marginal, 0), self._as_position(marginal, 1)


def sample_shape(width: int, spatial: tuple[int, ...]) -> tuple[int, ...]:
    """One sample's shape in the finite network's layout: `(d,)` for vectors, `(T, C)` for token
    sequences (channels last), `(C, H, W)` for images and `(C, D, H, W)` for volumes (channels
    first, torch's layout); C, d: the width."""
    return (width, *spatial) if len(spatial) >= 2 else (*spatial, width)


def merged_freshness(ks: list[KernelState]) -> dict:
    """`fresh` and `outer_fresh` of the merge of a `FanOut`'s branches `ks`: fresh when every
    branch is (all independent of the enclosing branches' same units) or when the `FanOut`'s
    input was (the merge is a function of it and of fresh weights drawn after it)."""
    outer = ks[0].outer_fresh
    return dict(fresh=all(k.fresh for k in ks) or bool(outer and outer[-1]), outer_fresh=outer[:-1])


@dataclass(frozen=True)
class Kernel:
    """Infinite-width kernels of an architecture: `nngp` and `ntk`, float tensors
    `[N1, N2]` (either is `None` when it was not requested with `get`).

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    >>> k = nk.serial(nk.Dense(1)).kernel(x)
    >>> k.nngp.shape, k.ntk.shape
    (torch.Size([2, 2]), torch.Size([2, 2]))
    """

    nngp: torch.Tensor | None
    ntk: torch.Tensor | None

    def __iter__(self):
        return iter((self.nngp, self.ntk))


torch.export.register_dataclass(Kernel)   # a pytree: torch.func.vmap/grad of a kernel returning it

def _pixel_products(x1: torch.Tensor, x2: torch.Tensor, full: bool) -> torch.Tensor:
    """sum_c x1[n, c, p] x2[m, c, q] for all pixel pairs (`full`, [N1, N2, H, W, H, W])
    or same-pixel pairs ([N1, N2, H, W])."""
    (n1, c, *spatial), n2 = x1.shape, x2.shape[0]
    if not full:
        if c > 8:  # one batched GEMM over pixels
            products = torch.bmm(x1.flatten(2).permute(2, 0, 1), x2.flatten(2).permute(2, 1, 0))
            return products.permute(1, 2, 0).reshape(n1, n2, *spatial)
        out = x1[:, None, 0] * x2[None, :, 0]  # few channels (RGB): C fused passes
        for channel in range(1, c):
            out.addcmul_(x1[:, None, channel], x2[None, :, channel])
        return out
    a = x1.flatten(2).transpose(1, 2).reshape(-1, c)          # [N1 * P, C]
    b = x2.flatten(2).transpose(1, 2).reshape(-1, c)          # [N2 * P, C]
    positions = a.shape[0] // n1
    products = (a @ b.T).reshape(n1, positions, n2, positions).transpose(1, 2)
    return products.reshape(n1, n2, *spatial, *spatial)


def _self_pixel_products(x: torch.Tensor, full: bool) -> torch.Tensor:
    """Each image with itself: [N, H, W, H, W] (`full`) or [N, H, W]."""
    if not full:
        return (x * x).sum(1)
    flat = x.flatten(2)                                      # [N, C, P]
    return (flat.transpose(1, 2) @ flat).reshape(x.shape[0], *x.shape[2:], *x.shape[2:])
