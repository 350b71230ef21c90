"""`leafseg report`: pictures and a page from real training run folders and `leafseg eval` folders."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from leafseg.cli import main
from leafseg.eval.run_folders import read_run_folder, unique_labels
from leafseg.registry import recipe_module
from unimatch_tiny import write_tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    """Two tiny UniMatch V2 runs (seeds 0 and 1) on one synthetic world, and `leafseg eval` of the first."""
    root = tmp_path_factory.mktemp("runs")
    config = write_tiny_config(root / "tiny.yaml", root / "world")
    folders = []
    for seed in (0, 1):
        folder = root / f"seed{seed}"
        recipe_module("unimatch_v2").run(str(config), [f"out_dir={folder}", f"seed={seed}"])
        folders.append(folder)
    code = main(["eval", "model", "synthetic", str(root / "world"), "--weights",
                 str(folders[0] / "final_ema.safetensors"), "--preset", str(folders[0] / "protocol.yaml"),
                 "--out", str(root / "eval_seed0"), "--quiet"])
    assert code == 0
    return folders[0], folders[1], root / "eval_seed0"


def _pictures(page: Path) -> list[Path]:
    return [page.parent / src for src in re.findall(r'<img src="([^"]+)"', page.read_text())]


def test_report_of_two_runs_and_an_evaluation(runs, tmp_path, capsys):
    out = tmp_path / "report"
    code = main(["report", *map(str, runs), "--out", str(out), "--scenes", "2"])
    assert code == 0, capsys.readouterr().err
    page = out / "report.html"
    assert f"report: {page}" in capsys.readouterr().out
    pictures = _pictures(page)
    assert {p.name for p in pictures} == {"loss.png", "miou.png", "per_class_iou.png", "predictions_1.png"}
    for path in pictures:  # every referenced picture exists and is a whole PNG
        with Image.open(path) as im:
            assert im.format == "PNG" and min(im.size) > 100
            im.verify()
    text = page.read_text()
    assert all(name in text for name in ("seed0", "seed1", "eval_seed0", "unimatch_v2"))
    with Image.open(out / "predictions_1.png") as im:  # 2 scenes in rows, 4 columns: image, truth, 2 runs
        assert im.size[0] > im.size[1]


def test_every_run_is_on_the_same_plots(runs):
    from leafseg.eval.run_report import loss_figure, miou_figure, per_class_figure, run_colours

    folders = [read_run_folder(f) for f in runs]
    colour = run_colours(folders)
    loss = loss_figure(folders[:2], ["loss", "loss_x"], colour)
    assert {line.get_label() for line in loss.axes[0].get_lines()} == {"seed0", "seed1"}
    miou = miou_figure(folders, colour)
    labels = {line.get_label() for line in miou.axes[0].get_lines()}
    assert {"seed0: ema_miou", "seed1: ema_miou", "seed0: student_miou", "eval_seed0 (model)"} <= labels
    classes = list(folders[2].per_class)  # the evaluation names the classes; the logs number them
    assert classes[:2] == ["sky", "grass"]
    bars = per_class_figure(folders[2:], classes, colour)
    assert len(bars.axes[0].containers) == 1 and len(bars.axes[0].containers[0]) == len(classes)


def test_run_folders_are_read_as_they_are(runs):
    run, _, evaluation = (read_run_folder(f) for f in runs)
    assert run.kind == "train" and run.source == "unimatch_v2" and run.iterations == 16
    assert run.weights.name == "final_ema.safetensors" and run.dataset.name == "synthetic"
    assert run.dataset.split == "val" and len(run.per_class) == 12
    results = json.loads((runs[0] / "results.json").read_text())
    assert run.miou == results["final_ema_miou"] and run.best_miou == results["best_ema_miou"]
    metrics = json.loads((runs[2] / "metrics.json").read_text())
    assert evaluation.kind == "eval" and evaluation.miou == metrics["miou"] and evaluation.source == "model"
    assert unique_labels([run, run]) == ["seed0", "seed0 (2)"]


def test_missing_weights_or_data_leave_a_note_not_a_failure(runs, tmp_path):
    no_weights = tmp_path / "a" / "run"
    shutil.copytree(runs[0], no_weights, ignore=shutil.ignore_patterns("*.safetensors", "checkpoints"))
    no_data = tmp_path / "b" / "run"
    shutil.copytree(runs[1], no_data, ignore=shutil.ignore_patterns("checkpoints"))
    config = no_data / "config.yaml"
    config.write_text(re.sub(r"data_root: .*", f"data_root: {tmp_path / 'gone'}", config.read_text()))
    (no_data / "train_log.jsonl").open("a").write('{"iteration": 17, "lo')  # a write in progress
    out = tmp_path / "report"
    assert main(["report", str(no_weights), str(no_data), "--out", str(out)]) == 0
    text = (out / "report.html").read_text()
    assert "a/run: no exported weights" in text and "b/run: validation data synthetic val at" in text
    assert "predictions_" not in text
    assert all(p.is_file() for p in _pictures(out / "report.html"))


def test_an_evaluation_folder_alone(runs, tmp_path):
    out = tmp_path / "report"
    assert main(["report", str(runs[2]), "--out", str(out)]) == 0
    text = (out / "report.html").read_text()
    assert "No training logs" in text and "Evaluation folders hold no model" in text
    assert {p.name for p in _pictures(out / "report.html")} == {"per_class_iou.png"}


def test_a_folder_that_is_not_a_run_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.strip() == f"leafseg: error: {tmp_path / 'missing'}: run folder not found"
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "neither a training run folder" in err


def test_a_stego_run_exported_as_final_safetensors_gets_predictions(tmp_path, capsys):
    from sseg_tiny import write_world
    from stego_tiny import stego_args

    world = write_world(tmp_path / "world")
    folder = tmp_path / "stego"
    recipe_module("stego").run(None, stego_args(world, folder, "iterations=3"))
    assert read_run_folder(folder).weights == folder / "final.safetensors"
    out = tmp_path / "report"
    assert main(["report", str(folder), "--out", str(out), "--scenes", "2"]) == 0, capsys.readouterr().err
    assert "predictions_1.png" in {p.name for p in _pictures(out / "report.html")}
    assert "could not be used" not in (out / "report.html").read_text()
