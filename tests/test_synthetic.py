import subprocess
import sys

import numpy as np
import pytest

from skelact.data import synthetic as S
from skelact.data.store import SkeletonStore
from skelact.errors import SkelactError
from skelact.layouts import NTU25

K = len(S.CLASS_NAMES)
J = S.J
ONE_PASS = K * 3 * S.NUM_SUBJECTS  # every class x view x subject once


@pytest.fixture(scope="module")
def clips():
    return list(S.generate(0, ONE_PASS))


@pytest.fixture(scope="module")
def clean():
    return list(S.generate(0, ONE_PASS, noise=0.0))


@pytest.fixture(scope="module")
def performances():
    """Noise-free scenes (no camera) of every class x subject x 3 replications.

    Returns labels (N,) and a list of N arrays (M, T, V, 3)."""
    ids = [(label, subject, rep) for label in range(K) for subject in range(1, S.NUM_SUBJECTS + 1)
           for rep in (1, 2, 3)]
    return np.array([i[0] for i in ids]), [S.perform(0, s, label, r) for label, s, r in ids]


def test_deterministic_and_prefix_stable():
    a, b = list(S.generate(3, 40)), list(S.generate(3, 40))
    c = list(S.generate(3, 20))
    for (na, xa, la, ma), (nb, xb, lb, mb) in zip(a, b):
        assert (na, la, ma) == (nb, lb, mb) and xa.tobytes() == xb.tobytes()
    for (na, xa, *_), (nc, xc, *_) in zip(a, c):  # clip i depends only on (seed, i)
        assert na == nc and xa.tobytes() == xc.tobytes()


def test_seeds_differ():
    for (_, xa, la, _), (_, xb, lb, _) in zip(S.generate(0, 20), S.generate(1, 20)):
        assert la == lb
        assert xa.shape != xb.shape or not np.allclose(xa, xb)


def test_shapes_dtypes_and_metadata(clips):
    names = set()
    for name, x, label, meta in clips:
        assert x.dtype == np.float32 and x.ndim == 4 and x.shape[2:] == (25, 3)
        assert x.shape[0] in (1, 2) and S.MIN_FRAMES <= x.shape[1] <= S.MAX_FRAMES
        assert np.isfinite(x).all()
        assert 0 <= label < K
        assert set(meta) == {"subject", "view", "replication"}
        assert np.array_equal(x[0, 0, J["spine_mid"]], np.zeros(3))  # centred like NTU
        assert np.abs(x).max() < 3.0  # metres around the actor
        names.add(name)
    assert len(names) == len(clips)
    assert {m["view"] for *_, m in clips} == {1, 2, 3}
    assert {m["subject"] for *_, m in clips} == set(range(1, S.NUM_SUBJECTS + 1))


def test_one_and_two_person_clips_and_lengths(clips):
    persons = np.array([x.shape[0] for _, x, _, _ in clips])
    labels = np.array([label for _, _, label, _ in clips])
    two = np.isin(labels, [S.CLASS_NAMES.index(c) for c in S.TWO_PERSON_CLASSES])
    assert (persons[two] == 2).all()
    assert (persons[~two] == 1).mean() > 0.7 and (persons[~two] == 2).any()  # some idle bystanders
    lengths = np.array([x.shape[1] for _, x, _, _ in clips])
    assert len(set(lengths)) > 30 and lengths.min() < 50 and lengths.max() > 90


def test_human_scale_and_axes(clean):
    for name, x, label, meta in clean[: 3 * K]:
        not_upright = ("writing", "typing", "reading", "bow", "squat", *S.TWO_PERSON_CLASSES)
        if meta["view"] != 2 or S.CLASS_NAMES[label] in not_upright:
            continue
        p = x[0, 0]
        height = p[J["head"], 1] - min(p[J["left_foot"], 1], p[J["right_foot"], 1])
        assert 1.2 < height < 1.9, name  # y up, metres
        assert p[J["left_shoulder"], 0] < p[J["right_shoulder"], 0]  # facing the front camera (NTU)


def test_bone_lengths_constant_within_clip(clean):
    parents = list(NTU25.parents)
    forearms = []
    for name, x, _, _ in clean:
        lengths = np.linalg.norm(x - x[:, :, parents], axis=-1)  # (M, T, V)
        assert np.ptp(lengths, axis=1).max() < 1e-5, name
        forearms.append(lengths[0, 0, J["right_wrist"]])
    assert np.std(forearms) > 0.01  # subjects differ in size


def test_noise_is_added(clips, clean):
    (_, a, _, _), (_, b, _, _) = clips[0], clean[0]
    assert a.shape == b.shape
    assert 0.001 < np.abs(a - b).mean() < 0.03


def test_every_class_in_both_parts_of_each_split(tmp_path):
    # the default size, from metadata alone
    ids = np.array([S.clip_ids(i) for i in range(S.DEFAULT_NUM_SAMPLES)])  # (N, 4) label subject view rep
    for column, rule in ((1, S.SPLITS["xsub"]), (2, S.SPLITS["xview"])):
        train = np.isin(ids[:, column], rule["train"])
        assert set(ids[train, 0]) == set(ids[~train, 0]) == set(range(K))
    # and a small written store
    summary = S.prepare_synthetic(out=tmp_path / "syn", num_samples=4 * 3 * K)
    store = SkeletonStore(tmp_path / "syn")
    assert summary["num_samples"] == len(store) == 4 * 3 * K and summary["skipped"] == []
    for split in ("xsub", "xview"):
        for part in ("train", "test"):
            assert set(store.labels[store.split(split, part)]) == set(range(K))
        assert summary["splits"][split]["train"] + summary["splits"][split]["test"] == len(store)


def _pairs(parts):
    return [(f"{side}_{a}", f"{side}_{b}") for side in ("left", "right") for a, b in parts]


BODY_PAIRS = _pairs([("wrist", "elbow"), ("elbow", "shoulder"), ("wrist", "shoulder"), ("knee", "hip"),
                     ("ankle", "hip")]) + [("head", "spine_base")]
HAND_PAIRS = _pairs([("hand", "wrist"), ("thumb", "wrist"), ("hand_tip", "wrist"), ("hand_tip", "thumb")])


def _features(x, pairs):
    """View-invariant motion statistics of relative vectors r = x_a - x_b of person 0: log variance,
    log velocity and acceleration energy, mean and std of the cosine to the forearm."""
    x = x[0].astype(np.float64)
    out = []
    for a, b in pairs:
        r = x[:, J[a]] - x[:, J[b]]
        side = a.split("_")[0]
        fore = x[:, J[f"{side}_wrist"]] - x[:, J[f"{side}_elbow"]] if side in ("left", "right") else r
        cos = (r * fore).sum(-1) / np.linalg.norm(r, axis=-1) / np.linalg.norm(fore, axis=-1)
        out += [np.log(((r - r.mean(0)) ** 2).sum(-1).mean() + 1e-10),
                np.log((np.diff(r, axis=0) ** 2).sum(-1).mean() + 1e-10),
                np.log((np.diff(r, 2, axis=0) ** 2).sum(-1).mean() + 1e-10), cos.mean(), cos.std()]
    return np.array(out)


def _effect_sizes(features, labels, a, b):
    """|mean difference| / pooled std of each feature between classes a and b."""
    fa, fb = features[labels == a], features[labels == b]
    return np.abs(fa.mean(0) - fb.mean(0)) / np.sqrt((fa.var(0) + fb.var(0)) / 2 + 1e-12)


def _resample(x, n=32):
    T = len(x)
    src = np.linspace(0, T - 1, n)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, T - 1)
    w = (src - i0)[:, None, None]
    return x[i0] * (1 - w) + x[i1] * w


def test_ambiguous_groups_share_gross_motion_and_differ_in_hands(performances):
    labels, scenes = performances
    names = S.CLASS_NAMES
    same_group = np.zeros((K, K), bool)
    for group in S.AMBIGUOUS_GROUPS:
        idx = [names.index(c) for c in group]
        same_group[np.ix_(idx, idx)] = True
    np.fill_diagonal(same_group, False)
    other = ~same_group & ~np.eye(K, dtype=bool)

    # mean trajectory of the non-hand joints: close within a group, far between other classes
    body = [v for v in range(25) if v not in S.HAND_JOINTS]
    traj = np.stack([_resample(x[0])[:, body] for x in scenes])
    means = np.stack([traj[labels == k].mean(0) for k in range(K)])
    dist = np.sqrt(((means[:, None] - means[None]) ** 2).sum(-1).mean((-1, -2)))  # (K, K) metres
    assert dist[same_group].max() < 0.5 * dist[other].min()

    # statistics of the body: no better than chance within a group; of the hands: clearly different
    fb = np.stack([_features(x, BODY_PAIRS) for x in scenes])
    fh = np.stack([_features(x, HAND_PAIRS) for x in scenes])
    for a, b in zip(*np.nonzero(np.triu(same_group))):
        assert _effect_sizes(fb, labels, a, b).max() < 1.0, (names[a], names[b])
        assert _effect_sizes(fh, labels, a, b).max() > 1.5, (names[a], names[b])
    for a, b in zip(*np.nonzero(np.triu(other))):
        assert _effect_sizes(np.hstack([fb, fh]), labels, a, b).max() > 1.0, (names[a], names[b])


def test_linear_classifier_confuses_the_ambiguous_groups(clips):
    """Ridge regression on per-joint mean / std / speed: the gross classes are easy, the groups are not."""
    def features(x):
        x = x[0]
        v = np.diff(x, axis=0)
        return np.concatenate([x.mean(0).ravel(), x.std(0).ravel(), np.abs(v).mean(0).ravel(), [1.0]])

    X = np.stack([features(x) for _, x, _, _ in clips])
    y = np.array([label for _, _, label, _ in clips])
    train = np.array([m["subject"] % 2 == 1 for *_, m in clips])
    mu, sd = X[train].mean(0), X[train].std(0) + 1e-6
    Z = (X - mu) / sd
    W = np.linalg.solve(Z[train].T @ Z[train] + 1.0 * np.eye(Z.shape[1]), Z[train].T @ np.eye(K)[y[train]])
    correct = (Z[~train] @ W).argmax(1) == y[~train]
    grouped = np.isin(y[~train], [S.CLASS_NAMES.index(c) for g in S.AMBIGUOUS_GROUPS for c in g])
    assert correct[~grouped].mean() > 0.9
    assert correct[grouped].mean() < 0.8


def test_default_size():
    assert sum(1 for _ in S.generate(0, S.DEFAULT_NUM_SAMPLES)) == S.DEFAULT_NUM_SAMPLES


def test_prepare_rejects_bad_size(tmp_path):
    with pytest.raises(SkelactError):
        S.prepare_synthetic(out=tmp_path / "x", num_samples=0)


def test_cli_prepare_synthetic(tmp_path):
    out = tmp_path / "syn"
    cmd = [sys.executable, "-m", "skelact", "prepare", "synthetic", "--out", str(out), "--num-samples", "64",
           "--seed", "2", "--dtype", "float16"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "wrote 64 clips" in run.stdout and "split xsub" in run.stdout
    store = SkeletonStore(out)
    assert len(store) == 64 and store.layout.name == "ntu25" and store.meta["dataset"] == "synthetic"
    assert store.class_names == list(S.CLASS_NAMES) and store.max_persons == 2
    first = next(S.generate(2, 1))[1]
    assert np.allclose(store.clip(0)[: first.shape[0]], first, atol=2e-3)
    assert set(np.unique(store.index["view"])) == {1, 2, 3}
    again = subprocess.run(cmd, capture_output=True, text=True)  # exists: one-line error, exit 2
    assert again.returncode == 2 and again.stderr.startswith("error:")
