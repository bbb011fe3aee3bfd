"""NTU .skeleton parsing throughput: skelact's parser (C accelerator, and its numpy fallback) against a
plain line-by-line Python parser.

    python bench/bench_ntu_parse.py [--data ../shared/data/ntu_samples] [--rounds 100]

All parsers read the same real files (the five samples, again and again), interleaved round by round
in one process, so machine load hits them alike: ``read_skeleton`` with the C accelerator
(``skelact.data._ntuparse``, if it was built), ``read_skeleton`` without it (the numpy fast path, as
where no C compiler was at installation), and the plain parser. Reports files/s (wall clock and CPU
time) and each one's ratio to the plain parser, first with the default allocator, then with the
allocator settings that ``prepare_ntu``'s worker processes use (freed memory kept for reuse, see
``ntu._worker_init``). The BLAS thread count is 1, as in those workers.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # as in prepare_ntu's workers; before numpy loads

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from skelact.data import ntu  # noqa: E402


def plain_parse(path) -> dict:
    """The straightforward parser: read line by line, keep x y z of each joint."""
    bodies = {}
    with open(path) as f:
        num_frames = int(f.readline())
        for frame in range(num_frames):
            for _ in range(int(f.readline())):
                body_id = int(f.readline().split()[0])
                joints = [[float(v) for v in f.readline().split()[:3]] for _ in range(int(f.readline()))]
                frames, coords = bodies.setdefault(body_id, ([], []))
                frames.append(frame)
                coords.append(joints)
    return {"num_frames": num_frames,
            "bodies": {k: (np.array(f), np.array(c, dtype=np.float32)) for k, (f, c) in bodies.items()}}


def parsers() -> dict:
    """name -> (parse function, the C accelerator module to use: ntu._ntuparse or None)."""
    found = {}
    if ntu._ntuparse is not None:
        found["skelact, C accelerator"] = (ntu.read_skeleton, ntu._ntuparse)
    found["skelact, numpy path"] = (ntu.read_skeleton, None)
    found["plain line-by-line"] = (plain_parse, None)
    return found


def measure(files, rounds, table):
    """Per parser: seconds (wall, cpu) in all and the wall seconds of its best round; parsers alternate
    every round."""
    spent = {name: np.zeros(2) for name in table}
    best = {name: np.inf for name in table}
    accelerator = ntu._ntuparse
    try:
        for _ in range(rounds):
            for name, (parse, module) in table.items():
                ntu._ntuparse = module
                wall, cpu = time.perf_counter(), time.process_time()
                for path in files:
                    parse(path)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                spent[name] += (wall, cpu)
                best[name] = min(best[name], wall)
    finally:
        ntu._ntuparse = accelerator
    return spent, best


def report(title, measured, rounds, num_files):
    spent, best = measured
    plain, plain_best = spent["plain line-by-line"], best["plain line-by-line"]
    count = rounds * num_files
    print(f"{title}:  (ms/file: mean over all rounds; best: the fastest round; ratios: plain / this)")
    for label, (wall, cpu) in spent.items():
        ratios = (plain[0] / wall, plain[1] / cpu, plain_best / best[label])
        ratio = "" if label.startswith("plain") else "  {:5.1f} x wall {:5.1f} x cpu {:5.1f} x best".format(
            *ratios)
        print(f"  {label:<24} {count / wall:6.0f} files/s wall {count / cpu:6.0f} files/s cpu"
              f"  {wall / count * 1e3:6.3f} ms/file, best {best[label] / num_files * 1e3:6.3f}{ratio}")


def main():
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "ntu_samples"
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=default)
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()
    files = sorted(args.data.glob("*.skeleton"))
    if not files:
        raise SystemExit(f"no .skeleton files in {args.data}")
    table = parsers()
    if ntu._ntuparse is None:
        print("note: the C accelerator skelact.data._ntuparse is not built (pip install needs a C compiler)")
    for path in files:   # same result, bit for bit, and the fast paths really taken (not the careful one)
        b = plain_parse(path)
        size = path.stat().st_size
        results = [ntu._parse_fast(ntu._read_padded(path), size)]
        if ntu._ntuparse is not None:
            results.append(ntu._parse_c(ntu._read_padded(path), size))
        for a in results:
            assert a is not None and list(a["bodies"]) == list(b["bodies"])
            assert all(np.array_equal(a["bodies"][k][0], b["bodies"][k][0]) for k in b["bodies"])
            assert all(np.array_equal(a["bodies"][k][1].view(np.uint32), b["bodies"][k][1].view(np.uint32))
                       for k in b["bodies"])
    size = sum(p.stat().st_size for p in files) / len(files)
    frames = sum(ntu.read_skeleton(p)["num_frames"] for p in files)
    print(f"{len(files)} files ({size / 1e3:.0f} kB, {frames} frames in all), {args.rounds} rounds, "
          f"interleaved; load average {os.getloadavg()[0]:.2f}")
    measure(files, 3, table)                                 # warm-up
    report("default allocator", measure(files, args.rounds, table), args.rounds, len(files))
    ntu._worker_init()
    measure(files, 3, table)
    report("allocator as in prepare_ntu's workers", measure(files, args.rounds, table), args.rounds,
           len(files))


if __name__ == "__main__":
    main()
