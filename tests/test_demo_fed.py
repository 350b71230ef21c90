"""The demo's federated part at tiny sizes: local-only against FUSS through the recipe's own entry (Flower's
simulation engine), its figures printed and in run.json, FUSS's mIoU-against-rounds picture in the demo's
report; the part's folder starts afresh on every demo; `--fed-rounds 0` (or no Flower) leaves a report
without it.

The federated run starts Ray twice (one simulation per strategy): a minute or more on a busy two-core machine."""

from __future__ import annotations

import json

import pytest
import torch

from leafseg.cli import main

# the demo's federated settings shrunk to the smallest FUSS run of the tests (tests/fuss_tiny.py)
TINY = ["data.size=32", "data.synthetic={domains: 2, train: 6, val: 4, size: 32}",
        "model.arch_overrides={patch_size: 8, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, "
        "intermediate_size: 64}",
        "model.code_dim=8", "model.clusters=6", "local.steps=3", "local.batch_size=4", "local.knn=2",
        "local.loss.feature_samples=4",
        "federation.clients=2", "federation.round_timeout=120",
        "eval.protocol={center_crop: null, batch_size: 8, workers: 0}"]


def _demo(out, **kwargs):
    from leafseg.demo import run_demo

    return run_demo(out, scenes=3, size=32, backbone="pixels4", progress=False, semi_epochs=0, **kwargs)


def test_the_federated_part_prints_its_figures_and_puts_its_plot_in_the_report(tmp_path, capsys):
    pytest.importorskip("ray")
    demo = tmp_path / "demo"
    threads = torch.get_num_threads()
    result = _demo(demo, fed_rounds=2, fed_overrides=TINY)
    assert torch.get_num_threads() == threads
    rows = result["federated"]
    assert [r["strategy"] for r in rows] == ["local_only", "fuss"]
    for row in rows:
        assert row["rounds"] == 2 and len(row["mIoU per round"]) == 2 and len(row["clients' own mIoU"]) == 2
        assert 0 < row["final mIoU"] <= row["best mIoU"] <= 100 and 0 < row["final acc."] <= 100
        run_rows = [json.loads(line) for line in (demo / "federated" / row["strategy"] / "metrics.jsonl").open()]
        assert [round(100 * r["miou"], 1) for r in run_rows] == row["mIoU per round"]  # the run's own figures
    assert json.loads((demo / "run.json").read_text())["federated"][1]["final mIoU"] == rows[1]["final mIoU"]

    out = capsys.readouterr().out
    assert "[1/4] Synthetic world" in out and "[3/4] Federated, 2 clients" in out and "[4/4] Report" in out
    assert "fuss [local_only] iteration 1: miou" in out and "fuss [fuss] iteration 2: miou" in out  # a line per round
    for row in rows:
        figures = ", ".join(f"{m:.1f}" for m in row["mIoU per round"])
        assert f"{row['strategy']}: mIoU after rounds 1-2: {figures}" in out
    assert "FUSS - local-only: " in out
    assert f"federated mIoU after round 2: {rows[0]['final mIoU']:.1f} (local_only), " in out  # the summary

    html = (demo / "report.html").read_text()
    assert "Federated: FUSS vs local-only clients" in html and f"{rows[1]['final mIoU']:.1f}" in html
    assert 'src="federated/miou.png"' in html and (demo / "federated" / "miou.png").stat().st_size > 0
    assert "federated/report.html" in html and (demo / "federated" / "report.html").is_file()  # FUSS's own report


def test_fed_rounds_0_skips_the_part_and_leaves_a_valid_report(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--scenes", "3", "--size", "32", "--backbone", "pixels4", "--quiet",
                 "--semi-epochs", "0", "--fed-rounds", "0"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "[3/3] Report" in printed and "Federated" not in printed and "federated mIoU" not in printed
    html = (out / "report.html").read_text()
    assert html.rstrip().endswith("</html>") and "oracle mIoU" in html and "federated" not in html.lower()
    record = json.loads((out / "run.json").read_text())
    assert record["federated"] is None and record["config"]["fed_rounds"] == 0
    with pytest.raises(ValueError, match="fed-rounds"):
        _demo(tmp_path / "bad", fed_rounds=-1)


def test_without_flower_the_part_is_skipped_with_a_note_and_its_folder_starts_afresh(tmp_path, capsys, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flwr" else find_spec(name, *a))
    stale = tmp_path / "demo" / "federated" / "fuss" / "metrics.jsonl"  # an earlier demo's run
    stale.parent.mkdir(parents=True)
    stale.write_text("{}\n")
    result = _demo(tmp_path / "demo", fed_rounds=2)
    assert result["federated"] is None and not stale.parent.exists()  # the demo's own folder, like world/
    assert "skipped: flwr not installed (pip install 'leafseg[fed]')" in capsys.readouterr().out
    assert "Federated" not in (tmp_path / "demo" / "report.html").read_text()


def test_the_demos_federated_settings_are_the_synthetic_configs_made_smaller():
    """The demo builds its FUSS config from settings, not from configs/fuss/synthetic.yaml (the package
    must run without the repository's configs); its encoder, head, centroids and loss must stay the
    config's."""
    from pathlib import Path

    from leafseg.config import load_config
    from leafseg.demo import FED_SETTINGS
    from leafseg.recipes.fuss.config import FussConfig

    shipped = load_config(FussConfig, Path(__file__).resolve().parents[1] / "configs/fuss/synthetic.yaml", [])
    demo = load_config(FussConfig, None, FED_SETTINGS)
    assert demo.model == shipped.model and demo.local.loss == shipped.local.loss
    assert demo.eval.preset == shipped.eval.preset and demo.partition.scheme == shipped.partition.scheme
