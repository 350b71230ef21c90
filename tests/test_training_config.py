from dataclasses import dataclass, field

import pytest
import yaml

from leafseg.recipes.unimatch_v2 import UniMatchV2Config, check_config
from leafseg.training import MetricsLog, load_config, parse_overrides, save_config


@dataclass
class Cfg:
    lr: float = 1e-3
    epochs: int = 2
    name: str = "x"
    flag: bool = False
    weights: str | None = None
    layers: list | None = None
    extra: dict = field(default_factory=dict)


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 5.0e-6\nepochs: 3\nextra: {a: 1}\n")
    cfg = load_config(Cfg, path, ["epochs=7", "layers=[2,5,8,11]", "extra.b=x", "weights=null", "flag=true", "lr=1"])
    assert cfg == Cfg(lr=1.0, epochs=7, layers=[2, 5, 8, 11], extra={"a": 1, "b": "x"}, flag=True)
    assert isinstance(cfg.lr, float)


def test_unknown_keys_and_bad_values_fail_early(tmp_path):
    with pytest.raises(ValueError, match="did you mean epochs"):
        load_config(Cfg, None, ["epoch=3"])
    with pytest.raises(ValueError, match="epochs: expected int"):
        load_config(Cfg, None, ["epochs=many"])
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["epochs"])
    with pytest.raises(FileNotFoundError):
        load_config(Cfg, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: fast\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        load_config(Cfg, bad)


def test_resolved_config_is_saved_and_reloads(tmp_path):
    cfg = load_config(UniMatchV2Config, None, ["batch_size=2", "arch_overrides.num_hidden_layers=4"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(UniMatchV2Config, tmp_path / "config.yaml")
    assert again == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["batch_size"] == 2


def test_recipe_config_checks():
    with pytest.raises(ValueError, match="method"):
        check_config(UniMatchV2Config(method="meanteacher", num_labeled=4))
    with pytest.raises(ValueError, match="num_labeled"):
        check_config(UniMatchV2Config())
    with pytest.raises(ValueError, match="go together"):
        check_config(UniMatchV2Config(labeled_split="l.txt"))


def test_all_shipped_configs_load():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "configs" / "unimatch_v2"
    files = sorted(folder.glob("*.yaml"))
    assert len(files) >= 17
    for path in files:
        check_config(load_config(UniMatchV2Config, path))


def test_metrics_log_csv_json_and_truncation(tmp_path):
    log = MetricsLog(tmp_path, "metrics")
    for it in (10, 20, 30):
        log.log({"iteration": it, "miou": it / 100, "iou": [0.1, 0.2]})
    log.log({"iteration": 40, "miou": 0.4, "acc": 0.9})  # a new column rewrites the CSV
    assert [r["iteration"] for r in log.rows()] == [10, 20, 30, 40]
    header, *lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert header == "iteration,miou,acc" and len(lines) == 4
    log.truncate_after(20)
    assert [r["iteration"] for r in log.rows()] == [10, 20]
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 3
