"""The STEGO synthetic benchmark's pieces (benchmarks/stego_synthetic.py): the K-means baseline on a run's
frozen features, and its summary (the verdict rule itself is benchmarks/verdict.py's)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from leafseg.recipes.stego import run
from sseg_tiny import write_world
from stego_tiny import stego_args

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "stego_synthetic.py"
sys.path.insert(0, str(BENCH.parent))  # the benchmark imports benchmarks/verdict.py
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("stego_synthetic_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summary_gives_both_methods_with_their_spread(bench):
    rows = [{"stego_miou": s / 100, "kmeans_miou": k / 100, "stego_acc": 0.5, "kmeans_acc": 0.4}
            for s, k in ((20, 10), (21, 11), (22, 12))]
    assert bench.summary(rows) == "STEGO 21.0 ± 1.0, K-means 11.0 ± 1.0 (pixel accuracy 50.0 vs 40.0)"


def test_kmeans_baseline_scores_the_runs_frozen_features(bench, tmp_path):
    world = write_world(tmp_path / "world")
    run(None, stego_args(world, tmp_path / "run", "iterations=2"))
    figures = bench.kmeans_miou(tmp_path / "run", seed=0)
    assert 0.0 < figures["kmeans_miou"] <= 1.0 and 0.0 < figures["kmeans_acc"] <= 1.0
    assert figures == bench.kmeans_miou(tmp_path / "run", seed=0)  # seeded: the same figures again
