"""The STEGO synthetic benchmark's pieces (benchmarks/stego_synthetic.py): the K-means baseline on a run's
frozen features, and the verdict rule."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from leafseg.recipes.stego import run
from sseg_tiny import write_world
from stego_tiny import stego_args

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "stego_synthetic.py"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("stego_synthetic_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows(stego: list[float], kmeans: list[float]) -> list[dict]:
    return [{"stego_miou": s / 100, "kmeans_miou": k / 100, "stego_acc": 0.5, "kmeans_acc": 0.4}
            for s, k in zip(stego, kmeans, strict=True)]


def test_verdict_needs_three_seeds_and_a_gap_beyond_the_spread(bench):
    assert "no verdict (fewer than 3 seeds: 2)" in bench.verdict_line(rows([20, 22], [10, 10]), "w")
    ahead = bench.verdict_line(rows([20, 21, 22], [10, 11, 12]), "w")
    assert "difference +10.0 (spread 2.0): STEGO ahead by more than the seed spread" in ahead
    assert "STEGO NOT ahead" in bench.verdict_line(rows([12, 14, 16], [11, 12, 13]), "w")  # +2.0 < spread 3.0


def test_kmeans_baseline_scores_the_runs_frozen_features(bench, tmp_path):
    world = write_world(tmp_path / "world")
    run(None, stego_args(world, tmp_path / "run", "iterations=2"))
    figures = bench.kmeans_miou(tmp_path / "run", seed=0)
    assert 0.0 < figures["kmeans_miou"] <= 1.0 and 0.0 < figures["kmeans_acc"] <= 1.0
    assert figures == bench.kmeans_miou(tmp_path / "run", seed=0)  # seeded: the same figures again
