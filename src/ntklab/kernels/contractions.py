"""Contractions of per-sample features into kernel blocks, in the three output modes of
`empirical_ntk`: "full" [n1, n2, O, O], "trace" [n1, n2] (mean over outputs, as
neural-tangents' trace_axes) and "diagonal" [n1, n2, O]."""
from __future__ import annotations

import torch

MODES = ("trace", "full", "diagonal")


def contract(left: torch.Tensor, right: torch.Tensor, mode: str) -> torch.Tensor:
    """sum_f left[i, a, f] right[j, b, f] as `mode` asks ([n1, n2, O, O] / trace / diagonal)."""
    n1, n_out, width = left.shape
    n2 = right.shape[0]
    if mode == "full":
        return (left.reshape(n1 * n_out, width) @ right.reshape(n2 * n_out, width).T
                ).reshape(n1, n_out, n2, n_out).permute(0, 2, 1, 3)
    if mode == "trace":
        return left.reshape(n1, -1) @ right.reshape(n2, -1).T / n_out
    return torch.bmm(left.permute(1, 0, 2), right.permute(1, 2, 0)).permute(1, 2, 0)


def expand_to(factor: torch.Tensor, mode: str) -> torch.Tensor:
    """`factor` [N1, N2] shaped to broadcast against a block of `mode` ("full", "trace", "diagonal")."""
    return {"full": factor[:, :, None, None], "trace": factor, "diagonal": factor[:, :, None]}[mode]
