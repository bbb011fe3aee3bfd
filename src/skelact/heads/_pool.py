"""Pooling of a backbone tap for the heads: the means over persons and frames, and over persons and joints."""

from __future__ import annotations

import torch


def decoupled_means(x: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x (N·M, C, T, V) -> (mean over M and T: (N, C, V), mean over M and V: (N, C, T)).

    Computed as sums over x's rows (B, T, V, C), scaled once they are small: for the channels-last taps of
    CTR-GCN each sum is one fast pass (``x.mean(dim=2)`` on them takes about 6x as long), and backward
    broadcasts the small gradient where a mean's backward would materialise a full-size tensor.
    """
    _, c, t, v = x.shape
    rows = x.permute(0, 2, 3, 1)  # a view; contiguous for channels-last x
    over_t = rows.sum(1).reshape(n, m, v, c).sum(1).transpose(1, 2)
    over_v = rows.sum(2).reshape(n, m, t, c).sum(1).transpose(1, 2)
    return over_t / (t * m), over_v / (v * m)
