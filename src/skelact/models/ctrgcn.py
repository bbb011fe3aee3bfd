"""CTR-GCN (Chen et al., ICCV 2021), METHODS.md §4, in one file, fused for speed and memory.

Numerically the specified model (same layers, initialisation and parameter count as the released code;
``bench/reference_ctrgcn.py`` maps weights 1:1 and ``tests/test_reference_equivalence.py`` checks
outputs and gradients), computed differently:

* activations are channels-last (N·M, C, T, V) tensors (memory order T, V, C), so every 1x1 convolution
  is one large GEMM and BN / ReLU / temporal convs use oneDNN's fast NHWC kernels;
* conv1/conv2 of the three CTRGC subsets are one (K·2·rel, C) projection applied *after* the temporal
  mean (a 1x1 conv commutes with the mean over T): on (N·M, C, V) instead of (N·M, C, T, V);
* conv3, conv4 and the channel-wise aggregation ``out[n,c,t,u] = sum_k sum_v R_k[n,c,u,v] x3_k[n,c,t,v]``
  of all subsets are one autograd function, :class:`CTRAggregate`: single GEMMs in channel-major layout,
  biases folded into GEMMs, the small per-(channel, sample) products in a C kernel (all subsets summed in
  one pass, backward's two products from one read of the gradient); kept for backward are the unit input,
  conv1/conv2's small (K, 2, rel, N·M, V) means and the three ``x3_k`` (the tanh maps and ``R_k`` are
  recomputed there, one subset at a time; the reference keeps three (C, T, V) ``x3`` and six (C, V, V)
  maps per unit). With ``memory_efficient=True`` the ``x3_k`` are recomputed as well (saved activations
  0.43x instead of 0.65x of the reference's, steps 4-9 % slower; bench/README.md);
* ``alpha`` is folded into conv4's weight and bias (``alpha·(W m + b) = (alpha W) m + alpha b``);
* the first 1x1 convolutions of temporal branches 1-3 are one convolution, and BNs that act on
  concatenated branches are one BN (BN is per channel, so this is the same function);
* each BN that a ReLU follows is one :func:`~skelact.models.bnact.bn_act` with the residual add between
  them (the unit's final ReLU is applied at the end of its temporal block): in training, one C kernel pass
  for the statistics and one for BN + residual + ReLU, where the optional kernel is built; the kernel
  reads the graph convolution's channel-major output and the temporal branches without layout copies,
  and the temporal max-pool is :func:`~skelact.models.tpool.temporal_max_pool`.

Shapes: N batch, C channels, T frames, V joints (U = V as the output joint), M persons, K = 3 subsets.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from . import bnact
from .bnact import bn_act
from .fold import ChannelAffine, bn_affine, fold_linear, fold_linear_bn
from .taps import TAPS, run_units
from .tpool import temporal_max_pool

CL = torch.channels_last

# (C_in, C_out, temporal stride) of the 10 units; C_in of the first is the input's channels
UNITS = ((None, 64, 1), (64, 64, 1), (64, 64, 1), (64, 64, 1), (64, 128, 2), (128, 128, 1),
         (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 256, 1))


def _kaiming_fan_out(w: torch.Tensor, fan_out: int) -> None:
    nn.init.normal_(w, 0.0, math.sqrt(2.0 / fan_out))


def _shortcut(path: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A residual path: nn.Identity, or nn.Sequential(1x1 conv, BN) with the BN through bn_act (unless
    the Sequential has hooks, which must see it run)."""
    if isinstance(path, nn.Sequential) and not (path._forward_hooks or path._forward_pre_hooks):
        return bn_act(path[1], path[0](x), relu=False)
    return path(x)


def _padded(like: torch.Tensor, *shape: int) -> torch.Tensor:
    """An uninitialised contiguous tensor of ``shape`` whose storage runs 32 values past its end (the pair
    kernel loads rows as 16-lane vectors and may read past a row)."""
    n = math.prod(shape)
    return like.new_empty(n + 32)[:n].view(shape)


def _pair_kernel(x: torch.Tensor, v: int) -> bool:
    """Whether CTRAggregate's per-(c, b) products run in the C kernel (float32 CPU, at most 32 joints)."""
    return bnact.kernel_may_run(x) and v <= bnact._fused.AGG_MAXW


class CTRAggregate(torch.autograd.Function):
    """The K CTRGC subsets of a unit, conv3 / conv4 included, as one function:

    ``out[b,c,t,u] = sum_k sum_v R_k[b,c,u,v] · x3_k[b,c,t,v]`` with ``x3_k = W3_k x + b3_k`` (1x1 conv)
    and ``R_k = W4_k m_k + b4_k + A_k`` (1x1 conv on the tanh map ``m_k[b,r,u,v] = tanh(q1_k[r,b,u] −
    q2_k[r,b,v])`` of conv1 / conv2's temporal means q1, q2, plus the adjacency).

    Inputs: x (B, Ci, T, V) channels-last; q (K, 2, rel, B, V): q1_k = q[k, 0], q2_k = q[k, 1];
    w3 (K, C, Ci); b3 (K, C); w4 (K, C, rel); b4 (K, C); A (K, V, V); shift (C,) or None, added to the
    output (a folded BN's shift, at no cost); save_x3: keep the x3_k for backward (else they are
    recomputed there). Output (B, C, T, V), stored channel-major (C, B, T, V):
    :func:`~skelact.models.bnact.bn_act` reads it as it is.

    Inside, tensors are channel-major: ``x3_k`` is one GEMM ``W3_k @ x^T`` -> (C, B·T·V) and ``R_k``
    one GEMM ``[W4_k | b4_k | 1] @ [m_k; 1; A_k]`` -> (C, B·V·V), so the aggregation is a
    (T, V) @ (V, U) product for each of the C·B pairs and every weight gradient is a single GEMM. The pair
    products run in ``_fused.pairs`` (float32 CPU, V <= 32: forward sums the K subsets per pair in one
    pass, backward computes ``g @ R_k`` and ``g^T @ x3_k`` per pair from one read of g), else as batched
    matmuls. b3 never costs a pass over a big tensor: its contribution ``b3_k[c] · sum_v R_k[c,b,u,v]``
    is constant over t and starts every output row (and is corrected for on small tensors in backward).
    Saved are x, q and, with ``save_x3``, the x3_k (K, C, B·T·V); the tanh maps are written once into the
    GEMM operand ``[m; 1; A]`` (forward, and again backward), R_k (and x3_k unless saved) are recomputed
    in backward one subset at a time, in reused buffers, by the same GEMMs as in forward (so the gradients
    do not depend on ``save_x3``). Under autocast the function runs in the autocast dtype.
    """

    @staticmethod
    def _aug(q, w4, b4, A, transposed=False):
        """m_aug (K, rel+2, B·U·V) = [m; 1; A] with m = tanh(q1_u − q2_v), or with ``transposed`` its
        (K, rel+2, B·V·U) transpose (then ``W4_aug @ m_aug`` is R^T); w4_aug (K, C, rel+2) = [W4 | b4 | 1]."""
        k_sub, _, rel, b, v = q.shape
        m_aug = q.new_empty(k_sub, rel + 2, b, v, v)
        q1, q2 = q[:, 0, :, :, :, None], q[:, 1, :, :, None, :]  # u, v as rows, columns
        if transposed:
            q1, q2 = q1.transpose(-1, -2), q2.transpose(-1, -2)
            A = A.transpose(-1, -2)
        torch.sub(q1, q2, out=m_aug[:, :rel]).tanh_()
        m_aug[:, rel] = 1
        m_aug[:, rel + 1] = A[:, None]
        w4_aug = torch.cat([w4, b4[..., None], torch.ones_like(b4)[..., None]], 2)
        return m_aug.view(k_sub, rel + 2, b * v * v), w4_aug

    @staticmethod
    def _compute_dtype(x):
        dev = x.device.type
        if dev in ("cuda", "cpu") and torch.is_autocast_enabled(dev):
            return torch.get_autocast_dtype(dev)
        return x.dtype

    @staticmethod
    def forward(ctx, x, q, w3, b3, w4, b4, A, shift=None, save_x3=False):
        ctx.dtype = CTRAggregate._compute_dtype(x)  # under autocast: its dtype; the GEMMs use out=
        with torch.autocast(x.device.type, enabled=False):
            out, x3 = CTRAggregate._forward(*(a.to(ctx.dtype) for a in (x, q, w3, b3, w4, b4, A)),
                                            None if shift is None else shift.to(ctx.dtype), save_x3)
        ctx.save_for_backward(x, q, w3, b3, w4, b4, A, x3)
        ctx.has_shift = shift is not None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        with torch.autocast(g.device.type, enabled=False):
            x, *rest, x3 = ctx.saved_tensors  # x3 is None unless saved
            grads = CTRAggregate._backward(g.to(ctx.dtype), *(a.to(ctx.dtype) for a in (x, *rest)), x3)
        g_shift = g.sum((0, 2, 3)) if ctx.has_shift and ctx.needs_input_grad[7] else None
        return *grads, g_shift, None

    @staticmethod
    def _forward(x, q, w3, b3, w4, b4, A, shift=None, save_x3=False):
        b, ci, t, v = x.shape
        k_sub, c = w3.shape[:2]
        x_rows = x.permute(0, 2, 3, 1).reshape(b * t * v, ci)  # a view for channels-last x
        m_aug, w4_aug = CTRAggregate._aug(q, w4, b4, A, transposed=True)  # R^T: the products need no transpose
        m_sum = m_aug.view(k_sub, -1, b, v, v).sum(3).view(k_sub, -1, b * v)  # sum over v: (K, rel+2, B·U)
        bias = (b3[:, :, None] * torch.bmm(w4_aug, m_sum)).sum(0)  # sum_k b3_k · sum_v R_k: (C, B·U)
        if shift is not None:
            bias = bias + shift[:, None]
        kernel = _pair_kernel(x, v)
        # x3_k less b3 (C, B·T·V) and R_k^T (C, B·V·U) of all subsets: the kernel sums over them in one pass
        # per (c, b) pair; PyTorch's path accumulates subset by subset in reused buffers unless x3 is saved
        x3_all = _padded(x, k_sub if save_x3 or kernel else 1, c, b * t * v)
        rt = _padded(x, k_sub if kernel else 1, c, b * v * v)
        out = (_padded(x, c * b, t, v) if kernel
               else bias.view(c * b, 1, v).expand(c * b, t, v).contiguous())  # (C·B, T, U)
        for k in range(k_sub):
            x3, r = x3_all[k if len(x3_all) > 1 else 0], rt[k if kernel else 0]
            torch.mm(w3[k], x_rows.t(), out=x3)
            torch.mm(w4_aug[k], m_aug[k], out=r)
            if not kernel:
                out.baddbmm_(x3.view(c * b, t, v), r.view(c * b, v, v))  # (T, V) @ (V, U) per (c, b)
        if kernel:  # out[c,b] = bias[c,b] (every row) + sum_k x3_k[c,b] @ R_k^T[c,b]
            p = c * b
            bias = _padded(x, p, v).copy_(bias.view(p, v))
            bnact._fused.pairs(((out.data_ptr(), x3_all.data_ptr(), rt.data_ptr(), bias.data_ptr(), k_sub, t, v,
                                 v, v, 1, t * v, p * t * v, v, v * v, p * v * v, t * v, 0, 1),),
                               p, torch.get_num_threads())
        # channel-major (B, C, T, U): bn_act reads it as is
        return out.view(c, b, t, v).permute(1, 0, 2, 3), (x3_all if save_x3 else None)

    @staticmethod
    def _backward(g, x, q, w3, b3, w4, b4, A, x3_all=None):
        b, ci, t, v = x.shape
        k_sub, c = w3.shape[:2]
        rel = q.shape[2]
        g = g.permute(0, 2, 3, 1).reshape(b * t * v, c).t().contiguous()  # (C, B·T·U)
        g_t = g.view(c, b, t, v).sum(2).view(c, b * v)  # sum over t: (C, B·U)
        g = g.view(c * b, t, v)
        x_rows = x.permute(0, 2, 3, 1).reshape(b * t * v, ci)
        m_aug, w4_aug = CTRAggregate._aug(q, w4, b4, A)
        m_sum = m_aug.view(k_sub, -1, b * v, v).sum(3)
        gx = x.new_empty(b * t * v, ci)  # channels-last rows
        gw3, gm_aug, gw4_aug = torch.empty_like(w3), torch.empty_like(m_aug), torch.empty_like(w4_aug)
        kernel, p = _pair_kernel(x, v), c * b
        gx3, gr = x.new_empty(c, b * t * v), x.new_empty(c, b * v * v)
        r = _padded(x, c, b * v * v)
        x3 = _padded(x, c, b * t * v) if x3_all is None else None
        for k in range(k_sub):  # the big products, one subset at a time in reused buffers
            if x3_all is None:  # recomputed exactly as forward computed it
                torch.mm(w3[k], x_rows.t(), out=x3)
            else:
                x3 = x3_all[k]
            torch.mm(w4_aug[k], m_aug[k], out=r)
            if kernel:  # per (c, b) pair, reading g once: dx3_k = g @ R_k, dR_k = g^T @ x3_k (less b3's term)
                bnact._fused.pairs(((gx3.data_ptr(), g.data_ptr(), r.data_ptr(), 0, 1, t, v, v,
                                     v, 1, t * v, 0, v, v * v, 0, t * v, 0, 0),
                                    (gr.data_ptr(), g.data_ptr(), x3.data_ptr(), 0, 1, v, t, v,
                                     1, v, t * v, 0, v, t * v, 0, v * v, 0, 0)), p, torch.get_num_threads())
            else:
                torch.bmm(g.transpose(1, 2), x3.view(p, t, v), out=gr.view(p, v, v))  # dR_k, less b3 term
                torch.bmm(g, r.view(p, v, v), out=gx3.view(p, t, v))  # dx3_k
            if k == 0:
                torch.mm(gx3.t(), w3[k], out=gx)
            else:
                gx.addmm_(gx3.t(), w3[k])
            torch.mm(gx3, x_rows, out=gw3[k])
            torch.mm(w4_aug[k].t(), gr, out=gm_aug[k])
            torch.mm(gr, m_aug[k].t(), out=gw4_aug[k])
        # b3's terms, all subsets at once on (K, C, B·U) tensors: dR_k gains b3_k[c]·g_t, constant over v,
        # and sum_{b,t,v} dx3_k = sum_{b,u} (sum_t g)(sum_v R_k) needs no pass over dx3_k
        gb3 = (torch.bmm(w4_aug, m_sum) * g_t).sum(2)
        g_b3 = b3[:, :, None] * g_t
        gm_aug.view(k_sub, rel + 2, b * v, v).add_(torch.bmm(w4_aug.transpose(1, 2), g_b3)[..., None])
        gw4_aug.baddbmm_(g_b3, m_sum.transpose(1, 2))
        # through the tanh: d(q1_u − q2_v), summed over v for q1 and (negated) over u for q2
        gd = torch.ops.aten.tanh_backward(gm_aug[:, :rel], m_aug[:, :rel]).view(k_sub, rel, b, v, v)
        gq = torch.stack([gd.sum(4), gd.sum(3).neg_()], 1)  # (K, 2, rel, B, V)
        gA = gm_aug[:, rel + 1].view(k_sub, b, v, v).sum(1)
        return (gx.view(b, t, v, ci).permute(0, 3, 1, 2), gq, gw3, gb3, gw4_aug[..., :rel], gw4_aug[..., rel],
                gA)


class CTRGraphConv(nn.Module):
    """unit_gcn: the sum over the K subsets of CTRGC, BN (weight 1e-6), residual down-path, ReLU.

    (B, C_in, T, V) -> (B, C_out, T, V). Parameters (subset-major, K = 3):
    ``w12`` (K·2·rel, C_in) and ``b12``: conv1 and conv2 of every subset; ``w3`` (K, C_out, C_in), ``b3``:
    conv3; ``w4`` (K, C_out, rel), ``b4``: conv4; ``PA`` (K, V, V) the learnable adjacency; ``alpha`` (1,).
    """

    def __init__(self, c_in: int, c_out: int, A: torch.Tensor, raw_input: bool = False,
                 memory_efficient: bool = False):
        super().__init__()
        k_sub = A.shape[0]
        self.memory_efficient = memory_efficient  # recompute conv3's outputs in backward instead of saving
        self.rel = rel = 8 if raw_input else c_in // 8
        self.w12 = nn.Parameter(torch.empty(k_sub * 2 * rel, c_in))
        self.b12 = nn.Parameter(torch.zeros(k_sub * 2 * rel))
        self.w3 = nn.Parameter(torch.empty(k_sub, c_out, c_in))
        self.b3 = nn.Parameter(torch.zeros(k_sub, c_out))
        self.w4 = nn.Parameter(torch.empty(k_sub, c_out, rel))
        self.b4 = nn.Parameter(torch.zeros(k_sub, c_out))
        _kaiming_fan_out(self.w12, rel)  # per-subset conv1/conv2 have fan_out = rel
        _kaiming_fan_out(self.w3, c_out)
        _kaiming_fan_out(self.w4, c_out)
        self.PA = nn.Parameter(A.clone())
        self.alpha = nn.Parameter(torch.zeros(1))
        self.bn = nn.BatchNorm2d(c_out)
        nn.init.constant_(self.bn.weight, 1e-6)
        if c_in != c_out:
            self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1), nn.BatchNorm2d(c_out))
            _kaiming_fan_out(self.down[0].weight, c_out)
            nn.init.zeros_(self.down[0].bias)
        else:
            self.down = nn.Identity()
        self.register_buffer("shift", None)  # after fold_bn: the folded BN's shift (C_out,)

    @torch.no_grad()
    def fold_bn(self) -> None:
        """Fold ``bn`` into conv3 (the output is linear in W3, b3 per channel) and an output shift."""
        scale, shift = bn_affine(self.bn)
        self.w3.mul_(scale[:, None])  # w3 (K, C_out, C_in), b3 (K, C_out)
        self.b3.mul_(scale)
        self.shift = shift
        self.bn = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, t, v = x.shape
        k_sub, rel = self.PA.shape[0], self.rel
        # conv1/conv2 on the temporal mean; sum then scale the weight, so backward is a broadcast, not a pass;
        # summed over the channels-last rows (x.sum(2) of a channels-last tensor takes about 6x as long)
        q = F.linear(x.permute(0, 2, 3, 1).sum(1), self.w12 / t, self.b12)  # (B, V, K·2·rel)
        q = q.view(b, v, k_sub, 2, rel).permute(2, 3, 4, 0, 1)  # (K, 2, rel, B, V)
        y = CTRAggregate.apply(x, q, self.w3, self.b3, self.w4 * self.alpha, self.b4 * self.alpha, self.PA,
                               self.shift, torch.is_grad_enabled() and not self.memory_efficient)
        return bn_act(self.bn, y, _shortcut(self.down, x))  # relu(bn(y) + down(x))


class MultiScaleTCN(nn.Module):
    """Four temporal branches of C_out/4 channels, concatenated: (B, C_in, T, V) -> (B, C_out, T/s, V).

    Branches 1-2: 1x1 conv, BN, ReLU, 5x1 conv (dilation 1 / 2, stride s), BN; branch 3: 1x1 conv, BN,
    ReLU, 3x1 max-pool (stride s), BN; branch 4: 1x1 conv (stride s), BN. Here the first 1x1 convs of
    branches 1-3 are one conv ``pw`` followed by one BN ``pw_bn``; branch 4's conv is ``pw4``; the four
    final BNs are one BN ``out_bn`` on the concatenation (BN is per channel: the same function).
    With ``residual`` (B, C_out, T/s, V), forward returns the unit's ``relu(out + residual)``, otherwise
    ``relu(out)``: the unit's ReLU is fused with ``out_bn`` (:func:`~skelact.models.bnact.bn_act`).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, kernel_size: int = 5, dilations=(1, 2)):
        super().__init__()
        self.bc = bc = c_out // (len(dilations) + 2)
        self.stride = stride
        self.pw = nn.Conv2d(c_in, bc * (len(dilations) + 1), 1)
        self.pw_bn = nn.BatchNorm2d(bc * (len(dilations) + 1))
        self.pw4 = nn.Conv2d(c_in, bc, 1, stride=(stride, 1))
        self.dconv = nn.ModuleList(
            nn.Conv2d(bc, bc, (kernel_size, 1), stride=(stride, 1), dilation=(d, 1),
                      padding=((kernel_size + (kernel_size - 1) * (d - 1) - 1) // 2, 0)) for d in dilations)
        self.out_bn = nn.BatchNorm2d(bc * (len(dilations) + 2))
        self.pool_affine = nn.Identity()  # after fold_bn: the pool branch's share of out_bn
        for mod in self.modules():  # every branch conv has bc output channels: fan_out = bc·k
            if isinstance(mod, nn.Conv2d):
                _kaiming_fan_out(mod.weight, bc * mod.kernel_size[0] * mod.kernel_size[1])
                nn.init.zeros_(mod.bias)
            elif isinstance(mod, nn.BatchNorm2d):
                nn.init.normal_(mod.weight, 1.0, 0.02)
                nn.init.zeros_(mod.bias)

    @torch.no_grad()
    def fold_bn(self) -> None:
        """Fold pw_bn into pw, and out_bn's slices into the branch convs; the pool branch has no
        conv after its max-pool, so its slice stays a per-channel affine map."""
        fold_linear_bn(self.pw, self.pw_bn)
        scales, shifts = (t.split(self.bc) for t in bn_affine(self.out_bn))
        for conv, scale, shift in zip([*self.dconv, None, self.pw4], scales, shifts):
            if conv is None:
                self.pool_affine = ChannelAffine(scale, shift)
            else:
                fold_linear(conv, scale, shift)
        self.pw_bn = self.out_bn = nn.Identity()

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        *a, a_pool = bn_act(self.pw_bn, self.pw(x), split=(self.bc,) * (len(self.dconv) + 1))  # (B, bc, T, V)
        outs = [conv(ai) for ai, conv in zip(a, self.dconv)]
        outs.append(self.pool_affine(temporal_max_pool(a_pool, 3, self.stride, 1)))
        outs.append(self.pw4(x))
        return bn_act(self.out_bn, outs, residual)  # the unit's relu(tcn(x) + residual), outs concatenated


class CTRUnit(nn.Module):
    """y = ReLU(TCN(GCN(x)) + residual(x)): (B, C_in, T, V) -> (B, C_out, T/s, V)."""

    def __init__(self, c_in, c_out, A, stride=1, residual=True, raw_input=False, memory_efficient=False):
        super().__init__()
        self.gcn = CTRGraphConv(c_in, c_out, A, raw_input, memory_efficient)
        self.tcn = MultiScaleTCN(c_out, c_out, stride)
        if not residual:
            self.residual = None
        elif c_in == c_out and stride == 1:
            self.residual = nn.Identity()
        else:
            self.residual = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=(stride, 1)),
                                          nn.BatchNorm2d(c_out))
            _kaiming_fan_out(self.residual[0].weight, c_out)
            nn.init.zeros_(self.residual[0].bias)

    def forward(self, x):
        return self.tcn(self.gcn(x), None if self.residual is None else _shortcut(self.residual, x))


class CTRGCN(nn.Module):
    """CTR-GCN backbone: (N, C, T, V, M) -> (pooled (N, 256), taps {name: (N·M, C_s, T_s, V)}).

    Taps (METHODS.md §1.1): ``low`` after unit 1 (64, T), ``mid`` after unit 5 (128, T/2), ``high`` after
    unit 8 (256, T/4), ``final`` after unit 10 (256, T/4). They are channels-last tensors; use
    ``reshape`` (not ``view``) to flatten them. ``memory_efficient``: the graph convolutions recompute
    conv3's outputs in backward instead of keeping them (as torchvision's DenseNet option of that name:
    the same results, less training memory, slower steps).
    """

    tap_names = tuple(TAPS)
    feature_dim = 256

    def __init__(self, A, num_persons: int = 2, in_channels: int = 3, memory_efficient: bool = False):
        super().__init__()
        A = torch.as_tensor(A, dtype=torch.float32)
        self.num_joints, self.num_persons, self.in_channels = A.shape[-1], num_persons, in_channels
        self.data_bn = nn.BatchNorm1d(num_persons * self.num_joints * in_channels)
        self.units = nn.ModuleList(
            CTRUnit(in_channels if ci is None else ci, co, A, stride=s, residual=i > 0, raw_input=i == 0,
                    memory_efficient=memory_efficient)
            for i, (ci, co, s) in enumerate(UNITS))

    def tap_shapes(self, T: int, V: int | None = None) -> dict[str, tuple[int, int, int]]:
        """{tap: (C, T_s, V)} for input clips of T frames (each stride-2 unit maps T to ceil(T/2))."""
        V = V or self.num_joints
        shapes, t = {}, T
        for i, (_, co, s) in enumerate(UNITS):
            t = -(-t // s)
            shapes.update({name: (co, t, V) for name, j in TAPS.items() if j == i})
        return shapes

    def forward(self, x: torch.Tensor, taps: bool = True):
        n, c, t, v, m = x.shape
        x = self.data_bn(x.permute(0, 4, 3, 1, 2).reshape(n, m * v * c, t))  # BN over (M, V, C) channels
        # channels-last (N·M, C, T, V); as a view it would keep data_bn's frame-fastest order
        x = x.view(n, m, v, c, t).permute(0, 1, 4, 2, 3).reshape(n * m, t, v, c).contiguous().permute(0, 3, 1, 2)
        return run_units(self.units, x, n, m, taps)
