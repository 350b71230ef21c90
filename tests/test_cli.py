import json
import time

import numpy as np
import pytest
from PIL import Image

from leafseg.cli import build_parser, main
from leafseg.data import CLASSES, SyntheticWorld


@pytest.fixture()
def world_dir(tmp_path):
    return SyntheticWorld(seed=1, size=48).write(tmp_path / "world", 6, split="train")


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_lists_the_verbs(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for verb in ("demo", "pseudo-masks", "backbones", "synth"):
        assert verb in text


def test_pseudo_masks_writes_maps_and_prints_oracle(world_dir, tmp_path, capsys):
    out_dir = tmp_path / "pm"
    code, out, _ = run([
        "pseudo-masks", str(world_dir / "images" / "train"), str(out_dir), "--backbone", "pixels8",
        "--gt", str(world_dir / "masks" / "train"), "--num-classes", str(len(CLASSES)),
        "--k", "4", "--workers", "0", "--quiet",
    ], capsys)
    assert code == 0
    assert "oracle mIoU" in out
    maps = sorted(out_dir.glob("*.png"))
    assert len(maps) == 6
    regions = np.asarray(Image.open(maps[0]))
    assert regions.shape == (48, 48) and regions.max() < 4
    record = json.loads((out_dir / "run.json").read_text())
    assert record["seed"] == 0 and record["metrics"]["written"] == 6
    assert 0.0 < record["metrics"]["oracle"]["miou"] <= 1.0


def _pm_args(world_dir, out_dir, *extra):
    return ["pseudo-masks", str(world_dir / "images" / "train"), str(out_dir), "--backbone", "pixels8",
            "--gt", str(world_dir / "masks" / "train"), "--num-classes", str(len(CLASSES)), "--k", "4",
            "--workers", "0", "--quiet", *extra]


def test_unreadable_image_is_named_and_can_be_skipped(world_dir, tmp_path, capsys):
    bad = world_dir / "images" / "train" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    code, _, err = run(_pm_args(world_dir, tmp_path / "a"), capsys)
    assert code == 2 and "broken.png" in err and "--skip-bad" in err
    code, out, _ = run(_pm_args(world_dir, tmp_path / "b", "--skip-bad"), capsys)
    assert code == 0 and "skipped 1 bad samples" in out and "broken.png" in out


def test_mask_of_the_wrong_size_is_named(world_dir, tmp_path, capsys):
    mask_path = sorted((world_dir / "masks" / "train").glob("*.png"))[2]
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(mask_path)
    code, _, err = run(_pm_args(world_dir, tmp_path / "a"), capsys)
    assert code == 2 and mask_path.name in err and "size" in err


def test_mask_values_out_of_range_are_named(world_dir, tmp_path, capsys):
    mask_path = sorted((world_dir / "masks" / "train").glob("*.png"))[1]
    values = np.full((48, 48), 3, np.uint8)
    values[0, 0] = 77
    Image.fromarray(values).save(mask_path)
    code, _, err = run(_pm_args(world_dir, tmp_path / "a"), capsys)
    assert code == 2 and mask_path.name in err and "77" in err


def test_unknown_backbone_is_named(world_dir, tmp_path, capsys):
    args = _pm_args(world_dir, tmp_path / "a")
    args[args.index("pixels8")] = "dino_vitz8"
    code, _, err = run(args, capsys)
    assert code == 2 and "dino_vitz8" in err


def test_missing_checkpoint_offline_fails_fast(world_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hf_home" / "hub"))
    args = _pm_args(world_dir, tmp_path / "a")
    args[args.index("pixels8")] = "dino_vits8"
    start = time.perf_counter()
    code, _, err = run(args, capsys)
    assert time.perf_counter() - start < 1.0
    assert code == 2 and "dino" in err.lower() and "weights" in err


def test_synth_writes_the_layout(tmp_path, capsys):
    code, out, _ = run(["synth", str(tmp_path / "w"), "--n", "3", "--size", "32"], capsys)
    assert code == 0 and "wrote 3" in out
    assert len(list((tmp_path / "w" / "images" / "train").glob("*.png"))) == 3
    assert (tmp_path / "w" / "captions.jsonl").read_text().count("\n") == 3


def test_demo_smoke(tmp_path, capsys):
    code, out, _ = run(["demo", "--out", str(tmp_path / "demo"), "--scenes", "4", "--size", "48", "--quiet",
                        "--semi-epochs", "0"], capsys)
    assert code == 0
    assert out.count("oracle mIoU") == 2
    html = (tmp_path / "demo" / "report.html").read_text()
    assert "gallery.png" in html and "oracle mIoU" in html
    assert Image.open(tmp_path / "demo" / "gallery.png").size[0] > 200
    assert json.loads((tmp_path / "demo" / "run.json").read_text())["config"]["scenes"] == 4


def test_demo_can_run_again_with_other_settings(tmp_path, capsys):
    out = str(tmp_path / "demo")
    assert run(["demo", "--out", out, "--scenes", "3", "--size", "32", "--backbone", "pixels4", "--quiet",
                "--semi-epochs", "0"], capsys)[0] == 0
    assert run(["demo", "--out", out, "--scenes", "3", "--size", "40", "--seed", "2", "--backbone", "pixels4",
                "--quiet", "--semi-epochs", "0"], capsys)[0] == 0


def test_demo_runs_the_semi_supervised_comparison(tmp_path):
    from leafseg.demo import run_demo

    tiny = ["synthetic={train: 32, val: 4, size: 64, seed: 0}", "labeled_fraction=0.125", "iters_per_epoch=2",
            "arch_overrides={hidden_size: 32, num_hidden_layers: 4, num_attention_heads: 2, patch_size: 8, "
            "image_size: 48}"]
    result = run_demo(tmp_path / "demo", scenes=3, size=32, backbone="pixels4", progress=False, semi_epochs=1,
                      semi_overrides=tiny)
    rows = result["semi_supervised"]
    assert [r["method"] for r in rows] == ["labeled-only", "UniMatch V2"]
    assert all(r["iterations"] == 2 and 0 <= r["best EMA mIoU"] <= 100 for r in rows)
    assert (tmp_path / "demo" / "semi_supervised" / "unimatch_v2" / "final_ema.safetensors").exists()
    html = (tmp_path / "demo" / "report.html").read_text()
    assert "UniMatch V2 vs labelled-only" in html and "best EMA mIoU" in html
    with pytest.raises(ValueError, match="semi_epochs"):
        run_demo(tmp_path / "demo2", scenes=2, size=32, backbone="pixels4", progress=False, semi_epochs=-1)


def test_train_dispatches_to_the_recipe(tmp_path, capsys, monkeypatch):
    import sys
    import types

    calls = []
    fake = types.ModuleType("fake_recipe")
    fake.run = lambda config, overrides, resume=False: calls.append((config, overrides, resume)) or {"miou": 0.5}
    monkeypatch.setitem(sys.modules, "fake_recipe", fake)
    monkeypatch.setattr("leafseg.cli.RECIPES", {"unimatch_v2": "fake_recipe"})
    code, out, _ = run(["train", "unimatch_v2", "cfg.yaml", "lr=0.1", "seed=2", "--resume"], capsys)
    assert code == 0 and '"miou": 0.5' in out
    assert calls == [("cfg.yaml", ["lr=0.1", "seed=2"], True)]
    run(["train", "unimatch_v2", "cfg.yaml", "--resume", "ckpt.pt"], capsys)
    assert calls[-1] == ("cfg.yaml", [], "ckpt.pt")


def test_segment_needs_class_names(tmp_path, capsys):
    code, _, err = run(["segment", "x.png", "--classes", " , ", "--checkpoint", "c.pt"], capsys)
    assert code == 2 and "--classes" in err
