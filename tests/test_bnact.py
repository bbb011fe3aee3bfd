"""skelact.models.bnact: the fused BatchNorm + residual + ReLU kernel against PyTorch's layers in float64."""

import pytest
import torch
from torch import nn

from skelact.models import bnact

CL = torch.channels_last
needs_kernel = pytest.mark.skipif(bnact._fused is None, reason="C kernel not compiled (no compiler/OpenMP)")


def _bn(c: int, seed: int = 0) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.weight.copy_(torch.randn(c, generator=g) * 0.5 + 1)
        bn.bias.copy_(torch.randn(c, generator=g) * 0.5)
        bn.running_mean.copy_(torch.randn(c, generator=g))
        bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    return bn


def _plain(bn, x, residual, relu):
    """The definition, with PyTorch's own layers."""
    y = bn(x)
    if residual is not None:
        y = y + residual
    return torch.relu(y) if relu else y


def _run(fn, bn, x, residual, g):
    """Outputs, input / residual / weight / bias gradients and running statistics after one step."""
    x = x.clone().requires_grad_()
    residual = None if residual is None else residual.clone().requires_grad_()
    bn = bn.train()
    y = fn(bn, x, residual)
    y.backward(g)
    grads = [x.grad, bn.weight.grad, bn.bias.grad] + ([] if residual is None else [residual.grad])
    return y, grads, [bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()]


@needs_kernel
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("with_residual", [True, False])
@pytest.mark.parametrize("shape", [(3, 24, 5, 7), (2, 17, 3, 1), (4, 64, 13, 20)])
def test_kernel_matches_batchnorm_add_relu(shape, with_residual, relu):
    """Forward, all gradients and the running statistics equal PyTorch's layers computed in float64
    (C = 17: not a multiple of any vector width; one joint; offset data so that the variance is not
    trivially well conditioned)."""
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(shape, generator=gen) * 3 + 2).contiguous(memory_format=CL)
    res = torch.randn(shape, generator=gen).contiguous(memory_format=CL) if with_residual else None
    g = torch.randn(shape, generator=gen).contiguous(memory_format=CL)
    c = shape[1]
    assert bnact._kernel_applies(_bn(c), x, res)
    y, grads, stats = _run(lambda b, x_, r: bnact.bn_act(b, x_, r, relu), _bn(c), x, res, g)
    assert y.is_contiguous(memory_format=CL) and y.dtype == torch.float32
    want_y, want_grads, want_stats = _run(lambda b, x_, r: _plain(b, x_, r, relu), _bn(c).double(), x.double(),
                                          None if res is None else res.double(), g.double())
    torch.testing.assert_close(y.double(), want_y, atol=2e-6, rtol=1e-5)
    for got, want in zip(grads, want_grads):
        torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=1e-4)
    for got, want in zip(stats, want_stats):
        torch.testing.assert_close(got.double(), want.double(), atol=1e-6, rtol=1e-5)


@needs_kernel
def test_kernel_is_used_and_deterministic_for_any_thread_count():
    """The kernel path is taken for a channels-last float32 training input, and its results are bit for
    bit the same with 1 and 2 threads (fixed partition of the rows)."""
    x = torch.randn(4, 32, 9, 6).contiguous(memory_format=CL)
    res = torch.randn_like(x)
    bn = _bn(32)
    assert bnact._kernel_applies(bn.train(), x, res)
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append(_run(lambda b, x_, r: bnact.bn_act(b, x_, r), _bn(32), x, res, torch.ones_like(x)))
    finally:
        torch.set_num_threads(before)
    (y1, g1, s1), (y2, g2, s2) = outs
    assert torch.equal(y1, y2)
    assert all(torch.equal(a, b) for a, b in zip(g1 + s1, g2 + s2))


def test_other_cases_take_pytorch_layers():
    """Eval mode, NCHW inputs (of B ≥ 2: with one sample, NCHW storage is channel-major, which the kernel
    reads), float64, autocast and BN subclasses (DDP's sync_bn) are PyTorch's layers exactly; a folded
    (Identity) BN with no residual does not overwrite its input."""
    x = torch.randn(2, 8, 5, 3)
    cases = [(_bn(8).eval(), x.contiguous(memory_format=CL)), (_bn(8), x), (_bn(8).double(), x.double())]
    for layer, inp in cases:
        assert not bnact._kernel_applies(layer, inp, None)
        torch.testing.assert_close(bnact.bn_act(layer, inp), torch.relu(layer(inp)), atol=0, rtol=0)
    sub = type("SyncLike", (nn.BatchNorm2d,), {})(8)
    assert not bnact._kernel_applies(sub, x.contiguous(memory_format=CL), None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not bnact._kernel_applies(_bn(8), x.contiguous(memory_format=CL), None)
    keep = x.clone()
    out = bnact.bn_act(nn.Identity(), x)
    assert torch.equal(x, keep) and torch.equal(out, torch.relu(keep))


@needs_kernel
@pytest.mark.parametrize("where", ["x", "residual"])
def test_kernel_propagates_nan_like_pytorch(where):
    """A NaN in the input or the residual stays NaN through the fused ReLU (as torch.relu), in the
    outputs, the running mean/variance and the gradients, so the trainer's non-finite checks see it."""
    x = torch.randn(2, 16, 5, 3).contiguous(memory_format=CL)
    res = torch.randn_like(x)
    (x if where == "x" else res)[0, 3, 1, 1] = float("nan")
    g = torch.ones_like(x)
    got = _run(lambda b, x_, r: bnact.bn_act(b, x_, r), _bn(16), x, res, g)
    want = _run(lambda b, x_, r: _plain(b, x_, r, True), _bn(16), x, res, g)
    for a, b in zip([got[0], *got[1], *got[2]], [want[0], *want[1], *want[2]]):
        assert torch.equal(torch.isnan(a), torch.isnan(b))


def test_mismatched_or_hooked_batchnorm_takes_pytorch_layers():
    """A BN built for other channels gets PyTorch's own error (the kernel would read past its weights);
    a BN with forward hooks runs as a module, so the hooks see it."""
    x = torch.randn(2, 8, 5, 3).contiguous(memory_format=CL)
    assert not bnact._kernel_applies(_bn(4), x, None)
    with pytest.raises(RuntimeError):
        bnact.bn_act(_bn(4), x)
    bn, calls = _bn(8), []
    bn.register_forward_hook(lambda *args: calls.append(1))
    assert not bnact._kernel_applies(bn, x, None)
    bnact.bn_act(bn, x)
    assert calls == [1]


def _pieces_run(bn, xs, residual, g, relu, split):
    """bn_act on a list of inputs (their concatenation) with split outputs: outputs, input / residual /
    weight / bias gradients, running statistics."""
    xs = [x.clone().requires_grad_() for x in xs]
    residual = None if residual is None else residual.clone().requires_grad_()
    ys = bnact.bn_act(bn.train(), xs, residual, relu, split)
    ys = (ys,) if isinstance(ys, torch.Tensor) else ys
    torch.autograd.backward(ys, g.split(list(split or [g.shape[1]]), 1))
    grads = [x.grad for x in xs] + [bn.weight.grad, bn.bias.grad] + ([] if residual is None else [residual.grad])
    return ys, grads, [bn.running_mean.clone(), bn.running_var.clone()]


@needs_kernel
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("with_residual", [True, False])
@pytest.mark.parametrize("layout", ["segments", "channel_major"])
@pytest.mark.parametrize("shape", [(3, 40, 7, 5), (2, 17, 3, 1), (4, 64, 13, 20), (8, 40, 64, 25)])
def test_kernel_reads_segments_and_channel_major(shape, layout, with_residual, relu):
    """The kernel reads its input as several channels-last tensors (concatenated along C) or as one
    channel-major tensor, writes its output whole or split into channels-last pieces, and hands back the
    inputs' gradients in their own layouts; the results are bit for bit those of one channels-last input
    (same rows, same order of summation), and match PyTorch's layers in float64. Rows per chunk below
    and above one tile (several tiles, a partial last one), channel counts below 16, multiples of 16 and
    not (16 x 16 register-transposed blocks at several row offsets and an element-wise remainder)."""
    b, c, t, v = shape
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(shape, generator=gen) * 2 + 1
    res = torch.randn(shape, generator=gen).contiguous(memory_format=CL) if with_residual else None
    g = torch.randn(shape, generator=gen).contiguous(memory_format=CL)
    if layout == "segments":
        split = (c // 3, c - c // 3 - c // 4, c // 4)
        xs = [p.contiguous(memory_format=CL) for p in x.split(list(split), 1)]
    else:
        split = None
        xs = [x.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)]
        assert not xs[0].is_contiguous(memory_format=CL)
    assert bnact._kernel_applies(_bn(c), xs, res, split)
    got = _pieces_run(_bn(c), xs, res, g, relu, split)
    one = _pieces_run(_bn(c), [x.contiguous(memory_format=CL)], res, g, relu, split)  # plain rows, split after
    assert all(y.is_contiguous(memory_format=CL) for y in got[0])
    for gx, x_in in zip(got[1], xs):
        assert gx.stride() == x_in.stride()
    assert torch.equal(torch.cat(got[0], 1), torch.cat(one[0], 1))
    assert torch.equal(torch.cat(got[1][:len(xs)], 1), one[1][0])
    assert all(torch.equal(a, b_) for a, b_ in zip(got[1][len(xs):] + got[2], one[1][1:] + one[2]))
    want = _run(lambda b_, x_, r: _plain(b_, x_, r, relu), _bn(c).double(), x.double(),
                None if res is None else res.double(), g.double())
    torch.testing.assert_close(torch.cat(got[0], 1).double(), want[0], atol=2e-6, rtol=1e-5)
    for a, w in zip([torch.cat(got[1][:len(xs)], 1)] + got[1][len(xs):], want[1]):
        torch.testing.assert_close(a.double(), w, atol=2e-5, rtol=1e-4)


def test_pieces_without_kernel_are_cat_and_split():
    """Where PyTorch's layers run (here: eval mode), a list input is their concatenation, ``split`` splits
    the result, and a channel-major input gives a channels-last output, with the same values."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 12, 5, 3, generator=gen).contiguous(memory_format=CL)
    bn = _bn(12).eval()
    want = torch.relu(bn(x))
    got = bnact.bn_act(bn, list(x.split([4, 8], 1)), split=(6, 6))
    assert all(torch.equal(a, b) for a, b in zip(got, want.split(6, 1)))
    cm = x.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)
    out = bnact.bn_act(bn, cm)
    assert out.is_contiguous(memory_format=CL) and torch.equal(out, want)


@needs_kernel
def test_kernel_outputs_ignore_the_default_dtype():
    """The kernel's buffers are float32 whatever torch's default dtype is (it writes float32 values)."""
    x = torch.randn(2, 8, 5, 3).contiguous(memory_format=CL)
    want = _run(lambda b, x_, r: bnact.bn_act(b, x_, r), _bn(8), x, x.flip(0), torch.ones_like(x))
    bn, before = _bn(8), torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        got = _run(lambda b, x_, r: bnact.bn_act(b, x_, r), bn, x, x.flip(0), torch.ones_like(x))
    finally:
        torch.set_default_dtype(before)
    assert got[0].dtype == torch.float32 and all(g.dtype == torch.float32 for g in got[1])
    assert torch.equal(got[0], want[0]) and all(torch.equal(a, b) for a, b in zip(got[1], want[1]))
