"""``relu(bn(x) + residual)``: a BatchNorm layer fused with the residual add and the ReLU after it.

In training, on float32 channels-last CPU tensors, one C kernel pass computes the batch statistics and one
applies BN, the residual and the ReLU (``_fused.c``, built by ``pip install`` where a C compiler with
OpenMP exists); backward is likewise two passes, and hands the residual branch its masked gradient. This
replaces a BN kernel, an add and a ReLU in each direction (bench/README.md: 1-4 % of a CTR-GCN training
step, by the measurement). Everywhere else (eval mode, autocast, GPUs, other layouts, DDP's synchronised
BatchNorm, torch.compile, no compiled kernel) it is the same PyTorch code the model had before:
``bn(x)``, ``+ residual``, ``relu``.

Both paths compute the same function to float rounding (the kernel accumulates its statistics in double),
update the running statistics the same way, and are deterministic on CPU for any thread count.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.utils._python_dispatch import _get_current_dispatch_mode

try:
    from . import _fused  # optional C kernels (setup.py)
except ImportError:  # pragma: no cover - depends on the build
    _fused = None

CL = torch.channels_last


class _BNAct(torch.autograd.Function):
    """x, residual (B, C, T, V) channels-last float32 -> relu(BN(x) + residual) and the batch statistics
    (3, C): mean, biased variance, 1/sqrt(var + eps)."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual, relu: bool, eps: float):
        n, c = x.numel() // x.shape[1], x.shape[1]
        y = torch.empty_like(x, memory_format=CL)
        stats = x.new_empty(3, c)  # mean, biased var, invstd
        _fused.forward(x.data_ptr(), 0 if residual is None else residual.data_ptr(), y.data_ptr(),
                       weight.data_ptr(), bias.data_ptr(), stats.data_ptr(), n, c, relu, eps,
                       torch.get_num_threads())
        ctx.save_for_backward(x, y if relu else None, weight, stats)
        ctx.has_residual = residual is not None
        ctx.mark_non_differentiable(stats)
        return y, stats

    @staticmethod
    @once_differentiable
    def backward(ctx, g, _):
        x, y, weight, stats = ctx.saved_tensors
        g = g.contiguous(memory_format=CL)
        n, c = x.numel() // x.shape[1], x.shape[1]
        gx = torch.empty_like(x, memory_format=CL)
        g_res = torch.empty_like(gx) if ctx.has_residual and y is not None else None
        gwb = x.new_empty(2, c)
        _fused.backward(g.data_ptr(), x.data_ptr(), 0 if y is None else y.data_ptr(), gx.data_ptr(),
                        0 if g_res is None else g_res.data_ptr(), weight.data_ptr(), stats[0].data_ptr(),
                        stats[2].data_ptr(), gwb.data_ptr(), n, c, torch.get_num_threads())
        if ctx.has_residual and g_res is None:  # no ReLU: the residual's gradient is g itself
            g_res = g
        return gx, gwb[0], gwb[1], g_res, None, None


def _kernel_applies(bn: nn.Module, x: torch.Tensor, residual: torch.Tensor | None) -> bool:
    """Whether the C kernel computes ``bn_act`` for these arguments (else PyTorch's layers do)."""
    if not (_fused is not None and type(bn) is nn.BatchNorm2d and bn.training  # not DDP's sync_bn subclass
            and bn.track_running_stats and bn.momentum is not None and bn.affine
            and not (bn._forward_hooks or bn._forward_pre_hooks)  # hooks see PyTorch's layer
            and not torch.compiler.is_compiling()  # compilers and tracers (fake tensors, dispatch
            and _get_current_dispatch_mode() is None):  # modes) see PyTorch's layers, not a raw C call
        return False
    tensors = (x, bn.weight, bn.bias, bn.running_mean, bn.running_var) + (() if residual is None else (residual,))
    return (x.dim() == 4 and x.numel() > x.shape[1]  # > 1 value per channel (else BN's own error)
            and x.shape[1] == bn.num_features <= _fused.MAXC
            and all(type(t) in (torch.Tensor, nn.Parameter) and t.device.type == "cpu"
                    and t.dtype == torch.float32 for t in tensors)
            and x.is_contiguous(memory_format=CL)
            and (residual is None or (residual.shape == x.shape and residual.is_contiguous(memory_format=CL)))
            and not torch.is_autocast_enabled("cpu"))


def bn_act(bn: nn.Module, x: torch.Tensor, residual: torch.Tensor | None = None,
           relu: bool = True) -> torch.Tensor:
    """``relu(bn(x) + residual)`` (without the ReLU when ``relu`` is False, without the add when
    ``residual`` is None); ``bn`` a BatchNorm2d, or what replaces it after folding (nn.Identity).
    x, residual: (B, C, T, V); returns (B, C, T, V), channels-last on the kernel path."""
    if not _kernel_applies(bn, x, residual):
        y = bn(x)  # an nn.Identity after fold_batchnorm: x itself, which the ReLU must not overwrite
        if residual is not None:
            y = y + residual
        return (y.relu_() if y is not x else y.relu()) if relu else y
    y, stats = _BNAct.apply(x, bn.weight, bn.bias, residual, relu, bn.eps)
    with torch.no_grad():  # as nn.BatchNorm2d: momentum update, unbiased variance for the running estimate
        n = x.numel() // x.shape[1]
        bn.num_batches_tracked.add_(1)
        bn.running_mean.lerp_(stats[0], bn.momentum)
        bn.running_var.lerp_(stats[1] * (n / (n - 1)), bn.momentum)
    return y
