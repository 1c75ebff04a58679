"""`GlobalSelfAttention` on token sequences `[N, T, C]` (neural-tangents'
`stax.GlobalSelfAttention`; Hron, Bahri, Sohl-Dickstein & Novak 2020, "Infinite attention:
NNGP and NTK for deep attention networks").

Finite layer, per head h = 1..H, in the NTK parameterization with all weights N(0, 1):
    keys = queries = x W^K_h            (tied, `linear_scaling=True`)
    G_h  = phi(W_QK_std x W^K_h (x W^K_h)^T / (C_in d_key))        [T, T], phi = softmax over keys
    out  = concat_h(G_h x W^V_h) W^O * W_OV_std / sqrt(d_val H C_in) + b_std b
with W_QK_std = W_query_std W_key_std and W_OV_std = W_out_std W_value_std.
(`linear_scaling=False`: independent queries and a 1/sqrt(d_key) scale; no kernel.)

Kernel (`linear_scaling=True`): as C_in, d_key -> infinity the logits converge to the
deterministic `W_QK_std K(x, x)` (the input's token covariance), so with
G(x) = phi(W_QK_std K(x, x)) [T, T], for each pair of inputs
    K'(x, x')     = W_OV_std^2 G(x) K(x, x') G(x')^T + b_std^2,
    Theta'(x, x') = W_OV_std^2 G(x) Theta(x, x') G(x')^T + b_std^2 + 2 W_OV_std^2 G(x) K(x, x') G(x')^T
(values and output weights each add the NNGP term; keys and queries add nothing in the
limit).  The output is Gaussian.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .._core.validation import one_of, positive, positive_int
from .layer import Layer
from .state import KernelState

MECHANISMS = ("SOFTMAX", "IDENTITY", "ABS", "RELU")


def attention_weights(logits: torch.Tensor, mechanism: str) -> torch.Tensor:
    """phi of the logits `[..., T, T]`: softmax over the last (key) axis, or elementwise."""
    if mechanism == "SOFTMAX":
        return torch.softmax(logits, dim=-1)
    return {"IDENTITY": lambda t: t, "ABS": torch.abs, "RELU": torch.relu}[mechanism](logits)


class SelfAttentionModule(nn.Module):
    """Finite-width multi-head self-attention on `[N, T, C_in]` (batch first)."""

    def __init__(self, in_channels: int, layer: "GlobalSelfAttention", generator: torch.Generator,
                 dtype: torch.dtype):
        super().__init__()
        self.layer = layer
        heads, key, val = layer.n_heads, layer.n_chan_key, layer.n_chan_val
        randn = lambda *shape: nn.Parameter(torch.randn(*shape, generator=generator, dtype=dtype))  # noqa: E731
        self.key = randn(heads, in_channels, key)
        self.query = None if layer.linear_scaling else randn(heads, in_channels, key)
        self.value = randn(heads, in_channels, val)
        self.out = randn(heads * val, layer.n_chan_out)
        self.bias = None if layer.b_std is None else randn(layer.n_chan_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[-1] != self.key.shape[1]:
            raise ValueError(f"self-attention takes token sequences [N, T, {self.key.shape[1]}] "
                             f"(batch first, channels last), got shape {tuple(x.shape)}")
        layer, c_in = self.layer, x.shape[-1]
        keys = torch.einsum("ntc,hck->hntk", x, self.key)
        queries = keys if self.query is None else torch.einsum("ntc,hck->hntk", x, self.query)
        norm = c_in * layer.n_chan_key ** (1.0 if layer.linear_scaling else 0.5)
        logits = queries @ keys.transpose(-1, -2) * (layer.qk_std / norm)
        values = torch.einsum("ntc,hcv->hntv", x, self.value)
        heads = attention_weights(logits, layer.attention_mechanism) @ values   # [H, N, T, V]
        heads = heads.permute(1, 2, 0, 3).flatten(2)                            # [N, T, H V]
        out = heads @ self.out * (layer.ov_std / math.sqrt(self.value.shape[-1] * layer.n_heads * c_in))
        return out if self.bias is None or layer.b_std is None else out + layer.b_std * self.bias


def _mix(t: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """`left[n] @ t[n, m] @ right[m]^T` for every pair: t `[N1, N2, T, T]`, left `[N1, T, T]`,
    right `[N2, T, T]`, as two batched GEMMs (one per side, each over a whole row of pairs)."""
    n1, n2, tokens = t.shape[0], t.shape[1], t.shape[-1]
    rows = torch.bmm(left, t.transpose(1, 2).reshape(n1, tokens, n2 * tokens))     # [N1, T, N2 T]
    columns = rows.reshape(n1, tokens, n2, tokens).permute(2, 0, 1, 3).reshape(n2, n1 * tokens, tokens)
    out = torch.bmm(columns, right.transpose(1, 2))                                  # [N2, N1 T, T]
    return out.reshape(n2, n1, tokens, tokens).transpose(0, 1)


class GlobalSelfAttention(Layer[KernelState, KernelState]):
    """`GlobalSelfAttention(n_chan_out, n_chan_key, n_chan_val, n_heads, linear_scaling=True,
    W_key_std=1.0, W_value_std=1.0, W_query_std=1.0, W_out_std=1.0, b_std=None,
    attention_mechanism="SOFTMAX")`: neural-tangents' layer on token sequences `[N, T, C]`
    (batch first, as `nn.MultiheadAttention(batch_first=True)`).  The infinite-width kernel
    exists for `linear_scaling=True` (tied keys and queries, 1/d_key logits: see the module
    docstring); positional embeddings are not implemented.

    Parameters
    ----------
    n_chan_out, n_chan_key, n_chan_val, n_heads : int
        Output, key/query and value widths per head, and the number of heads (finite network).
    linear_scaling : bool
        Scale the logits by 1/n_chan_key (True) or 1/sqrt(n_chan_key).
    W_key_std, W_value_std, W_query_std, W_out_std, b_std
        Standard deviations, as neural-tangents' `stax.GlobalSelfAttention`.
    attention_mechanism : {"SOFTMAX", "IDENTITY", "ABS", "RELU"}

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> transformer = nk.serial(nk.Dense(64), nk.GlobalSelfAttention(64, 64, 64, n_heads=4),
    ...                         nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1))
    >>> tokens = torch.randn(5, 7, 16, dtype=torch.float64)             # [N, T, C]
    >>> transformer.kernel(tokens, get="ntk").shape
    torch.Size([5, 5])
    """

    takes_sequences = True
    needs_all_pixel_pairs = True

    def __init__(self, n_chan_out: int, n_chan_key: int, n_chan_val: int, n_heads: int,
                 linear_scaling: bool = True, W_key_std: float = 1.0, W_value_std: float = 1.0,
                 W_query_std: float = 1.0, W_out_std: float = 1.0, b_std: float | None = None,
                 attention_mechanism: str = "SOFTMAX"):
        self.n_chan_out = positive_int(n_chan_out, "n_chan_out")
        self.n_chan_key = positive_int(n_chan_key, "n_chan_key")
        self.n_chan_val = positive_int(n_chan_val, "n_chan_val")
        self.n_heads = positive_int(n_heads, "n_heads")
        self.linear_scaling = bool(linear_scaling)
        self.qk_std = positive(W_query_std, "W_query_std") * positive(W_key_std, "W_key_std")
        self.ov_std = positive(W_out_std, "W_out_std") * positive(W_value_std, "W_value_std")
        self.b_std = None if b_std is None else positive(b_std, "b_std", allow_zero=True)
        self.attention_mechanism = one_of(str(attention_mechanism).upper(), "attention_mechanism",
                                          MECHANISMS)

    def build(self, in_shape, generator, dtype):
        if len(in_shape) != 2:
            raise ValueError(f"{self.label} acts on token sequences (T, C), got inputs of shape "
                             f"{tuple(in_shape)}; pass [N, T, C] batches (for images, flatten "
                             f"the pixels into tokens first)")
        module = SelfAttentionModule(in_shape[-1], self, generator, dtype)
        return module, (in_shape[0], self.n_chan_out)

    def kernel_map(self, k: KernelState) -> KernelState:
        if len(k.spatial) != 1:
            kind = "images" if k.spatial else "vectors"
            raise ValueError(f"attention acts on token sequences [N, T, C] but gets {kind}; pass "
                             f"sequence batches (for images, flatten the pixels into tokens first)")
        if not self.linear_scaling:
            raise ValueError("the infinite-width kernel of attention has no closed form with "
                             "linear_scaling=False (neural-tangents neither); use "
                             "linear_scaling=True, or nk.monte_carlo_kernel for this network")
        if not k.full:
            raise ValueError("attention needs the covariance of all token pairs: compute the "
                             "kernel through nk.serial(...).kernel, which tracks them")
        ov2, b2 = self.ov_std ** 2, (self.b_std or 0.0) ** 2
        weights1, weights2 = k.map_variances(
            lambda var: attention_weights(self.qk_std * var, self.attention_mechanism))

        nngp_part = _mix(k.nngp, weights1, weights2).mul_(ov2)
        ntk = k.ntk
        if ntk is not None:
            ntk = (nngp_part * 2 if isinstance(ntk, float) else
                   _mix(ntk, weights1, weights2).mul_(ov2).add_(nngp_part, alpha=2)).add_(b2)
        nngp = nngp_part.add_(b2)
        if k.symmetric:  # the diagonal block itself, bitwise: identical inputs keep correlation 1
            var1 = var2 = nngp.diagonal(0, 0, 1).movedim(-1, 0).clone()
        else:
            var1, var2 = (torch.bmm(torch.bmm(w, var), w.transpose(1, 2)).mul_(ov2).add_(b2)
                          for w, var in ((weights1, k.var1), (weights2, k.var2)))
        return k.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2,
                         width=self.n_chan_out, is_gaussian=True, fresh=True)
