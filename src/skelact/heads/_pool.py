"""Pooling of a backbone tap for the heads: the means over persons and frames, and over persons and joints."""

from __future__ import annotations

import torch


class _DecoupledMeans(torch.autograd.Function):
    """x (N·M, C, T, V) -> (N, C, V), (N, C, T). Backward writes the tap's gradient in one pass, in x's
    own layout: two broadcast gradients summed by autograd would come out NCHW-contiguous, and adding the
    backbone's channels-last gradient to them would give the unit below a gradient in the wrong layout."""

    @staticmethod
    def forward(ctx, x, n: int, m: int):
        _, c, t, v = x.shape
        rows = x.permute(0, 2, 3, 1)  # a view; contiguous for channels-last x
        over_t = rows.sum(1).reshape(n, m, v, c).sum(1).transpose(1, 2)
        over_v = rows.sum(2).reshape(n, m, t, c).sum(1).transpose(1, 2)
        ctx.x_like = torch.empty_like(x, device="meta")  # shape and layout, no data
        ctx.n, ctx.m = n, m
        return over_t / (t * m), over_v / (v * m)

    @staticmethod
    def backward(ctx, g_t, g_v):
        like, n, m = ctx.x_like, ctx.n, ctx.m
        _, c, t, v = like.shape
        gx = torch.empty_strided(like.shape, like.stride(), dtype=g_t.dtype, device=g_t.device)
        torch.add((g_t / (t * m)).view(n, 1, c, 1, v).expand(n, m, c, t, v),
                  (g_v / (v * m)).view(n, 1, c, t, 1).expand(n, m, c, t, v), out=gx.view(n, m, c, t, v))
        return gx, None, None


def decoupled_means(x: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x (N·M, C, T, V) -> (mean over M and T: (N, C, V), mean over M and V: (N, C, T)).

    Computed as sums over x's rows (B, T, V, C), scaled once they are small: for the channels-last taps of
    CTR-GCN each sum is one fast pass (``x.mean(dim=2)`` on them takes about 6x as long), and backward
    writes the full-size gradient once, in x's layout (:class:`_DecoupledMeans`).
    """
    return _DecoupledMeans.apply(x, n, m)
