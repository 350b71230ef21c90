"""A FUSS client's local learner (plain PyTorch), and the ClientApp called directly with hand-built messages."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from fuss_tiny import tiny_config
from leafseg.data.partition import client_file, make_partition, write_partition
from leafseg.recipes.fuss import components as C
from leafseg.recipes.fuss.model import ClusterProbe
from leafseg.recipes.fuss.task import CENTROIDS, LocalLearner

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    top = tmp_path_factory.mktemp("fuss_task")
    cfg = tiny_config(top / "world", top / "run", partition={"dir": str(top / "part")})
    cfg.data.synthetic.ensure(cfg.data.root)
    write_partition(make_partition("synthetic", cfg.data.root, scheme="domain", clients=2), top / "part")
    encoder = C.make_encoder(cfg)
    images = C.client_images(cfg, client_file(top / "part", 0))
    return cfg, encoder, images


def _learner(setup) -> LocalLearner:
    cfg, encoder, images = setup
    learner = C.make_learner(cfg, encoder, images)
    learner.set_state(C.initial_state(cfg, encoder))
    return learner


def test_what_travels_is_the_head_and_the_centroids(setup):
    cfg, encoder, images = setup
    learner = _learner(setup)
    state = learner.get_state()
    assert images.shape == (6, 3, 32, 32) and learner.num_examples == 6
    assert set(state) == {CENTROIDS} | {f"head.{k}" for k, _ in learner.head.named_parameters()}
    assert state[CENTROIDS].shape == (6, 8) and all(v.dtype == np.float32 for v in state.values())
    assert not any("encoder" in k for k in state)
    with pytest.raises(ValueError, match="keys differ"):
        learner.set_state({k: v for k, v in state.items() if k != CENTROIDS})
    with pytest.raises(ValueError, match="shape"):
        learner.set_state({**state, CENTROIDS: np.zeros((5, 8), np.float32)})


def test_fit_is_a_function_of_the_state_and_the_seed(setup):
    learner = _learner(setup)
    start = learner.get_state()
    first = learner.fit(3, seed=7)
    after = learner.get_state()
    assert set(first) == {"loss", "objective", "probe", "proximal"} and first["proximal"] == 0.0
    assert not np.array_equal(after["head.linear.weight"], start["head.linear.weight"])
    learner.set_state(start)
    assert learner.fit(3, seed=7) == first
    assert all(np.array_equal(after[k], v) for k, v in learner.get_state().items())
    learner.set_state(start)
    learner.fit(3, seed=8)
    assert not np.array_equal(learner.get_state()[CENTROIDS], after[CENTROIDS])


def test_the_proximal_term_holds_the_state_near_the_global_one(setup):
    learner = _learner(setup)
    start = learner.get_state()

    def drift(proximal):
        learner.set_state(start)
        figures = learner.fit(3, seed=1, proximal=proximal)
        return figures, sum(float(np.square(v - start[k]).sum()) for k, v in learner.get_state().items())

    free, far = drift(None)
    held, near = drift((start, 1e4))
    assert held["proximal"] > 0 == free["proximal"] and near < far


def test_the_centroids_learn_from_detached_codes_and_never_shape_the_head(setup):
    cfg, encoder, images = setup

    class NoObjective(nn.Module):
        def forward(self, feats, codes, neighbour_feats, neighbour_codes):
            return 0.0 * codes.sum()

    head, probe = C.build_head_and_probe(cfg, encoder.embed_dim)
    learner = LocalLearner(encoder, images, head=head, probe=probe, objective=NoObjective(), batch_size=4)
    before = learner.get_state()
    learner.fit(5, seed=0)
    after = learner.get_state()
    assert all(np.array_equal(before[k], after[k]) for k in before if k != CENTROIDS)
    assert not np.array_equal(before[CENTROIDS], after[CENTROIDS])


def test_another_head_and_objective_plug_in(setup):
    """The head and the objective are constructor arguments: e.g. a 1x1 convolution and a loss of the same
    four arguments (as STEGO's head and correspondence loss are)."""
    _, encoder, images = setup

    class Agreement(nn.Module):
        def forward(self, feats, codes, neighbour_feats, neighbour_codes):
            return -nn.functional.cosine_similarity(codes.mean((2, 3)), neighbour_codes.mean((2, 3))).mean()

    learner = LocalLearner(encoder, images, head=nn.Conv2d(encoder.embed_dim, 5, 1), probe=ClusterProbe(3, 5),
                           objective=Agreement(), batch_size=2, knn=1)
    assert learner.get_state()["head.weight"].shape == (5, 32, 1, 1)
    assert np.isfinite(learner.fit(2, seed=0)["loss"])
    assert learner.predict(images[:2]).shape == (2, 32, 32)


def test_predictions_and_scores_go_through_the_harness(setup):
    cfg, encoder, _ = setup
    learner = _learner(setup)
    learner.fit(3, seed=0)
    val = C.validation_set(cfg)
    ids = learner.predict(val[0]["image"][None])
    assert ids.dtype == torch.int64 and ids.shape == (1, 32, 32) and int(ids.max()) < 6
    figures = learner.evaluate(val, cfg.eval.resolve("synthetic"))
    from leafseg.eval.harness import evaluate

    again = evaluate(C.segmenter_from_state(cfg, encoder, learner.get_state()), val, cfg.eval.resolve("synthetic"),
                     progress=False)
    assert figures == {"miou": again.miou, "acc": again.acc} and 0 < figures["miou"] < 1
    assert np.isfinite(learner.probe_loss()) and -1 <= learner.probe_loss() <= 1


# -- the ClientApp, called directly with a hand-built Context and Message ----------------------------------
def _call(setup, kind: str, arrays=None, **config):
    from flwr.app import Context, Message, Metadata, RecordDict

    from leafseg.config import dump_config
    from leafseg.recipes.fuss.client_app import app
    from leafseg.recipes.fuss.messages import content

    cfg = setup[0]
    meta = Metadata(run_id=1, message_id="m1", src_node_id=1, dst_node_id=7, reply_to_message_id="", group_id="1",
                    created_at=time.time(), ttl=600.0, message_type=kind)
    message = Message(content(arrays=arrays, config={"settings": dump_config(cfg), **config}), metadata=meta)
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 1, "num-partitions": 2}, state=RecordDict(),
                      run_config={})
    return app(message, context)


def test_client_app_answers_query_train_and_evaluate(setup):
    from leafseg.recipes.fuss.messages import state_of

    cfg, encoder, _ = setup
    hello = _call(setup, "query")
    assert dict(hello.content["metrics"]) == {"partition-id": 1, "num-examples": 6}
    start = C.initial_state(cfg, encoder)
    reply = _call(setup, "train", start, **{"server-round": 1, "seed": 0, "proximal-mu": 0.0})
    trained, metrics = state_of(reply.content["arrays"]), dict(reply.content["metrics"])
    assert {k: v.shape for k, v in trained.items()} == {k: v.shape for k, v in start.items()}
    assert metrics["partition-id"] == 1 and metrics["num-examples"] == 6 and np.isfinite(metrics["loss"])
    again = state_of(_call(setup, "train", start, **{"server-round": 1, "seed": 0, "proximal-mu": 0.0})
                     .content["arrays"])
    assert all(np.array_equal(trained[k], again[k]) for k in trained)  # a round is a function of its inputs
    scores = dict(_call(setup, "evaluate", trained, **{"server-round": 1}).content["metrics"])
    assert set(scores) == {"partition-id", "num-examples", "probe_loss", "local_miou", "local_acc"}
    assert 0 <= scores["local_miou"] <= 1


def test_client_app_faults_are_what_the_server_rejects(setup):
    from leafseg.recipes.fuss.messages import state_of
    from leafseg.recipes.fuss.strategies import reply_problem

    cfg, encoder, _ = setup
    start = C.initial_state(cfg, encoder)
    shapes = {k: v.shape for k, v in start.items()}
    round_one = {"server-round": 1, "seed": 0, "proximal-mu": 0.0}
    for fault, problem in (("nan", "NaN or Inf"), ("inf", "NaN or Inf"), ("shape", "shape"), ("keys", "wrong keys")):
        cfg.federation.faults = {"1": fault}
        reply = _call(setup, "train", start, **round_one)
        assert problem in reply_problem(state_of(reply.content["arrays"]), 6, shapes), fault
    cfg.federation.faults = {"1@2": "raise"}
    assert _call(setup, "train", start, **round_one).content["metrics"]["partition-id"] == 1
    with pytest.raises(RuntimeError, match="fault 'raise'"):
        _call(setup, "train", start, **{**round_one, "server-round": 2})
    cfg.federation.faults = {}
