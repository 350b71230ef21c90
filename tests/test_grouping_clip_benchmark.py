"""The grouping + CLIP synthetic benchmark end to end in its tiny configuration
(benchmarks/grouping_clip_synthetic.py --quick: a 64-scene world, a 4-step CLIP, 2-step adaptations)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "grouping_clip_synthetic.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("grouping_clip_synthetic_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paired_gap_and_verdict(bench):
    rows = [{"c": 10.0, "b": 5.0}, {"c": 12.0, "b": 8.0}, {"c": 14.0, "b": 8.0}]
    diff, spread, diffs = bench.paired_gap(rows, "c", "b")
    assert diff == pytest.approx(5.0) and diffs == [5.0, 4.0, 6.0] and spread == pytest.approx(1.0)
    assert bench.verdict(rows, "c", "b", "(c)>(b)", True) == "(c)>(b): holds (+5.0, spread 1.0)"
    assert bench.verdict(rows, "b", "c", "(b)>(c)", True) == "(b)>(c): fails (-5.0, spread 1.0)"
    assert bench.verdict(rows, "c", "b", "(c)>(b)", False) == "(c)>(b) +5.0, spread 1.0"


def test_quick_run_prints_the_table_and_no_verdict_with_one_seed(bench, tmp_path, capsys):
    import torch

    threads = torch.get_num_threads()
    try:
        bench.main(["--quick", "--workers", "1", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("grouping_clip_synthetic: held-out world 1") and "model seeds 10" in lines[0]
    header = next(i for i, line in enumerate(lines) if line.startswith("| seed |"))
    assert lines[header] == ("| seed | CLIP R@1 | MaskCLIP | (a) | (b) | (c) | (c)+tokens one-way | two-way | "
                             "reverse | oracle |")
    cells = lines[header + 2].strip("|").split("|")
    assert cells[0].strip() == "10" and len(cells) == 10
    assert all(0.0 <= float(c) <= 100.0 for c in cells[1:])
    last = lines[-1]
    assert last.startswith("grouping_clip_synthetic [held-out world 1, seeds 10, QUICK]: mIoU by class name (a) ")
    assert "no verdict (1 seed)" in last and "holds" not in last and "fails" not in last
    assert "device cpu, 1 process x 1 thread" in last
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["world_seed"] == 1 and results["seeds"] == [10]
    assert set(results["rows"][0]) == {key for key, _ in bench.COLUMNS}
    for folder in ("clip/clip", "tokens_one-way", "tokens_two-way", "tokens_reverse", "no_adaptation/oracle"):
        assert (tmp_path / "seed10" / folder).is_dir()
