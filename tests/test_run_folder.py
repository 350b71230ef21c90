"""Nothing is lost by a slip: a run folder that holds a run is refused without --resume or --overwrite,
--resume needs a checkpoint, interrupted writes are cleaned up, two runs never share a folder, and
config mistakes at any depth fail before any work."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from leafseg.cli import main
from leafseg.errors import ConfigError, RunFolderError
from leafseg.training import DistInfo, Run, RunSettings
from leafseg.training.folder import remove_temporary_files
from unimatch_tiny import write_tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny UniMatch V2 run: (config file, run folder)."""
    from leafseg.recipes.unimatch_v2 import run

    folder = tmp_path_factory.mktemp("finished")
    config = write_tiny_config(folder / "tiny.yaml", folder / "world", epochs=1)
    run(str(config), [f"out_dir={folder / 'run'}"])
    return config, folder / "run"


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_folder_with_a_run_is_refused_and_left_intact(finished, capsys):
    config, run_dir = finished
    before = _snapshot(run_dir)
    code = main(["train", "unimatch_v2", str(config), f"out_dir={run_dir}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "holds an earlier run" in err and "--resume" in err
    assert _snapshot(run_dir) == before  # metrics, logs, config, record and weights untouched


def test_overwrite_replaces_the_earlier_run(finished, tmp_path):
    from leafseg.recipes.unimatch_v2 import run

    config, run_dir = finished
    copy = tmp_path / "run"
    for rel, data in _snapshot(run_dir).items():
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        (copy / rel).write_bytes(data)
    (copy / "metrics.jsonl").write_text('{"iteration": 999, "ema_miou": 1.0}\n')  # a stale row of the old run
    result = run(str(config), [f"out_dir={copy}", "epochs=1"], overwrite=True)
    assert result["iterations"] == 8
    rows = (copy / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1 and '"iteration": 999' not in rows[0]


def test_resume_without_a_checkpoint_is_an_error(finished, tmp_path, capsys):
    config, _ = finished
    code = main(["train", "unimatch_v2", str(config), f"out_dir={tmp_path / 'empty'}", "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "no checkpoint" in err and "without --resume" in err
    assert not (tmp_path / "empty").exists()  # nothing written
    with pytest.raises(RunFolderError, match="resume and overwrite"):
        Run("x", RunSettings(out_dir=str(tmp_path / "x")), DistInfo(), resume=True, overwrite=True)


def test_orphan_temporary_files_are_removed_at_start_and_end(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / ".last.pt.abc123.tmp").write_bytes(b"x" * 1000)
    (out / "checkpoints" / "last.pt").write_bytes(b"")  # a run to resume (not read before restore)
    run = Run("x", RunSettings(out_dir=str(out)), DistInfo(), resume=True)
    assert not list(out.rglob("*.tmp"))  # at the start
    (out / ".metrics.jsonl.zz.tmp").write_text("partial")
    run.close()
    assert not list(out.rglob("*.tmp")) and not (out / "run.lock").exists()  # and at the end
    assert remove_temporary_files(tmp_path / "missing") == 0


def test_two_runs_never_share_a_folder(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.lock").write_text(f"{os.getppid()}\n")  # a live process holds the folder
    with pytest.raises(RunFolderError, match="in use by another run"):
        Run("x", RunSettings(out_dir=str(out)), DistInfo())
    (out / "run.lock").write_text("999999999\n")  # a dead one's lock is stale
    Run("x", RunSettings(out_dir=str(out)), DistInfo()).close()


@pytest.mark.parametrize("override,match", [
    ("arch_overrides.hidden_sise=64", r"'arch_overrides.hidden_sise' for this backbone \(did you mean hidden_size"),
    ("synthetic={train: 8, vall: 2}", r"unknown config key 'synthetic.vall' \(did you mean val\?\)"),
    ("lerning_rate=0.1", r"unknown config key 'lerning_rate' \(did you mean lr"),
    ("backbone=dinov3_vits14", "Unknown backbone 'dinov3_vits14'"),
    ("eval.protocol.bacth_size=2", "Did you mean batch_size"),
])
def test_config_mistakes_at_any_depth_fail_before_any_work(override, match, tmp_path, capsys):
    config = write_tiny_config(tmp_path / "tiny.yaml", tmp_path / "world")
    code = main(["train", "unimatch_v2", str(config), override, f"out_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    import re

    assert re.search(match, err), err
    assert not (tmp_path / "run").exists() and not (tmp_path / "world").exists()  # nothing written
    with pytest.raises(ConfigError):
        from leafseg.registry import load_config_of

        load_config_of("unimatch_v2", config, [override])


def test_leafseg_config_prints_the_resolved_config(capsys):
    import yaml

    config = str(Path(__file__).resolve().parents[1] / "configs" / "sseg" / "synthetic.yaml")
    code = main(["config", "sseg", config, "pseudo_masks.k=16", "seed=3"])
    out = capsys.readouterr().out
    assert code == 0
    cfg = yaml.safe_load(out)
    assert cfg["pseudo_masks"]["k"] == 16 and cfg["seed"] == 3 and cfg["eval"]["preset"] == "sseg"
    assert main(["config", "sseg", config, "pm_k=16"]) == 2
    assert "'pm_k' is now 'pseudo_masks.k'" in capsys.readouterr().err


def test_threads_are_pinned_and_each_evaluation_prints_a_line(tmp_path, capsys):
    import torch

    from leafseg.errors import ConfigError

    with pytest.raises(ConfigError, match="threads must be >= 0"):
        RunSettings(threads=-1)
    before = torch.get_num_threads()
    try:
        run = Run("x", RunSettings(out_dir=str(tmp_path / "pinned"), threads=1), DistInfo())
        assert torch.get_num_threads() == 1
        run.start()
        run.log_eval({"iteration": 5, "epoch": 0, "miou": 0.25, "ema_miou": 0.5, "acc": 0.9, "r1_image_to_text": 0.125})
        run.close()
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    assert "x [pinned] epoch 0, iteration 5: miou 25.0, ema_miou 50.0, r1_image_to_text 12.5" in out
    assert "acc" not in out
    quiet = Run("x", RunSettings(out_dir=str(tmp_path / "quiet"), echo=False), DistInfo())
    quiet.start()
    quiet.log_eval({"iteration": 1, "miou": 0.1})
    quiet.close()
    assert capsys.readouterr().out == ""
