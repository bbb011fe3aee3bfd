"""STD-CL: Spatial-Temporal Decoupling Contrastive Learning (arXiv 2312.15144), METHODS.md §2.

A supervised, training-only head: the final feature map is decoupled into a spatial (mean over T) and a
temporal (mean over V) embedding; each is contrasted against a memory bank holding one L2-normalised
embedding per training sample (addressed by its slot: the clip's position in the training set), with
hard positive / hard and random negative mining. Loss: ``weight · (L_spatial + L_temporal)``, weight ½ by default.

About "attentive features": the paper's abstract says the method "employs the attentive features to
contrastive learning", but no attention module is visible in the released code. The only focusing
mechanism implemented there, and here, is the hard-sample selection (hardest positives / negatives).

Symbols: N batch, M persons, C channels, T frames, V joints, S bank slots (training samples), E embedding.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SkelactError
from ._dist import all_gather_rows, gather_rows_with_grad
from ._pool import decoupled_means
from .frhead import _check_choice, _check_range, float32_math


@float32_math
def stdcl_loss(z: torch.Tensor, labels: torch.Tensor, index: torch.Tensor, bank: torch.Tensor,
               bank_labels: torch.Tensor, filled: torch.Tensor, *, n_pos: int = 128, n_hard_neg: int = 512,
               n_rand_neg: int = 512, temperature: float = 0.8, exclude_self: bool = True,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Memory-bank contrastive loss of one branch.

    For each anchor i: positives = filled slots with label y_i (without slot index_i when
    ``exclude_self``), negatives = filled slots of other labels. The anchor is skipped unless it has
    >= n_pos positives and >= max(n_hard_neg, n_rand_neg) negatives. From the valid anchors: the n_pos
    hardest positives (lowest similarity), n_hard_neg hardest negatives (highest similarity), n_rand_neg
    negatives drawn uniformly without replacement (largest of uniform keys from ``generator``, default
    torch's global RNG; keys are drawn only when some anchor is valid, shape (valid anchors, S)). Every hard
    positive p gives the rows [s_ip, s_i,hard negs] and [s_ip, s_i,random negs] (a row type is omitted when
    its count is 0); loss = mean over all rows of cross-entropy with target 0 on row / temperature.

    Args:
        z: (N, E) L2-normalised anchors (with gradient). labels: (N,). index: (N,) bank slot of each anchor.
        bank: (S, E) L2-normalised embeddings (constant). bank_labels: (S,). filled: (S,) bool.
    Returns:
        () scalar; exactly 0 (still connected to z) when no anchor is valid.
    """
    slots = bank.shape[0]
    labels, index = labels.to(bank_labels.device).long(), index.to(bank_labels.device).long()
    same = bank_labels.unsqueeze(0) == labels.unsqueeze(1)                     # (N, S)
    pos = filled.unsqueeze(0) & same
    if exclude_self:
        pos = pos & (torch.arange(slots, device=pos.device).unsqueeze(0) != index.unsqueeze(1))
    neg = filled.unsqueeze(0) & ~same
    valid = (pos.sum(1) >= n_pos) & (neg.sum(1) >= max(n_hard_neg, n_rand_neg))
    if not bool(valid.any()):
        return z.new_zeros(()) + z.sum() * 0.0                                 # 0, connected to z
    z, pos, neg = z[valid], pos[valid], neg[valid]
    sim = z.float() @ bank.detach().float().t()                                # (A, S)
    with torch.no_grad():
        s = sim.detach()
        pos_idx = s.masked_fill(~pos, float("inf")).topk(n_pos, dim=1, largest=False).indices   # (A, P)
        neg_sets = []
        if n_hard_neg > 0:
            neg_sets.append(s.masked_fill(~neg, float("-inf")).topk(n_hard_neg, dim=1).indices)
        if n_rand_neg > 0:
            keys = torch.rand(s.shape, generator=generator, device=s.device)
            neg_sets.append(keys.masked_fill(~neg, -1.0).topk(n_rand_neg, dim=1).indices)
    s_pos = sim.gather(1, pos_idx) / temperature                               # (A, P)
    losses = []
    for idx in neg_sets:                                                       # ≤ 2 row types
        s_neg = sim.gather(1, idx) / temperature                               # (A, R)
        rows = torch.cat([s_pos.unsqueeze(2), s_neg.unsqueeze(1).expand(-1, s_pos.shape[1], -1)], dim=2)
        losses.append(torch.logsumexp(rows, dim=2) - s_pos)                   # (A, P) CE with target 0
    return torch.cat(losses, dim=1).mean()


class _Branch(nn.Module):
    """(N, C, L) → 1×1 conv C → max(1, C // reduction) → flatten → Linear → (N, E)."""

    def __init__(self, channels: int, length: int, embed_dim: int, reduction: int):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.conv = nn.Conv1d(channels, hidden, kernel_size=1)
        self.fc = nn.Linear(hidden * length, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).flatten(1))


class STDCLHead(nn.Module):
    """STD-CL head on one backbone tap: ``head(feats, logits, labels, index) = weight · (L_s + L_t)``.

    Args:
        tap_shapes: {tap: (C, T, V)}; only ``tap`` (default "final") is used.
        num_classes: K (unused by the loss, kept for the common head signature). num_persons: M.
        num_samples: S, the number of training samples = bank slots (slots 0..S-1).
        embed_dim: E. reduction: the 1×1 conv maps C → C // reduction (8).
        n_pos, n_hard_neg, n_rand_neg, temperature, exclude_self: see :func:`stdcl_loss`.
        weight: multiplies L_s + L_t (½ as in the paper).
    Buffers: ``bank_s``, ``bank_t`` (S, E), ``bank_labels`` (S,) int64 (−1 = empty), ``filled`` (S,) bool.
    ``generator``: optional torch.Generator for the random negatives (None: torch's global RNG).

    Persons are averaged before the branches; since conv → flatten → Linear is affine this equals
    averaging the per-person embeddings. In training mode each forward first writes the batch's
    normalised, detached embeddings, labels and indices into the banks (all-gathered over ranks under
    torch.distributed, so banks stay identical; for an index repeated in one step the last copy wins),
    then computes the loss over every rank's batch as anchors (the loss of one process with the global
    batch; the random negatives come from each rank's generator). The anchor's own, freshly written slot (similarity 1) is not a positive unless
    ``exclude_self=False``. In eval mode the banks are read, never written.
    """

    def __init__(self, tap_shapes: Mapping[str, tuple], num_classes: int, num_persons: int = 1,
                 num_samples: int | None = None, *, tap: str = "final", embed_dim: int = 256,
                 reduction: int = 8, n_pos: int = 128, n_hard_neg: int = 512, n_rand_neg: int = 512,
                 temperature: float = 0.8, weight: float = 0.5, exclude_self: bool = True):
        super().__init__()
        if not isinstance(tap_shapes, Mapping) or not tap_shapes:
            raise SkelactError("head.tap_shapes: expected a non-empty mapping {tap: (C, T, V)}")
        _check_choice("head.tap", tap, tuple(tap_shapes))
        if num_samples is None:
            raise SkelactError("head.num_samples: stdcl needs the number of training samples (bank size)")
        for key, value, low in (("num_samples", num_samples, 1), ("num_persons", num_persons, 1),
                                ("embed_dim", embed_dim, 1), ("reduction", reduction, 1), ("n_pos", n_pos, 1),
                                ("n_hard_neg", n_hard_neg, 0), ("n_rand_neg", n_rand_neg, 0),
                                ("weight", weight, 0)):
            _check_range(f"head.{key}", value, low)
            if key != "weight" and int(value) != value:
                raise SkelactError(f"head.{key}: must be an integer, got {value!r}")
        if n_hard_neg + n_rand_neg == 0:
            raise SkelactError("head.n_hard_neg: n_hard_neg and n_rand_neg cannot both be 0")
        _check_range("head.temperature", temperature, 0.0, open_low=True)
        channels, frames, joints = (int(v) for v in tap_shapes[tap])
        self.tap, self.shape, self.num_persons = tap, (channels, frames, joints), int(num_persons)
        self.n_pos, self.n_hard_neg, self.n_rand_neg = int(n_pos), int(n_hard_neg), int(n_rand_neg)
        self.temperature, self.weight, self.exclude_self = float(temperature), float(weight), bool(exclude_self)
        self.generator: torch.Generator | None = None
        self.spatial = _Branch(channels, joints, int(embed_dim), int(reduction))
        self.temporal = _Branch(channels, frames, int(embed_dim), int(reduction))
        self.register_buffer("bank_s", torch.zeros(int(num_samples), int(embed_dim)))
        self.register_buffer("bank_t", torch.zeros(int(num_samples), int(embed_dim)))
        self.register_buffer("bank_labels", torch.full((int(num_samples),), -1, dtype=torch.long))
        self.register_buffer("filled", torch.zeros(int(num_samples), dtype=torch.bool))

    def embed(self, feats: Mapping[str, torch.Tensor], n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """feats[tap] (N·M, C, T, V) → L2-normalised (z_spatial, z_temporal), each (N, E)."""
        x = feats[self.tap]
        expected = (n * self.num_persons, *self.shape)
        if tuple(x.shape) != expected:
            raise SkelactError(f"head: tap {self.tap!r} has shape {tuple(x.shape)}, the head was built for "
                               f"{expected} (N·M, C, T, V) with N={n}, M={self.num_persons}")
        over_t, over_v = decoupled_means(x, n, self.num_persons)                # (N, C, V), (N, C, T)
        return (F.normalize(self.spatial(over_t).float(), dim=1),
                F.normalize(self.temporal(over_v).float(), dim=1))

    def check_training_labels(self, train_labels) -> str | None:
        """Refuse sizes under which no clip of the training set (labels (S_train,)) can ever be an anchor
        — at least n_pos other clips of its class and max(n_hard_neg, n_rand_neg) of other classes —
        since the loss would silently stay 0. Returns a note when only some classes can be anchors."""
        counts = torch.bincount(torch.as_tensor(train_labels).long().flatten())
        enough = ((counts - int(self.exclude_self) >= self.n_pos) & (counts > 0)
                  & (counts.sum() - counts >= max(self.n_hard_neg, self.n_rand_neg)))
        sizes = (f"n_pos={self.n_pos} (the largest class has {int(counts.max()) - int(self.exclude_self)} "
                 f"other training clips), n_hard_neg={self.n_hard_neg}, n_rand_neg={self.n_rand_neg}")
        if not bool(enough.any()):
            raise SkelactError(f"head stdcl: no training clip can ever be an anchor with {sizes}, so its loss "
                               f"would always be 0; lower these options (see configs/ablation/stdcl_ucla.yaml)")
        if not bool(enough[counts > 0].all()):
            ok = torch.nonzero(enough).flatten().tolist()
            return (f"head stdcl: only {len(ok)} of {int((counts > 0).sum())} classes "
                    f"({', '.join(map(str, ok))}) have enough clips to be anchors with {sizes}")
        return None

    @torch.no_grad()
    def write(self, index: torch.Tensor, labels: torch.Tensor, z_s: torch.Tensor, z_t: torch.Tensor) -> None:
        """Store the batch (all ranks' batches under torch.distributed) in the banks: (N,), (N,), (N, E) ×2."""
        index, labels, z_s, z_t = all_gather_rows(index, labels, z_s.detach(), z_t.detach())
        order = torch.arange(index.shape[0], device=index.device)
        last = torch.full_like(self.bank_labels, -1).scatter_reduce(0, index, order, "amax")
        keep = last[index] == order                                            # last copy of each index
        index = index[keep]
        self.bank_s[index] = z_s[keep].to(self.bank_s.dtype)
        self.bank_t[index] = z_t[keep].to(self.bank_t.dtype)
        self.bank_labels[index] = labels[keep]
        self.filled[index] = True

    def forward(self, feats: Mapping[str, torch.Tensor], logits: torch.Tensor, labels: torch.Tensor,
                index: torch.Tensor | None = None) -> torch.Tensor:
        """feats {tap: (N·M, C, T, V)}, logits (N, K) (unused), labels (N,), index (N,) → () aux loss."""
        if index is None:
            raise SkelactError("head: stdcl needs the bank slot (training-set position) of every clip")
        device = self.filled.device
        index, labels = index.to(device).long(), labels.to(device).long()
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.filled.shape[0]):
            raise SkelactError(f"head.num_samples: bank slot out of range 0..{self.filled.shape[0] - 1}")
        z_s, z_t = self.embed(feats, labels.shape[0])
        if self.training:
            self.write(index, labels, z_s, z_t)
        kw = dict(n_pos=self.n_pos, n_hard_neg=self.n_hard_neg, n_rand_neg=self.n_rand_neg,
                  temperature=self.temperature, exclude_self=self.exclude_self, generator=self.generator)
        # under torch.distributed the anchors are every rank's batch, as for one process with the whole batch
        labels, index = all_gather_rows(labels, index)
        loss_s = stdcl_loss(gather_rows_with_grad(z_s), labels, index, self.bank_s, self.bank_labels, self.filled, **kw)
        loss_t = stdcl_loss(gather_rows_with_grad(z_t), labels, index, self.bank_t, self.bank_labels, self.filled, **kw)
        return self.weight * (loss_s + loss_t)
