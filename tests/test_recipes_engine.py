"""Every recipe on the one run engine: killed at a random iteration and resumed, it ends bit-identical to
an uninterrupted run; `leafseg eval model` on its exported weights gives the run's own final mIoU exactly;
two gloo processes keep the replicas identical and count every validation pixel once."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clip_tiny import clip_args
from dino_tiny import dino_args
from grouping_clip_tiny import gclip_args, write_tiny_clip
from leafseg.errors import RunFolderError
from leafseg.registry import recipe_module
from leafseg.training import load_checkpoint, read_exported
from sseg_tiny import plus_args, sseg_args, write_world
from stego_tiny import stego_args
from unimatch_tiny import write_tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")
RECIPES = ("unimatch_v2", "sseg", "sseg_plus", "grouping_clip", "clip", "stego", "dino")
# resumed runs also of UniMatch V2's other training methods (recipe:method)
RESUMED = (*RECIPES, "unimatch_v2:fixmatch", "unimatch_v2:supervised")
WEIGHTS = {"unimatch_v2": "final_ema.safetensors", "sseg": "final.pt", "sseg_plus": "final.pt",
           "grouping_clip": "final.safetensors", "clip": "clip/model.safetensors", "stego": "final.safetensors",
           "dino": "final.safetensors"}
MIOU = {"unimatch_v2": "final_ema_miou", "sseg": "miou", "sseg_plus": "miou", "grouping_clip": "miou", "clip": "miou",
        "stego": "miou", "dino": "miou"}
OPEN_VOCABULARY = ("sseg", "grouping_clip", "clip")  # `leafseg segment` needs class names


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def teacher(world, tmp_path_factory):
    """A trained S-Seg for the S-Seg+ runs."""
    out = tmp_path_factory.mktemp("teacher") / "sseg"
    return recipe_module("sseg").run(None, sseg_args(world, out, "iterations=6"))["checkpoint"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A tiny random CLIP for the grouping_clip runs."""
    return write_tiny_clip(tmp_path_factory.mktemp("clip"))


def settings(case: str, world: Path, teacher_checkpoint, folder: Path,
             clip: Path) -> tuple[str | None, list[str], int | None]:
    """(config file, overrides, total iterations) of the recipe's tiny run in ``folder``; a case
    ``recipe:method`` selects one of the recipe's training methods."""
    recipe, _, method = case.partition(":")
    if method:  # as many iterations as its data gives (labelled-only walks the labelled scenes only)
        config, overrides, _ = settings(recipe, world, teacher_checkpoint, folder, clip)
        return config, [*overrides, f"method={method}"], None
    if recipe == "grouping_clip":
        return None, gclip_args(world, clip, folder / "run", "iterations=8", "save_every=3"), 8
    if recipe == "unimatch_v2":
        config = write_tiny_config(folder / "tiny.yaml", folder / "world")
        return str(config), ["save_every=3"], 16
    if recipe == "sseg":
        return None, sseg_args(world, folder / "run", "iterations=8", "save_every=3"), 8
    if recipe == "clip":
        return None, clip_args(world, folder / "run", "iterations=8", "save_every=3"), 8
    if recipe == "stego":
        return None, stego_args(world, folder / "run", "iterations=8"), 8
    if recipe == "dino":
        return None, dino_args(world, folder / "run", "iterations=8"), 8
    return None, plus_args(world, teacher_checkpoint, folder / "run", "iterations=8", "save_every=3",
                           "student_init=sseg", "eval_teacher=false"), 8


@pytest.fixture(scope="module")
def full_runs(world, teacher, clip, tmp_path_factory):
    """One uninterrupted run of every recipe."""
    runs = {}
    for case in RESUMED:
        folder = tmp_path_factory.mktemp(f"full_{case.replace(':', '_')}")
        config, overrides, _ = settings(case, world, teacher, folder, clip)
        runs[case] = (folder, recipe_module(case.partition(":")[0]).run(
            config, overrides + [f"out_dir={folder / 'run'}"]))
    return runs


def _same_weights(a: Path, b: Path) -> bool:
    ta, tb = read_exported(a)["model"], read_exported(b)["model"]
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


@pytest.mark.parametrize("case", RESUMED)
def test_killed_at_a_random_iteration_resumes_bit_identically(case, world, teacher, clip, full_runs, tmp_path):
    folder, full = full_runs[case]
    config, overrides, total = settings(case, world, teacher, tmp_path, clip)
    recipe = case.partition(":")[0]
    total = total or full["iterations"]
    out = tmp_path / "cut"
    stop = random.Random(case).randint(1, total - 1)  # any iteration, between checkpoints or on one
    killed = recipe_module(recipe).run(config, overrides + [f"out_dir={out}", f"stop_after={stop}"])
    assert killed["stopped_at"] == stop
    if stop >= 3:  # saved every 3 iterations; before the first save the resumed run starts over
        last = load_checkpoint(out / "checkpoints" / "last.pt")
        assert last["recipe"] == recipe and last["state"]["iteration"] == stop // 3 * 3
    else:  # killed before the first save: nothing to resume, the message says how to start again
        with pytest.raises(RunFolderError, match="before its first save.*--overwrite"):
            recipe_module(recipe).run(config, overrides + [f"out_dir={out}"], resume=True)
        killed = recipe_module(recipe).run(config, overrides + [f"out_dir={out}", "stop_after=3"], overwrite=True)
        assert killed["stopped_at"] == 3
    (out / "checkpoints" / ".last.pt.orphan.tmp").write_bytes(b"partial")  # an interrupted write
    resumed = recipe_module(recipe).run(config, overrides + [f"out_dir={out}"], resume=True)
    assert not list(out.rglob("*.tmp")) and not (out / "run.lock").exists()
    assert resumed["iterations"] == full["iterations"] == total
    assert _same_weights(folder / "run" / WEIGHTS[recipe], out / WEIGHTS[recipe])
    assert resumed[MIOU[recipe]] == full[MIOU[recipe]]
    drop = {"seconds_per_iter", "images_per_second"}
    strip = [[{k: v for k, v in r.items() if k not in drop} for r in run["train_log"]] for run in (full, resumed)]
    assert strip[0] == strip[1]  # the logs read as if the run had never stopped
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert {"format", "recipe", "leafseg", "config", "state", "model", "optimizer", "rng", "world_size"} <= set(ckpt)


@pytest.mark.parametrize("recipe", RECIPES)
def test_eval_model_gives_the_runs_own_final_miou(recipe, world, full_runs, tmp_path, capsys):
    from leafseg.cli import main

    folder, full = full_runs[recipe]
    run_dir = folder / "run"
    root = folder / "world" if recipe == "unimatch_v2" else world
    code = main(["eval", "model", "synthetic", str(root), "--weights", str(run_dir / WEIGHTS[recipe]),
                 "--preset", str(run_dir / "protocol.yaml"), "--out", str(tmp_path / "eval"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["miou"] == full[MIOU[recipe]]  # exactly: the same weights through the same harness code
    classes = ["--classes", "sky,grass,ball"] if recipe in OPEN_VOCABULARY else []
    code = main(["segment", str(root / "images" / "val" / "1000000.png"), "--weights", str(run_dir / WEIGHTS[recipe]),
                 "--out", str(tmp_path / "seg"), *classes])
    assert code == 0, capsys.readouterr().err
    table = json.loads((tmp_path / "seg" / "1000000_classes.json").read_text())
    assert sum(row["share"] for row in table) == pytest.approx(1.0)
    own = (["sky", "grass", "ball"] if recipe in OPEN_VOCABULARY
           else read_exported(run_dir / WEIGHTS[recipe])["extra"]["classes"])
    assert [row["name"] for row in table] == own


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


WORKER = """
import json, sys, torch
torch.set_num_threads(1)
from leafseg.registry import recipe_module
result = recipe_module(sys.argv[1]).run(sys.argv[2] if sys.argv[2] != "-" else None, sys.argv[4:])
json.dump({k: v for k, v in result.items() if k != "train_log"}, open(sys.argv[3], "w"))
"""


@pytest.mark.parametrize("recipe", RECIPES)
def test_two_process_gloo_training_keeps_ranks_identical(recipe, world, teacher, clip, tmp_path):
    config, overrides, _ = settings(recipe, world, teacher, tmp_path, clip)
    overrides = overrides + ["device=cpu", f"out_dir={tmp_path / 'ddp'}"]
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2", OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(worker), recipe, config or "-", str(tmp_path / f"rank{r}.json"),
                               *overrides], env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["weights_sha256"] == r1["weights_sha256"]  # DDP kept the replicas identical
    assert r0[MIOU[recipe]] == r1[MIOU[recipe]]  # one reduced evaluation, seen by both ranks
    if recipe == "unimatch_v2":
        assert r0["iterations"] == 8  # 32 unlabelled / (4 per batch x 2 ranks) x 2 epochs
        assert r0["final_pixels"] == 8 * 32 * 32  # every validation pixel counted exactly once
    run_json = json.loads((tmp_path / "ddp" / "run.json").read_text())
    assert run_json["world_size"] == 2 and run_json["recipe"] == recipe
    assert load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")["world_size"] == 2
