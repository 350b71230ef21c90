"""DINO pretraining: the loss against a hand computation, the EMA teacher, a short run that writes a weights
folder the normal loading path reads, masks never read. Killed and resumed bit-identically, `leafseg eval
model` and `leafseg segment` on its weights, two gloo processes: tests/test_recipes_engine.py, as every
recipe."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from dino_tiny import TINY, dino_args
from leafseg.config import load_config
from leafseg.losses.dino import DinoLoss, self_distillation
from leafseg.recipes.dino import DinoConfig, run
from leafseg.recipes.dino_model import build_model, cosine_schedule, ema_update
from leafseg.training import read_exported
from sseg_tiny import write_world

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def full(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    return out, run(None, dino_args(world, out, "iterations=8"))


def test_loss_is_the_cross_entropy_of_centred_sharpened_teacher_and_student():
    student = torch.tensor([[[1.0, 0.0, -1.0]], [[0.5, 0.5, 0.0]], [[0.0, 2.0, 1.0]]])   # (V=3, B=1, K=3)
    teacher = torch.tensor([[[2.0, 1.0, 0.0]], [[0.0, 0.0, 3.0]]])                      # (G=2, B=1, K=3)
    center = torch.tensor([0.5, -0.5, 1.0])
    ts, tt = 0.1, 0.04

    def softmax(row, temp):
        e = [math.exp(v / temp) for v in row]
        return [v / sum(e) for v in e]

    def ce(t_row, s_row):
        p = softmax([t - c for t, c in zip(t_row, center.tolist(), strict=True)], tt)
        q = softmax(s_row, ts)
        return -sum(a * math.log(b) for a, b in zip(p, q, strict=True))

    pairs = [(t, s) for t in range(2) for s in range(3) if s != t]
    expected = sum(ce(teacher[t, 0].tolist(), student[s, 0].tolist()) for t, s in pairs) / len(pairs)
    got = self_distillation(student, teacher, center, student_temp=ts, teacher_temp=tt)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    loss = DinoLoss(3, student_temp=ts, center_momentum=0.9)
    loss.center.copy_(center[None])
    assert loss(student, teacher, tt).item() == pytest.approx(expected, rel=1e-5)
    loss.update_center(teacher)  # the mean of the teacher's raw outputs: (1, 0.5, 1.5)
    assert torch.allclose(loss.center, 0.9 * center[None] + 0.1 * torch.tensor([[1.0, 0.5, 1.5]]))


def test_student_gets_the_gradient_and_the_teacher_none():
    student = torch.randn(4, 2, 5, requires_grad=True)
    teacher = torch.randn(2, 2, 5, requires_grad=True)
    self_distillation(student, teacher, torch.zeros(5), student_temp=0.1, teacher_temp=0.04).backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None


def test_teacher_is_an_ema_of_the_student():
    cfg = load_config(DinoConfig, None, TINY + ["data_root=unused"])
    model = build_model(cfg, "cpu")
    s, t = dict(model.student.named_parameters()), dict(model.teacher.named_parameters())
    assert s.keys() == t.keys() and all(torch.equal(s[k], t[k]) for k in s)  # the teacher starts as the student
    assert not any(p.requires_grad for p in t.values())
    before = {k: v.detach().clone() for k, v in t.items()}
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(torch.randn_like(p))
    m = cosine_schedule(0.9, 1.0, 3, 10)
    assert m == pytest.approx(1.0 - 0.1 * (1 + math.cos(math.pi * 0.3)) / 2)
    ema_update(model.teacher, model.student, m)
    name = "encoder.model.layers.0.attention.q_proj.weight"
    assert torch.allclose(t[name], m * before[name] + (1 - m) * s[name].detach(), atol=1e-7)
    assert all(torch.allclose(t[k], m * before[k] + (1 - m) * s[k].detach(), atol=1e-6) for k in t)


def test_short_run_exports_an_encoder_folder_the_loading_path_reads(full, world):
    from leafseg.backbones import build_backbone
    from leafseg.recipes.stego_config import BackboneSettings
    from leafseg.recipes.stego_model import build_encoder

    out, result = full
    assert result["iterations"] == 8 and result["start_miou"] is not None and 0 <= result["miou"] <= 1
    folder = out / "encoder"
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    exported = read_exported(out / "final.safetensors")
    assert exported["recipe"] == "dino"
    for encoder in (build_backbone("dino_vits8", weights=str(folder)),   # what model.weights=FOLDER does
                    build_encoder(BackboneSettings(name="dino_vits8", weights=str(folder)), "cpu")):
        state = encoder.state_dict()
        assert all(torch.equal(state[k], exported["model"][f"encoder.{k}"]) for k in state)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        maps = encoder.features(images).maps[0]
    assert maps.shape == (2, 32, 4, 4) and torch.isfinite(maps).all()
    train_log = result["train_log"]
    assert [r["iteration"] for r in train_log] == list(range(1, 9)) and all(math.isfinite(r["loss"]) for r in train_log)


def test_training_never_reads_a_mask(world, tmp_path):
    from leafseg.data.datasets import build_dataset
    from leafseg.data.images import ImageViews

    copy = tmp_path / "world"
    shutil.copytree(world, copy)
    for mask in (copy / "masks" / "train").iterdir():
        mask.write_bytes(b"not a png")          # unreadable: any read of a training mask would fail
    views = ImageViews.of(build_dataset("synthetic", copy, split="train"), 32)
    assert set(views[0]) == {"image", "index"} and not any("masks" in str(p) for p in views.paths)
    result = run(None, dino_args(copy, tmp_path / "run", "iterations=3"))
    assert result["iterations"] == 3        # and the probes read only the validation masks, to score
