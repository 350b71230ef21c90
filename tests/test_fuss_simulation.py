"""FUSS on Flower's simulation engine (Ray), every client on this machine: a 2-client 2-round run through
`leafseg fed run`, its outputs and `leafseg eval model` on them; a killed run resumed to the same result;
a client that raises, times out, or sends NaN, Inf, a wrong shape or wrong keys is rejected and logged
while the round goes on, and a round with too few usable replies fails with a message naming them.

Each simulation starts Ray (about half a minute on a busy two-core machine), so the runs are made once per
module and shared by the tests."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from fuss_tiny import tiny_values, write_tiny_config
from leafseg.cli import main

pytest.importorskip("ray")


def _rows(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _steady(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.fixture(scope="module")
def top(tmp_path_factory):
    return tmp_path_factory.mktemp("fuss_sim")


@pytest.fixture(scope="module")
def plain(top):
    """`leafseg fed run CONFIG --clients 2` on the tiny config: 2 rounds of FUSS."""
    config = write_tiny_config(top / "plain.yaml", top / "world", top / "plain")
    code = main(["fed", "run", str(config), "--clients", "2"])
    assert code == 0
    return top / "plain"


def test_a_two_client_two_round_simulation_logs_checkpoints_exports_and_reports(plain):
    rows = _rows(plain)
    assert [r["round"] for r in rows] == [1, 2] and all(r["strategy"] == "fuss" for r in rows)
    for row in rows:
        assert 0 < row["miou"] == row["global_miou"] < 1 and 0 < row["acc"] < 1
        assert len(row["clients_miou"]) == 2 and all(0 < v < 1 for v in row["clients_miou"])
        assert all(0 <= v <= 1 for v in row["clients_local_miou"]) and row["answered"] == 2 and row["rejected"] == {}
    train = [json.loads(line) for line in (plain / "train_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in train] == [1, 2] and {"loss", "objective", "probe"} <= set(train[0])
    weights = load_file(plain / "final.safetensors")
    assert set(weights) >= {"centroids", "head.linear.weight"} and weights["centroids"].shape == (6, 8)
    results = json.loads((plain / "results.json").read_text())
    assert results["final_miou"] == rows[-1]["miou"] and results["rounds"] == 2
    assert (plain / "report.html").is_file() and (plain / "miou.png").stat().st_size > 0
    assert json.loads((plain / "partition" / "partition.json").read_text())["scheme"] == "domain"
    assert not (plain / "clients").exists()  # FUSS shares every part: the global model is each client's


def test_eval_model_gives_the_runs_own_final_miou(plain, top, tmp_path):
    code = main(["eval", "model", "synthetic", str(top / "world"), "--weights", str(plain / "final.safetensors"),
                 "--preset", str(plain / "protocol.yaml"), "--out", str(tmp_path / "eval"), "--quiet"])
    assert code == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["miou"] == _rows(plain)[-1]["miou"]


def test_a_killed_run_resumes_at_the_next_round_with_the_same_result(plain, top):
    config = write_tiny_config(top / "killed.yaml", top / "world", top / "killed")
    assert main(["fed", "run", str(config), "stop_after=1"]) == 0
    assert [r["round"] for r in _rows(top / "killed")] == [1]
    assert main(["fed", "run", str(config), "--resume"]) == 0
    assert _steady(_rows(top / "killed")) == _steady(_rows(plain))
    ours, theirs = load_file(top / "killed" / "final.safetensors"), load_file(plain / "final.safetensors")
    assert all((ours[k] == theirs[k]).all() for k in theirs)


# -- faults: one simulation of 7 clients ---------------------------------------------------------------
FAULTS = {"1": "raise", "2": "nan", "3": "inf", "4": "shape", "5": "keys", "6@1": "timeout",
          "0@2": "raise", "6@2": "raise"}
EXPECTED = {"1": "fault 'raise' injected", "2": "NaN or Inf", "3": "NaN or Inf", "4": "shape",
            "5": "wrong keys", "6": "no reply before the round's timeout"}


@pytest.fixture(scope="module")
def faulty(top):
    """Round 1: client 0 answers well, clients 1-6 commit a fault each; it goes on (min_fraction 0.1). Round 2:
    no client answers well, so it fails."""
    from leafseg.recipes.fuss import run
    from leafseg.recipes.fuss.strategies import RoundFailed

    values = tiny_values(top / "world", top / "faulty", partition={"scheme": "iid"},
                         federation={"clients": 7, "round_timeout": 30, "min_fraction": 0.1, "client_eval": False,
                                     "eval_clients": False, "faults": FAULTS})
    with pytest.raises(RoundFailed) as failed:
        run(None, values)
    return top / "faulty", str(failed.value)


@pytest.mark.parametrize("client", list(EXPECTED))
def test_a_faulty_client_is_rejected_and_logged_and_the_round_goes_on(faulty, client):
    folder, _ = faulty
    first = _rows(folder)[0]
    assert first["round"] == 1 and first["answered"] == 1 and 0 < first["miou"] < 1
    assert EXPECTED[client] in first["rejected"][client]


def test_a_round_with_too_few_usable_replies_fails_naming_every_client(faulty):
    folder, message = faulty
    assert message.startswith("round 2: 0 of 7 clients gave a usable reply, fewer than federation.min_fraction")
    for client in range(7):
        assert f"client {client}: " in message
    assert "resume with --resume" in message
    assert [r["round"] for r in _rows(folder)] == [1]  # the checkpoint holds round 1
    assert not (folder / "run.lock").exists()
