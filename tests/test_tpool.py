"""skelact.models.tpool: the temporal max-pooling kernel against F.max_pool2d, values and gradients."""

import pytest
import torch
import torch.nn.functional as F

from skelact.models import bnact
from skelact.models.tpool import temporal_max_pool

CL = torch.channels_last
needs_kernel = pytest.mark.skipif(bnact._fused is None, reason="C kernel not compiled (no compiler/OpenMP)")


def _pool_and_grad(fn, x, g):
    x = x.clone().requires_grad_()
    y = fn(x)
    y.backward(g)
    return y, x.grad


@needs_kernel
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("t,kernel,padding", [(t, k, p) for t in (1, 2, 5, 52) for k, p in ((3, 1), (5, 2), (3, 0))
                                              if t + 2 * p >= k])
def test_kernel_equals_max_pool2d(stride, t, kernel, padding):
    """Bit for bit ATen's values and gradients, with many ties (a ReLU's zeros and repeated values), on
    odd channel counts, for both strides, short clips and other windows."""
    gen = torch.Generator().manual_seed(t * 10 + stride)
    x = torch.randn(3, 19, t, 29, generator=gen).round().relu().contiguous(memory_format=CL)  # 551 lanes
    ref = lambda a: F.max_pool2d(a, (kernel, 1), (stride, 1), (padding, 0))  # noqa: E731
    g = torch.randn(ref(x).shape, generator=gen).contiguous(memory_format=CL)
    want_y, want_g = _pool_and_grad(ref, x, g)
    got_y, got_g = _pool_and_grad(lambda a: temporal_max_pool(a, kernel, stride, padding), x, g)
    assert type(got_y.grad_fn).__name__ == "_TemporalMaxPoolBackward"  # the kernel ran
    assert got_y.is_contiguous(memory_format=CL)
    assert torch.equal(got_y, want_y) and torch.equal(got_g, want_g)


@needs_kernel
@pytest.mark.parametrize("stride", [1, 2])
def test_nan_wins_like_aten(stride):
    """A NaN in a window is that window's maximum and takes its gradient, as in ATen."""
    x = torch.randn(2, 4, 9, 3).contiguous(memory_format=CL)
    x[0, 1, 4, 2] = float("nan")
    x[1, 3, 0, 0] = float("nan")
    x[1, 2, 5, 1] = x[1, 2, 6, 1] = float("nan")
    want = _pool_and_grad(lambda a: F.max_pool2d(a, (3, 1), (stride, 1), (1, 0)), x,
                          torch.ones(2, 4, (9 - 1) // stride + 1, 3).contiguous(memory_format=CL))
    g = torch.randn(want[0].shape).contiguous(memory_format=CL)
    want = _pool_and_grad(lambda a: F.max_pool2d(a, (3, 1), (stride, 1), (1, 0)), x, g)
    got = _pool_and_grad(lambda a: temporal_max_pool(a, 3, stride, 1), x, g)
    for a, b in zip(got, want):
        assert torch.equal(torch.isnan(a), torch.isnan(b))
        assert torch.equal(a.nan_to_num(), b.nan_to_num())


def test_other_inputs_take_max_pool2d():
    """NCHW, float64 and autocast inputs take F.max_pool2d, with the same result."""
    x = torch.randn(2, 4, 9, 3)
    cl = x.contiguous(memory_format=CL)
    for inp, autocast in ((x, False), (x.double().contiguous(memory_format=CL), False), (cl, True)):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            got = temporal_max_pool(inp.requires_grad_(), 3, 2, 1)
            want = F.max_pool2d(inp, (3, 1), (2, 1), (1, 0))
        assert type(got.grad_fn).__name__ != "_TemporalMaxPoolBackward"
        torch.testing.assert_close(got, want, atol=0, rtol=0)
