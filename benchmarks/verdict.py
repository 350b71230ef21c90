"""The verdict protocol every synthetic benchmark follows (docs/benchmarks.md).

Choices (settings that depart from a paper, iteration budgets, thresholds) are made on the
*development* world with the development model seeds. A verdict is computed only on the *held-out*
world -- its own world seed, so its training and validation scenes are new -- with model seeds that no
choice ever saw, and only from at least three seeds. Each benchmark prints which world and seeds it ran.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

# world seed of the synthetic generator; model seeds (initial weights, data order, augmentation)
WORLDS = {"dev": 0, "heldout": 1}
SEEDS = {"dev": (0, 1, 2), "heldout": (100, 101, 102)}
MIN_SEEDS = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--world", choices=tuple(WORLDS), default="heldout",
                        help="heldout (default): the verdict's world, seed 1; dev: the world choices were made "
                             "on, seed 0")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="model seeds (default: 100 101 102 on the held-out world, 0 1 2 on dev)")


def resolve(args: argparse.Namespace) -> tuple[int, list[int]]:
    """(world seed, model seeds) of the parsed arguments."""
    seeds = list(args.seeds) if args.seeds else list(SEEDS[args.world])
    return WORLDS[args.world], seeds


def describe(args: argparse.Namespace) -> str:
    world_seed, seeds = resolve(args)
    used = sorted(set(seeds) & set(SEEDS["dev"]))
    note = f"; seeds {used} were used for choices" if used else ""
    return f"{args.world} world (world seed {world_seed}), model seeds {' '.join(map(str, seeds))}{note}"


def verdict(label: str, better: list[float], worse: list[float], args: argparse.Namespace,
            paired: bool = False) -> str:
    """``label`` diff (spread; per seed): holds / does NOT hold, or why no verdict is given.

    The spread is the two standard deviations added, or with ``paired`` (the two figures of a seed come
    from one chain of runs) the standard deviation of the per-seed differences."""
    diffs = [a - b for a, b in zip(better, worse, strict=True)]
    mean = statistics.mean(better) - statistics.mean(worse)
    per_seed = " / ".join(f"{d:+.1f}" for d in diffs)
    if len(diffs) < MIN_SEEDS:
        return f"{label} {mean:+.1f} (per seed {per_seed}): no verdict from fewer than {MIN_SEEDS} seeds"
    spread = statistics.stdev(diffs) if paired else statistics.stdev(better) + statistics.stdev(worse)
    text = f"{label} {mean:+.1f} ({'paired ' if paired else ''}spread {spread:.1f}; per seed {per_seed})"
    world_seed, seeds = resolve(args)
    if args.world != "heldout" or set(seeds) & set(SEEDS["dev"]):
        return f"{text}: no verdict on the development world or seeds"
    return f"{text}: {'holds' if mean > spread else 'does NOT hold'}"


def die_with_parent(parent: int | None = None) -> None:
    """Initializer for a benchmark's worker processes: on Linux the worker is sent SIGTERM when the benchmark
    that started it exits, however it exits (Ctrl-C, ``kill``, ``kill -9``), so no orphan goes on training
    on the cores. ``parent``: the benchmark's pid (default: the worker's parent when it starts); a worker
    whose parent is already gone exits at once. Elsewhere it does nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))
    if os.getppid() != (parent if parent is not None else os.getppid()):
        os._exit(143)
