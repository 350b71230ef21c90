"""The FUSS cost benchmark (benchmarks/fuss_speed.py): its byte count of Flower messages, and its quick run
end to end (a 2-client, 2-round simulation, then 100 replies aggregated) with the figures of its last line."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "fuss_speed.py"
pytestmark = pytest.mark.usefixtures("one_thread")

LAST_LINE = re.compile(
    r"^fuss_speed \[cpu, 1 thread\(s\) here, clients 1 thread each in (?P<actors>\d+) processes, torch \S+, "
    r"flwr 1\.41\.\d+\]: (?P<clients>\d+) clients x (?P<images>\d+) images, 2 rounds: seconds per round "
    r"fuss (?P<sec>[\d.]+) \[[\d.]+-[\d.]+\] s; bytes per client per round (?P<bytes>\d+) \(down (?P<down>\d+), "
    r"up (?P<up>\d+); state (?P<state>\d+) B\) = x(?P<ratio>[\d.]+) the client's raw uint8 pixels "
    r"\((?P<raw>\d+) B\), x[\d.]+ its PNG files \((?P<files>\d+) B\); aggregation of 100 replies of a "
    r"(?P<agg_state>\d+) B state, median of 2: (?P<agg>.*)$")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("fuss_speed_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_message_bytes_read_the_arrays_values_back_from_the_serialized_message(bench):
    template = {"head.w": np.ones((5, 7, 1, 1), np.float32), "centroids": np.zeros((3, 5), np.float64)}
    messages, pairs = bench.replies_for(template, 2)
    sizes = bench.message_bytes(messages[0])
    assert sizes["values"] == 5 * 7 * 4 + 3 * 5 * 8
    assert sizes["total"] > sizes["arrays"] > sizes["values"]
    assert len(pairs) == 2 and pairs[1][0]["centroids"].shape == (3, 5)


def test_quick_run_prints_its_figures_and_counts_the_state_it_sends(bench):
    env = {**os.environ, "PYTHONPATH": str(BENCH.parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, env=env,
                          timeout=300, cwd=BENCH.parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    found = LAST_LINE.match(last)
    assert found, last
    f = found.groupdict()
    # the state each train reply carries, read back from the serialized message, is the initial state's size
    state = sum(v.nbytes for v in bench.state_template(bench.FED_CONFIG, bench.QUICK).values())
    assert int(f["state"]) == state == int(f["agg_state"])
    # every round a client receives the state twice (train, evaluate) and sends it once, plus settings and metrics
    assert int(f["down"]) > 2 * state and int(f["up"]) > state
    assert int(f["bytes"]) in (int(f["down"]) + int(f["up"]) + d for d in (-1, 0, 1))
    assert int(f["clients"]) == 2 and int(f["images"]) == 8 and int(f["raw"]) == 8 * 3 * 32 * 32
    assert float(f["ratio"]) == pytest.approx(int(f["bytes"]) / int(f["raw"]), abs=2e-3)
    assert int(f["files"]) > 0 and float(f["sec"]) > 0
    for name in ("fedavg", "weighted", "fedcc_maxmin", "fedcc_kmeans", "fuss"):
        assert re.search(rf"\b{name} [\d.]+ \[[\d.]+-[\d.]+\] ms", f["agg"]), f["agg"]
