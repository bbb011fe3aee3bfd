"""Peak memory of ``prepare_ntu`` as the corpus grows: it must stay flat.

    python bench/bench_prepare_memory.py [--sizes 500 2000 8000] [--workers 2]

For each size, builds an NTU RGB+D 120 style raw folder of that many ``.skeleton`` files (symbolic links
to the five real samples under distinct valid names), runs ``prepare_ntu("ntu120", ...)`` in a fresh
process and polls /proc every 20 ms for the resident memory of that process and all its children
(the parser workers): the peak of the summed RSS (shared library pages counted once per process, so
an overestimate) and of the summed PSS (shared pages split between processes). Prints a table and a
linear extrapolation to the 113,945 files of NTU RGB+D 120.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NTU120_FILES = 113_945
CHILD = """
import json, resource, sys, time
from skelact.data.ntu import prepare_ntu
start = time.perf_counter()
summary = prepare_ntu("ntu120", sys.argv[1], out=sys.argv[2], workers=int(sys.argv[3]))
print(json.dumps({"seconds": time.perf_counter() - start, "num_samples": summary["num_samples"],
                  "skipped": len(summary["skipped"]),
                  "maxrss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "maxrss_largest_child_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def make_corpus(folder: Path, count: int, samples: list[Path]) -> None:
    """count links to the samples under valid names S001C001P001R001A001, S001C001P001R001A002, ..."""
    folder.mkdir(parents=True)
    fields = itertools.product(range(1, 33), range(1, 4), range(1, 107), range(1, 3), range(1, 121))
    for k, (setup, camera, subject, rep, action) in enumerate(itertools.islice(fields, count)):
        name = f"S{setup:03d}C{camera:03d}P{subject:03d}R{rep:03d}A{action:03d}.skeleton"
        (folder / name).symlink_to(samples[k % len(samples)])


def process_tree(root: int) -> list[int]:
    parent = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            parent[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    tree, todo = [root], [root]
    while todo:
        pid = todo.pop()
        kids = [p for p, pp in parent.items() if pp == pid]
        tree += kids
        todo += kids
    return tree


def memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in kB; zeros once it is gone."""
    try:
        rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("VmRSS:"))
        pss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
                   if line.startswith("Pss:"))
        return rss, pss
    except (OSError, StopIteration):
        return 0, 0


def run(raw: Path, out: Path, workers: int) -> dict:
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(raw), str(out), str(workers)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak = {"rss_main": 0, "rss_all": 0, "pss_all": 0, "processes": 0}
    while child.poll() is None:
        tree = process_tree(child.pid)
        usage = [memory_kb(pid) for pid in tree]
        peak["rss_main"] = max(peak["rss_main"], usage[0][0])
        peak["rss_all"] = max(peak["rss_all"], sum(u[0] for u in usage))
        peak["pss_all"] = max(peak["pss_all"], sum(u[1] for u in usage))
        peak["processes"] = max(peak["processes"], len(tree))
        time.sleep(0.02)
    result = json.loads(child.stdout.read())
    if child.returncode:
        raise SystemExit(f"prepare_ntu failed with exit code {child.returncode}")
    return {**result, **{k: v / 1024 if k != "processes" else v for k, v in peak.items()},
            "store_mb": sum(f.stat().st_size for f in out.iterdir()) / 2 ** 20}


def main():
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "ntu_samples"
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=default)
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 8000])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    samples = sorted(args.data.glob("*.skeleton"))
    if not samples:
        raise SystemExit(f"no .skeleton files in {args.data}")
    print(f"prepare_ntu('ntu120', workers={args.workers}); load average {os.getloadavg()[0]:.2f}")
    print(f"{'files':>7} {'seconds':>8} {'files/s':>8} {'peak RSS main':>14} {'peak RSS all':>13} "
          f"{'peak PSS all':>13} {'procs':>6} {'store':>9}")
    rows = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            make_corpus(Path(tmp) / "raw", size, samples)
            r = run(Path(tmp) / "raw", Path(tmp) / "store", args.workers)
        assert r["num_samples"] == size and r["skipped"] == 0, r
        rows.append((size, r))
        print(f"{size:>7} {r['seconds']:>8.1f} {size / r['seconds']:>8.0f} {r['rss_main']:>11.0f} MB "
              f"{r['rss_all']:>10.0f} MB {r['pss_all']:>10.0f} MB {r['processes']:>6} "
              f"{r['store_mb']:>6.0f} MB")
    (n0, r0), (n1, r1) = rows[0], rows[-1]
    for key, label in (("rss_all", "summed RSS"), ("pss_all", "summed PSS")):
        slope = (r1[key] - r0[key]) / (n1 - n0)
        total = r1[key] + slope * (NTU120_FILES - n1)
        print(f"{label}: {slope * 1000:+.2f} MB per 1000 files -> {total:.0f} MB "
              f"extrapolated to NTU RGB+D 120 ({NTU120_FILES:,} files)")
    main_rss = ", ".join(f"{r['maxrss_main_mb']:.0f}" for _, r in rows)
    worker_rss = ", ".join(f"{r['maxrss_largest_child_mb']:.0f}" for _, r in rows)
    print(f"ru_maxrss of the main process: {main_rss} MB; of the largest worker: {worker_rss} MB")


if __name__ == "__main__":
    main()
