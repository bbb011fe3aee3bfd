"""``relu(bn(x) + residual)``: a BatchNorm layer fused with the residual add and the ReLU after it.

In training, on float32 CPU tensors, one C kernel pass computes the batch statistics and one applies BN,
the residual and the ReLU (``_fused.c``, built by ``pip install`` where a C compiler with OpenMP exists);
backward is likewise two passes, and hands the residual branch its masked gradient. The input may be
channels-last, channel-major (the graph convolution's output, read without a layout copy) or several
channels-last tensors standing for their concatenation along C (read without ``torch.cat``); the output
may be split into channels-last pieces (written without a split copy). This replaces a BN kernel, an add,
a ReLU and layout copies in each direction (bench/README.md). Everywhere else (eval mode, autocast, GPUs,
other layouts, DDP's synchronised BatchNorm, torch.compile, no compiled kernel) it is PyTorch's code:
``bn(x)``, ``+ residual``, ``relu``, with ``torch.cat`` / ``split`` around them.

Both paths compute the same function to float rounding (the kernel accumulates its statistics in double),
update the running statistics the same way, and are deterministic on CPU for any thread count. The kernel
path is differentiable once (no double backward, no forward-mode AD); set the environment variable
``SKELACT_NO_C_KERNELS=1`` to run PyTorch's layers everywhere.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.utils._python_dispatch import _get_current_dispatch_mode

try:
    from . import _fused  # optional C kernels (setup.py)
except ImportError:  # pragma: no cover - depends on the build
    _fused = None
if _fused is not None and (os.environ.get("SKELACT_NO_C_KERNELS", "") not in ("", "0")
                           or not hasattr(_fused, "pairs")):  # switched off, or a stale build of an older API
    _fused = None

CL = torch.channels_last


def _channel_major(x: torch.Tensor) -> bool:
    """Whether a (B, C, T, V) tensor is stored channel-major, as (C, B, T, V) contiguous."""
    return x.dim() == 4 and x.permute(1, 0, 2, 3).is_contiguous()


def _mat(ts) -> tuple:
    """The C kernel's description of the (B·T·V, C) rows stored in ``ts`` (concatenated along C): one
    channel-major tensor, or channels-last tensors as segments."""
    if len(ts) == 1 and not ts[0].is_contiguous(memory_format=CL):
        return (1, ts[0].data_ptr())
    return (0, *(v for t in ts for v in (t.data_ptr(), t.shape[1])))


class _BNAct(torch.autograd.Function):
    """xs: (B, C_i, T, V) tensors, concatenated along C (channels-last, or one channel-major tensor);
    residual (B, C, T, V) channels-last or None -> relu(BN(cat(xs)) + residual), as one channels-last
    tensor or, with ``split``, as channels-last tensors of those channel counts; then the batch statistics
    (3, C): mean, biased variance, 1/sqrt(var + eps). Gradients of xs come in their own layouts."""

    @staticmethod
    def forward(ctx, weight, bias, residual, relu: bool, eps: float, split, *xs):
        b, _, t, v = xs[0].shape
        c = weight.shape[0]
        ys = [torch.empty(b, ci, t, v, dtype=torch.float32, device="cpu", memory_format=CL) for ci in (split or (c,))]
        stats = weight.new_empty(3, c)  # mean, biased var, invstd
        _fused.forward(_mat(xs), 0 if residual is None else residual.data_ptr(), _mat(ys), weight.data_ptr(),
                       bias.data_ptr(), stats.data_ptr(), b * t * v, c, relu, eps, torch.get_num_threads())
        ctx.save_for_backward(weight, stats, *xs, *(ys if relu else ()))
        ctx.n_in, ctx.has_residual = len(xs), residual is not None
        ctx.mark_non_differentiable(stats)
        return *ys, stats

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        weight, stats, *saved = ctx.saved_tensors
        xs, ys = saved[:ctx.n_in], saved[ctx.n_in:] or None
        gs = [g.contiguous(memory_format=CL) for g in grads[:-1]]
        b, _, t, v = xs[0].shape
        c = weight.shape[0]
        gxs = [torch.empty_like(x) for x in xs]  # same layout as x (empty_like keeps dense strides)
        g_res = None
        if ctx.has_residual:  # the masked gradient with the ReLU; g itself without
            g_res = (torch.empty(b, c, t, v, dtype=torch.float32, device="cpu", memory_format=CL) if ys
                     else gs[0] if len(gs) == 1 else torch.cat(gs, 1))
        gwb = weight.new_empty(2, c)
        _fused.backward(_mat(gs), _mat(xs), None if ys is None else _mat(ys), _mat(gxs),
                        g_res.data_ptr() if ys and ctx.has_residual else 0, weight.data_ptr(),
                        stats[0].data_ptr(), stats[2].data_ptr(), gwb.data_ptr(), b * t * v, c,
                        torch.get_num_threads())
        return gwb[0], gwb[1], g_res, None, None, None, *gxs


def kernel_may_run(*tensors: torch.Tensor) -> bool:
    """Whether a raw C kernel of ``_fused`` may compute on these tensors: it is built; no compiler, tracer
    or dispatch mode is watching (they see PyTorch's layers: fake tensors, make_fx); plain float32 CPU
    tensors, no autocast. Layouts and sizes are the caller's to check."""
    return (_fused is not None and not torch.compiler.is_compiling() and _get_current_dispatch_mode() is None
            and not torch.is_autocast_enabled("cpu")
            and all(type(t) in (torch.Tensor, nn.Parameter) and t.device.type == "cpu"
                    and t.dtype == torch.float32 for t in tensors))


def _kernel_applies(bn: nn.Module, xs, residual: torch.Tensor | None, split=None) -> bool:
    """Whether the C kernel computes ``bn_act`` for these arguments (else PyTorch's layers do)."""
    if not (_fused is not None and type(bn) is nn.BatchNorm2d and bn.training  # not DDP's sync_bn subclass
            and bn.track_running_stats and bn.momentum is not None and bn.affine
            and not (bn._forward_hooks or bn._forward_pre_hooks)):  # hooks see PyTorch's layer
        return False
    xs = [xs] if isinstance(xs, torch.Tensor) else list(xs)
    if not (all(x.dim() == 4 and x.shape[:1] + x.shape[2:] == xs[0].shape[:1] + xs[0].shape[2:] for x in xs)
            and len(xs) <= _fused.MAXSEG and (split is None or 0 < len(split) <= _fused.MAXSEG)):
        return False
    b, _, t, v = xs[0].shape
    c = sum(x.shape[1] for x in xs)
    tensors = (*xs, bn.weight, bn.bias, bn.running_mean, bn.running_var) + (() if residual is None else (residual,))
    layout_ok = (all(x.is_contiguous(memory_format=CL) for x in xs)
                 or (len(xs) == 1 and _channel_major(xs[0])))
    return (b * t * v > 1  # > 1 value per channel (else BN's own error)
            and c == bn.num_features <= _fused.MAXC
            and (split is None or (min(split) > 0 and sum(split) == c))
            and kernel_may_run(*tensors) and layout_ok
            and (residual is None or (residual.shape == (b, c, t, v) and residual.is_contiguous(memory_format=CL))))


def bn_act(bn: nn.Module, x, residual: torch.Tensor | None = None, relu: bool = True, split=None):
    """``relu(bn(x) + residual)`` (without the ReLU when ``relu`` is False, without the add when
    ``residual`` is None); ``bn`` a BatchNorm2d, or what replaces it after folding (nn.Identity).

    x: (B, C, T, V), or a sequence of (B, C_i, T, V) tensors that stand for their concatenation along C
    (the kernel reads them where they are); residual: (B, C, T, V). Returns (B, C, T, V), channels-last
    where x was, or with ``split`` (channel counts) a tuple of (B, C_i, T, V) tensors as
    ``torch.split(y, split, 1)`` (on the kernel path each is contiguous; on PyTorch's, views). A
    channel-major x (the graph convolution's output) becomes channels-last."""
    if not _kernel_applies(bn, x, residual, split):
        x = x if isinstance(x, torch.Tensor) else torch.cat(tuple(x), 1)
        if _channel_major(x) and not x.is_contiguous(memory_format=CL):
            x = x.contiguous(memory_format=CL)
        y = bn(x)  # an nn.Identity after fold_batchnorm: x itself, which the ReLU must not overwrite
        if residual is not None:
            y = y + residual
        y = (y.relu_() if y is not x else y.relu()) if relu else y
        return y if split is None else y.split(list(split), 1)
    xs = (x,) if isinstance(x, torch.Tensor) else tuple(x)
    *ys, stats = _BNAct.apply(bn.weight, bn.bias, residual, relu, bn.eps, None if split is None else tuple(split),
                              *xs)
    with torch.no_grad():  # as nn.BatchNorm2d: momentum update, unbiased variance for the running estimate
        n = ys[0].numel() // ys[0].shape[1]
        bn.num_batches_tracked.add_(1)
        bn.running_mean.lerp_(stats[0], bn.momentum)
        bn.running_var.lerp_(stats[1] * (n / (n - 1)), bn.momentum)
    return ys[0] if split is None else tuple(ys)
