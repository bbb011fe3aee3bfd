"""STD-CL: vectorised memory-bank loss vs a slow per-anchor loop (METHODS §2); the head and its banks."""

import io

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from skelact.errors import SkelactError
from skelact.heads import STDCLHead, create_head, stdcl_loss

TAPS = {"high": (16, 6, 5), "final": (16, 6, 5)}


def slow_stdcl(z, labels, index, bank, bank_labels, filled, n_pos, n_hard_neg, n_rand_neg, temperature,
               exclude_self, seed):
    """Per anchor, straight from §2; random negatives = the n_rand_neg negatives with the largest uniform
    keys, keys drawn as one (valid anchors, S) matrix from a generator seeded with ``seed``."""
    slots = bank.shape[0]
    valid = []
    for i in range(z.shape[0]):
        pos = [j for j in range(slots) if filled[j] and bank_labels[j] == labels[i]
               and not (exclude_self and j == index[i])]
        neg = [j for j in range(slots) if filled[j] and bank_labels[j] != labels[i]]
        if len(pos) >= n_pos and len(neg) >= max(n_hard_neg, n_rand_neg):
            valid.append((i, pos, neg))
    if not valid:
        return torch.tensor(0.0)
    keys = torch.rand((len(valid), slots), generator=torch.Generator().manual_seed(seed))
    rows = []
    for a, (i, pos, neg) in enumerate(valid):
        sim = {j: z[i] @ bank[j] for j in range(slots)}
        hard_pos = sorted(pos, key=lambda j: float(sim[j].detach()))[:n_pos]
        hard_neg = sorted(neg, key=lambda j: -float(sim[j].detach()))[:n_hard_neg]
        rand_neg = sorted(neg, key=lambda j: -float(keys[a, j]))[:n_rand_neg]
        for p in hard_pos:
            for negs in (hard_neg, rand_neg):
                if negs:
                    row = torch.stack([sim[p]] + [sim[j] for j in negs]) / temperature
                    rows.append(-torch.log_softmax(row, dim=0)[0])
    return torch.stack(rows).mean()


def make_bank(seed=0, slots=30, dim=8):
    g = torch.Generator().manual_seed(seed)
    bank = F.normalize(torch.randn(slots, dim, generator=g), dim=1)
    bank_labels = torch.randint(0, 2, (slots,), generator=g)
    bank_labels[:2] = 2                                 # class 2: only 2 slots -> anchors of class 2 invalid
    filled = torch.rand(slots, generator=g) < 0.8
    filled[:2] = True
    index = torch.tensor([0, 5, 6, 7, 8, 9])            # anchor slots (anchor 0 is one of class 2's slots)
    labels = bank_labels[index].clone()
    z = F.normalize(torch.randn(len(index), dim, generator=g), dim=1)
    bank[index] = z                                     # written before reading, as the head does
    filled[index] = True
    return z, labels, index, bank, bank_labels, filled


@pytest.mark.parametrize("sizes", [(3, 4, 4), (2, 5, 3), (3, 0, 4), (1, 3, 0)])
@pytest.mark.parametrize("exclude_self", [True, False])
def test_loss_matches_slow_loop(sizes, exclude_self):
    n_pos, n_hard, n_rand = sizes
    z, labels, index, bank, bank_labels, filled = make_bank()
    kw = dict(n_pos=n_pos, n_hard_neg=n_hard, n_rand_neg=n_rand, temperature=0.8, exclude_self=exclude_self)
    z1 = z.clone().requires_grad_(True)
    z2 = z.clone().requires_grad_(True)
    fast = stdcl_loss(z1, labels, index, bank, bank_labels, filled, **kw,
                      generator=torch.Generator().manual_seed(5))
    slow = slow_stdcl(z2, labels, index, bank, bank_labels, filled, **kw, seed=5)
    assert fast > 0
    torch.testing.assert_close(fast, slow)
    fast.backward()
    slow.backward()
    torch.testing.assert_close(z1.grad, z2.grad)
    class2_valid = n_pos <= (1 if exclude_self else 2)                       # class 2 has 2 slots in all
    assert bool(z1.grad[0].abs().sum() > 0) == class2_valid and z1.grad[1:].abs().sum() > 0


def test_loss_stays_float32_under_autocast():
    z, labels, index, bank, bank_labels, filled = make_bank()
    kw = dict(n_pos=2, n_hard_neg=4, n_rand_neg=3, temperature=0.8)
    plain = stdcl_loss(z, labels, index, bank, bank_labels, filled, **kw, generator=torch.Generator().manual_seed(5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = stdcl_loss(z, labels, index, bank, bank_labels, filled, **kw,
                           generator=torch.Generator().manual_seed(5))
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, plain, rtol=1e-6, atol=1e-6)


def test_skip_conditions():
    z, labels, index, bank, bank_labels, filled = make_bank()
    n_negs = [int((filled & (bank_labels != y)).sum()) for y in labels]
    n_poss = [int((filled & (bank_labels == y)).sum()) - 1 for y in labels]     # without the anchor itself
    z.requires_grad_(True)
    for kw in (dict(n_pos=max(n_poss) + 1, n_hard_neg=1, n_rand_neg=1),
               dict(n_pos=1, n_hard_neg=max(n_negs) + 1, n_rand_neg=1),
               dict(n_pos=1, n_hard_neg=1, n_rand_neg=max(n_negs) + 1)):
        loss = stdcl_loss(z, labels, index, bank, bank_labels, filled, **kw)
        assert loss == 0 and not torch.signbit(loss)
        loss.backward()
        assert z.grad is not None and z.grad.abs().sum() == 0
    # the anchor's own slot counts as a positive only with exclude_self=False
    kw = dict(n_pos=max(n_poss) + 1, n_hard_neg=1, n_rand_neg=1)
    assert stdcl_loss(z, labels, index, bank, bank_labels, filled, exclude_self=False, **kw) > 0
    # an empty bank: nothing valid
    empty = torch.zeros_like(filled)
    assert stdcl_loss(z, labels, index, bank, bank_labels, empty, n_pos=1, n_hard_neg=1, n_rand_neg=1) == 0


def _feats(n, m=2, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return {tap: torch.randn(n * m, *s, generator=g).requires_grad_(requires_grad) for tap, s in TAPS.items()}


def _head(**kw):
    torch.manual_seed(0)
    opts = dict(n_pos=2, n_hard_neg=2, n_rand_neg=2)
    opts.update(kw)
    return STDCLHead(TAPS, num_classes=3, num_persons=2, num_samples=20, **opts)


def test_head_writes_the_batch_before_reading():
    head = _head()
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    index = torch.tensor([3, 4, 5, 10, 11, 12, 17, 19])
    feats = _feats(8, requires_grad=True)
    assert not head.filled.any()
    head.generator = torch.Generator().manual_seed(1)
    loss = head(feats, torch.randn(8, 3), labels, index)
    # first step on an empty bank: the batch itself supplies positives (2 others per class 0/1) and negatives
    assert loss > 0 and torch.isfinite(loss)
    z_s, z_t = head.embed(feats, 8)
    assert torch.equal(head.filled.nonzero().flatten(), index)
    assert torch.equal(head.bank_labels[index], labels) and (head.bank_labels[~head.filled] == -1).all()
    torch.testing.assert_close(head.bank_s[index], z_s.detach())
    torch.testing.assert_close(head.bank_t[index], z_t.detach())
    torch.testing.assert_close(head.bank_s[index].norm(dim=1), torch.ones(8))
    g = torch.Generator().manual_seed(1)
    kw = dict(n_pos=2, n_hard_neg=2, n_rand_neg=2, temperature=0.8, generator=g)
    expected = 0.5 * (stdcl_loss(z_s, labels, index, head.bank_s, head.bank_labels, head.filled, **kw)
                      + stdcl_loss(z_t, labels, index, head.bank_t, head.bank_labels, head.filled, **kw))
    torch.testing.assert_close(loss, expected)
    loss.backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert torch.isfinite(feats["final"].grad).all() and feats["high"].grad is None


def test_head_branch_sizes_and_person_average():
    head = _head(reduction=8, embed_dim=32)
    assert head.spatial.conv.out_channels == 2 and head.spatial.fc.in_features == 2 * 5
    assert head.temporal.fc.in_features == 2 * 6 and head.bank_s.shape == (20, 32)
    feats = _feats(3)
    z_s, _ = head.embed(feats, 3)
    per_person = head.spatial(feats["final"].mean(dim=2)).view(3, 2, -1).mean(dim=1)   # affine: same thing
    torch.testing.assert_close(z_s, F.normalize(per_person, dim=1))


def test_duplicate_index_last_copy_wins_and_eval_is_read_only():
    head = _head()
    feats = _feats(4)
    head(feats, torch.randn(4, 3), torch.tensor([0, 1, 2, 1]), torch.tensor([7, 8, 9, 8]))
    z_s, _ = head.embed(feats, 4)
    torch.testing.assert_close(head.bank_s[8], z_s[3].detach())
    head.eval()
    before = {k: v.clone() for k, v in head.state_dict().items()}
    head(_feats(4, seed=3), torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 2, 3]))
    assert all(torch.equal(v, head.state_dict()[k]) for k, v in before.items())


def test_banks_are_buffers_and_survive_save_load():
    head = _head()
    head(_feats(4), torch.randn(4, 3), torch.tensor([0, 1, 2, 1]), torch.tensor([1, 2, 3, 4]))
    state = head.state_dict()
    assert {"bank_s", "bank_t", "bank_labels", "filled"} <= set(state)
    assert not any(k.startswith("bank") for k, _ in head.named_parameters())
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    other = STDCLHead(TAPS, num_classes=3, num_persons=2, num_samples=20)
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in state.items())


def test_errors_and_registry():
    with pytest.raises(SkelactError, match="num_samples"):
        create_head("stdcl", TAPS, 3, 2)
    with pytest.raises(SkelactError, match="n_pos"):
        create_head("stdcl", TAPS, 3, 2, num_samples=10, npos=3)
    with pytest.raises(SkelactError, match="high, final"):
        create_head("stdcl", TAPS, 3, 2, num_samples=10, tap="l10")
    with pytest.raises(SkelactError, match="temperature"):
        create_head("stdcl", TAPS, 3, 2, num_samples=10, temperature=0)
    head = create_head("stdcl", TAPS, 3, 2, num_samples=10, n_pos=1, weight=1.0)
    assert isinstance(head, STDCLHead) and head.weight == 1.0 and head.n_pos == 1
    with pytest.raises(SkelactError, match="bank slot"):
        head(_feats(2), torch.randn(2, 3), torch.tensor([0, 1]))
    with pytest.raises(SkelactError, match="bank slot out of range"):
        head(_feats(2), torch.randn(2, 3), torch.tensor([0, 1]), torch.tensor([0, 10]))


# ----------------------------------------------------------------------------- torch.distributed
def _rank_batch(rank, requires_grad=False):
    labels = [torch.tensor([0, 1, 2, 0, 1]), torch.tensor([2, 2, 0])][rank]
    index = [torch.tensor([0, 1, 2, 3, 4]), torch.tensor([5, 6, 4])][rank]    # index 4 on both ranks
    return _feats(len(labels), seed=10 + rank, requires_grad=requires_grad), labels, index


def _ddp_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        head = _head(n_pos=1, n_hard_neg=1, n_rand_neg=1)
        feats, labels, index = _rank_batch(rank, requires_grad=True)
        loss = head(feats, torch.zeros(len(labels), 3), labels, index)
        loss.backward()
        torch.save({"state": {k: v for k, v in head.state_dict().items() if k.startswith(("bank", "filled"))},
                    "loss": loss.detach(), "feat_grads": {k: f.grad for k, f in feats.items()},
                    "param_grads": {k: p.grad for k, p in head.named_parameters()}}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_banks_loss_and_gradients_under_ddp_match_one_process(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    r0, r1 = (res["state"] for res in ranks)
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    # the anchors are both ranks' batches: loss and (DDP-averaged) gradients of one process on the union;
    # the random negatives match too, as every rank draws keys for all anchors from the same seed
    batches = [_rank_batch(r) for r in (0, 1)]
    feats = {tap: torch.cat([b[0][tap] for b in batches]).requires_grad_(True) for tap in TAPS}
    head = _head(n_pos=1, n_hard_neg=1, n_rand_neg=1)
    loss = head(feats, torch.zeros(8, 3), *(torch.cat([b[i] for b in batches]) for i in (1, 2)))
    loss.backward()
    assert loss > 0
    for r, res in enumerate(ranks):
        torch.testing.assert_close(res["loss"], loss.detach())
        rows = slice(0, 10) if r == 0 else slice(10, None)                      # 2 persons per clip
        for tap in TAPS:                                                        # the taps the head uses
            if feats[tap].grad is None:
                assert res["feat_grads"][tap] is None
            else:
                torch.testing.assert_close(res["feat_grads"][tap], 2 * feats[tap].grad[rows])
    for name, p in head.named_parameters():
        torch.testing.assert_close((ranks[0]["param_grads"][name] + ranks[1]["param_grads"][name]) / 2, p.grad)
    head = _head(n_pos=1, n_hard_neg=1, n_rand_neg=1)
    batches = [_rank_batch(r) for r in (0, 1)]
    z = [head.embed(f, len(y)) for f, y, _ in batches]
    head.write(torch.cat([b[2] for b in batches]), torch.cat([b[1] for b in batches]),
               torch.cat([zs for zs, _ in z]), torch.cat([zt for _, zt in z]))
    for k in r0:
        torch.testing.assert_close(r0[k], head.state_dict()[k])
    torch.testing.assert_close(r0["bank_s"][4], z[1][0][2].detach())         # rank 1's copy of index 4 wins
    assert r0["filled"].sum() == 7


def test_training_refuses_a_head_that_never_fires():
    labels = np.array([0] * 6 + [1] * 4 + [2] * 10)           # 20 training clips
    head = _head(n_pos=5, n_hard_neg=8, n_rand_neg=4)         # needs >= 5 others of its class, >= 8 others
    # class 0: 5 others, 14 negatives -> yes; class 1: 3 others -> no; class 2: 9 others but 10 negatives -> yes
    assert "only 2 of 3 classes (0, 2)" in head.check_training_labels(labels)
    assert "only 1 of 3 classes (0)" in _head(n_pos=5, n_hard_neg=11, n_rand_neg=4).check_training_labels(labels)
    assert "only 2 of 3 classes (0, 2)" in _head(n_pos=6, n_hard_neg=8, n_rand_neg=4,
                                                 exclude_self=False).check_training_labels(labels)
    assert _head(n_pos=3, n_hard_neg=8, n_rand_neg=4).check_training_labels(labels) is None
    with pytest.raises(SkelactError, match="loss would always be 0"):
        _head(n_pos=10).check_training_labels(labels)
    # the rule is the loss's own skip condition: class 1 (refused above) gives exactly 0, class 0 fires
    bank = torch.nn.functional.normalize(torch.randn(20, 8), dim=1)
    lab = torch.as_tensor(labels)
    z = bank[6:7].clone().requires_grad_()                    # a class-1 anchor in its own slot
    loss = stdcl_loss(z, lab[6:7], torch.tensor([6]), bank, lab, torch.ones(20, dtype=torch.bool),
                      n_pos=5, n_hard_neg=8, n_rand_neg=4)
    assert loss.item() == 0.0
    z0 = bank[0:1].clone().requires_grad_()                   # a class-0 anchor: it fires
    loss0 = stdcl_loss(z0, lab[0:1], torch.tensor([0]), bank, lab, torch.ones(20, dtype=torch.bool),
                       n_pos=5, n_hard_neg=8, n_rand_neg=4)
    assert loss0.item() > 0.0
