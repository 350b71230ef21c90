"""The FUSS synthetic benchmark end to end in its tiny configuration (benchmarks/fuss_synthetic.py --quick:
6 domain clients of 8 scenes, 2 rounds of 2 steps, local-only and FUSS through `leafseg fed run`'s
simulation)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "fuss_synthetic.py"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fuss_bench")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--out", str(out)], capture_output=True,
                          text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout.strip().splitlines()


def test_quick_run_prints_the_table_and_no_verdict_from_one_seed(quick_run):
    out, lines = quick_run
    assert lines[0].startswith("fuss_synthetic on the heldout world (world seed 1), model seeds 100, "
                               "6 domain clients, strategies local_only, fuss, QUICK")
    header = lines.index("| seed | local-only | FUSS |")
    cells = lines[header + 2].strip("|").split("|")
    assert cells[0].strip() == "100" and all(0.0 < float(c) <= 100.0 for c in cells[1:])
    last = lines[-1]
    assert last.startswith("fuss_synthetic (Hungarian mIoU %, heldout world (world seed 1), model seeds 100, "
                           "6 domain clients, QUICK): local-only ")
    assert "FUSS > local-only" in last and "no verdict from fewer than 3 seeds" in last
    assert "holds" not in last and "NOT" not in last and "device cpu" in last
    saved = json.loads((out / "fuss_synthetic.json").read_text())
    assert saved["world_seed"] == 1 and saved["seeds"] == [100] and saved["quick"]


def test_figures_are_the_runs_own_last_rounds(quick_run):
    """local-only's figure is the mean of its clients' own models; FUSS's is its global model's."""
    out, _ = quick_run
    saved = json.loads((out / "fuss_synthetic.json").read_text())["rows"]["100"]
    rows = {}
    for strategy in ("local_only", "fuss"):
        lines = (out / "seed100" / strategy / "metrics.jsonl").read_text().splitlines()
        rows[strategy] = json.loads(lines[-1])
        assert saved[strategy]["rounds"] == rows[strategy]["round"] == 2
    clients = rows["local_only"]["clients_miou"]
    assert len(clients) == 6 and rows["local_only"]["global_miou"] is None
    assert saved["local_only"]["miou"] == pytest.approx(100 * statistics.mean(clients))
    assert saved["fuss"]["miou"] == pytest.approx(100 * rows["fuss"]["global_miou"])
    domains = json.loads((out / "world" / "domains.json").read_text())
    assert len(domains["domains"]) == 6 and domains["generator"]["seed"] == 100
