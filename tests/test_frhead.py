"""FR-Head: vectorised loss / prototype update vs slow loops written from METHODS §1.3-1.5; the module."""

import io

import pytest
import torch
import torch.multiprocessing as mp

from skelact.errors import SkelactError
from skelact.heads import FRHead, create_head, fr_head_loss, list_heads, update_prototypes

CTRGCN_TAPS = {
    (64, 25): {"low": (64, 64, 25), "mid": (128, 32, 25), "high": (256, 16, 25), "final": (256, 16, 25)},
    (52, 20): {"low": (64, 52, 20), "mid": (128, 26, 20), "high": (256, 13, 20), "final": (256, 13, 20)},
    (13, 17): {"low": (8, 13, 17), "mid": (16, 7, 17), "high": (32, 3, 17), "final": (32, 3, 17)},
}


# ----------------------------------------------------------------------------- slow references
def _cos(u, v):
    return (u @ v) / (u.norm() * v.norm())


def _sets(logits, labels, threshold):
    """TP_k, FN_k, FP_k as Python lists, and p, straight from §1.3."""
    n, k_classes = logits.shape
    p = torch.softmax(logits.detach().float(), dim=1)
    pred = [int(torch.argmax(logits[i])) for i in range(n)]
    y = [int(v) for v in labels]
    tp = {k: [i for i in range(n) if y[i] == k and pred[i] == k and p[i, k] >= threshold] for k in range(k_classes)}
    fn = {k: [i for i in range(n) if y[i] == k and pred[i] != k] for k in range(k_classes)}
    fp = {k: [i for i in range(n) if y[i] != k and pred[i] == k] for k in range(k_classes)}
    return p, y, tp, fn, fp


def slow_loss(z, prototypes, logits, labels, tau=0.125, anchors="tp", confidence_weight=True, threshold=0.0):
    n, k_classes = logits.shape
    p, y, tp, fn, fp = _sets(logits, labels, threshold)
    total = 0.0
    for i in range(n):
        k = y[i]
        s = [_cos(z[i], prototypes[l]) for l in range(k_classes)]
        is_anchor = (i in tp[k]) if anchors == "tp" else True
        phi = 1 - _cos(z[i], torch.stack([z[j] for j in fn[k]]).mean(0)) if is_anchor and fn[k] else 0.0
        psi = 1 + _cos(z[i], torch.stack([z[j] for j in fp[k]]).mean(0)) if is_anchor and fp[k] else 0.0
        w = 1 - p[i, k] if confidence_weight else 1.0
        others = sum(torch.exp(s[l] / tau) for l in range(k_classes) if l != k)
        a = s[k] / tau - w * psi
        b = s[k] / tau - w * phi
        total = total - torch.log(torch.exp(a) / (torch.exp(a) + others)) \
                      - torch.log(torch.exp(b) / (torch.exp(b) + others))
    return total / n


def slow_update(prototypes, z, logits, labels, momentum=0.9, threshold=0.0):
    out = prototypes.clone()
    _, _, tp, _, _ = _sets(logits, labels, threshold)
    for k, members in tp.items():
        if members:
            out[k] = momentum * prototypes[k] + (1 - momentum) * torch.stack([z[i] for i in members]).mean(0)
    return out


# ----------------------------------------------------------------------------- cases
def make_case(name, seed=0):
    g = torch.Generator().manual_seed(seed)
    n, k = {"random": (12, 3), "no_tp_some_class": (10, 5), "all_correct": (9, 4), "all_wrong": (9, 4),
            "one_per_class": (6, 6), "k_gt_n": (3, 10), "n1_correct": (1, 4), "n1_wrong": (1, 4)}[name]
    labels = torch.randint(0, k, (n,), generator=g)
    if name == "one_per_class":
        labels = torch.randperm(k, generator=g)
    logits = torch.randn(n, k, generator=g)
    if name in ("random", "one_per_class", "k_gt_n"):
        logits += 1.5 * torch.nn.functional.one_hot(labels, k)
    if name in ("all_correct", "n1_correct"):
        logits += 10 * torch.nn.functional.one_hot(labels, k)
    if name in ("all_wrong", "n1_wrong"):
        logits += 10 * torch.nn.functional.one_hot((labels + 1) % k, k)
    if name == "no_tp_some_class":
        labels = torch.tensor([0, 0, 0, 1, 2, 3, 4, 1, 2, 3])
        logits += 1.5 * torch.nn.functional.one_hot(labels, k)
        logits[:, 0] = -10.0                      # class 0 never predicted: no TP, all FN, no FP
    z = torch.randn(n, 7, generator=g)
    prototypes = torch.randn(k, 7, generator=g)
    return z, prototypes, logits, labels


CASES = ["random", "no_tp_some_class", "all_correct", "all_wrong", "one_per_class", "k_gt_n",
         "n1_correct", "n1_wrong"]


def test_cases_cover_the_edge_sets():
    from skelact.heads import sample_sets
    _, _, tp, fn, fp = sample_sets(*make_case("random")[2:])
    assert tp.sum() > 0 and fn.sum() > 0 and fp.sum() > 0
    _, _, tp, fn, fp = sample_sets(*make_case("no_tp_some_class")[2:])
    assert tp[:, 0].sum() == 0 and fn[:, 0].sum() == 3
    _, _, tp, fn, fp = sample_sets(*make_case("all_correct")[2:])
    assert fn.sum() == 0 and fp.sum() == 0 and tp.sum() == 9
    _, _, tp, fn, fp = sample_sets(*make_case("all_wrong")[2:])
    assert tp.sum() == 0 and fn.sum() == 9 and fp.sum() == 9


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("anchors", ["tp", "all"])
@pytest.mark.parametrize("confidence_weight", [True, False])
def test_loss_matches_slow_loop(case, anchors, confidence_weight):
    z, prototypes, logits, labels = make_case(case)
    z1 = z.clone().requires_grad_(True)
    z2 = z.double().clone().requires_grad_(True)
    fast = fr_head_loss(z1, prototypes, logits, labels, anchors=anchors, confidence_weight=confidence_weight)
    slow = slow_loss(z2, prototypes.double(), logits, labels, anchors=anchors, confidence_weight=confidence_weight)
    assert fast.shape == ()
    torch.testing.assert_close(fast.double(), slow, rtol=1e-5, atol=1e-5)
    fast.backward()
    slow.backward()
    assert torch.isfinite(z1.grad).all()
    torch.testing.assert_close(z1.grad.double(), z2.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("anchors", ["tp", "all"])
def test_loss_threshold_and_tau(anchors):
    z, prototypes, logits, labels = make_case("random", seed=3)
    kw = dict(tau=0.3, anchors=anchors, threshold=0.6)
    fast = fr_head_loss(z, prototypes, logits, labels, **kw)
    torch.testing.assert_close(fast.double(), slow_loss(z.double(), prototypes.double(), logits, labels, **kw),
                               rtol=1e-5, atol=1e-5)


def test_loss_logits_and_prototypes_get_no_gradient():
    z, prototypes, logits, labels = make_case("random")
    logits.requires_grad_(True)
    prototypes.requires_grad_(True)
    z.requires_grad_(True)
    fr_head_loss(z, prototypes, logits, labels).backward()
    assert logits.grad is None and prototypes.grad is None and z.grad is not None


def test_loss_and_update_stay_float32_under_autocast():
    """Mixed precision must not reach the similarities / class means: a bf16 matmul would move the loss
    by ~1e-3 here (cosines rounded to 2^-8, then divided by tau)."""
    z, prototypes, logits, labels = make_case("random", seed=4)
    plain = fr_head_loss(z, prototypes, logits, labels)
    updated = update_prototypes(prototypes.clone(), z, logits, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = fr_head_loss(z, prototypes, logits, labels)
        updated_mixed = update_prototypes(prototypes.clone(), z, logits, labels)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, plain, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(updated_mixed, updated, rtol=1e-6, atol=1e-6)


def test_loss_numerically_stable_at_small_tau():
    z, prototypes, logits, labels = make_case("random")
    z.requires_grad_(True)
    loss = fr_head_loss(z * 1e3, prototypes, logits, labels, tau=1e-3)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("threshold", [0.0, 0.6])
def test_update_matches_slow_loop(case, threshold):
    z, prototypes, logits, labels = make_case(case)
    expected = slow_update(prototypes, z, logits, labels, momentum=0.9, threshold=threshold)
    buf = prototypes.clone()
    z.requires_grad_(True)
    out = update_prototypes(buf, z, logits, labels, momentum=0.9, threshold=threshold)
    assert out is buf and not buf.requires_grad
    torch.testing.assert_close(buf, expected)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("anchors", ["tp", "all"])
def test_grouped_loss_and_update_equal_one_call_per_group(case, anchors):
    """z (G, N, D) with prototypes (G, K, D): the loss (G,) and the in-place update are those of G
    separate calls (the slow loop), gradients included."""
    zs, protos = zip(*(make_case(case, seed)[:2] for seed in range(3)))
    _, _, logits, labels = make_case(case)
    z = torch.stack(zs).requires_grad_(True)
    losses = fr_head_loss(z, torch.stack(protos), logits, labels, anchors=anchors)
    assert losses.shape == (3,)
    slow_z = [zi.double().clone().requires_grad_(True) for zi in zs]
    slow = torch.stack([slow_loss(zi, pi.double(), logits, labels, anchors=anchors) for zi, pi in zip(slow_z, protos)])
    torch.testing.assert_close(losses.double(), slow, rtol=1e-5, atol=1e-5)
    (losses * torch.tensor([0.1, 0.5, 1.0])).sum().backward()
    (slow * torch.tensor([0.1, 0.5, 1.0], dtype=torch.float64)).sum().backward()
    for got, zi in zip(z.grad, slow_z):
        torch.testing.assert_close(got.double(), zi.grad, rtol=1e-4, atol=1e-5)
    banks = torch.stack(protos)
    update_prototypes(banks, z, logits, labels, momentum=0.9)
    for got, zi, pi in zip(banks, zs, protos):
        torch.testing.assert_close(got, slow_update(pi, zi, logits, labels, momentum=0.9, threshold=0.0))


def test_update_leaves_classes_without_tp():
    z, prototypes, logits, labels = make_case("all_wrong")
    buf = prototypes.clone()
    update_prototypes(buf, z, logits, labels)
    assert torch.equal(buf, prototypes)


# ----------------------------------------------------------------------------- the module
def _feats(tap_shapes, n, m, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return {tap: torch.randn(n * m, *shape, generator=g).requires_grad_(requires_grad)
            for tap, shape in tap_shapes.items()}


@pytest.mark.parametrize("tv", list(CTRGCN_TAPS))
def test_frhead_shapes_and_gradients(tv):
    taps = CTRGCN_TAPS[tv]
    torch.manual_seed(0)
    head = FRHead(taps, num_classes=6, num_persons=2)
    n = 4
    feats = _feats(taps, n, 2, requires_grad=True)
    logits, labels = torch.randn(n, 6), torch.tensor([0, 1, 2, 0])
    z = head.embed(feats, n)
    assert set(z) == set(taps)
    for tap in taps:
        assert set(z[tap]) == {"s", "t"}
        assert all(v.shape == (n, 256) for v in z[tap].values())
    loss = head(feats, logits, labels)
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert all(torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0 for f in feats.values())


def test_frhead_branch_sizes_follow_t_and_v():
    head = FRHead({"final": (32, 13, 17)}, num_classes=3, lambdas={"final": 1.0}, embed_dim=256)
    stage = head.stages["final"]
    assert stage.spatial.conv.out_channels == 256 // 17 and stage.spatial.fc.in_features == (256 // 17) * 17
    assert stage.temporal.conv.out_channels == 256 // 13 and stage.temporal.fc.in_features == (256 // 13) * 13


def test_frhead_forward_equals_functional_composition():
    taps = CTRGCN_TAPS[(13, 17)]
    torch.manual_seed(1)
    head = FRHead(taps, num_classes=5, num_persons=2, w_cl=0.3, anchors="all", confidence_weight=False)
    n = 6
    feats = _feats(taps, n, 2, seed=2)
    logits, labels = torch.randn(n, 5), torch.randint(0, 5, (n,))
    before = {k: v.clone() for k, v in head.state_dict().items() if "proto" in k}
    z = head.embed(feats, n)
    expected, expected_protos = 0.0, {}
    for tap, branches in z.items():
        for b, zb in branches.items():
            protos = before[f"stages.{tap}.proto_{b}"].clone()
            update_prototypes(protos, zb, logits, labels)
            expected_protos[f"stages.{tap}.proto_{b}"] = protos
            expected = expected + head.lambdas[tap] * fr_head_loss(zb, protos, logits, labels, anchors="all",
                                                                   confidence_weight=False)
    loss = head(feats, logits, labels)
    torch.testing.assert_close(loss, 0.3 * expected)
    for key, protos in expected_protos.items():
        torch.testing.assert_close(head.state_dict()[key], protos)
        assert not torch.equal(protos, before[key])


def test_prototypes_are_buffers_and_survive_save_load():
    taps = CTRGCN_TAPS[(52, 20)]
    torch.manual_seed(0)
    head = FRHead(taps, num_classes=4, num_persons=1)
    names = [k for k in head.state_dict() if "proto" in k]
    assert len(names) == 8
    assert not any("proto" in k for k, _ in head.named_parameters())
    assert all(head.state_dict()[k].shape == (4, 256) for k in names)
    feats, logits, labels = _feats(taps, 3, 1), torch.randn(3, 4), torch.tensor([0, 1, 2])
    head(feats, logits, labels)                                     # train step: prototypes move
    head.eval()
    saved = {k: v.clone() for k, v in head.state_dict().items()}
    eval_loss = head(feats, logits, labels)
    assert all(torch.equal(head.state_dict()[k], saved[k]) for k in names)   # eval forward: untouched
    buf = io.BytesIO()
    torch.save(head.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(123)
    other = FRHead(taps, num_classes=4, num_persons=1)
    other.load_state_dict(torch.load(buf, weights_only=True))
    other.eval()
    assert all(torch.equal(other.state_dict()[k], saved[k]) for k in names)
    torch.testing.assert_close(other(feats, logits, labels), eval_loss)


def test_final_level_only_and_no_decouple():
    taps = CTRGCN_TAPS[(64, 25)]
    head = FRHead(taps, num_classes=4, lambdas={"final": 1.0}, decouple=False)
    assert list(head.stages) == ["final"]
    assert [k for k in head.state_dict()] == ["stages.final.proto_g"]
    assert head.state_dict()["stages.final.proto_g"].shape == (4, 256)
    feats = {"final": torch.randn(2, 256, 16, 25, requires_grad=True)}
    loss = head(feats, torch.randn(2, 4), torch.tensor([1, 3]))
    loss.backward()
    assert torch.isfinite(feats["final"].grad).all()
    head = FRHead({"low": (64, 64, 25)}, num_classes=4, lambdas={"low": 1.0}, decouple=False)
    assert head.state_dict()["stages.low.proto_g"].shape == (4, 64)


def test_batch_of_one_in_training():
    taps = CTRGCN_TAPS[(13, 17)]
    head = FRHead(taps, num_classes=3, num_persons=2)
    loss = head(_feats(taps, 1, 2), torch.randn(1, 3), torch.tensor([2]))
    assert torch.isfinite(loss)


def test_errors():
    taps = CTRGCN_TAPS[(64, 25)]
    with pytest.raises(SkelactError, match="tp, all"):
        FRHead(taps, num_classes=3, anchors="some")
    with pytest.raises(SkelactError, match="low, mid, high, final"):
        FRHead(taps, num_classes=3, lambdas={"l11": 1.0})
    with pytest.raises(SkelactError, match="mapping"):
        FRHead(taps, num_classes=3, lambdas=[0.1, 0.2, 0.5, 1.0])
    with pytest.raises(SkelactError, match="momentum"):
        FRHead(taps, num_classes=3, momentum=1.5)
    with pytest.raises(SkelactError, match="frhead, stdcl"):
        create_head("fr", taps, 3, 2)
    with pytest.raises(SkelactError, match="anchors"):
        create_head("frhead", taps, 3, 2, anchor="tp")
    with pytest.raises(SkelactError, match="shape"):
        FRHead(taps, num_classes=3, num_persons=2)(_feats(taps, 2, 1), torch.randn(2, 3), torch.tensor([0, 1]))
    with pytest.raises(SkelactError, match="tp, all"):
        fr_head_loss(torch.randn(2, 4), torch.randn(3, 4), torch.randn(2, 3), torch.tensor([0, 1]), anchors="x")


def test_create_head():
    assert list_heads() == ["frhead", "stdcl"]
    head = create_head("frhead", CTRGCN_TAPS[(64, 25)], 60, 2, num_samples=100, w_cl=0.2, anchors="all")
    assert isinstance(head, FRHead) and head.w_cl == 0.2 and head.anchors == "all"


# ----------------------------------------------------------------------------- torch.distributed
def _ddp_batches():
    """Two ranks' batches (z, logits, labels): K=4; class 0 TP on both ranks, 1 only on rank 1, 2 none."""
    g = torch.Generator().manual_seed(7)
    labels = [torch.tensor([0, 0, 3, 2, 1]), torch.tensor([0, 1, 2])]
    preds = [torch.tensor([0, 0, 3, 1, 2]), torch.tensor([0, 1, 3])]
    out = []
    for y, yhat in zip(labels, preds):
        logits = torch.randn(len(y), 4, generator=g) + 8 * torch.nn.functional.one_hot(yhat, 4)
        out.append((torch.randn(len(y), 6, generator=g), logits, y))
    return out


DDP_TAPS = {"high": (8, 5, 3), "final": (8, 5, 3)}


def _ddp_head():
    """An FRHead whose BatchNorms use fixed statistics, so that only the mining can differ across ranks."""
    torch.manual_seed(0)
    head = FRHead(DDP_TAPS, num_classes=4, num_persons=1, lambdas={"high": 0.5, "final": 1.0})
    for m in head.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    return head


def _ddp_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        z, logits, labels = _ddp_batches()[rank]
        protos = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
        update_prototypes(protos, z, logits, labels, momentum=0.9)
        head = _ddp_head()
        feats = _feats(DDP_TAPS, len(labels), 1, seed=rank, requires_grad=True)
        loss = head(feats, logits, labels)
        loss.backward()
        torch.save({"protos": protos, "head": {k: v for k, v in head.state_dict().items() if "proto" in k},
                    "loss": loss.detach(), "feat_grads": {k: f.grad for k, f in feats.items()},
                    "param_grads": {k: p.grad for k, p in head.named_parameters()}}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_prototypes_identical_across_gloo_ranks(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert torch.equal(r0["protos"], r1["protos"])
    assert r0["head"].keys() == r1["head"].keys() and len(r0["head"]) == 4
    assert all(torch.equal(r0["head"][k], r1["head"][k]) for k in r0["head"])
    batches = _ddp_batches()
    union = [torch.cat([b[i] for b in batches]) for i in range(3)]
    initial = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    single = update_prototypes(initial.clone(), *union, momentum=0.9)
    torch.testing.assert_close(r0["protos"], single)
    torch.testing.assert_close(single, slow_update(initial, *union))
    changed = (single != initial).any(dim=1).tolist()
    assert changed == [True, True, False, True]


def test_loss_and_gradients_under_ddp_equal_one_process_with_the_whole_batch(tmp_path):
    """TP / FN / FP sets, class means and the anchor average span both ranks' batches: each rank's loss is
    the one-process loss on the union, each rank's feature gradient is world_size x its rows' one-process
    gradient (the scale of a per-rank loss), and DDP's average of parameter gradients is the one-process
    gradient."""
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    batches = _ddp_batches()
    logits, labels = (torch.cat([b[i] for b in batches]) for i in (1, 2))
    parts = [_feats(DDP_TAPS, len(b[2]), 1, seed=r) for r, b in enumerate(batches)]
    feats = {tap: torch.cat([p[tap] for p in parts]).requires_grad_(True) for tap in DDP_TAPS}
    head = _ddp_head()
    loss = head(feats, logits, labels)
    loss.backward()
    rows = [slice(0, len(batches[0][2])), slice(len(batches[0][2]), None)]
    for r, res in enumerate(ranks):
        torch.testing.assert_close(res["loss"], loss.detach())
        for tap in DDP_TAPS:
            torch.testing.assert_close(res["feat_grads"][tap], 2 * feats[tap].grad[rows[r]])
    for name, p in head.named_parameters():
        torch.testing.assert_close((ranks[0]["param_grads"][name] + ranks[1]["param_grads"][name]) / 2, p.grad)


@pytest.mark.parametrize("persons", [1, 2])
@pytest.mark.parametrize("channels_last", [True, False])
def test_decoupled_means_are_the_means_over_persons_frames_and_joints(persons, channels_last):
    from skelact.heads._pool import decoupled_means
    n, c, t, v = 3, 5, 7, 4
    x = torch.randn(n * persons, c, t, v, dtype=torch.float64, requires_grad=True)
    xin = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    over_t, over_v = decoupled_means(xin, n, persons)
    per_person = x.view(n, persons, c, t, v).mean(1)
    torch.testing.assert_close(over_t, per_person.mean(2), atol=1e-12, rtol=0)
    torch.testing.assert_close(over_v, per_person.mean(3), atol=1e-12, rtol=0)
    g_t, g_v = torch.randn_like(over_t), torch.randn_like(over_v)
    got, got_in = torch.autograd.grad((over_t * g_t).sum() + (over_v * g_v).sum(), (x, xin))
    want = torch.autograd.grad((per_person.mean(2) * g_t).sum() + (per_person.mean(3) * g_v).sum(), x)[0]
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    assert got_in.stride() == xin.stride()  # the tap's gradient in the tap's layout
