"""The server's combinations as pure functions (FedCC max-min and k-means, every preset's aggregation, reply
checks, the quorum) and the Flower strategy around them, on hand-built replies."""

from __future__ import annotations

import time

import numpy as np
import pytest

from leafseg.recipes.fuss import strategies as S
from leafseg.recipes.fuss.strategies import (
    CENTROIDS,
    PRESETS,
    RoundFailed,
    aggregate,
    check_quorum,
    client_start,
    fedcc_kmeans,
    fedcc_maxmin,
    reply_problem,
    resolve_exchange,
)


def _state(head: float, centroids) -> dict:
    return {"head.w": np.full((2, 3), head, np.float32), "head.b": np.full(2, head, np.float32),
            CENTROIDS: np.asarray(centroids, np.float32)}


A = _state(1.0, [[1, 0], [0.9, 0.1]])
B = _state(4.0, [[0, 1], [-1, 0]])
REPLIES = [(A, 1.0), (B, 3.0)]


def test_fedcc_maxmin_picks_farthest_points_from_client_zeros_first_centroid():
    assert np.allclose(fedcc_maxmin([A[CENTROIDS], B[CENTROIDS]]), [[1, 0], [-1, 0]])
    assert np.allclose(fedcc_maxmin([A[CENTROIDS], B[CENTROIDS]], 3), [[1, 0], [-1, 0], [0, 1]])
    # the distance is cosine: scale does not matter, and ties go to the lowest index
    square = [np.array([[2.0, 0], [0, 1]]), np.array([[0, -3.0], [-1, 0]])]
    assert np.allclose(fedcc_maxmin(square, 2), [[2, 0], [-1, 0]])
    assert np.allclose(fedcc_maxmin(square, 3), [[2, 0], [-1, 0], [0, 1]])
    with pytest.raises(ValueError):
        fedcc_maxmin([A[CENTROIDS]], 3)


def test_fedcc_kmeans_recovers_the_directions_the_clients_share():
    rng = np.random.default_rng(0)
    directions = np.eye(4)[:3]
    clients = [directions[rng.permutation(3)] + 0.05 * rng.normal(size=(3, 4)) for _ in range(4)]
    found = fedcc_kmeans(clients, restarts=5, seed=1)
    assert found.shape == (3, 4) and np.allclose(np.linalg.norm(found, axis=1), 1, atol=1e-5)
    assert np.all((found @ directions.T).max(1) > 0.99)
    assert np.array_equal(found, fedcc_kmeans(clients, restarts=5, seed=1))


def test_presets_and_overrides():
    assert PRESETS["fuss"].head == "weighted" and PRESETS["fuss"].centroids == "maxmin"
    assert resolve_exchange("fedprox").proximal_mu == 0.001
    assert resolve_exchange("fedprox", proximal_mu=0.01).proximal_mu == 0.01
    assert resolve_exchange("fuss", proximal_mu=0.01).proximal_mu == 0.0
    assert resolve_exchange("fuss", centroids="kmeans").centroids == "kmeans"
    assert not PRESETS["local_only"].federated and PRESETS["head_only"].federated
    with pytest.raises(Exception, match="unknown strategy"):
        resolve_exchange("fedsgd")
    for name, e in PRESETS.items():  # the table of the module docstring says the same
        row = next(line.split() for line in S.__doc__.splitlines() if line.startswith(name + " "))
        assert row[1:3] == [e.head, e.centroids], name


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_aggregates_and_hands_out_start_states(name):
    e = PRESETS[name]
    g = aggregate(e, REPLIES)
    head = {"mean": 2.5, "weighted": 3.25, "keep": 3.25}[e.head]  # kept heads are scored as the weighted mean
    assert np.allclose(g["head.w"], head) and np.allclose(g["head.b"], head) and g["head.w"].dtype == np.float32
    expected = {"mean": [[0.5, 0.5], [-0.05, 0.05]], "weighted": [[0.25, 0.75], [-0.525, 0.025]],
                "maxmin": [[1, 0], [-1, 0]], "keep": [[1, 0], [-1, 0]]}
    if e.centroids == "kmeans":
        assert g[CENTROIDS].shape == (2, 2)
    else:
        assert np.allclose(g[CENTROIDS], expected[e.centroids])
    start = client_start(e, g, A)
    assert start["head.w"] is (A["head.w"] if e.head == "keep" else g["head.w"])
    assert start[CENTROIDS] is (A[CENTROIDS] if e.centroids == "keep" else g[CENTROIDS])
    assert client_start(e, g, None) == g


def test_replies_that_cannot_be_averaged_are_named():
    shapes = {k: v.shape for k, v in A.items()}
    assert reply_problem(A, 3, shapes) is None
    assert "wrong keys" in reply_problem({**A, "x": A["head.b"]}, 3, shapes)
    assert "shape" in reply_problem({**A, "head.b": np.zeros(3, np.float32)}, 3, shapes)
    assert "dtype" in reply_problem({**A, "head.b": np.zeros(2, np.int64)}, 3, shapes)
    assert "NaN or Inf" in reply_problem({**A, "head.b": np.array([0, np.nan], np.float32)}, 3, shapes)
    assert "NaN or Inf" in reply_problem({**A, "head.b": np.array([np.inf, 0], np.float32)}, 3, shapes)
    for bad in (0, -1, float("nan"), True, None, "3"):
        assert "number of examples" in reply_problem(A, bad, shapes)


def test_quorum():
    check_quorum(1, 2, 4, 0.5, {2: "x", 3: "y"})
    with pytest.raises(RoundFailed, match=r"round 3: 1 of 4 clients .*client 0: raised; client 2: timed out"):
        check_quorum(3, 1, 4, 0.5, {2: "timed out", 0: "raised"})


# -- the Flower strategy, on hand-built reply messages ----------------------------------------------------
def _reply(node: int, client: int, state: dict | None, examples=3, error: str | None = None):
    from flwr.app import Error, Message, Metadata

    from leafseg.recipes.fuss.messages import content

    meta = Metadata(run_id=1, message_id=f"r{node}", src_node_id=node, dst_node_id=0, reply_to_message_id=f"m{node}",
                    group_id="1", created_at=time.time(), ttl=60.0, message_type="train")
    if error is not None:
        return Message(error=Error(code=3, reason=error), metadata=meta)
    return Message(content(arrays=state, metrics={"num-examples": examples, "partition-id": client, "loss": 1.0}),
                   metadata=meta)


def _strategy(name="fuss", min_fraction=0.5):
    from leafseg.recipes.fuss.flower_strategy import build_strategy

    strategy = build_strategy(name, {k: v.shape for k, v in A.items()}, min_fraction=min_fraction)
    strategy.nodes = {11: 0, 12: 1, 13: 2, 14: 3}
    return strategy


def test_flower_strategy_rejects_bad_replies_and_aggregates_the_rest():
    from leafseg.recipes.fuss.messages import state_of

    strategy = _strategy()
    nan = {**B, "head.b": np.array([np.nan, 0], np.float32)}
    arrays, metrics = strategy.aggregate_train(1, [_reply(11, 0, A, 1), _reply(12, 1, B, 3),
                                                   _reply(13, 2, nan), _reply(99, 7, A)])
    out = strategy.train_outcome
    assert sorted(out.states) == [0, 1]
    assert out.rejected == {2: "head.b: NaN or Inf values", 3: "no reply before the round's timeout"}
    assert np.allclose(state_of(arrays)["head.w"], 3.25) and metrics["loss"] == 1.0
    assert set(strategy.client_states) == {0, 1}


def test_flower_strategy_counts_clients_that_never_connected():
    strategy = _strategy(min_fraction=0.5)
    strategy.clients = 6
    with pytest.raises(RoundFailed, match="2 of 6 clients .*client 5: not connected"):
        strategy.aggregate_train(1, [_reply(11, 0, A), _reply(12, 1, B)])


def test_flower_strategy_fails_the_round_below_the_quorum():
    strategy = _strategy(min_fraction=0.75)
    with pytest.raises(RoundFailed, match="client 2: error 3: boom"):
        strategy.aggregate_train(2, [_reply(11, 0, A), _reply(12, 1, B), _reply(13, 2, None, error="boom")])


def test_flower_strategy_sends_each_client_its_own_start_state(monkeypatch):
    from flwr.app import ConfigRecord
    from flwr.supercore.task_identity import TaskIdentity

    from leafseg.recipes.fuss.messages import record_of, state_of

    for key in ("_run_id", "_task_id", "_node_id"):  # set by Flower's runtime in a ServerApp process
        monkeypatch.setattr(TaskIdentity, key, 1)
    strategy = _strategy("head_only")
    strategy.client_states = {0: A, 1: B}
    messages = strategy.configure_train(2, record_of(aggregate(PRESETS["head_only"], REPLIES)),
                                        ConfigRecord({"seed": 0}), grid=None)
    assert [m.metadata.dst_node_id for m in messages] == [11, 12, 13, 14]
    sent = [state_of(m.content["arrays"]) for m in messages]
    assert np.array_equal(sent[0][CENTROIDS], A[CENTROIDS]) and np.array_equal(sent[1][CENTROIDS], B[CENTROIDS])
    assert np.allclose(sent[0]["head.w"], 3.25) and np.allclose(sent[1]["head.w"], 3.25)
    assert messages[0].content["config"]["server-round"] == 2 and messages[0].content["config"]["proximal-mu"] == 0.0
