"""CTR-GCN backbone benchmark: the fast model (skelact.models.ctrgcn) against a straightforward
reference-structured CTR-GCN (bench/reference_ctrgcn.py), same weights, same process, interleaved.

    python bench/bench_backbone.py                    # both shapes, 7 interleaved repetitions
    python bench/bench_backbone.py --shapes ntu --reps 3 --json out.json
    python bench/bench_backbone.py --device cuda --batch 64 [--amp bf16]    # on a GPU
    python bench/bench_backbone.py --malloc keep      # glibc keeps freed memory: no page faults

Measured per shape (NW-UCLA (3, 52, 20, 1), 10 classes; NTU (3, 64, 25, 2), 60 classes):
- training throughput, samples/s: forward + cross-entropy + backward + SGD step at batch 16; the two
  models alternate (A B, B A, A B, ...) and the median step time of each is reported;
- FLOPs per sample (torch.utils.flop_counter.FlopCounterMode) of the forward and of the training step,
  and the achieved GFLOP/s against the fp32 matmul peak measured in the same run (a 2048^3 torch.mm);
- the same throughput and memory for the fast model with ``memory_efficient=True`` (conv3's outputs
  recomputed in backward instead of kept), as a fourth interleaved arm;
- training memory per sample: bytes of the distinct tensor storages saved for backward (a
  saved_tensors_hooks pack hook; parameters excluded), and the peak-RSS growth (Linux VmHWM after a
  reset through /proc/self/clear_refs) of a fresh process that runs two training steps of one model
  (an OS-level cross-check: it also sees transient buffers, gradients and allocator slack);
- inference latency at batch 1 (eval mode, inference_mode), median over interleaved runs, also of the
  fast model with its BatchNorms folded (skelact.models.fold_batchnorm);
- minor page faults per training step of each model (on CPU they decide much of the run-to-run spread).

On a GPU (``--device cuda``) every timing is bracketed by torch.cuda.synchronize(), the peak memory is
the CUDA allocator's (torch.cuda.max_memory_allocated over two training steps, in this process), and
``--amp bf16`` runs both models under the same bf16 autocast (as ``amp: bf16`` does in training).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils import flop_counter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_ctrgcn import ReferenceCTRGCN, load_into_fast  # noqa: E402

from skelact.models import bnact, create_model, fold_batchnorm  # noqa: E402
from skelact.models.graph import adjacency  # noqa: E402

SHAPES = {"ucla": ("ucla20", 52, 1, 10), "ntu": ("ntu25", 64, 2, 60)}  # layout, T, M, classes
DEVICE = torch.device("cpu")  # set by --device
AMP: torch.dtype | None = None  # set by --amp
MALLOC = "default"  # set by --malloc


def build(shape: str, seed: int = 0, memory_efficient: bool = False):
    """-> (reference, fast) with identical weights; ``memory_efficient`` is the fast model's option."""
    layout, _, m, k = SHAPES[shape]
    torch.manual_seed(seed)
    ref = ReferenceCTRGCN(adjacency(layout), k, m)
    fast = create_model("ctrgcn", layout=layout, num_classes=k, num_persons=m, memory_efficient=memory_efficient)
    load_into_fast(ref, fast)
    return ref.to(DEVICE), fast.to(DEVICE)


def batch(shape: str, n: int, seed: int = 1):
    layout, t, m, k = SHAPES[shape]
    g = torch.Generator().manual_seed(seed)
    v = adjacency(layout).shape[-1]
    return torch.randn(n, 3, t, v, m, generator=g).to(DEVICE), torch.randint(0, k, (n,), generator=g).to(DEVICE)


def _autocast():
    return torch.autocast(DEVICE.type, dtype=AMP) if AMP else contextlib.nullcontext()


def train_step_fn(model, x, y):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        with _autocast():
            logits = model(x)
        F.cross_entropy(logits.float(), y).backward()
        opt.step()
    return step


def _bmm_flops(_, a, b, *args, out_shape=None, **kw):
    return 2 * a[0] * a[1] * a[2] * b[2]


def _mm_flops(_, a, b, *args, out_shape=None, **kw):
    return 2 * a[0] * a[1] * b[1]


# in-place accumulating GEMMs are not in FlopCounterMode's registry
_CUSTOM = {torch.ops.aten.baddbmm_: _bmm_flops, torch.ops.aten.addmm_: _mm_flops}


def flops(model, x, y) -> tuple[float, float]:
    """(forward FLOPs, training-step FLOPs) per sample."""
    model.train()
    with flop_counter.FlopCounterMode(display=False, custom_mapping=_CUSTOM) as fc:
        logits = model(x)
    fwd = fc.get_total_flops()
    with flop_counter.FlopCounterMode(display=False, custom_mapping=_CUSTOM) as fc:
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    del logits
    return fwd / len(x), fc.get_total_flops() / len(x)


def saved_bytes(model, x) -> float:
    """Bytes per sample of the distinct storages autograd keeps for backward (parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _autocast():
        out = model(x)
    del out
    return sum(seen.values()) / len(x)


def rss_child(shape: str, which: str, n: int, threads: int) -> float:
    """Run two training steps of one model in a fresh process; return its peak-RSS growth per sample."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--rss-child", f"{shape}:{which}:{n}",
           "--threads", str(threads), "--malloc", MALLOC]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def _rss_child_main(spec: str) -> None:
    shape, which, n = spec.split(":")
    ref, fast = build(shape, memory_efficient=which == "fast_me")
    model = ref if which == "ref" else fast
    del ref, fast
    x, y = batch(shape, int(n))
    step = train_step_fn(model, x, y)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
    base = _status_kib("VmRSS")
    step()
    step()
    print((_status_kib("VmHWM") - base) * 1024 / int(n))


def cuda_peak(model, x, y) -> float:
    """Peak CUDA-allocator growth of two training steps, bytes per sample."""
    step = train_step_fn(model, x, y)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    step()
    return (torch.cuda.max_memory_allocated() - base) / len(x)


def matmul_peak(reps: int = 5) -> float:
    n = 8192 if DEVICE.type == "cuda" else 2048
    a, b = (torch.randn(n, n, device=DEVICE, dtype=AMP or torch.float32) for _ in range(2))
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n ** 3 / best / 1e9


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn) -> float:
    _sync()
    t = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t


def keep_freed_memory() -> None:
    """glibc: serve large blocks from the heap and never return its top to the OS, so freed memory is
    reused without new page faults (mallopt M_MMAP_MAX = 0, M_TRIM_THRESHOLD = 1 TiB, M_TOP_PAD = 64 MiB)."""
    libc = ctypes.CDLL("libc.so.6")
    if not all(libc.mallopt(opt, val) == 1 for opt, val in ((-4, 0), (-1, 2 ** 40), (-2, 64 << 20))):
        raise SystemExit("--malloc keep: glibc's mallopt refused the setting")


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _without_kernel(step):
    """The step with the optional C kernels switched off (``bnact._fused = None``): PyTorch's BN, add, ReLU,
    cat / split / layout copies around them, max-pool, and batched matmuls for the aggregation's products."""
    def run():
        kernel, bnact._fused = bnact._fused, None
        try:
            step()
        finally:
            bnact._fused = kernel
    return run


def interleaved(fns: dict, reps: int, faults: dict | None = None) -> dict[str, list[float]]:
    """Alternate A B / B A ... so that slow drifts of the machine hit both equally. If ``faults`` is
    given, the minor page faults of each call are appended to ``faults[name]``."""
    names, times = list(fns), {k: [] for k in fns}
    for r in range(reps):
        for k in (names if r % 2 == 0 else names[::-1]):
            f0 = _minor_faults()
            times[k].append(_timed(fns[k]))
            if faults is not None:
                faults.setdefault(k, []).append(_minor_faults() - f0)
    return times


def bench_shape(shape: str, args) -> dict:
    ref, fast = build(shape)
    models = {"reference": ref, "fast": fast}
    x, y = batch(shape, args.batch)
    res = {"shape": shape, "input": list(x.shape[1:]), "batch": args.batch}
    fast_me = build(shape, memory_efficient=True)[1]  # the same weights, conv3's outputs recomputed
    # FLOPs and saved-tensor memory (deterministic)
    xf, yf = batch(shape, 2)
    for name, model in models.items():
        fwd, step = flops(model, xf, yf)
        res[name] = {"gflop_fwd_per_sample": fwd / 1e9, "gflop_step_per_sample": step / 1e9,
                     "saved_mib_per_sample": saved_bytes(model, x) / 2 ** 20}
    # training throughput, interleaved: reference, fast, fast with memory_efficient=True and, where the optional
    # C kernels (_fused: bnact, tpool, the aggregation's pair products) are built, a copy of the fast model on
    # PyTorch's layers instead (what they buy, side by side)
    res["fast_memory_efficient"] = {"saved_mib_per_sample": saved_bytes(fast_me, x) / 2 ** 20}
    steps = {k: train_step_fn(m, x, y) for k, m in {**models, "fast_memory_efficient": fast_me}.items()}
    if bnact._fused is not None and DEVICE.type == "cpu" and AMP is None:
        steps["fast_without_kernel"] = _without_kernel(train_step_fn(copy.deepcopy(fast), x, y))
    for s in steps.values():  # warm-up (oneDNN primitive caches, allocator)
        s()
    faults: dict[str, list[int]] = {}
    times = interleaved(steps, args.reps, faults)
    for name in models:
        med = statistics.median(times[name])
        res[name].update(step_s=times[name], step_median_s=med, samples_per_s=args.batch / med,
                         minor_faults_per_step=faults[name],
                         gflops_achieved=res[name]["gflop_step_per_sample"] * args.batch / med)
    res["fast_memory_efficient"].update(step_s=times["fast_memory_efficient"],
                                        step_median_s=statistics.median(times["fast_memory_efficient"]))
    if "fast_without_kernel" in times:
        res["fast_without_kernel_step_s"] = times["fast_without_kernel"]
        res["fast_without_kernel_step_median_s"] = statistics.median(times["fast_without_kernel"])
    # inference latency, batch 1
    x1 = x[:1]
    for m in models.values():
        m.eval()
    infer_models = {**models, "fast_folded": fold_batchnorm(fast)}

    def infer(m):
        def run():
            with torch.inference_mode(), _autocast():
                m(x1)
        return run
    for m in infer_models.values():
        infer(m)()
    lat = interleaved({k: infer(m) for k, m in infer_models.items()}, args.infer_reps)
    for name in models:
        res[name]["latency_b1_ms"] = 1e3 * statistics.median(lat[name])
    res["fast_folded_latency_b1_ms"] = 1e3 * statistics.median(lat["fast_folded"])
    # OS-level memory cross-check on CPU; the CUDA allocator's peak on a GPU
    for m in models.values():
        m.train()
    fast_me.train()
    for name, which in (("reference", "ref"), ("fast", "fast"), ("fast_memory_efficient", "fast_me")):
        if DEVICE.type == "cuda":
            model = fast_me if which == "fast_me" else models[name]
            res[name]["peak_mib_per_sample"] = cuda_peak(model, x, y) / 2 ** 20
        elif not args.no_rss:
            res[name]["peak_mib_per_sample"] = rss_child(shape, which, args.batch, args.threads) / 2 ** 20
    r, f = res["reference"], res["fast"]
    res["speedup"] = f["samples_per_s"] / r["samples_per_s"]
    res["saved_memory_ratio"] = f["saved_mib_per_sample"] / r["saved_mib_per_sample"]
    if "peak_mib_per_sample" in f:
        res["peak_memory_ratio"] = f["peak_mib_per_sample"] / r["peak_mib_per_sample"]
    return res


def report(results: list[dict], peak: float) -> str:
    where = (torch.cuda.get_device_name() if DEVICE.type == "cuda" else f"{torch.get_num_threads()} CPU threads")
    dtype = str(AMP or torch.float32).removeprefix("torch.")
    lines = [f"{dtype} matmul peak (torch.mm, {where}): {peak:.0f} GFLOP/s"
             + (f"; both models under {dtype} autocast" if AMP else "")
             + ("; glibc malloc keeps freed memory" if MALLOC == "keep" else ""), ""]
    peak_kind = "CUDA" if DEVICE.type == "cuda" else "RSS"
    head = ("| shape | model | train samples/s | step median s | GFLOP/sample fwd / step | achieved GFLOP/s "
            f"(% peak) | saved MiB/sample | peak {peak_kind} MiB/sample | latency b=1 ms |")
    lines += [head, "|" + "---|" * 9]
    for res in results:
        for name in ("reference", "fast"):
            d = res[name]
            peak_mem = f"{d['peak_mib_per_sample']:.1f}" if "peak_mib_per_sample" in d else "-"
            lines.append(
                f"| {res['shape']} {tuple(res['input'])} | {name} | {d['samples_per_s']:.2f} | "
                f"{d['step_median_s']:.3f} | "
                f"{d['gflop_fwd_per_sample']:.2f} / {d['gflop_step_per_sample']:.2f} | "
                f"{d['gflops_achieved']:.0f} ({100 * d['gflops_achieved'] / peak:.0f}%) | "
                f"{d['saved_mib_per_sample']:.1f} | {peak_mem} | {d['latency_b1_ms']:.1f} |")
    lines.append("")
    for res in results:
        extra = f", peak-{peak_kind} ratio {res['peak_memory_ratio']:.2f}" if "peak_memory_ratio" in res else ""
        lat_r, lat_f = res["reference"]["latency_b1_ms"], res["fast"]["latency_b1_ms"]
        lat_ff = res["fast_folded_latency_b1_ms"]
        flt = "/".join(f"{statistics.median(res[k]['minor_faults_per_step']):.0f}" for k in ("reference", "fast"))
        lines.append(f"- {res['shape']}: fast/reference throughput {res['speedup']:.2f}x, saved-memory ratio "
                     f"{res['saved_memory_ratio']:.2f}{extra}; latency b=1: reference {lat_r:.1f} ms, "
                     f"fast {lat_f:.1f} ms, fast with BN folded {lat_ff:.1f} ms ({lat_ff / lat_r:.2f}x); "
                     f"minor page faults per training step (median), reference/fast: {flt}")
        me, ref_d = res["fast_memory_efficient"], res["reference"]
        me_peak = (f", peak {peak_kind} {me['peak_mib_per_sample'] / ref_d['peak_mib_per_sample']:.2f}x"
                   if "peak_mib_per_sample" in me and "peak_mib_per_sample" in ref_d else "")
        lines.append(f"  - memory_efficient=True: fast/reference throughput "
                     f"{ref_d['step_median_s'] / me['step_median_s']:.2f}x (step {me['step_median_s']:.3f} s), "
                     f"saved-memory ratio {me['saved_mib_per_sample'] / ref_d['saved_mib_per_sample']:.2f}"
                     f"{me_peak}")
        if "fast_without_kernel_step_median_s" in res:
            t_k, t_p = res["fast"]["step_median_s"], res["fast_without_kernel_step_median_s"]
            lines.append(f"  - C kernels (bnact, tpool, pairs): fast step {t_k:.3f} s, {t_p:.3f} s with PyTorch's "
                         f"layers ({t_k / t_p:.3f}x); fast/reference without them "
                         f"{res['reference']['step_median_s'] / t_p:.2f}x")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="ucla,ntu")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--reps", type=int, default=7, help="interleaved training-step repetitions per model")
    p.add_argument("--infer-reps", type=int, default=21)
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--amp", default="none", choices=["none", "bf16"], help="autocast both models to bf16")
    p.add_argument("--no-rss", action="store_true", help="skip the fresh-process peak-RSS measurement")
    p.add_argument("--malloc", default="default", choices=["default", "keep"],
                   help="keep: glibc keeps freed memory for reuse (no page faults after warm-up); Linux/glibc")
    p.add_argument("--json", default=None, help="also write the raw results here")
    p.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.malloc == "keep":
        keep_freed_memory()
    global DEVICE, AMP, MALLOC
    MALLOC = args.malloc
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    DEVICE, AMP = torch.device(args.device), (torch.bfloat16 if args.amp == "bf16" else None)
    # One fp32 policy for both models: by default cuDNN convolutions (the reference's CTRGC convs) run in
    # TF32 while cuBLAS matmuls (the fast model's) do not, which would compare TF32 against full fp32.
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_num_threads(args.threads)
    if args.rss_child:
        _rss_child_main(args.rss_child)
        return
    peak = matmul_peak()
    results = [bench_shape(s, args) for s in args.shapes.split(",")]
    peak = max(peak, matmul_peak())  # measured before and after: the better of the two
    print(report(results, peak))
    if args.json:
        Path(args.json).write_text(json.dumps({"matmul_peak_gflops": peak, "threads": args.threads,
                                               "malloc": args.malloc, "device": args.device, "amp": args.amp,
                                               "tf32": False if DEVICE.type == "cuda" else None,
                                               "gpu": torch.cuda.get_device_name() if DEVICE.type == "cuda"
                                               else None,
                                               "torch": torch.__version__, "results": results}, indent=1))


if __name__ == "__main__":
    main()
