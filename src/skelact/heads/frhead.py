"""FR-Head: Feature Refinement Head (CVPR 2023), METHODS.md §1.

Two pure functions usable with any backbone's embeddings, and a module for the multi-level head:

- :func:`fr_head_loss` (z, prototypes, logits, labels) -> scalar, §1.3-1.5.
- :func:`update_prototypes` in-place momentum update of a prototype bank from the batch's confident
  (true-positive) samples, §1.4; all-reduced under torch.distributed so every rank stays identical.
- :class:`FRHead`: spatial-temporal decoupling on each backbone tap (§1.2), 2 prototype banks per tap
  (registered buffers), ``w_cl · Σ_s λ_s (CL(z_spatial) + CL(z_temporal))``.

Symbols: N batch, M persons, C channels, T frames, V joints, K classes, D embedding size.
"""

from __future__ import annotations

import functools
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SkelactError
from ._dist import all_gather_rows, all_reduce_sum, gather_rows_with_grad
from ._pool import decoupled_means

ANCHORS = ("tp", "all")
DEFAULT_LAMBDAS = {"low": 0.1, "mid": 0.2, "high": 0.5, "final": 1.0}


def float32_math(fn):
    """Run ``fn`` with autocast off on the device of its first argument (a tensor): under mixed precision
    a loss's similarities, class means and bank updates stay float32 (autocast would run their matmuls in
    bf16 / fp16, whose rounding of cosines near 1 is ≈ 0.03 after dividing by τ = 0.125)."""
    @functools.wraps(fn)
    def wrapper(first: torch.Tensor, *args, **kwargs):
        with torch.autocast(first.device.type, enabled=False):
            return fn(first, *args, **kwargs)
    return wrapper


def _check_choice(key: str, value, valid) -> None:
    if value not in valid:
        raise SkelactError(f"{key}: {value!r} is not one of {', '.join(map(str, valid))}")


def _check_range(key: str, value, low: float, high: float | None = None, *, open_low: bool = False) -> None:
    bad = not isinstance(value, (int, float)) or isinstance(value, bool)
    bad = bad or (value <= low if open_low else value < low) or (high is not None and value > high)
    if bad:
        bound = f"> {low}" if open_low else f">= {low}"
        raise SkelactError(f"{key}: must be a number {bound}" + (f" and <= {high}" if high is not None else "")
                           + f", got {value!r}")


def sample_sets(logits: torch.Tensor, labels: torch.Tensor, threshold: float = 0.0):
    """Confident and ambiguous samples of a batch as one-hot masks (§1.3); everything detached.

    Args:
        logits: (N, K) main-classifier logits. labels: (N,) int.
        threshold: θ; a correctly classified sample is a TP only if p_{i,y_i} >= θ (with θ > 0 a
            correct but unconfident sample belongs to neither TP nor FN).
    Returns:
        p (N, K) softmax probabilities; y (N, K) one-hot labels; tp, fn, fp (N, K) float masks with
        tp[i, k] = [i ∈ TP_k], fn[i, k] = [i ∈ FN_k], fp[i, k] = [i ∈ FP_k].
    """
    logits = logits.detach().float()
    k = logits.shape[1]
    p = logits.softmax(dim=1)
    y = F.one_hot(labels.long(), k).to(p.dtype)
    pred = F.one_hot(p.argmax(dim=1), k).to(p.dtype)
    confident = (p >= threshold).to(p.dtype)
    return p, y, y * pred * confident, y * (1 - pred), (1 - y) * pred


def _class_means(z: torch.Tensor, mask: torch.Tensor):
    """Per-class mean of z (..., N, D) over a (N, K) membership mask: (..., K, D) means (zero rows where
    empty), (K,) bool."""
    counts = mask.sum(dim=0)
    means = (mask.t().to(z.dtype) @ z) / counts.clamp(min=1).unsqueeze(1).to(z.dtype)
    return means, counts > 0


@float32_math
def fr_head_loss(z: torch.Tensor, prototypes: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, *,
                 tau: float = 0.125, anchors: str = "tp", confidence_weight: bool = True,
                 threshold: float = 0.0) -> torch.Tensor:
    """FR-Head contrastive loss CL averaged over the N anchors of the batch (METHODS §1.5).

    For anchor i with k = y_i: s_il = cos(z_i, P_l);
    φ_i = 1 − cos(z_i, μ_FN^k), ψ_i = 1 + cos(z_i, μ_FP^k) when i is a TP of k (``anchors="tp"``; every
    anchor with ``anchors="all"``) and the set is non-empty, else 0; w_i = 1 − p_{i,k} (1 when
    ``confidence_weight`` is off). CL(z_i) = CE over [s_ik/τ − w_i ψ_i, s_il/τ (l≠k)] + the same with φ_i.
    μ_FN^k, μ_FP^k are batch means of z with gradient.

    Args:
        z: (N, D) embeddings (gradient flows into them), or (G, N, D): G groups of the same samples.
        prototypes: (K, D) prototype bank (treated as a constant), or (G, K, D): one per group.
        logits: (N, K) main-classifier logits (detached here). labels: (N,) int in [0, K).
    Returns:
        () scalar loss, float32, or (G,) one per group (as G separate calls, in one set of operations).
    """
    _check_choice("anchors", anchors, ANCHORS)
    _check_range("tau", tau, 0.0, open_low=True)
    z = z.float()
    p, y, tp, fn, fp = sample_sets(logits, labels, threshold)
    labels = labels.long()
    mu_fn, has_fn = _class_means(z, fn)                                     # (K, D), (K,)
    mu_fp, has_fp = _class_means(z, fp)
    gate = tp.sum(dim=1) if anchors == "tp" else torch.ones_like(p[:, 0])  # (N,) 1 for a TP anchor
    zn = F.normalize(z, dim=-1)
    cos_fn = (zn * F.normalize(mu_fn.index_select(-2, labels), dim=-1)).sum(dim=-1)  # (..., N) cos(z_i, μ_FN^{y_i})
    cos_fp = (zn * F.normalize(mu_fp.index_select(-2, labels), dim=-1)).sum(dim=-1)
    phi = gate * has_fn[labels].to(z.dtype) * (1 - cos_fn)
    psi = gate * has_fp[labels].to(z.dtype) * (1 + cos_fp)
    w = 1 - (p * y).sum(dim=1) if confidence_weight else torch.ones_like(gate)
    s = zn @ F.normalize(prototypes.detach().float(), dim=-1).transpose(-1, -2) / tau  # (..., N, K) s_il / τ
    k, targets = s.shape[-1], labels.expand(s.shape[:-1]).reshape(-1)

    def ce(margin):  # CE of every row of s − y·margin, (..., N)
        return F.cross_entropy((s - y * margin.unsqueeze(-1)).reshape(-1, k), targets,
                               reduction="none").view(s.shape[:-1])
    return (ce(w * psi) + ce(w * phi)).mean(dim=-1)


@torch.no_grad()
@float32_math
def update_prototypes(prototypes: torch.Tensor, z: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, *,
                      momentum: float = 0.9, threshold: float = 0.0) -> torch.Tensor:
    """In place: P_k ← m·P_k + (1−m)·mean_{i∈TP_k} z_i for every class k with at least one TP (§1.4).

    Under torch.distributed (if initialised) the per-class TP sums and counts are all-reduced first, so
    every rank applies the identical update computed on the union of the ranks' batches.

    Args:
        prototypes: (K, D) buffer, modified in place. z: (N, D). logits: (N, K). labels: (N,).
        Or prototypes (G, K, D) and z (G, N, D): G banks, each updated from its own group of embeddings.
    Returns:
        ``prototypes``.
    """
    _, _, tp, _, _ = sample_sets(logits, labels, threshold)
    z = z.detach().to(prototypes.dtype)
    tp = tp.to(prototypes.dtype)
    sums = tp.t() @ z                                                        # (..., K, D)
    counts = tp.sum(dim=0).unsqueeze(1).expand(*sums.shape[:-1], 1)          # (..., K, 1)
    stats = all_reduce_sum(torch.cat([sums, counts], dim=-1))                # (..., K, D + 1)
    sums, counts = stats[..., :-1], stats[..., -1:]
    updated = momentum * prototypes + (1 - momentum) * sums / counts.clamp(min=1)
    prototypes.copy_(torch.where(counts > 0, updated, prototypes))
    return prototypes


class _Branch(nn.Module):
    """(N, C, L) → 1×1 conv C → max(1, ⌊E/L⌋), BN, ReLU → flatten → Linear → (N, E)."""

    def __init__(self, channels: int, length: int, embed_dim: int):
        super().__init__()
        hidden = max(1, embed_dim // length)
        self.conv = nn.Conv1d(channels, hidden, kernel_size=1)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc = nn.Linear(hidden * length, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the 1x1 conv as one matmul: on these small (N, C, L) maps oneDNN's conv costs about twice as much
        h = torch.matmul(self.conv.weight.squeeze(-1), x) + self.conv.bias[:, None]
        return self.fc(F.relu(self.bn(h)).flatten(1))


class FRStage(nn.Module):
    """The FR-Head of one tap: embeddings and prototype banks.

    ``decouple=True``: spatial branch on the tap's mean over T (N, C, V), temporal branch on its mean over
    V (N, C, T), each giving (N, E); buffers ``proto_s``, ``proto_t`` (K, E).
    ``decouple=False`` (ablation "+CL loss only", the paper's "without any extra operation"): the globally
    pooled feature x.mean(T, V) (N, C) itself, no parameters; one buffer ``proto_g`` (K, C).
    Prototypes start standard normal (torch's global RNG), as in the reference code.
    """

    def __init__(self, shape, num_classes: int, embed_dim: int = 256, decouple: bool = True):
        super().__init__()
        channels, frames, joints = (int(v) for v in shape)
        self.shape = (channels, frames, joints)
        self.decouple = decouple
        if decouple:
            self.spatial = _Branch(channels, joints, embed_dim)
            self.temporal = _Branch(channels, frames, embed_dim)
            self.branches = ("s", "t")
            dim = embed_dim
        else:
            self.branches = ("g",)
            dim = channels
        for b in self.branches:
            self.register_buffer(f"proto_{b}", torch.randn(num_classes, dim))

    def prototypes(self, branch: str) -> torch.Tensor:
        """(K, D) prototype buffer of branch ``"s"``, ``"t"`` or ``"g"``."""
        return self.get_buffer(f"proto_{branch}")

    def embed(self, over_t: torch.Tensor, over_v: torch.Tensor) -> dict[str, torch.Tensor]:
        """The tap's means over T (N, C, V) and over V (N, C, T) → {branch: (N, D)}."""
        if not self.decouple:
            return {"g": over_t.mean(dim=2)}
        return {"s": self.spatial(over_t), "t": self.temporal(over_v)}


class FRHead(nn.Module):
    """Multi-level FR-Head (§1.1-1.5): ``head(feats, logits, labels) = w_cl · Σ_s λ_s (CL(z_s) + CL(z_t))``.

    Args:
        tap_shapes: {tap: (C, T, V)} of the backbone taps (per person; feats[tap] is (N·M, C, T, V)).
        num_classes: K. num_persons: M.
        lambdas: {tap: λ}; only these taps get a head (``{"final": 1.0}`` is "final level only").
        w_cl: overall weight. tau, anchors, confidence_weight, threshold: see :func:`fr_head_loss`.
        decouple: spatial-temporal decoupling (False: the pooled feature, see :class:`FRStage`).
        momentum: prototype momentum m. embed_dim: E.
    In training mode each forward first updates every prototype bank from the batch's TPs (no gradient),
    then computes the loss with the updated prototypes; in eval mode prototypes are left untouched.
    Under torch.distributed both use every rank's batch, so a DDP step equals one process's step on the
    global batch.
    """

    def __init__(self, tap_shapes: Mapping[str, tuple], num_classes: int, num_persons: int = 1, *,
                 lambdas: Mapping[str, float] | None = None, w_cl: float = 0.1, tau: float = 0.125,
                 anchors: str = "tp", confidence_weight: bool = True, decouple: bool = True,
                 momentum: float = 0.9, embed_dim: int = 256, threshold: float = 0.0):
        super().__init__()
        if lambdas is not None and not isinstance(lambdas, Mapping):
            raise SkelactError(f"head.lambdas: expected a mapping {{tap: weight}}, got {lambdas!r}")
        lambdas = dict(DEFAULT_LAMBDAS if lambdas is None else lambdas)
        if not isinstance(tap_shapes, Mapping) or not tap_shapes:
            raise SkelactError("head.tap_shapes: expected a non-empty mapping {tap: (C, T, V)}")
        for tap in lambdas:
            _check_choice("head.lambdas", tap, tuple(tap_shapes))
            _check_range(f"head.lambdas.{tap}", lambdas[tap], 0.0)
        if not lambdas:
            raise SkelactError("head.lambdas: at least one tap is needed")
        _check_choice("head.anchors", anchors, ANCHORS)
        _check_range("head.tau", tau, 0.0, open_low=True)
        _check_range("head.w_cl", w_cl, 0.0)
        _check_range("head.momentum", momentum, 0.0, 1.0)
        _check_range("head.threshold", threshold, 0.0, 1.0)
        _check_range("head.embed_dim", embed_dim, 1)
        _check_range("head.num_persons", num_persons, 1)
        _check_range("head.num_classes", num_classes, 1)
        self.num_persons = int(num_persons)
        self.lambdas = {tap: float(lam) for tap, lam in lambdas.items()}
        self.w_cl, self.tau, self.anchors = float(w_cl), float(tau), anchors
        self.confidence_weight, self.momentum, self.threshold = bool(confidence_weight), float(momentum), threshold
        self.stages = nn.ModuleDict({tap: FRStage(tap_shapes[tap], num_classes, int(embed_dim), bool(decouple))
                                     for tap in self.lambdas})

    def _pooled(self, tap: str, x: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(N·M, C, T, V) → its means over the M persons and T (N, C, V), and over M and V (N, C, T)."""
        expected = (n * self.num_persons, *self.stages[tap].shape)
        if tuple(x.shape) != expected:
            raise SkelactError(f"head: tap {tap!r} has shape {tuple(x.shape)}, the head was built for "
                               f"{expected} (N·M, C, T, V) with N={n}, M={self.num_persons}")
        return decoupled_means(x, n, self.num_persons)

    def embed(self, feats: Mapping[str, torch.Tensor], n: int) -> dict[str, dict[str, torch.Tensor]]:
        """{tap: (N·M, C, T, V)} → {tap: {branch: (N, D)}} for the taps in ``lambdas``."""
        return {tap: stage.embed(*self._pooled(tap, feats[tap], n)) for tap, stage in self.stages.items()}

    def forward(self, feats: Mapping[str, torch.Tensor], logits: torch.Tensor, labels: torch.Tensor,
                index: torch.Tensor | None = None) -> torch.Tensor:
        """feats {tap: (N·M, C, T, V)}, logits (N, K), labels (N,) → () weighted auxiliary loss."""
        labels = labels.to(logits.device).long()
        # under torch.distributed the sets TP/FN/FP, their means and the anchor average span every rank's
        # batch (as for one process with the whole batch); prototype updates all-reduce their own sums
        logits_all, labels_all = all_gather_rows(logits.detach(), labels)
        # the (tap, branch) embeddings of one size are stacked, so that their prototype updates and losses
        # run as one set of operations (the same values as one call per embedding)
        groups: dict[tuple, list] = {}
        for tap, branches in self.embed(feats, logits.shape[0]).items():
            for branch, z in branches.items():
                groups.setdefault(tuple(z.shape), []).append((tap, branch, z))
        total = logits.new_zeros((), dtype=torch.float32)
        for members in groups.values():
            banks = [self.stages[tap].prototypes(branch) for tap, branch, _ in members]
            protos = torch.stack(banks)                                      # (G, K, D)
            if self.training:
                update_prototypes(protos, torch.stack([z for *_, z in members]), logits, labels,
                                  momentum=self.momentum, threshold=self.threshold)
                for bank, updated in zip(banks, protos):
                    bank.copy_(updated)
            losses = fr_head_loss(torch.stack([gather_rows_with_grad(z) for *_, z in members]), protos, logits_all,
                                  labels_all, tau=self.tau, anchors=self.anchors,
                                  confidence_weight=self.confidence_weight, threshold=self.threshold)  # (G,)
            lambdas = losses.new_tensor([self.lambdas[tap] for tap, *_ in members])
            total = total + (lambdas * losses).sum()
        return self.w_cl * total
