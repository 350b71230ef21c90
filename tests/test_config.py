"""The one config system: key=value text, files that extend a base, typed nested sections, suggestions,
and the shipped configs of every recipe."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from leafseg.config import dump_config, load_config, parse_key_value, parse_key_values, save_config, suggest
from leafseg.errors import ConfigError
from leafseg.training import MetricsLog

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@dataclass
class Inner:
    k: int = 8
    kind: Literal["tokens", "keys"] = "tokens"


@dataclass
class Cfg:
    lr: float = 1e-3
    epochs: int = 2
    name: str = "x"
    flag: bool = False
    weights: str | None = None
    layers: list[int] | None = None
    extra: dict = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)

    RENAMED = {"pm_k": "inner.k"}


def test_key_value_text_has_one_meaning():
    assert parse_key_values(["a=1", "b=x", "c=[1, 2]", "d={e: 3}", "f=null", "g=", "h=''", "i=1e-3"]) == {
        "a": 1, "b": "x", "c": [1, 2], "d": {"e": 3}, "f": None, "g": None, "h": "", "i": "1e-3"}
    assert parse_key_value("image_dir=images/{split}") == ("image_dir", "images/{split}")
    with pytest.raises(ConfigError, match="key=value"):
        parse_key_value("epochs")
    with pytest.raises(ConfigError, match="quote"):
        parse_key_value("x=[a,")


def test_yaml_then_overrides_with_dotted_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 5.0e-6\nepochs: 3\nextra: {a: 1}\ninner: {k: 4}\n")
    cfg = load_config(Cfg, path, ["epochs=7", "layers=[2,5,8,11]", "extra.b=x", "weights=null", "flag=true", "lr=1",
                                  "inner.kind=keys"])
    assert cfg == Cfg(lr=1.0, epochs=7, layers=[2, 5, 8, 11], extra={"a": 1, "b": "x"}, flag=True,
                      inner=Inner(k=4, kind="keys"))
    assert isinstance(cfg.lr, float)
    # a mapping value merges into the mapping it overrides
    assert load_config(Cfg, path, ["extra={c: 2}"]).extra == {"a": 1, "c": 2}


def test_a_file_extends_its_base(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "b.yaml").write_text("lr: 0.5\nepochs: 9\ninner: {k: 3, kind: keys}\nextra: {a: 1}\n")
    (tmp_path / "c.yaml").write_text("extends: base/b.yaml\nepochs: 4\ninner: {k: 5}\nextra: {b: 2}\n")
    cfg = load_config(Cfg, tmp_path / "c.yaml")
    assert (cfg.lr, cfg.epochs, cfg.inner, cfg.extra) == (0.5, 4, Inner(5, "keys"), {"a": 1, "b": 2})
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="circle"):
        load_config(Cfg, tmp_path / "loop.yaml")
    (tmp_path / "lost.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml"):
        load_config(Cfg, tmp_path / "lost.yaml")


def test_every_level_is_checked_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="did you mean epochs"):
        load_config(Cfg, None, ["epoch=3"])
    with pytest.raises(ConfigError, match="epochs: expected int"):
        load_config(Cfg, None, ["epochs=many"])
    with pytest.raises(ConfigError, match=r"unknown config key 'inner.kk' \(did you mean k\?\)"):
        load_config(Cfg, None, ["inner.kk=3"])
    with pytest.raises(ConfigError, match=r"inner.kind: must be one of 'tokens', 'keys', got 'key' \(did you mean"):
        load_config(Cfg, None, ["inner={kind: key}"])
    with pytest.raises(ConfigError, match=r"layers\[1\]: expected int"):
        load_config(Cfg, None, ["layers=[1, a]"])
    with pytest.raises(ConfigError, match="'pm_k' is now 'inner.k'"):
        load_config(Cfg, None, ["pm_k=3"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Cfg, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: fast\n")
    with pytest.raises(ConfigError, match="lr: expected float"):
        load_config(Cfg, bad)


def test_suggestions_find_the_real_key():
    keys = ["lr", "lr_head_multiplier", "scale_range", "epochs", "batch_size", "weight_decay"]
    assert "lr" in suggest("lerning_rate", keys)
    assert "scale_range" not in suggest("lerning_rate", keys)
    assert "batch_size" in suggest("batchsize", keys)
    assert suggest("zzz", keys) == ""


def test_resolved_config_is_saved_printed_and_reloads(tmp_path):
    from leafseg.recipes.unimatch_v2 import UniMatchV2Config

    cfg = load_config(UniMatchV2Config, None, ["batch_size=2", "arch_overrides.num_hidden_layers=4",
                                               "eval.protocol.batch_size=8"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(UniMatchV2Config, tmp_path / "config.yaml") == cfg
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["batch_size"] == 2 and saved["eval"] == {"preset": "unimatch", "protocol": {"batch_size": 8},
                                                          "dataset": None, "root": "", "split": "val", "every": 0}
    assert dump_config(cfg) == (tmp_path / "config.yaml").read_text()


@pytest.mark.parametrize("recipe", ["unimatch_v2", "sseg", "sseg_plus", "grouping_clip", "clip", "fuss", "stego"])
def test_shipped_configs_of_every_recipe_load_and_check(recipe):
    from leafseg.registry import load_config_of, recipe_module

    folder = CONFIGS / ("sseg" if recipe.startswith("sseg") else recipe)
    files = sorted(f for f in folder.glob("*.yaml") if f.stem.endswith("_plus") == (recipe == "sseg_plus"))
    assert files
    for path in files:
        cfg = load_config_of(recipe, path)
        assert isinstance(cfg, recipe_module(recipe).CONFIG), path
        assert cfg.eval.resolve(cfg.eval.dataset or getattr(cfg, "dataset", None)).name, path


def test_split_configs_say_only_what_differs():
    split = CONFIGS / "unimatch_v2" / "pascal_92.yaml"
    keys = [k for k in yaml.safe_load(split.read_text())]
    assert keys == ["extends", "labeled_split", "unlabeled_split", "out_dir"]


def test_recipe_config_checks():
    from leafseg.recipes.unimatch_v2 import UniMatchV2Config, check_config

    with pytest.raises(ConfigError, match="method: must be one of"):
        load_config(UniMatchV2Config, None, ["method=meanteacher"])
    with pytest.raises(ConfigError, match="num_labeled"):
        check_config(UniMatchV2Config())
    with pytest.raises(ConfigError, match="go together"):
        check_config(UniMatchV2Config(labeled_split="l.txt"))
    with pytest.raises(ConfigError, match=r"eval \(preset 'unimatch'.*'shortside'. Did you mean short_side"):
        load_config(UniMatchV2Config, None, ["eval.protocol.shortside=3"])


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
