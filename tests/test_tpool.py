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
    x = torch.randn(3, 19, t, 7, generator=gen).round().relu().contiguous(memory_format=CL)
    ref = lambda a: F.max_pool2d(a, (kernel, 1), (stride, 1), (padding, 0))  # noqa: E731
    g = torch.randn(ref(x).shape, generator=gen).contiguous(memory_format=CL)
    want_y, want_g = _pool_and_grad(ref, x, g)
    got_y, got_g = _pool_and_grad(lambda a: temporal_max_pool(a, kernel, stride, padding), x, g)
    assert got_y.is_contiguous(memory_format=CL)
    assert torch.equal(got_y, want_y) and torch.equal(got_g, want_g)


@needs_kernel
def test_nan_wins_like_aten():
    """A NaN in a window is that window's maximum and takes its gradient, as in ATen."""
    x = torch.randn(2, 4, 9, 3).contiguous(memory_format=CL)
    x[0, 1, 4, 2] = float("nan")
    x[1, 3, 0, 0] = float("nan")
    g = torch.randn(2, 4, 9, 3).contiguous(memory_format=CL)
    got = _pool_and_grad(lambda a: temporal_max_pool(a), x, g)
    want = _pool_and_grad(lambda a: F.max_pool2d(a, (3, 1), 1, (1, 0)), x, g)
    for a, b in zip(got, want):
        assert torch.equal(torch.isnan(a), torch.isnan(b))
        assert torch.equal(a.nan_to_num(), b.nan_to_num())


def test_other_inputs_take_max_pool2d():
    """NCHW, float64 and autocast inputs take F.max_pool2d, with the same result."""
    x = torch.randn(2, 4, 9, 3)
    for inp in (x, x.double().contiguous(memory_format=CL)):
        torch.testing.assert_close(temporal_max_pool(inp, 3, 2, 1), F.max_pool2d(inp, (3, 1), (2, 1), (1, 0)),
                                   atol=0, rtol=0)
