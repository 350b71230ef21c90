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


def test_verdicts_are_paired_and_only_the_two_orderings_are_decided(bench):
    rows = [{"a": 1.0, "b": 5.0, "c": 10.0, "one-way": 12.0, "two-way": 11.0, "reverse": 13.0},
            {"a": 2.0, "b": 8.0, "c": 12.0, "one-way": 15.0, "two-way": 14.0, "reverse": 16.0},
            {"a": 3.0, "b": 8.0, "c": 14.0, "one-way": 13.0, "two-way": 12.0, "reverse": 15.0}]
    args = bench.parse_args([])
    text = bench.verdict_text(rows, args)
    # (c)-(b) per seed +5 / +4 / +6: paired spread 1.0 (unpaired it would be 3.7), so it holds
    assert text.startswith("(c)>(b) +5.0 (paired spread 1.0; per seed +5.0 / +4.0 / +6.0): holds; ")
    assert "tokens>none +1.3 (paired spread 2.1; per seed +2.0 / +3.0 / -1.0): does NOT hold" in text
    also = text.split("not decided: ")[1]
    assert "one-way>two-way +1.0" in also and "holds" not in also and "NOT" not in also
    dev = bench.verdict_text(rows, bench.parse_args(["--world", "dev"]))
    assert "no verdict on the development world" in dev and "holds" not in dev
    assert "fewer than 3 seeds" in bench.verdict_text(rows[:2], bench.parse_args(["--seeds", "10", "11"]))


def test_quick_run_prints_the_table_and_no_verdict_with_one_seed(bench, tmp_path, capsys):
    import torch

    threads = torch.get_num_threads()
    try:
        bench.main(["--quick", "--workers", "1", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("grouping_clip_synthetic: heldout world (world seed 1), model seeds 100")
    header = next(i for i, line in enumerate(lines) if line.startswith("| seed |"))
    assert lines[header] == ("| seed | CLIP R@1 | MaskCLIP | (a) | (b) | (c) | (c)+tokens one-way | two-way | "
                             "reverse | oracle |")
    cells = lines[header + 2].strip("|").split("|")
    assert cells[0].strip() == "100" and len(cells) == 10
    assert all(0.0 <= float(c) <= 100.0 for c in cells[1:])
    last = lines[-1]
    assert last.startswith("grouping_clip_synthetic [heldout world 1, seeds 100, QUICK]: mIoU by class name (a) ")
    assert "no verdict from fewer than 3 seeds" in last and "holds" not in last and "NOT" not in last
    assert "device cpu, 1 process x 1 thread" in last
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["world_seed"] == 1 and results["seeds"] == [100]
    assert set(results["rows"][0]) == {key for key, _ in bench.COLUMNS}
    for folder in ("clip/clip", "tokens_one-way", "tokens_two-way", "tokens_reverse", "no_adaptation/oracle"):
        assert (tmp_path / "seed100" / folder).is_dir()
