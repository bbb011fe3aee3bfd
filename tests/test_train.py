"""End-to-end tests of the main job: training, run directory, resume after SIGKILL, DDP, bad input."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from skelact.cli import main as cli
from skelact.engine.checkpoint import load_checkpoint
from skelact.engine.train import _bank_rows, carve_validation, lr_at, source_revision
from skelact.engine.config import load_config

# A small, fast recipe: quarter-width ST-GCN on short windows of the synthetic data.
TINY = ["model.name=stgcn", "model.options={width: 0.25}", "data.window=24", "optim.batch_size=16",
        "optim.warmup_epochs=1", "optim.milestones=[]", "optim.lr=0.1", "threads=2",
        "device=cpu"]  # CPU even where a GPU exists: DDP here is gloo, and results are compared exactly


def run_cli(args):
    return subprocess.run([sys.executable, "-m", "skelact", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def sets(store, extra=()):
    out = []
    for s in [f"data.path={store}", *TINY, *extra]:
        out += ["--set", s]
    return out


def test_tiny_training_run_beats_chance(synthetic_store, tmp_path):
    run = tmp_path / "run"
    assert cli(["train", *sets(synthetic_store, ["data.val_fraction=0.2"]), "--epochs", "8",
                "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    num_classes = len(json.loads((synthetic_store / "meta.json").read_text())["class_names"])
    # learning, by the training CE (2.1-2.5 after 8 epochs for every seed tried; chance is ln K = 2.77);
    # the test top-1 of so short a run swings with float rounding (11-32 % over seeds), so it only has
    # to beat chance
    ce = [json.loads(line)["ce"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert ce[-1] < 0.95 * math.log(num_classes) < ce[0]
    assert summary["top1"] > 100.0 / num_classes
    assert summary["selected"] == "final epoch 8"
    from skelact.engine.config import setup_hash
    cfg = load_config(str(run / "config.yaml"))
    assert summary["setup"] == setup_hash(cfg)
    cfg.seed, cfg.threads = 5, 1  # neither changes the setup; any other setting does
    assert setup_hash(cfg) == summary["setup"]
    cfg.optim.lr = 0.05
    assert setup_hash(cfg) != summary["setup"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 9)) and all("val_top1" in r for r in rows)
    scores = np.load(run / "scores.npz")
    assert scores["scores"].shape == (summary["num_samples"], num_classes)
    assert len(set(scores["names"])) == summary["num_samples"]
    for name in ("config.yaml", "env.json", "report.json", "report.md", "val_scores.npz",
                 "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")  # weights_only=True inside
    assert ckpt["data"]["class_names"] and ckpt["data"]["stream"] == "j"
    # evaluate from the checkpoint alone reproduces the run's test scores, in a folder of its own
    run_report = (run / "report.json").read_bytes()
    assert cli(["evaluate", str(run)]) == 0
    assert (run / "report.json").read_bytes() == run_report  # the run's own outputs are left alone
    out = run / f"eval-last-{synthetic_store.name}-{summary['split']}"
    report = json.loads((out / "report.json").read_text())
    assert report["top1"] == pytest.approx(summary["top1"])
    np.testing.assert_allclose(np.load(out / "scores.npz")["scores"], scores["scores"], rtol=1e-5, atol=1e-5)
    # another split of the same store whose test part holds training clips: said, not hidden
    from skelact.data.store import SkeletonStore
    st = SkeletonStore(synthetic_store)
    seen = np.intersect1d(st.split("xview", "test"), st.split(summary["split"], "train")).size
    res = run_cli(["evaluate", str(run), "--split", "xview"])
    assert res.returncode == 0 and seen > 0
    assert f"note: {seen} of {st.split('xview', 'test').size} clips" in res.stderr and "not a held-out" in res.stderr


def test_heads_are_not_part_of_the_inference_model(synthetic_store, tmp_path):
    run = tmp_path / "run"
    assert cli(["train", *sets(synthetic_store, ["model.name=ctrgcn", "model.options={}",
                                                 "data.window=16"]),
                "--epochs", "1", "--out", str(run)]) == 0
    ckpt = load_checkpoint(run)
    assert ckpt["heads"], "FR-Head state (prototypes) must be saved in the training checkpoint"
    from skelact.engine.checkpoint import build_model
    from skelact.models.registry import create_model
    model = build_model(ckpt)
    spec = ckpt["model_spec"]
    bare = create_model(spec["name"], layout=spec["layout"], num_classes=spec["num_classes"],
                        in_channels=spec["in_channels"], num_persons=spec["num_persons"])
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in bare.parameters())


def test_resume_after_sigkill_matches_uninterrupted(synthetic_store, tmp_path):
    args = [*sets(synthetic_store, ["heads=[{name: frhead}]", "model.name=ctrgcn",
                                     "model.options={}", "data.window=12"]), "--epochs", "3"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert run_cli(["train", *args, "--out", str(full)]).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "skelact", "train", *args, "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = killed / "checkpoints" / "last.pt"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not last.is_file():
        time.sleep(0.02)
    proc.send_signal(signal.SIGSTOP)  # frozen inside epoch 2, with epoch 1 checkpointed
    assert proc.poll() is None and last.is_file(), "the run ended or never checkpointed"
    assert load_checkpoint(last)["epoch"] == 0 and not (killed / "summary.json").exists()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    res = run_cli(["train", "--resume", str(killed)])
    assert res.returncode == 0, res.stderr
    a = json.loads((full / "summary.json").read_text())
    b = json.loads((killed / "summary.json").read_text())
    assert (a["top1"], a["top5"]) == (b["top1"], b["top5"])
    np.testing.assert_allclose(np.load(full / "scores.npz")["scores"],
                               np.load(killed / "scores.npz")["scores"], rtol=0, atol=1e-5)
    la = [json.loads(x)["loss"] for x in (full / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (killed / "metrics.jsonl").read_text().splitlines()]
    np.testing.assert_allclose(la, lb, rtol=1e-6)


def test_ddp_two_processes_match_one(synthetic_store, tmp_path):
    args = [*sets(synthetic_store, ["model.options={width: 0.25, tcn_dropout: 0.0}",
                                     "heads=[{name: frhead}]", "threads=1"]), "--epochs", "2"]
    single, double = tmp_path / "single", tmp_path / "double"
    assert run_cli(["train", *args, "--out", str(single)]).returncode == 0
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "skelact",
                          "train", *args, "--out", str(double)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    s1, s2 = (np.load(r / "scores.npz") for r in (single, double))
    # every test sample evaluated exactly once, in the same order
    assert list(s1["names"]) == list(s2["names"]) and len(set(s2["names"])) == len(s2["names"])
    l1 = [json.loads(x)["loss"] for x in (single / "metrics.jsonl").read_text().splitlines()]
    l2 = [json.loads(x)["loss"] for x in (double / "metrics.jsonl").read_text().splitlines()]
    # same samples per global batch, BatchNorm statistics and FR-Head mining over both ranks' batches:
    # the same training up to float32 rounding, which this small model amplifies (its gradients move by
    # up to 1 % between 1 and 2 CPU threads); the exact equality is test_ddp_step_equals_one_process
    np.testing.assert_allclose(l1, l2, rtol=0.1)
    # every rank scored its share of the test set with the same (final) weights
    summary = json.loads((double / "summary.json").read_text())
    assert cli(["evaluate", str(double)]) == 0
    alone = np.load(double / f"eval-last-{synthetic_store.name}-{summary['split']}" / "scores.npz")
    assert list(alone["names"]) == list(s2["names"])
    np.testing.assert_allclose(alone["scores"], s2["scores"], rtol=1e-5, atol=1e-5)


def _ddp_step_setup():
    """ST-GCN (1/4 width, BatchNorms everywhere, no dropout) + FR-Head on its taps, float64, 6 clips."""
    import skelact
    from skelact.heads import create_head
    torch.manual_seed(0)
    model = skelact.create_model("stgcn", layout="ntu25", num_classes=4, num_persons=2, width=0.25, tcn_dropout=0.0).double()
    head = create_head("frhead", model.backbone.tap_shapes(12), 4, 2).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, 12, 25, 2, generator=g, dtype=torch.float64)
    return model, head, x, torch.tensor([0, 1, 2, 3, 0, 1])


def _ddp_step_worker(rank, out):
    import torch.distributed as dist
    from skelact.engine import distributed as ddp
    from skelact.engine.train import Objective
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=2)
    model, head, x, y = _ddp_step_setup()
    net = ddp.sync_batchnorm(Objective(model, torch.nn.ModuleList([head]), torch.arange(6)))
    net = torch.nn.parallel.DistributedDataParallel(net, broadcast_buffers=False, find_unused_parameters=True)
    rows = slice(3 * rank, 3 * rank + 3)
    _, ce, aux = net(x[rows], y[rows], torch.arange(6)[rows])
    (ce + aux).backward()
    torch.save({k: p.grad for k, p in net.module.named_parameters()}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_ddp_step_equals_one_process(tmp_path):
    """One training step under DDP (2 ranks, sync_bn, FR-Head mining over both ranks) gives every rank
    the gradient of one process on the whole batch — to float64 rounding, so nothing but the reduction
    order differs."""
    import torch.multiprocessing as mp
    from skelact.engine.train import Objective
    mp.spawn(_ddp_step_worker, args=(str(tmp_path),), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    model, head, x, y = _ddp_step_setup()
    net = Objective(model, torch.nn.ModuleList([head]), torch.arange(6))
    _, ce, aux = net(x, y, torch.arange(6))
    (ce + aux).backward()
    assert aux > 0
    for k, p in net.named_parameters():
        assert torch.equal(ranks[0][k], ranks[1][k]), k
        torch.testing.assert_close(ranks[0][k], p.grad, rtol=1e-9, atol=1e-12, msg=k)


def _broadcast_worker(rank, out):
    import torch.distributed as dist
    from skelact.engine import distributed as ddp
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=2)
    torch.manual_seed(rank)  # different weights and statistics on each rank
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    model[1].running_mean.normal_()
    d = ddp.Dist(rank, 2)
    ddp.broadcast_state(d, model, parameters=True)
    assert ddp.all_true(d, rank == 0) is False and ddp.all_true(d, True) is True
    torch.save(model.state_dict(), f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_rank_zero_weights_reach_every_rank(tmp_path):
    """What finish() relies on under select=val: rank 0 loads best.pt, every rank gets its weights."""
    import torch.multiprocessing as mp
    mp.spawn(_broadcast_worker, args=(str(tmp_path),), nprocs=2)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert torch.equal(a["0.weight"], ref["0.weight"])  # rank 0's, not rank 1's


def _sync_bn_inputs():
    g = torch.Generator().manual_seed(3)
    x4 = (torch.randn(6, 5, 4, 3, generator=g) * 3 + 1).contiguous(memory_format=torch.channels_last)
    x3 = torch.randn(6, 5, 7, generator=g) - 2
    dy4, dy3 = torch.randn(6, 5, 4, 3, generator=g), torch.randn(6, 5, 7, generator=g)
    return x4, x3, dy4, dy3


def _sync_bn_model():
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"bn2": torch.nn.BatchNorm2d(5), "bn1": torch.nn.BatchNorm1d(5)})
    for bn in model.values():
        torch.nn.init.uniform_(bn.weight, 0.5, 2.0)
        torch.nn.init.uniform_(bn.bias, -1.0, 1.0)
    return model


def _sync_bn_worker(rank, out):
    import torch.distributed as dist
    from skelact.engine import distributed as ddp
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=2)
    model = ddp.sync_batchnorm(_sync_bn_model())
    rows = slice(0, 4) if rank == 0 else slice(4, 6)                   # unequal shares of the batch
    x4, x3, dy4, dy3 = (t[rows].clone().requires_grad_(i < 2) for i, t in enumerate(_sync_bn_inputs()))
    y4, y3 = model["bn2"](x4), model["bn1"](x3)
    ((y4 * dy4).sum() + (y3 * dy3).sum()).backward()
    torch.save({"y4": y4.detach(), "y3": y3.detach(), "gx4": x4.grad, "gx3": x3.grad, "cl": y4.is_contiguous(
        memory_format=torch.channels_last), "grads": {k: p.grad for k, p in model.named_parameters()},
        "state": model.state_dict(), "kinds": [isinstance(model["bn2"], torch.nn.BatchNorm2d),
                                               isinstance(model["bn1"], torch.nn.BatchNorm1d)]},
        f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_sync_batchnorm_equals_one_process_batchnorm_on_the_whole_batch(tmp_path):
    import torch.multiprocessing as mp
    mp.spawn(_sync_bn_worker, args=(str(tmp_path),), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    model = _sync_bn_model()
    x4, x3, dy4, dy3 = _sync_bn_inputs()
    x4.requires_grad_(True), x3.requires_grad_(True)
    y4, y3 = model["bn2"](x4), model["bn1"](x3)
    ((y4 * dy4).sum() + (y3 * dy3).sum()).backward()
    for r, rows in enumerate((slice(0, 4), slice(4, 6))):
        res = ranks[r]
        for name, want in (("y4", y4), ("y3", y3), ("gx4", x4.grad), ("gx3", x3.grad)):
            torch.testing.assert_close(res[name], want[rows].detach(), rtol=1e-5, atol=1e-5, msg=name)
        assert res["cl"]                                                # the memory layout is kept
        assert res["state"].keys() == model.state_dict().keys()
        for k, v in model.state_dict().items():                        # running statistics of the union
            torch.testing.assert_close(res["state"][k], v, rtol=1e-5, atol=1e-6, msg=k)
        assert res["kinds"] == [True, True]                             # still BatchNorm2d / BatchNorm1d
    for k, p in model.named_parameters():                             # local sums: their sum is one process's
        torch.testing.assert_close(ranks[0]["grads"][k] + ranks[1]["grads"][k], p.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--set", "optim.lrr=0.1"], "unknown key 'optim.lrr'"),
    (["--set", "optim.lr=fast"], "optim.lr must be float"),
    (["--set", "data.stream=xyz"], "data.stream must be one of"),
    (["--set", "data.path=/nonexistent/dataset", "--set", "data.generate="], "dataset not found"),
    # a mistyped path is not silently filled with synthetic data (that happens only at the default path)
    (["--set", "data.path=/nonexistent/dataset"], "dataset not found"),
    (["--set", "model.options={dropout: 1.5}"], "model.options"),
    (["--config", "/nonexistent.yaml"], "cannot read config"),
    (["--set", "model.name=nosuchnet"], "nosuchnet"),
])
def test_bad_input_is_one_line_error(synthetic_store, tmp_path, args, message):
    run = tmp_path / "run"
    res = run_cli(["train", "--set", f"data.path={synthetic_store}", *args, "--out", str(run)])
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert not (run / "summary.json").exists()


def test_corrupt_checkpoint_and_layout_mismatch(synthetic_store, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    res = run_cli(["evaluate", str(bad)])
    assert res.returncode == 2 and "corrupt or unreadable checkpoint" in res.stderr
    if not torch.cuda.is_available():
        res = run_cli(["evaluate", str(bad), "--device", "cuda"])
        assert res.returncode == 2 and "no CUDA device" in res.stderr and "Traceback" not in res.stderr
    # an OS error (here: a file where a folder should be) is one line naming the path
    res = run_cli(["prepare", "synthetic", "--out", str(bad / "store")])
    assert res.returncode == 2 and str(bad) in res.stderr and "Traceback" not in res.stderr
    res = run_cli(["train", "--resume", str(tmp_path)])
    assert res.returncode == 2 and "not a run directory" in res.stderr


def test_lr_schedule_and_validation_carving():
    cfg = load_config(None, ["optim.lr=0.1", "optim.warmup_epochs=5", "optim.milestones=[35,55]"])
    assert [round(lr_at(cfg, e), 6) for e in (0, 4, 5, 34, 35, 55)] == \
        [0.02, 0.1, 0.1, 0.1, 0.01, 0.001]
    labels = np.repeat(np.arange(5), [10, 20, 1, 2, 30])
    val = carve_validation(labels, 0.2, seed=0)
    assert [int(val[labels == k].sum()) for k in range(5)] == [2, 4, 0, 1, 6]
    assert np.array_equal(val, carve_validation(labels, 0.2, seed=0))


def test_non_finite_scores_are_an_error_not_a_hit():
    """A NaN row would rank its true class first (every comparison with NaN is false)."""
    from torch.utils.data import DataLoader, TensorDataset
    from skelact.engine import distributed as ddp
    from skelact.engine.train import ShardSampler, predict
    from skelact.errors import SkelactError

    class Scores(torch.nn.Module):
        def forward(self, x):
            return x[:, :, 0, 0, 0]  # (N, C) "logits" straight from the input

    x = torch.randn(6, 4, 1, 1, 1)
    ds = TensorDataset(x, torch.zeros(6, dtype=torch.long), torch.arange(6) + 100)
    loader = lambda: DataLoader(ds, batch_size=4, sampler=ShardSampler(6, ddp.Dist()))
    logits, ids = predict(Scores(), loader(), torch.device("cpu"), ddp.Dist())
    assert torch.equal(logits, x[:, :, 0, 0, 0]) and ids.tolist() == list(range(100, 106))
    x[4, 2] = float("nan")
    with pytest.raises(SkelactError, match="non-finite scores .* 1 of 6 clips .*store index 104"):
        predict(Scores(), loader(), torch.device("cpu"), ddp.Dist())


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_source_revision_only_for_this_package_checkout(tmp_path):
    """env.json's git_revision names the checkout skelact runs from; an installed copy inside some other
    repository (a virtualenv in a project folder) reports None instead of that repository's commit."""
    def git(*cmd, cwd):
        subprocess.run(["git", *cmd], cwd=cwd, check=True, capture_output=True,
                       env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})

    for repo, inner in ((tmp_path / "checkout", "src/skelact"),
                        (tmp_path / "project", "venv/lib/site-packages/skelact")):
        package = repo / inner
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
        git("init", "-q", cwd=repo)
        git("add", ".", cwd=repo)
        git("commit", "-qm", "x", cwd=repo)
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
        if inner.startswith("src"):
            assert source_revision(package) == head
            (package / "__init__.py").write_text("x = 1\n")
            assert source_revision(package) == head + "+dirty"
        else:
            assert source_revision(package) is None


def test_stdcl_banks_hold_one_slot_per_training_clip(synthetic_store, tmp_path):
    """STD-CL's banks are sized by the training set (not the whole store: test and validation clips never
    get a slot), and slot i holds training clip i."""
    from skelact.data.store import SkeletonStore
    run = tmp_path / "run"
    cfg_file = tmp_path / "stdcl.yaml"
    cfg_file.write_text("heads:\n  - name: stdcl\n    options: {n_pos: 4, n_hard_neg: 16, n_rand_neg: 16}\n")
    assert cli(["train", "--config", str(cfg_file), *sets(synthetic_store, ["data.val_fraction=0.2"]),
                "--epochs", "1", "--out", str(run)]) == 0
    cfg = load_config(str(run / "config.yaml"))
    store = SkeletonStore(synthetic_store)
    train_idx = store.split(cfg.data.split, "train")
    train_idx = train_idx[~carve_validation(store.labels[train_idx], cfg.data.val_fraction, cfg.seed)]
    heads = load_checkpoint(run / "checkpoints" / "last.pt")["heads"]
    assert heads["0.bank_s"].shape[0] == len(train_idx) < len(store)
    filled = heads["0.filled"].numpy()
    assert filled.sum() >= len(train_idx) - 16  # one epoch writes every clip (drop_last may skip a batch)
    np.testing.assert_array_equal(heads["0.bank_labels"].numpy()[filled], store.labels[train_idx][filled])

    # a checkpoint from before (one bank row per store clip, at the store index) still resumes
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    for key in ("0.bank_s", "0.bank_t", "0.bank_labels", "0.filled"):
        old = torch.zeros((len(store), *ckpt["heads"][key].shape[1:]), dtype=ckpt["heads"][key].dtype)
        old[torch.as_tensor(train_idx)] = ckpt["heads"][key]
        ckpt["heads"][key] = old
    for key, v in _bank_rows(ckpt["heads"], heads, len(store), train_idx).items():
        torch.testing.assert_close(v, heads[key], rtol=0, atol=0)  # gathered back to the slots
    ckpt["epoch"], ckpt["history"] = -1, []  # so that resuming trains epoch 1 again, from these banks
    torch.save(ckpt, run / "checkpoints" / "last.pt")
    first = json.loads((run / "summary.json").read_text())
    (run / "summary.json").unlink()
    assert cli(["train", "--resume", str(run)]) == 0
    again = json.loads((run / "summary.json").read_text())
    assert heads["0.bank_s"].shape == load_checkpoint(run / "checkpoints" / "last.pt")["heads"]["0.bank_s"].shape
    assert again["epochs"] == first["epochs"] == 1
