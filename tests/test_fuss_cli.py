"""`leafseg fed partition / run / report` and `leafseg config fuss`: the parser imports neither Flower nor Ray,
the names it offers match the registries, the verbs write what they say."""

from __future__ import annotations

import json
import subprocess
import sys
import typing
from pathlib import Path

from leafseg.cli import main

SRC = Path(__file__).resolve().parents[1] / "src"


def test_the_parser_and_every_fed_help_import_neither_flower_nor_ray():
    code = ("import json, sys\n"
            "from leafseg.cli import build_parser\n"
            "p = build_parser()\n"
            "for verb in (['fed'], ['fed', 'partition'], ['fed', 'run'], ['fed', 'report']):\n"
            "    try:\n"
            "        p.parse_args([*verb, '--help'])\n"
            "    except SystemExit:\n"
            "        pass\n"
            "heavy = ('flwr', 'ray', 'torch', 'leafseg.recipes.fuss.config')\n"
            "print(json.dumps([m for m in heavy if m in sys.modules]))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(SRC), "PATH": ""})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_the_names_the_parser_offers_match_the_registries():
    from leafseg.data.partition import SCHEMES
    from leafseg.recipes.fuss import cli
    from leafseg.recipes.fuss.config import STRATEGIES, StrategySettings
    from leafseg.recipes.fuss.strategies import PRESETS

    assert cli.STRATEGIES == STRATEGIES == tuple(PRESETS)
    assert typing.get_args(typing.get_type_hints(StrategySettings)["name"]) == STRATEGIES
    assert cli.SCHEMES == SCHEMES


def test_fed_partition_writes_split_files(tmp_path, capsys):
    from leafseg.data.synthetic_domains import write_domain_world

    write_domain_world(tmp_path / "world", 2, train=4, size=32)
    assert main(["fed", "partition", "synthetic", str(tmp_path / "world"), "--scheme", "domain", "--clients", "2",
                 str(tmp_path / "split")]) == 0
    out = capsys.readouterr().out
    assert "wrote 2 client split files" in out and "client 1: domain1" in out
    assert (tmp_path / "split" / "client_001.txt").read_text().startswith("domain1/images/train/")
    assert main(["fed", "partition", "synthetic", str(tmp_path / "world"), str(tmp_path / "split"),
                 "--scheme", "iid", "--clients", "2"]) == 2  # the folder holds a partition: refused, one line
    assert "already holds a partition" in capsys.readouterr().err


def test_fed_report_draws_every_run(tmp_path, capsys):
    for name, scores in (("local_only", [0.1, 0.12]), ("fuss", [0.15, 0.2])):
        run = tmp_path / name
        run.mkdir()
        (run / "config.yaml").write_text(f"strategy: {{name: {name}}}\nfederation: {{clients: 2}}\n"
                                         "partition: {scheme: domain}\n")
        (run / "metrics.jsonl").write_text("".join(
            json.dumps({"iteration": r, "round": r, "miou": s, "acc": 0.5, "clients_miou": [s, s / 2]}) + "\n"
            for r, s in enumerate(scores, start=1)))
    assert main(["fed", "report", str(tmp_path / "local_only"), str(tmp_path / "fuss"), "--out",
                 str(tmp_path / "report")]) == 0
    page = (tmp_path / "report" / "report.html").read_text()
    assert "<td>local_only</td>" in page and "<td>fuss</td>" in page and "20.0" in page
    assert (tmp_path / "report" / "miou.png").stat().st_size > 0


def test_config_fuss_prints_the_resolved_config(capsys):
    config = SRC.parent / "configs" / "fuss" / "synthetic.yaml"
    assert main(["config", "fuss", str(config), "federation.clients=2"]) == 0
    printed = capsys.readouterr().out
    assert "clients: 2" in printed and "name: fuss" in printed and "proximal_mu: 0.001" in printed
