"""The verdict protocol of the synthetic benchmarks (benchmarks/verdict.py, docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
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

