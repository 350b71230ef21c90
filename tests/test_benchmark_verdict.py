"""The verdict protocol of the synthetic benchmarks (benchmarks/verdict.py, docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import verdict  # noqa: E402


def parse(*argv):
    parser = argparse.ArgumentParser()
    verdict.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_the_held_out_world_and_fresh_seeds_are_the_default():
    args = parse()
    assert verdict.resolve(args) == (1, [100, 101, 102])
    assert verdict.resolve(parse("--world", "dev")) == (0, [0, 1, 2])
    assert "seeds [1] were used for choices" in verdict.describe(parse("--seeds", "1", "100", "101"))


def test_a_verdict_needs_the_held_out_world_three_fresh_seeds_and_a_gain_beyond_the_spread():
    better, worse = [20.0, 22.0, 24.0], [10.0, 11.0, 12.0]  # gain 11, spread 2 + 1
    assert verdict.verdict("A - B", better, worse, parse()).endswith(": holds")
    assert "spread 3.0" in verdict.verdict("A - B", better, worse, parse())
    assert verdict.verdict("A - B", [12.0, 14.0, 16.0], worse, parse()).endswith("does NOT hold")  # 3 <= 2 + 1
    assert "no verdict from fewer than 3 seeds" in verdict.verdict("A - B", better[:2], worse[:2], parse())
    assert "no verdict on the development" in verdict.verdict("A - B", better, worse, parse("--world", "dev"))
    assert "no verdict on the development" in verdict.verdict("A - B", better, worse,
                                                              parse("--seeds", "0", "101", "102"))


def test_paired_spread_is_the_deviation_of_the_per_seed_gains():
    text = verdict.verdict("A - B", [20.0, 30.0, 40.0], [19.0, 28.0, 37.0], parse(), paired=True)
    assert "paired spread 1.0" in text and "per seed +1.0 / +2.0 / +3.0" in text and text.endswith(": holds")
    assert verdict.verdict("A - B", [20.0, 30.0, 40.0], [19.0, 28.0, 37.0], parse()).endswith("does NOT hold")



PARENT = """
import multiprocessing as mp, os, sys, time
sys.path.insert(0, sys.argv[1])
from verdict import die_with_parent

def sleep(_):
    time.sleep(600)

if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    initializer = die_with_parent if sys.argv[2] == "on" else None
    with ctx.Pool(2, initializer, (os.getpid(),) if initializer else ()) as pool:
        pool.map_async(sleep, range(2))
        time.sleep(3)  # the workers are up and busy
        print(" ".join(str(p.pid) for p in pool._pool), flush=True)
        time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its reaper is gone for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
@pytest.mark.parametrize("guard", ["on", "off"])
def test_workers_die_with_a_killed_benchmark(tmp_path, guard):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script), str(BENCHMARKS), guard], stdout=subprocess.PIPE,
                              text=True)
    try:
        workers = [int(p) for p in parent.stdout.readline().split()]
        assert len(workers) == 2 and all(_alive(p) for p in workers)
        parent.kill()  # SIGKILL: no handler of the benchmark can run
        parent.wait()
        deadline = time.time() + (10 if guard == "on" else 2)  # orphans would not go in 2 s either
        while time.time() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.2)
        assert any(_alive(p) for p in workers) == (guard == "off")  # without the guard they are orphans
    finally:
        parent.kill()
        for pid in workers if "workers" in locals() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
