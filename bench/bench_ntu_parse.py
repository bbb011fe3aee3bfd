"""NTU .skeleton parsing throughput: skelact's parser against a plain line-by-line Python parser.

    python bench/bench_ntu_parse.py [--data ../shared/data/ntu_samples] [--rounds 100]

Both parsers read the same real files (the five samples, again and again), interleaved round by
round in one process, so machine load hits both alike. Reports files/s (wall clock and CPU time)
and the ratio, first with the default allocator, then with the allocator settings that
``prepare_ntu``'s worker processes use (freed memory kept for reuse, see ``ntu._worker_init``).
The BLAS thread count is 1, as in those workers.
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


def measure(files, rounds):
    """Seconds (wall, cpu) spent by each parser, alternating every round."""
    spent = {"skelact": np.zeros(2), "plain": np.zeros(2)}
    for _ in range(rounds):
        for name, parse in (("skelact", ntu.read_skeleton), ("plain", plain_parse)):
            wall, cpu = time.perf_counter(), time.process_time()
            for path in files:
                parse(path)
            spent[name] += (time.perf_counter() - wall, time.process_time() - cpu)
    return spent


def report(title, spent, count):
    fast, plain = spent["skelact"], spent["plain"]
    print(f"{title}:")
    for label, (wall, cpu) in (("skelact.read_skeleton", fast), ("plain line-by-line", plain)):
        print(f"  {label:<22} {count / wall:8.0f} files/s wall  {count / cpu:8.0f} files/s cpu"
              f"  ({wall / count * 1e3:.2f} ms/file)")
    print(f"  ratio                  {plain[0] / fast[0]:8.1f} x wall     {plain[1] / fast[1]:8.1f} x cpu")


def main():
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "ntu_samples"
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=default)
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()
    files = sorted(args.data.glob("*.skeleton"))
    if not files:
        raise SystemExit(f"no .skeleton files in {args.data}")
    for path in files:   # same result, and the fast path really taken
        a, b = ntu.read_skeleton(path), plain_parse(path)
        assert list(a["bodies"]) == list(b["bodies"])
        assert all(np.array_equal(a["bodies"][k][1], b["bodies"][k][1]) for k in b["bodies"])
        assert ntu._parse_fast(ntu._read_padded(path), path.stat().st_size) is not None
    size = sum(p.stat().st_size for p in files) / len(files)
    frames = sum(ntu.read_skeleton(p)["num_frames"] for p in files)
    print(f"{len(files)} files ({size / 1e3:.0f} kB, {frames} frames in all), {args.rounds} rounds, "
          f"interleaved; load average {os.getloadavg()[0]:.2f}")
    measure(files, 3)                                        # warm-up
    count = args.rounds * len(files)
    report("default allocator", measure(files, args.rounds), count)
    ntu._worker_init()
    measure(files, 3)
    report("allocator as in prepare_ntu's workers", measure(files, args.rounds), count)


if __name__ == "__main__":
    main()
