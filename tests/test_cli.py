import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import leafseg
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
        "pseudo-masks", str(world_dir / "images" / "train"), "--out", str(out_dir), "--backbone", "pixels8",
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
    return ["pseudo-masks", str(world_dir / "images" / "train"), "--out", str(out_dir), "--backbone", "pixels8",
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
    assert time.perf_counter() - start < 10.0  # no download attempt (that would wait on the network)
    assert code == 2 and "dino" in err.lower()
    assert "--weights <folder with config.json" in err and "weights=<" not in err  # the flag the person types
    from leafseg.backbones import build_backbone
    from leafseg.errors import UserError

    with pytest.raises(UserError, match="weights=<folder"):  # in Python (and configs) it is the key
        build_backbone("dino_vits8")


def test_eval_help_speaks_to_the_person_and_a_missing_world_names_leafseg_synth(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = capsys.readouterr().out
    assert ":func:" not in out and "dispatch" not in out and "Score a method on a dataset" in out
    code, _, err = run(["eval", "kmeans", "synthetic", str(tmp_path / "nowhere"), "--backbone", "pixels8"], capsys)
    assert code == 2 and f"leafseg synth --out {tmp_path / 'nowhere'}" in err
    assert err.count("not a synthetic-world folder") == 1


def test_synth_writes_the_layout(tmp_path, capsys):
    code, out, _ = run(["synth", "--out", str(tmp_path / "w"), "--scenes", "3", "--size", "32"], capsys)
    assert code == 0 and "wrote 3" in out
    assert len(list((tmp_path / "w" / "images" / "train").glob("*.png"))) == 3
    assert (tmp_path / "w" / "captions.jsonl").read_text().count("\n") == 3


def test_demo_smoke(tmp_path, capsys):
    code, out, _ = run(["demo", "--out", str(tmp_path / "demo"), "--scenes", "4", "--size", "48", "--quiet",
                        "--semi-epochs", "0", "--fed-rounds", "0"], capsys)
    assert code == 0
    assert out.count(": oracle mIoU ") == 2
    html = (tmp_path / "demo" / "report.html").read_text()
    assert "gallery.png" in html and "oracle mIoU" in html
    assert Image.open(tmp_path / "demo" / "gallery.png").size[0] > 200
    assert json.loads((tmp_path / "demo" / "run.json").read_text())["config"]["scenes"] == 4


def test_demo_can_run_again_with_other_settings(tmp_path, capsys):
    out = str(tmp_path / "demo")
    assert run(["demo", "--out", out, "--scenes", "3", "--size", "32", "--backbone", "pixels4", "--quiet",
                "--semi-epochs", "0", "--fed-rounds", "0"], capsys)[0] == 0
    assert run(["demo", "--out", out, "--scenes", "3", "--size", "40", "--seed", "2", "--backbone", "pixels4",
                "--quiet", "--semi-epochs", "0", "--fed-rounds", "0"], capsys)[0] == 0


def test_demo_runs_the_semi_supervised_comparison(tmp_path, capsys):
    from leafseg.demo import run_demo

    tiny = ["synthetic={train: 32, val: 4, size: 64, seed: 0}", "labeled_fraction=0.125", "iters_per_epoch=2",
            "arch_overrides={hidden_size: 32, num_hidden_layers: 4, num_attention_heads: 2, patch_size: 8, "
            "image_size: 48}"]
    threads = torch.get_num_threads()
    result = run_demo(tmp_path / "demo", scenes=3, size=32, backbone="pixels4", progress=False, semi_epochs=1,
                      semi_overrides=tiny, jobs=1, fed_rounds=0)
    assert torch.get_num_threads() == threads  # pinned to one thread while it runs, then given back
    rows = result["semi_supervised"]
    assert [r["method"] for r in rows] == ["labelled-only", "UniMatch V2"]
    assert all(r["iterations"] == 2 and 0 <= r["best EMA mIoU"] <= 100 for r in rows)
    demo = tmp_path / "demo"
    assert (demo / "semi_supervised" / "unimatch_v2" / "final_ema.safetensors").exists()
    html = (demo / "report.html").read_text()
    assert "UniMatch V2 vs labelled-only" in html and "best EMA mIoU" in html
    for picture in ("miou.png", "loss.png", "per_class_iou.png", "predictions_1.png"):  # leafseg report's pictures
        assert f"semi_supervised/report/{picture}" in html and (demo / "semi_supervised" / "report" / picture).exists()
    assert "pseudo_mask_per_class.png" in html and (demo / "pseudo_mask_per_class.png").exists()
    out = capsys.readouterr().out
    assert "[1/4] Synthetic world" in out and "[4/4] Report" in out
    assert out.index("oracle mIoU") < out.index("[3/4] Semi-supervised")  # figures printed as they come
    assert "unimatch_v2 [unimatch_v2] epoch 0" in out  # a line per evaluation of each run

    # two processes, one thread each: the same figures
    again = run_demo(tmp_path / "demo2", scenes=3, size=32, backbone="pixels4", progress=False, semi_epochs=1,
                     semi_overrides=tiny, jobs=2, fed_rounds=0)["semi_supervised"]
    assert [r["best EMA mIoU"] for r in again] == [r["best EMA mIoU"] for r in rows]
    with pytest.raises(ValueError, match="semi-epochs"):
        run_demo(tmp_path / "demo3", scenes=2, size=32, backbone="pixels4", progress=False, semi_epochs=-1)


@pytest.fixture()
def fake_recipe(monkeypatch):
    """A recipe module that records how `leafseg train` called it."""
    import types

    calls = []
    fake = types.ModuleType("fake_recipe")

    def fake_run(config, overrides, resume=False, overwrite=False):
        calls.append((config, overrides, resume, overwrite))
        return {"miou": 0.5}

    fake.run = fake_run
    monkeypatch.setitem(sys.modules, "fake_recipe", fake)
    monkeypatch.setitem(__import__("leafseg.registry").registry.RECIPES, "unimatch_v2", ("fake_recipe", "a fake"))
    return calls


def test_train_dispatches_to_the_recipe(fake_recipe, tmp_path, capsys):
    code, out, _ = run(["train", "unimatch_v2", "cfg.yaml", "lr=0.1", "--resume", "seed=2"], capsys)
    assert code == 0 and '"miou": 0.5' in out
    assert fake_recipe == [("cfg.yaml", ["lr=0.1", "seed=2"], True, False)]
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(b"")
    run(["train", "unimatch_v2", "cfg.yaml", "--resume-from", str(ckpt), "lr=0.2"], capsys)
    assert fake_recipe[-1] == ("cfg.yaml", ["lr=0.2"], str(ckpt), False)
    run(["train", "unimatch_v2", "cfg.yaml", "--overwrite"], capsys)
    assert fake_recipe[-1] == ("cfg.yaml", [], False, True)
    run(["train", "unimatch_v2", "cfg.yaml"], capsys)
    assert fake_recipe[-1] == ("cfg.yaml", [], False, False)


def test_train_refuses_contradictions_in_one_line(fake_recipe, tmp_path, capsys):
    code, _, err = run(["train", "unimatch_v2", "cfg.yaml", "--resume", "--overwrite"], capsys)
    assert code == 2 and err.startswith("leafseg: error: --overwrite") and err.count("\n") == 1
    code, _, err = run(["train", "unimatch_v2", "cfg.yaml", "--resume-from", str(tmp_path / "none.pt")], capsys)
    assert code == 2 and "--resume-from" in err and "none.pt" in err
    assert fake_recipe == []


def test_segment_needs_class_names(tmp_path, capsys):
    code, _, err = run(["segment", "x.png", "--classes", " , ", "--weights", "c.pt"], capsys)
    assert code == 2 and "--classes" in err


def test_eval_cluster_method_runs_with_the_default_preset(tmp_path, capsys):
    root = SyntheticWorld(seed=0, size=32).write(tmp_path / "world", 6, "val")
    code, out, err = run(["eval", "kmeans", "synthetic", str(root), "--backbone", "pixels8",
                          "--out", str(tmp_path / "eval"), "--quiet"], capsys)
    assert code == 0, err
    assert "labelling=hungarian" in out and "mIoU" in out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["protocol"]["name"] == "default" and metrics["protocol"]["labelling"] == "hungarian"
    assert "labelling=hungarian" in metrics["run"]["config"]["note"] and 0 <= metrics["miou"] <= 1


def test_eval_keeps_a_labelling_the_protocol_sets(tmp_path, capsys):
    root = SyntheticWorld(seed=0, size=32).write(tmp_path / "world", 3, "val")
    code, out, err = run(["eval", "kmeans", "synthetic", str(root), "--backbone", "pixels8", "labelling=oracle",
                          "workers=0", "--out", str(tmp_path / "eval"), "--quiet"], capsys)
    assert code == 0, err
    assert "note:" not in out
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["protocol"]["labelling"] == "oracle"


# -- errors: one line for a person's mistake, a traceback for leafseg's -----------------------------------
def test_user_error_is_one_line_with_status_2(world_dir, capsys):
    code, _, err = run(["eval", "kmeans", "synthetic", str(world_dir), "--backbone", "pixels8", "lerning_rate=1"],
                       capsys)
    assert code == 2
    assert err.startswith("leafseg: error: unknown override key 'lerning_rate'") and err.count("\n") == 1


def test_bad_device_is_a_user_error(world_dir, capsys):
    code, _, err = run(["pseudo-masks", str(world_dir / "images" / "train"), "--backbone", "pixels8",
                        "--device", "nonsense"], capsys)
    assert code == 2 and err.startswith("leafseg: error: --device nonsense") and err.count("\n") == 1


def test_internal_error_keeps_its_traceback(monkeypatch, capsys):
    def broken(args):
        raise KeyError("a bug in leafseg")

    monkeypatch.setattr("leafseg.cli._cmd_backbones", broken)
    with pytest.raises(KeyError, match="a bug in leafseg"):
        main(["backbones"])
    assert "leafseg: error" not in capsys.readouterr().err


def _python(*args: str) -> subprocess.CompletedProcess:
    src = str(Path(leafseg.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=120)


def test_internal_error_prints_a_traceback_in_a_real_process():
    code = ("import leafseg.cli as cli\n"
            "def broken(args):\n    raise KeyError('a bug in leafseg')\n"
            "cli._cmd_backbones = broken\n"
            "raise SystemExit(cli.main(['backbones']))\n")
    done = _python("-c", code)
    assert done.returncode != 0 and done.returncode != 2
    assert "Traceback (most recent call last)" in done.stderr and "KeyError: 'a bug in leafseg'" in done.stderr


# -- the parser: fast, uniform, and `python -m leafseg` ----------------------------------------------------
def test_python_m_leafseg_help():
    done = _python("-m", "leafseg", "--help")
    assert done.returncode == 0, done.stderr
    for verb in ("demo", "pseudo-masks", "backbones", "synth", "data", "eval", "train", "segment"):
        assert verb in done.stdout
    done = _python("-m", "leafseg", "train", "--help")
    assert done.returncode == 0 and "--resume-from" in done.stdout


HEAVY = ("torch", "numpy", "transformers", "scipy", "PIL", "matplotlib", "leafseg.eval.harness",
         "leafseg.data.check", "gradio", "leafseg.serve.page")


def test_building_the_parser_and_every_help_imports_nothing_heavy():
    code = ("import argparse, json, sys\n"
            "from leafseg.cli import build_parser\n"
            "def walk(p):\n"
            "    p.format_help()\n"
            "    for a in p._actions:\n"
            "        if isinstance(a, argparse._SubParsersAction):\n"
            "            for sub in a.choices.values():\n"
            "                walk(sub)\n"
            "walk(build_parser())\n"
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n")
    done = _python("-c", code)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def _parsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_every_option_states_its_default_or_that_it_is_required():
    for parser in _parsers(build_parser()):
        for action in parser._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                stated = "(required)" if action.required else "default"
                assert action.help and stated in action.help, (parser.prog, action.option_strings)


def test_shared_options_mean_the_same_in_every_verb():
    shared = ("--device", "--quiet", "--skip-bad", "--workers")
    helps, verbs = {flag: set() for flag in shared}, {flag: 0 for flag in shared}
    for parser in _parsers(build_parser()):
        for action in parser._actions:
            for flag in set(action.option_strings) & set(shared):
                helps[flag].add(action.help)
                verbs[flag] += 1
    assert all(verbs[flag] >= 2 and len(helps[flag]) == 1 for flag in shared), (verbs, helps)


def test_registry_names_of_the_parser_match_the_registries():
    from leafseg.cli_options import (
        DATASETS,
        METHODS,
        PRESETS,
        SERVE_METHODS,
        SYNTHETIC_CLASSES,
        SYNTHETIC_SPLITS,
        TEMPLATES,
    )
    from leafseg.data.datasets import list_datasets
    from leafseg.data.synthetic import SPLIT_OFFSETS, SyntheticWorld
    from leafseg.eval.methods import list_methods
    from leafseg.eval.prompts import TEMPLATE_SETS
    from leafseg.eval.protocol import list_presets
    from leafseg.serve.models import TRAINING_FREE

    assert DATASETS == tuple(list_datasets())
    assert METHODS == tuple(list_methods())
    assert PRESETS == tuple(list_presets())
    assert SYNTHETIC_SPLITS == tuple(SPLIT_OFFSETS)
    assert SYNTHETIC_CLASSES == SyntheticWorld.classes
    assert SERVE_METHODS == TRAINING_FREE
    assert TEMPLATES == tuple(TEMPLATE_SETS)


def test_every_verb_help_ends_with_an_example_that_parses():
    parser = build_parser()
    verbs = [p for p in _parsers(parser) if p is not parser]
    assert {p.prog.removeprefix("leafseg ") for p in verbs} >= {
        "demo", "pseudo-masks", "backbones", "synth", "data", "data check", "eval", "train", "config", "segment",
        "serve"}
    for verb in verbs:
        text = verb.format_help()
        assert "example:" in text, verb.prog
        example = text.split("example:", 1)[1].strip().splitlines()[0]
        assert (example + " ").startswith(verb.prog + " "), (verb.prog, example)
        args = build_parser().parse_args(shlex.split(example)[1:])
        assert callable(args.func), example
