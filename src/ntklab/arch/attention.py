"""`GlobalSelfAttention` on token sequences `[N, T, C]` (neural-tangents'
`stax.GlobalSelfAttention`; Hron, Bahri, Sohl-Dickstein & Novak 2020, "Infinite attention:
NNGP and NTK for deep attention networks").

Finite layer, per head h = 1..H, in the NTK parameterization with all weights N(0, 1):
    keys = queries = x W^K_h            (tied, `linear_scaling=True`)
    G_h  = phi(W_QK_std x W^K_h (x W^K_h)^T / (C_in d_key))        [T, T], phi = softmax over keys
    out  = concat_h(G_h x W^V_h) W^O * W_OV_std / sqrt(d_val H C_in) + b_std b
with W_QK_std = W_query_std W_key_std and W_OV_std = W_out_std W_value_std.
`linear_scaling=False`: independent queries and logits scaled by 1/(C_in sqrt(d_key)).

Positional embeddings (`pos_emb_type`): a trainable `[T, C_pe]` array e, drawn N(0, 1) and
multiplied by `W_pos_emb_std` (and by the Cholesky factor L of R below when `pos_emb_decay_fn` is
given), added to the tokens ("SUM", C_pe = C) or concatenated to their channels ("CONCAT"),
for the keys and queries, and for the values too when `val_pos_emb`.  Its token covariance is
    R[i, j] = pos_emb_decay_fn(|i - j| ** pos_emb_p_norm)   (the identity when no decay_fn),
so the inputs' kernel seen by the keys is interpolated K_i = a K + b R, with (a, b) = (1,
W_pos_emb_std^2) for "SUM" and (C/(C + C_pe), W_pos_emb_std^2 C_pe/(C + C_pe)) for "CONCAT";
the NTK likewise (e is trained).

Kernel (`linear_scaling=True`): as C_in, d_key -> infinity the logits converge to the
deterministic `W_QK_std K(x, x)` (the input's token covariance), so with
G(x) = phi(W_QK_std K(x, x)) [T, T], for each pair of inputs
    K'(x, x')     = W_OV_std^2 G(x) K(x, x') G(x')^T + b_std^2,
    Theta'(x, x') = W_OV_std^2 G(x) Theta(x, x') G(x')^T + b_std^2 + 2 W_OV_std^2 G(x) K(x, x') G(x')^T
(values and output weights each add the NNGP term; keys and queries add nothing in the
limit), with K, Theta replaced by K_i, Theta_i where the values see the embeddings and G
computed from K_i(x, x).

Kernel (`linear_scaling=False`, IDENTITY mechanism only: the other mechanisms have no closed
form): with <A, B> = sum_{s, s'} A[s, s'] B[s, s'] over token pairs and s = W_QK_std W_OV_std,
    K'(x, x')     = s^2 <K_i, K_v> K_i + b_std^2,
    Theta'(x, x') = s^2 (D K_i + <K_i, K_v> (Theta_i + 4 K_i)) + b_std^2,
with K_v the values' kernel (K_i when `val_pos_emb`, else K) and D = 2 <K_i, Theta_i> (no
embeddings or `val_pos_emb`) or <K_i, Theta> + <K, Theta_i>: keys, queries and values are
independent Gaussians, E[G G'] = W_QK_std^2 K_i K_i (Hron et al. 2020, sec. 3).  The output is
Gaussian in the limit of infinitely many heads too (the logits stay random, so each head's
weights G do; with few heads the output is a Gaussian mixture).  Both follow neural-tangents
0.6.5 `stax.GlobalSelfAttention` line by line.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .._core.validation import one_of, positive, positive_int
from .layer import Layer
from .state import KernelState

MECHANISMS = ("SOFTMAX", "IDENTITY", "ABS", "RELU")
POSITIONAL_EMBEDDINGS = ("NONE", "SUM", "CONCAT")


def positional_covariance(tokens: int, p_norm: float, decay_fn, *, dtype: torch.dtype,
                          device: torch.device | None = None) -> torch.Tensor:
    """R `[T, T]`: `decay_fn(|i - j| ** p_norm)` of the token distances, or the identity when
    `decay_fn` is None (neural-tangents' `_pos_emb_pdist`)."""
    if decay_fn is None:
        return torch.eye(tokens, dtype=dtype, device=device)
    index = torch.arange(tokens, dtype=dtype, device=device)
    distance = (index[:, None] - index[None, :]).abs() ** p_norm
    r = decay_fn(distance)
    if not isinstance(r, torch.Tensor) or r.shape != distance.shape or not bool(torch.isfinite(r).all()):
        raise ValueError(f"pos_emb_decay_fn must map the [T, T] tensor of token distances to a finite "
                         f"tensor of the same shape (e.g. lambda d: torch.exp(-d)), got {r!r}")
    return r.to(dtype)


def attention_weights(logits: torch.Tensor, mechanism: str,
                      masked_keys: torch.Tensor | None = None) -> torch.Tensor:
    """phi of the logits `[..., N, T, T]`: softmax over the last (key) axis, or elementwise;
    `masked_keys` `[N, T]` (True: masked, `arch.masking`) get weight 0: softmax logits -inf
    (the other mechanisms' logits of a masked key are 0 already, its values zeroed)."""
    if mechanism == "SOFTMAX":
        if masked_keys is not None:
            logits = logits.masked_fill(masked_keys[..., None, :], -math.inf)
        return torch.softmax(logits, dim=-1)
    return {"IDENTITY": lambda t: t, "ABS": torch.abs, "RELU": torch.relu}[mechanism](logits)


class SelfAttentionModule(nn.Module):
    """Finite-width multi-head self-attention on `[N, T, C_in]` (batch first)."""

    def __init__(self, in_shape: tuple[int, int], layer: "GlobalSelfAttention",
                 generator: torch.Generator, dtype: torch.dtype):
        super().__init__()
        self.layer = layer
        heads, key, val = layer.n_heads, layer.n_chan_key, layer.n_chan_val
        tokens, in_channels = in_shape
        self.in_channels = in_channels
        randn = lambda *shape: nn.Parameter(torch.randn(*shape, generator=generator, dtype=dtype))  # noqa: E731
        embedding = layer.embedding_channels(in_channels)
        concat = embedding if layer.pos_emb_type == "CONCAT" else 0
        self.pos_emb = None if layer.pos_emb_type == "NONE" else randn(tokens, embedding)
        self.key = randn(heads, in_channels + concat, key)
        self.query = None if layer.linear_scaling else randn(heads, in_channels + concat, key)
        self.value = randn(heads, in_channels + (concat if layer.val_pos_emb else 0), val)
        self.out = randn(heads * val, layer.n_chan_out)
        self.bias = None if layer.b_std is None else randn(layer.n_chan_out)
        if layer.pos_emb_decay_fn is not None and self.pos_emb is not None:
            r = positional_covariance(tokens, layer.pos_emb_p_norm, layer.pos_emb_decay_fn, dtype=dtype)
            factor, info = torch.linalg.cholesky_ex(r)
            if info != 0:
                raise ValueError(f"pos_emb_decay_fn gives a token covariance R that is not positive "
                                 f"definite for {tokens} tokens, so the finite network cannot draw "
                                 f"embeddings with it (its kernel exists); use a decay such as "
                                 f"lambda d: torch.exp(-d)")
            self.register_buffer("pos_emb_factor", factor)
        else:
            self.pos_emb_factor = None

    def forward(self, x: torch.Tensor, masked_keys: torch.Tensor | None = None) -> torch.Tensor:
        """`masked_keys` `[N, T]`: the masked tokens (`arch.masking`), given no attention weight."""
        if x.ndim != 3 or x.shape[-1] != self.in_channels:
            raise ValueError(f"self-attention takes token sequences [N, T, {self.in_channels}] "
                             f"(batch first, channels last), got shape {tuple(x.shape)}")
        layer, values_in = self.layer, x
        if self.pos_emb is not None:
            embedding: torch.Tensor = self.pos_emb * layer.pos_emb_std
            if self.pos_emb_factor is not None:
                embedding = self.pos_emb_factor @ embedding
            if layer.pos_emb_type == "SUM":
                x = x + embedding
            else:
                x = torch.cat([x, embedding.expand(x.shape[0], -1, -1)], dim=-1)
            values_in = x if layer.val_pos_emb else values_in
        keys = torch.einsum("ntc,hck->hntk", x, self.key)
        queries = keys if self.query is None else torch.einsum("ntc,hck->hntk", x, self.query)
        norm = x.shape[-1] * layer.n_chan_key ** (1.0 if layer.linear_scaling else 0.5)
        logits = queries @ keys.transpose(-1, -2) * (layer.qk_std / norm)
        values = torch.einsum("ntc,hcv->hntv", values_in, self.value)
        heads = attention_weights(logits, layer.attention_mechanism, masked_keys) @ values   # [H, N, T, V]
        heads = heads.permute(1, 2, 0, 3).flatten(2)                            # [N, T, H V]
        scale = layer.ov_std / math.sqrt(self.value.shape[-1] * layer.n_heads * values_in.shape[-1])
        out = heads @ self.out * scale
        return out if self.bias is None or layer.b_std is None else out + layer.b_std * self.bias


def pair_products(t: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
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
    attention_mechanism="SOFTMAX", pos_emb_type="NONE", pos_emb_p_norm=2, pos_emb_decay_fn=None,
    n_chan_pos_emb=None, W_pos_emb_std=1.0, val_pos_emb=False)`: neural-tangents' layer on token
    sequences `[N, T, C]` (batch first, as `nn.MultiheadAttention(batch_first=True)`).  The
    infinite-width kernel exists for `linear_scaling=True` (tied keys and queries, 1/d_key
    logits) and, with `linear_scaling=False`, for the IDENTITY mechanism (see the module
    docstring); other mechanisms with `linear_scaling=False` are refused.

    Parameters
    ----------
    n_chan_out, n_chan_key, n_chan_val, n_heads : int
        Output, key/query and value widths per head, and the number of heads (finite network).
    linear_scaling : bool
        Scale the logits by 1/n_chan_key and tie keys and queries (True), or 1/sqrt(n_chan_key).
    W_key_std, W_value_std, W_query_std, W_out_std, b_std
        Standard deviations, as neural-tangents' `stax.GlobalSelfAttention`.
    attention_mechanism : {"SOFTMAX", "IDENTITY", "ABS", "RELU"}
    pos_emb_type : {"NONE", "SUM", "CONCAT"}
        Trainable positional embeddings added to or concatenated with the tokens.
    pos_emb_p_norm : float
        p of the token distance |i - j|^p given to `pos_emb_decay_fn`.
    pos_emb_decay_fn : callable or None
        Torch function of the `[T, T]` distances giving the embeddings' token covariance
        (e.g. `lambda d: torch.exp(-d)`); None: independent embeddings per token.
    n_chan_pos_emb : int or None
        Embedding channels for "CONCAT" (None: the input's); "SUM" needs the input's.
    W_pos_emb_std : float
        Standard deviation of the embeddings.
    val_pos_emb : bool
        Whether the values see the embeddings too (else only keys and queries).

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> transformer = nk.serial(nk.Dense(64), nk.GlobalSelfAttention(64, 64, 64, n_heads=4),
    ...                         nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1))
    >>> tokens = torch.randn(5, 7, 16, dtype=torch.float64)             # [N, T, C]
    >>> transformer.kernel(tokens, get="ntk").shape
    torch.Size([5, 5])
    >>> positional = nk.serial(nk.Dense(64), nk.GlobalSelfAttention(
    ...     64, 64, 64, n_heads=4, linear_scaling=False, attention_mechanism="IDENTITY",
    ...     pos_emb_type="SUM", pos_emb_decay_fn=lambda d: torch.exp(-d)), nk.GlobalAvgPool(), nk.Dense(1))
    >>> positional.kernel(tokens, get="nngp").shape
    torch.Size([5, 5])
    """

    takes_sequences = True
    needs_all_pixel_pairs = True

    def __init__(self, n_chan_out: int, n_chan_key: int, n_chan_val: int, n_heads: int,
                 linear_scaling: bool = True, W_key_std: float = 1.0, W_value_std: float = 1.0,
                 W_query_std: float = 1.0, W_out_std: float = 1.0, b_std: float | None = None,
                 attention_mechanism: str = "SOFTMAX", pos_emb_type: str = "NONE",
                 pos_emb_p_norm: float = 2, pos_emb_decay_fn: Callable | None = None,
                 n_chan_pos_emb: int | None = None, W_pos_emb_std: float = 1.0,
                 val_pos_emb: bool = False):
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
        self.pos_emb_type = one_of(str(pos_emb_type).upper(), "pos_emb_type", POSITIONAL_EMBEDDINGS)
        self.pos_emb_p_norm = positive(pos_emb_p_norm, "pos_emb_p_norm")
        if pos_emb_decay_fn is not None and not callable(pos_emb_decay_fn):
            raise ValueError(f"pos_emb_decay_fn must be None or a torch function of the token "
                             f"distances, got {pos_emb_decay_fn!r}")
        self.pos_emb_decay_fn = pos_emb_decay_fn
        self.n_chan_pos_emb = None if n_chan_pos_emb is None else positive_int(n_chan_pos_emb,
                                                                                "n_chan_pos_emb")
        self.pos_emb_std = positive(W_pos_emb_std, "W_pos_emb_std")
        self.val_pos_emb = bool(val_pos_emb)

    @property
    def mask_rule(self) -> str | None:   # type: ignore[override]
        """Masked keys get no weight (`arch.masking`); not with positional embeddings."""
        return "attention" if self.pos_emb_type == "NONE" else None

    def embedding_channels(self, in_channels: int) -> int:
        """C_pe, the positional embeddings' channels for inputs of `in_channels`."""
        channels = in_channels if self.n_chan_pos_emb is None else self.n_chan_pos_emb
        if self.pos_emb_type == "SUM" and channels != in_channels:
            raise ValueError(f"pos_emb_type='SUM' adds the embeddings to the {in_channels} input "
                             f"channels, but n_chan_pos_emb={channels}; leave n_chan_pos_emb=None or "
                             f"use pos_emb_type='CONCAT'")
        return channels

    def build(self, in_shape, generator, dtype):
        if len(in_shape) != 2:
            raise ValueError(f"{self.label} acts on token sequences (T, C), got inputs of shape "
                             f"{tuple(in_shape)}; pass [N, T, C] batches (for images, flatten "
                             f"the pixels into tokens first)")
        module = SelfAttentionModule(tuple(in_shape), self, generator, dtype)
        return module, (in_shape[0], self.n_chan_out)

    def _interpolation(self, k: KernelState):
        """`t -> a t + b R` (the keys' view of the inputs' kernel `t`, see the module docstring),
        or None without positional embeddings."""
        if self.pos_emb_type == "NONE":
            return None
        embedding = self.embedding_channels(k.width)
        r = positional_covariance(k.spatial[0], self.pos_emb_p_norm, self.pos_emb_decay_fn,
                                  dtype=k.nngp.dtype, device=k.nngp.device)
        a, b = 1.0, self.pos_emb_std ** 2
        if self.pos_emb_type == "CONCAT":
            a, b = a * k.width / (k.width + embedding), b * embedding / (k.width + embedding)
        return lambda t: r.mul(b).add(t, alpha=a)

    def kernel_map(self, k: KernelState) -> KernelState:
        if len(k.spatial) != 1:
            kind = "images" if k.spatial else "vectors"
            raise ValueError(f"attention acts on token sequences [N, T, C] but gets {kind}; pass "
                             f"sequence batches (for images, flatten the pixels into tokens first)")
        if not self.linear_scaling and self.attention_mechanism != "IDENTITY":
            raise ValueError(f"the infinite-width kernel of attention has no closed form with "
                             f"linear_scaling=False and attention_mechanism="
                             f"{self.attention_mechanism!r} (neural-tangents neither); use "
                             f"linear_scaling=True or attention_mechanism='IDENTITY', or "
                             f"nk.monte_carlo_kernel for this network")
        if not k.full:
            raise ValueError("attention needs the covariance of all token pairs: compute the "
                             "kernel through nk.serial(...).kernel, which tracks them")
        interp = self._interpolation(k) or (lambda t: t)
        ntk = None if k.ntk is None else torch.zeros_like(k.nngp) if isinstance(k.ntk, float) else k.ntk
        keys = dict(nngp=interp(k.nngp), ntk=None if ntk is None else interp(ntk))
        keys["var1"], keys["var2"] = k.map_variances(interp)
        values = keys if self.val_pos_emb else dict(nngp=k.nngp, ntk=ntk, var1=k.var1, var2=k.var2)
        out = (self._linear_scaling if self.linear_scaling else self._identity)(k, keys, values)
        nngp, ntk, var1, var2 = out
        if k.symmetric:  # the diagonal block itself, bitwise: identical inputs keep correlation 1
            var1 = var2 = nngp.diagonal(0, 0, 1).movedim(-1, 0).clone()
        return k.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2,
                         width=self.n_chan_out, is_gaussian=True, fresh=True)

    def _linear_scaling(self, k: KernelState, keys: dict, values: dict):
        """Outputs (nngp, ntk, var1, var2) with tied keys and queries (module docstring)."""
        ov2, b2 = self.ov_std ** 2, (self.b_std or 0.0) ** 2
        masked1, masked2 = (None, None) if k.mask is None else k.mask
        weights1 = attention_weights(self.qk_std * keys["var1"], self.attention_mechanism, masked1)
        weights2 = weights1 if k.symmetric else attention_weights(self.qk_std * keys["var2"],
                                                                  self.attention_mechanism, masked2)
        nngp_part = pair_products(values["nngp"], weights1, weights2).mul_(ov2)
        ntk = values["ntk"]
        if ntk is not None:
            ntk = pair_products(ntk, weights1, weights2).mul_(ov2).add_(nngp_part, alpha=2).add_(b2)
        var1, var2 = (None, None) if k.symmetric else (
            torch.bmm(torch.bmm(w, var), w.transpose(1, 2)).mul_(ov2).add_(b2)
            for w, var in ((weights1, values["var1"]), (weights2, values["var2"])))
        return nngp_part.add_(b2), ntk, var1, var2

    def _identity(self, k: KernelState, keys: dict, values: dict):
        """Outputs (nngp, ntk, var1, var2) of IDENTITY attention with 1/sqrt(d_key) logits."""
        s2, b2 = (self.qk_std * self.ov_std) ** 2, (self.b_std or 0.0) ** 2
        dot = lambda a, b: (a * b).sum((-2, -1))[..., None, None]  # noqa: E731  <a, b> per pair
        dot12 = dot(keys["nngp"], values["nngp"])
        nngp = (dot12 * keys["nngp"]).mul_(s2).add_(b2)
        ntk = keys["ntk"]
        if ntk is not None:
            both = self.val_pos_emb or self.pos_emb_type == "NONE"
            d = (2 * dot(keys["nngp"], ntk) if both else
                 dot(keys["nngp"], values["ntk"]) + dot(values["nngp"], ntk))
            ntk = (d * keys["nngp"]).add_(dot12 * (ntk + 4 * keys["nngp"])).mul_(s2).add_(b2)
        var1, var2 = (None, None) if k.symmetric else (
            (dot(keys[v], values[v]) * keys[v]).mul_(s2).add_(b2) for v in ("var1", "var2"))
        return nngp, ntk, var1, var2
