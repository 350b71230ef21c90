"""A FUSS client's local learner (plain PyTorch), and the ClientApp called directly with hand-built messages."""

from __future__ import annotations

import copy
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fuss_tiny import tiny_config
from leafseg.config import load_config
from leafseg.data.partition import client_file, make_partition, write_partition
from leafseg.errors import ConfigError
from leafseg.heads.probes import ClusterProbe
from leafseg.heads.stego import StegoHead
from leafseg.losses.stego import PRESETS, CorrespondenceLoss
from leafseg.recipes.fuss import components as C
from leafseg.recipes.fuss.config import FussConfig, check_config
from leafseg.recipes.fuss.task import CENTROIDS, LocalLearner
from leafseg.recipes.stego_config import LossSettings
from leafseg.recipes.stego_model import StegoSegmenter

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "fuss"

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


def test_the_default_learner_is_stegos_head_probe_and_correspondence_loss_with_the_configured_values(setup):
    cfg, encoder, images = setup
    assert FussConfig().local.loss.preset == "cocostuff27_vits8"  # the default backbone's (DINO ViT-S/8) preset
    learner = C.make_learner(cfg, encoder, images)
    assert isinstance(learner.head, StegoHead) and isinstance(learner.probe, ClusterProbe)
    assert isinstance(learner.objective, CorrespondenceLoss) and learner.target is learner.head.dropout
    assert learner.head.dropout.p == cfg.model.dropout and learner.probe.centroids.shape == (6, 8)
    default = PRESETS["cocostuff27_vits8"]
    assert learner.objective.weights == {"self": default.self_weight, "knn": default.knn_weight,
                                         "random": default.random_weight}
    assert learner.objective.shifts == {"self": default.self_shift, "knn": default.knn_shift,
                                        "random": default.random_shift}
    assert learner.objective.feature_samples == 4 and learner.objective.negatives == 5

    other = replace(cfg, local=replace(cfg.local, loss=LossSettings(preset="cityscapes27", knn_shift=0.3,
                                                                    random_weight=0.5, negatives=2)))
    loss = C.make_learner(other, encoder, images).objective
    city = PRESETS["cityscapes27"]
    assert loss.weights == {"self": city.self_weight, "knn": city.knn_weight, "random": 0.5}
    assert loss.shifts == {"self": city.self_shift, "knn": 0.3, "random": city.random_shift}
    assert loss.negatives == 2 and loss.feature_samples == 11


def test_a_step_is_the_correspondence_loss_by_hand_and_the_frozen_encoder_gets_no_gradient(setup):
    """The learner's figures of one step equal CorrespondenceLoss (the configured preset, the targets through
    the head's Dropout2d) and the cluster probe's loss evaluated by hand on the same batch and draws. The
    encoder is made trainable here to show that fitting sends it nothing."""
    cfg, encoder, images = setup
    encoder = copy.deepcopy(encoder).requires_grad_(True)
    learner = C.make_learner(cfg, encoder, images)
    learner.set_state(C.initial_state(cfg, encoder))
    seed = 5
    feats, nfeats = learner._batch(torch.Generator().manual_seed(seed))
    head, by_hand = learner.head.train(), CorrespondenceLoss.from_preset(cfg.local.loss.preset, feature_samples=4)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        codes, ncodes = head(feats), head(nfeats)
        objective = by_hand(head.dropout(feats), codes, head.dropout(nfeats), ncodes)
        probe = ClusterProbe(6, 8)
        probe.load_state_dict(learner.probe.state_dict())
        centroid_loss = probe.loss(codes)
    assert float(objective) != 0.0 and not feats.requires_grad

    figures = learner.fit(1, seed=seed)
    assert figures["objective"] == pytest.approx(float(objective), rel=1e-6, abs=1e-8)
    assert figures["probe"] == pytest.approx(float(centroid_loss), rel=1e-6, abs=1e-8)
    assert figures["loss"] == pytest.approx(float(objective + centroid_loss), rel=1e-6, abs=1e-8)
    assert all(p.grad is not None for p in learner.head.parameters()) and learner.probe.centroids.grad is not None
    assert all(p.grad is None for p in encoder.parameters())


def test_the_loss_settings_are_checked():
    with pytest.raises(ConfigError, match="local.loss.feature_samples"):
        load_config(FussConfig, None, ["local.points=8"])
    cfg = load_config(FussConfig, None, ["local.batch_size=1"])
    with pytest.raises(ConfigError, match="random pairs"):
        check_config(cfg)
    check_config(load_config(FussConfig, None, ["local.batch_size=1", "local.loss.negatives=0"]))
    with pytest.raises(ConfigError, match="unknown"):
        load_config(FussConfig, None, ["local.loss.preset=imagenet"])


@pytest.mark.parametrize(("name", "preset"), [("synthetic", "cocostuff27_vits8"), ("cityscapes_vits8", "cityscapes27"),
                                              ("cityscapes_vits8_18clients", "cityscapes27"),
                                              ("cocostuff27_vits8", "cocostuff27_vits8")])
def test_shipped_configs_name_stegos_preset_for_their_data(name, preset):
    loss = load_config(FussConfig, CONFIGS / f"{name}.yaml").local.loss
    assert loss.preset == preset
    if name == "synthetic":  # STEGO's synthetic shifts for this random ViT, at 8 x 8 points (8 x 8 features)
        assert loss.values()["self_shift"] == 0.38 and loss.feature_samples == 8
    else:
        assert loss.values() == PRESETS[preset].values() and loss.feature_samples == 11


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

    method = C.segmenter_from_state(cfg, encoder, learner.get_state())
    assert isinstance(method, StegoSegmenter)
    with pytest.raises(ValueError, match="not a FUSS state"):
        C.segmenter_from_state(cfg, encoder, {k: v for k, v in learner.get_state().items() if k != CENTROIDS})
    again = evaluate(method, val, cfg.eval.resolve("synthetic"), progress=False)
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
