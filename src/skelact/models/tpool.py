"""Max-pooling over frames, ``F.max_pool2d(x, (k, 1), (s, 1), (p, 0))`` of a (B, C, T, V) tensor: the
pooling branch of CTR-GCN's temporal block (k = 3, p = 1).

On float32 channels-last CPU tensors it runs an optional C kernel of ``_fused.c`` (the same
build and conditions as :mod:`skelact.models.bnact`): no int64 index tensor is written, and backward
recomputes each window's winner from the input and gathers per input frame, so it needs neither a zero
fill nor a scatter. The winners are ATen's (the first maximum of a window; NaN wins), so gradients are
the same as PyTorch's, which runs everywhere else. Like bnact's, the kernel path is differentiable once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from . import bnact

CL = torch.channels_last


class _TemporalMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, k: int, s: int, p: int):
        b, c, t, v = x.shape
        y = torch.empty(b, c, (t + 2 * p - k) // s + 1, v, dtype=torch.float32, device="cpu", memory_format=CL)
        bnact._fused.pool(x.data_ptr(), 0, y.data_ptr(), b, t, v, c, k, s, p, torch.get_num_threads())
        ctx.save_for_backward(x)
        ctx.window = k, s, p
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        b, c, t, v = x.shape
        g = g.contiguous(memory_format=CL)
        gx = torch.empty_like(x)
        bnact._fused.pool(x.data_ptr(), g.data_ptr(), gx.data_ptr(), b, t, v, c, *ctx.window, torch.get_num_threads())
        return gx, None, None, None


def temporal_max_pool(x: torch.Tensor, kernel: int = 3, stride: int = 1, padding: int = 1) -> torch.Tensor:
    """(B, C, T, V) -> (B, C, (T + 2·padding − kernel) // stride + 1, V): the maximum over windows of
    ``kernel`` frames, as ``F.max_pool2d(x, (kernel, 1), (stride, 1), (padding, 0))``."""
    if (x.dim() == 4 and bnact.kernel_may_run(x)
            and x.is_contiguous(memory_format=CL) and x.numel() > 0 and kernel >= 1 and stride >= 1
            and 0 <= padding <= kernel // 2 and kernel <= x.shape[2] + 2 * padding and x.shape[2] < 2 ** 31):
        return _TemporalMaxPool.apply(x, kernel, stride, padding)
    return F.max_pool2d(x, (kernel, 1), (stride, 1), (padding, 0))
