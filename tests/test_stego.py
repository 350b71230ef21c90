"""The stego recipe: labels never reach what shapes the model, `leafseg train stego` end to end on a tiny
world, its configs and checks. (Kill-and-resume, `leafseg eval model` agreement and two-process training are
in test_recipes_engine.py.)"""

from __future__ import annotations

import json

import pytest
import torch

from leafseg.config import load_config, save_config
from leafseg.errors import ConfigError
from leafseg.recipes.stego import StegoConfig, build_model, check_config, run
from leafseg.training import read_exported
from sseg_tiny import write_world
from stego_tiny import stego_args

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_world(tmp_path_factory.mktemp("world"))


def tiny_model(linear: bool = True):
    cfg = load_config(StegoConfig, None, [f"probes.linear={str(linear).lower()}", "loss.feature_samples=3"])
    torch.manual_seed(0)
    return build_model(cfg, 16, num_clusters=4, num_classes=5)


def test_labels_reach_only_the_linear_probe():
    model = tiny_model()
    feats, knn_feats = torch.randn(4, 16, 6, 6), torch.randn(4, 16, 6, 6)
    masks = torch.randint(0, 5, (4, 24, 24))
    shaping = list(model.head.parameters()) + [model.cluster.centroids]
    codes = model.head(feats)
    linear = model.linear.loss(codes, masks)
    assert all(g is None for g in torch.autograd.grad(linear, shaping, allow_unused=True))

    def grads(labels):
        torch.manual_seed(1)  # the same dropout, points and partners for both label maps
        model.zero_grad()
        loss, parts = model(feats, knn_feats, labels)
        loss.backward()
        assert parts["loss_linear"] > 0
        return [p.grad.clone() for p in shaping], model.linear.conv.weight.grad.clone()

    (head_a, probe_a), (head_b, probe_b) = grads(masks), grads((masks + 1) % 5)
    assert all(torch.equal(a, b) for a, b in zip(head_a, head_b, strict=True))  # other labels, same head grads
    assert not torch.equal(probe_a, probe_b)


def test_the_linear_probe_changes_nothing_else_in_a_run(world, tmp_path):
    """Trained with the linear probe (fed the masks) and without it: the same head and centroids, bit for bit."""
    states = []
    for linear in ("true", "false"):
        result = run(None, stego_args(world, tmp_path / linear, "iterations=6", f"probes.linear={linear}"))
        states.append(read_exported(result["weights"])["model"])
    assert "linear.conv.weight" in states[0] and "linear.conv.weight" not in states[1]
    assert {k for k in states[0] if not k.startswith("linear.")} == set(states[1])
    assert all(torch.equal(states[0][k], v) for k, v in states[1].items())


def test_leafseg_train_stego_end_to_end(world, tmp_path, capsys):
    from leafseg.cli import main

    config = tmp_path / "tiny.yaml"  # the tiny settings as a config file
    save_config(load_config(StegoConfig, None, stego_args(world, tmp_path / "elsewhere", "iterations=12",
                                                          "eval.every=6")), config)
    out = tmp_path / "run"
    assert main(["train", "stego", str(config), f"out_dir={out}"]) == 0
    figures = json.loads(capsys.readouterr().out)  # the run's figures, as printed
    results = json.loads((out / "results.json").read_text())
    assert results["iterations"] == figures["iterations"] == 12 and results["miou"] == figures["miou"]
    assert 0.0 < results["miou"] <= 1.0 and results["linear_miou"] is not None
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [6, 12] and all(len(r["assignment"]) == 4 for r in rows)
    train_log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert {"loss_corr", "loss_self", "loss_knn", "loss_random", "loss_cluster", "loss_linear"} <= set(train_log[-1])
    exported = read_exported(out / "final.safetensors")
    assert exported["recipe"] == "stego" and exported["model"]["cluster.centroids"].shape == (4, 8)
    assert len(exported["extra"]["classes"]) == 4  # a name per cluster: the class it was matched to
    assert list((world / "knn").glob("knn_*.safetensors"))  # the table is cached beside the data
    assert (out / "protocol.yaml").is_file() and (out / "config.yaml").is_file() and (out / "run.json").is_file()
    assert main(["train", "stego", str(config), f"out_dir={out}"]) != 0  # a second run in the same folder
    assert "holds an earlier run" in capsys.readouterr().err


def test_configs_and_checks():
    cfg = load_config(StegoConfig, "configs/stego/synthetic.yaml")
    check_config(cfg)
    with pytest.raises(ConfigError, match="did you mean cocostuff27"):
        load_config(StegoConfig, None, ["loss.preset=cocostuf27"])
    with pytest.raises(ConfigError, match="set loss.self_weight"):
        load_config(StegoConfig, None, ["loss.preset=null", "loss.knn_weight=1"])
    values = load_config(StegoConfig, None, ["loss.preset=potsdam3", "loss.knn_shift=0.3"]).loss.values()
    assert values["knn_shift"] == 0.3 and values["random_shift"] == 0.46
    with pytest.raises(ConfigError, match="batch_size must be at least 2"):
        check_config(load_config(StegoConfig, None, ["batch_size=1"]))
    with pytest.raises(ConfigError, match="backbone.arch_overrides"):
        check_config(load_config(StegoConfig, None, ["backbone.arch_overrides={hiden_size: 8}"]))
