"""A straightforward CTR-GCN, organised like the paper's released code (written here from METHODS.md §4).

Three separate CTRGC modules per unit, conv1/conv2 applied to the full sequence before the temporal mean,
four separately-convolved temporal branches, ``torch.einsum`` aggregation per subset. It is the baseline
for ``bench/bench_backbone.py`` and the oracle for ``tests/test_reference_equivalence.py``;
:func:`load_into_fast` copies its weights onto :class:`skelact.models.ctrgcn.CTRGCN`.

Shapes: N batch, C channels, T frames, V joints, M persons.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def conv_init(conv: nn.Conv2d) -> None:
    nn.init.kaiming_normal_(conv.weight, mode="fan_out")
    nn.init.zeros_(conv.bias)


def bn_init(bn: nn.BatchNorm2d | nn.BatchNorm1d, scale: float) -> None:
    nn.init.constant_(bn.weight, scale)
    nn.init.zeros_(bn.bias)


def tcn_weights_init(m: nn.Module) -> None:
    """Initialisation of the multi-scale temporal block: kaiming (fan_out) convs, BN weight ~ N(1, 0.02)."""
    if isinstance(m, nn.Conv2d):
        conv_init(m)
    elif isinstance(m, nn.BatchNorm2d):
        m.weight.data.normal_(1.0, 0.02)
        m.bias.data.zero_()


class CTRGC(nn.Module):
    """One subset: (N, C_in, T, V) -> (N, C_out, T, V)."""

    def __init__(self, c_in: int, c_out: int, raw_input: bool):
        super().__init__()
        self.rel = 8 if raw_input else c_in // 8
        self.conv1 = nn.Conv2d(c_in, self.rel, 1)
        self.conv2 = nn.Conv2d(c_in, self.rel, 1)
        self.conv3 = nn.Conv2d(c_in, c_out, 1)
        self.conv4 = nn.Conv2d(self.rel, c_out, 1)
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            conv_init(conv)

    def forward(self, x, a, alpha):
        x1, x2, x3 = self.conv1(x).mean(-2), self.conv2(x).mean(-2), self.conv3(x)  # (N, rel, V) x2
        m = torch.tanh(x1.unsqueeze(-1) - x2.unsqueeze(-2))  # (N, rel, U, V)
        r = self.conv4(m) * alpha + a[None, None]  # (N, C_out, U, V)
        return torch.einsum("ncuv,nctv->nctu", r, x3)


class UnitGCN(nn.Module):
    def __init__(self, c_in: int, c_out: int, A: torch.Tensor, raw_input: bool):
        super().__init__()
        self.convs = nn.ModuleList(CTRGC(c_in, c_out, raw_input) for _ in range(A.shape[0]))
        if c_in != c_out:
            self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1), nn.BatchNorm2d(c_out))
            conv_init(self.down[0])
            bn_init(self.down[1], 1)
        else:
            self.down = nn.Identity()
        self.PA = nn.Parameter(A.clone())
        self.alpha = nn.Parameter(torch.zeros(1))
        self.bn = nn.BatchNorm2d(c_out)
        bn_init(self.bn, 1e-6)

    def forward(self, x):
        y = None
        for i, conv in enumerate(self.convs):
            z = conv(x, self.PA[i], self.alpha)
            y = z if y is None else y + z
        return torch.relu(self.bn(y) + self.down(x))


class TemporalConv(nn.Module):
    def __init__(self, c_in, c_out, kernel_size, stride=1, dilation=1):
        super().__init__()
        pad = (kernel_size + (kernel_size - 1) * (dilation - 1) - 1) // 2
        self.conv = nn.Conv2d(c_in, c_out, (kernel_size, 1), padding=(pad, 0), stride=(stride, 1),
                              dilation=(dilation, 1))
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x):
        return self.bn(self.conv(x))


class MultiScaleTemporalConv(nn.Module):
    def __init__(self, c_in, c_out, kernel_size=5, stride=1, dilations=(1, 2)):
        super().__init__()
        bc = c_out // (len(dilations) + 2)
        self.branches = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(c_in, bc, 1), nn.BatchNorm2d(bc), nn.ReLU(inplace=True),
                           TemporalConv(bc, bc, kernel_size, stride, d)) for d in dilations]
            + [nn.Sequential(nn.Conv2d(c_in, bc, 1), nn.BatchNorm2d(bc), nn.ReLU(inplace=True),
                             nn.MaxPool2d((3, 1), stride=(stride, 1), padding=(1, 0)), nn.BatchNorm2d(bc)),
               nn.Sequential(nn.Conv2d(c_in, bc, 1, stride=(stride, 1)), nn.BatchNorm2d(bc))])
        self.apply(tcn_weights_init)

    def forward(self, x):
        return torch.cat([b(x) for b in self.branches], dim=1)


class UnitTCN(nn.Module):
    """1x1 (strided) conv + BN: the residual down-path of a unit."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 1, stride=(stride, 1))
        self.bn = nn.BatchNorm2d(c_out)
        conv_init(self.conv)
        bn_init(self.bn, 1)

    def forward(self, x):
        return self.bn(self.conv(x))


class TCNGCNUnit(nn.Module):
    def __init__(self, c_in, c_out, A, stride=1, residual=True, raw_input=False):
        super().__init__()
        self.gcn1 = UnitGCN(c_in, c_out, A, raw_input)
        self.tcn1 = MultiScaleTemporalConv(c_out, c_out, stride=stride)
        if not residual:
            self.residual = None
        elif c_in == c_out and stride == 1:
            self.residual = nn.Identity()
        else:
            self.residual = UnitTCN(c_in, c_out, stride)

    def forward(self, x):
        y = self.tcn1(self.gcn1(x))
        return torch.relu(y if self.residual is None else y + self.residual(x))


class ReferenceCTRGCN(nn.Module):
    """(N, C, T, V, M) -> logits (N, K); ``return_features`` adds the pooled (N, 256) feature."""

    def __init__(self, A, num_classes, num_persons, in_channels=3, dropout=0.0):
        super().__init__()
        A = torch.as_tensor(A, dtype=torch.float32)
        v = A.shape[-1]
        self.data_bn = nn.BatchNorm1d(num_persons * in_channels * v)
        bn_init(self.data_bn, 1)
        spec = [(in_channels, 64, 1), (64, 64, 1), (64, 64, 1), (64, 64, 1), (64, 128, 2), (128, 128, 1),
                (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 256, 1)]
        self.layers = nn.ModuleList(
            TCNGCNUnit(ci, co, A, stride=s, residual=(i > 0), raw_input=(i == 0))
            for i, (ci, co, s) in enumerate(spec))
        self.drop_out = nn.Dropout(dropout) if dropout else nn.Identity()
        self.fc = nn.Linear(256, num_classes)
        nn.init.normal_(self.fc.weight, 0, math.sqrt(2.0 / num_classes))
        nn.init.zeros_(self.fc.bias)

    def forward(self, x, return_features=False):
        n, c, t, v, m = x.shape
        x = x.permute(0, 4, 3, 1, 2).reshape(n, m * v * c, t)
        x = self.data_bn(x).view(n, m, v, c, t).permute(0, 1, 3, 4, 2).reshape(n * m, c, t, v)
        for layer in self.layers:
            x = layer(x)
        pooled = x.view(n, m, x.shape[1], -1).mean(3).mean(1)
        logits = self.fc(self.drop_out(pooled))
        return (logits, pooled) if return_features else logits


@torch.no_grad()
def load_into_fast(ref: ReferenceCTRGCN, fast) -> None:
    """Copy the reference's weights and BN statistics onto a :class:`skelact.models.ctrgcn.CTRGCN`
    recogniser or backbone (per-subset convs are concatenated subset-major)."""
    bb = getattr(fast, "backbone", fast)
    bb.data_bn.load_state_dict(ref.data_bn.state_dict())
    for lr, lf in zip(ref.layers, bb.units):
        g, f = lr.gcn1, lf.gcn
        cs = g.convs
        f.PA.copy_(g.PA)
        f.alpha.copy_(g.alpha)
        # conv1 / conv2 of every subset -> one linear on the temporal mean, rows ordered (k, [1|2], rel)
        f.w12.copy_(torch.cat([torch.cat([c.conv1.weight, c.conv2.weight]) for c in cs]).flatten(1))
        f.b12.copy_(torch.cat([torch.cat([c.conv1.bias, c.conv2.bias]) for c in cs]))
        f.w3.copy_(torch.stack([c.conv3.weight.flatten(1) for c in cs]))
        f.b3.copy_(torch.stack([c.conv3.bias for c in cs]))
        f.w4.copy_(torch.stack([c.conv4.weight.flatten(1) for c in cs]))
        f.b4.copy_(torch.stack([c.conv4.bias for c in cs]))
        f.bn.load_state_dict(g.bn.state_dict())
        if isinstance(g.down, nn.Sequential):
            f.down[0].load_state_dict(g.down[0].state_dict())
            f.down[1].load_state_dict(g.down[1].state_dict())
        br, tf = lr.tcn1.branches, lf.tcn
        tf.pw.weight.copy_(torch.cat([b[0].weight for b in br[:3]]))
        tf.pw.bias.copy_(torch.cat([b[0].bias for b in br[:3]]))
        _cat_bn(tf.pw_bn, [b[1] for b in br[:3]])
        tf.pw4.load_state_dict(br[3][0].state_dict())
        for j in range(2):
            tf.dconv[j].load_state_dict(br[j][3].conv.state_dict())
        _cat_bn(tf.out_bn, [br[0][3].bn, br[1][3].bn, br[2][4], br[3][1]])
        if lr.residual is not None and isinstance(lr.residual, UnitTCN):
            lf.residual[0].load_state_dict(lr.residual.conv.state_dict())
            lf.residual[1].load_state_dict(lr.residual.bn.state_dict())
    head = getattr(fast, "classifier", None)
    if head is not None:
        head.load_state_dict(ref.fc.state_dict())


def _cat_bn(dst: nn.BatchNorm2d, srcs) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(dst, name).copy_(torch.cat([getattr(s, name) for s in srcs]))
    dst.num_batches_tracked.copy_(srcs[0].num_batches_tracked)
