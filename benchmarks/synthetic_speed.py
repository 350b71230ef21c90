"""Speed of the synthetic world: generating scenes in memory against writing them to disk as PNG files.

The tests used to hold wall-clock limits for these two paths (64 scenes in memory under 3 s, 256 scenes
written under 8 s); a limit of that kind fails on a busy machine without saying anything about the code,
so the figures live here. Each path is timed ``--repeats`` times (median, with the range), on one thread.
The last line gives scenes per second of both paths and the share of writing spent on PNG encoding and
files.

    python benchmarks/synthetic_speed.py [--size 96] [--scenes 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from leafseg.data.synthetic import SyntheticWorld


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96, help="scene side in pixels (default 96)")
    parser.add_argument("--scenes", type=int, default=256, help="scenes per timed run (default 256)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per path (default 5)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    world = SyntheticWorld(seed=0, size=args.size)
    world.batch(range(4))  # warm-up: painters and lattices

    memory = timed(lambda: world.batch(range(args.scenes)), args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        runs = iter(range(args.repeats))
        disk = timed(lambda: world.write(Path(tmp) / f"w{next(runs)}", args.scenes), args.repeats)

    def rate(times):
        med = statistics.median(times)
        return args.scenes / med, args.scenes / max(times), args.scenes / min(times)

    mem, dsk = rate(memory), rate(disk)
    for name, (r, lo, hi) in (("in memory (SyntheticWorld.batch)", mem), ("to disk (SyntheticWorld.write)", dsk)):
        print(f"{name:34s} {r:7.1f} scenes/s  [{lo:.1f}-{hi:.1f}]")
    share = 1.0 - statistics.median(memory) / statistics.median(disk)
    print(f"synthetic world {args.size} px, {args.scenes} scenes, median of {args.repeats}: in memory "
          f"{mem[0]:.1f} scenes/s [{mem[1]:.1f}-{mem[2]:.1f}], to disk {dsk[0]:.1f} scenes/s "
          f"[{dsk[1]:.1f}-{dsk[2]:.1f}] (PNG and files {100 * share:.0f} % of writing); "
          f"device cpu ({platform.processor() or platform.machine()}), 1 thread, {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
