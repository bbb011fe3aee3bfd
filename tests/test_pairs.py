"""The C kernel of CTRAggregate's per-(channel, sample) products (``_fused.pairs``) against a slow einsum
in float64, and CTRAggregate on it against CTRAggregate on PyTorch's batched matmuls."""

import pytest
import torch

from skelact.models import bnact
from skelact.models.ctrgcn import CTRAggregate, _padded

CL = torch.channels_last
needs_kernel = pytest.mark.skipif(bnact._fused is None, reason="C kernel not compiled (no compiler/OpenMP)")


def _job(o, a, b, bias, k_sub, rows, s, w, a_rs, a_ss, a_ps, a_ks, b_ld, b_ps, b_ks, o_ps, o_ks, sum_k):
    return (o.data_ptr(), a.data_ptr(), b.data_ptr(), 0 if bias is None else bias.data_ptr(), k_sub, rows, s, w,
            a_rs, a_ss, a_ps, a_ks, b_ld, b_ps, b_ks, o_ps, o_ks, sum_k)


@needs_kernel
@pytest.mark.parametrize("rows,s,w", [(13, 20, 20), (6, 25, 25), (1, 7, 3), (7, 32, 32), (12, 5, 17), (5, 16, 16)])
@pytest.mark.parametrize("threads", [1, 2])
def test_pairs_kernel_equals_einsum(rows, s, w, threads):
    """Both job kinds of one call, per pair in order: O = sum_k A_k @ B_k + bias (forward) and the per-k
    O_k = A_k^T @ B_k (a transposed A through its strides); every row width up to AGG_MAXW, row counts
    with and without a tail of the 6-row tiles."""
    gen = torch.Generator().manual_seed(rows * 100 + s * 10 + w)
    k_sub, n = 3, 11
    a = _padded(torch.empty(0), k_sub, n, rows, s).copy_(torch.randn(k_sub, n, rows, s, generator=gen))
    b = _padded(torch.empty(0), k_sub, n, s, w).copy_(torch.randn(k_sub, n, s, w, generator=gen))
    bias = _padded(torch.empty(0), n, w).copy_(torch.randn(n, w, generator=gen))
    at = _padded(torch.empty(0), k_sub, n, s, rows).copy_(torch.randn(k_sub, n, s, rows, generator=gen))
    o_sum = _padded(torch.empty(0), n, rows, w).fill_(float("nan"))  # every value must be written
    o_k = torch.full((k_sub, n, rows, w), float("nan"))
    jobs = (_job(o_sum, a, b, bias, k_sub, rows, s, w, s, 1, rows * s, n * rows * s, w, s * w, n * s * w,
                 rows * w, 0, 1),
            _job(o_k, at, b, None, k_sub, rows, s, w, 1, rows, s * rows, n * s * rows, w, s * w, n * s * w,
                 rows * w, n * rows * w, 0))
    torch.set_num_threads(threads)
    try:
        bnact._fused.pairs(jobs, n, threads)
    finally:
        torch.set_num_threads(2)
    want_sum = torch.einsum("knrs,knsw->nrw", a.double(), b.double()) + bias.double()[:, None]
    want_k = torch.einsum("knsr,knsw->knrw", at.double(), b.double())
    torch.testing.assert_close(o_sum.double(), want_sum, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(o_k.double(), want_k, rtol=1e-5, atol=1e-5)


@needs_kernel
def test_pairs_kernel_rejects_bad_jobs():
    x = _padded(torch.empty(0), 4, 4)
    with pytest.raises(ValueError, match="bad sizes"):
        bnact._fused.pairs((_job(x, x, x, None, 1, 1, 1, 33, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0),), 1, 1)
    with pytest.raises(ValueError, match="jobs"):
        bnact._fused.pairs((), 1, 1)


def _aggregate(x, args, g, save_x3):
    x = x.clone().requires_grad_()
    args = [a.clone().requires_grad_() for a in args]
    y = CTRAggregate.apply(x, *args, None, save_x3)
    y.backward(g)
    return y, [x.grad] + [a.grad for a in args]


@needs_kernel
@pytest.mark.parametrize("v,t", [(20, 13), (25, 16), (7, 5), (32, 3), (33, 4)])
@pytest.mark.parametrize("save_x3", [False, True])
def test_aggregate_kernel_path_equals_pytorch_path(v, t, save_x3, monkeypatch):
    """CTRAggregate's outputs and all its gradients (x, q, w3, b3, w4, b4, A) are the same function on the
    C kernel as on batched matmuls (to float32 rounding: the sums run in another order), for NW-UCLA's and
    NTU's joint counts, small and largest ones; past AGG_MAXW joints (33) it falls back to the matmuls."""
    gen = torch.Generator().manual_seed(v * 10 + t)
    b, ci, c, rel, k = 3, 8, 32, 4, 3
    x = torch.randn(b, ci, t, v, generator=gen).contiguous(memory_format=CL)
    args = [torch.randn(*shape, generator=gen) for shape in
            ((k, 2, rel, b, v), (k, c, ci), (k, c), (k, c, rel), (k, c), (k, v, v))]
    g = torch.randn(c, b, t, v, generator=gen).permute(1, 0, 2, 3)  # channel-major, as bn_act hands it back
    real, calls = bnact._fused, []

    class Spy:  # the built module, with its pair kernel's calls counted
        def __getattr__(self, name):
            return getattr(real, name)

        def pairs(self, *a):
            calls.append(a)
            return real.pairs(*a)
    monkeypatch.setattr(bnact, "_fused", Spy())
    got = _aggregate(x, args, g, save_x3)
    assert len(calls) == (1 + k if v <= real.AGG_MAXW else 0)  # forward once, backward once per subset
    monkeypatch.setattr(bnact, "_fused", None)
    want = _aggregate(x, args, g, save_x3)
    for got_t, want_t in zip([got[0], *got[1]], [want[0], *want[1]]):  # float32 rounding of the tensor's scale
        assert (got_t - want_t).abs().max() <= 1e-5 * want_t.abs().max()
