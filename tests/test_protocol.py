from pathlib import Path

import pytest
import yaml

from leafseg.errors import ConfigError
from leafseg.eval.protocol import (
    PRESETS,
    STUFF_WORDS,
    Protocol,
    canonical_dataset,
    get_preset,
    list_presets,
    load_protocol,
)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "eval"


def resolved(preset, dataset):
    return get_preset(preset).resolve(dataset)


def test_preset_names():
    assert set(list_presets()) >= {"groupvit", "tcl", "sclip-family", "unimatch", "stego"}


@pytest.mark.parametrize("dataset,threshold", [("voc", 0.95), ("context60", 0.35), ("coco_object", 0.95)])
def test_groupvit(dataset, threshold):
    p = resolved("groupvit", dataset)
    assert (p.short_side, p.mode, p.crop, p.stride) == (448, "slide", 448, 224)
    assert p.templates == "single" and p.activation == "softmax"
    assert (p.background, p.bg_threshold) == ("threshold", threshold)
    assert p.dataset == dataset and p.per_dataset == {}
    assert resolved("groupvit", "cityscapes").background == "none"


def test_tcl_constant_background_and_pamr_value():
    p = resolved("tcl", "voc")
    assert (p.short_side, p.mode, p.crop, p.stride, p.templates) == (448, "slide", 448, 224, "tcl")
    assert p.background == "constant" and p.activation == "sigmoid"
    assert p.effective_bg_value == 0.5
    assert p.with_overrides(["pamr=true"]).effective_bg_value == 0.4
    assert resolved("tcl", "context59").background == "none"


def test_sclip_family():
    voc = resolved("sclip-family", "voc")
    assert (voc.short_side, voc.mode, voc.crop, voc.stride) == (336, "slide", 336, 112)
    assert voc.logit_scale == 40.0 and voc.templates == "imagenet80"
    assert (voc.background, voc.bg_threshold, voc.bg_words) == ("stuff", 0.2, STUFF_WORDS)
    assert len(STUFF_WORDS) == 26 and len(set(STUFF_WORDS)) == 26
    ctx = resolved("sclip-family", "context60")
    assert (ctx.background, ctx.bg_threshold, ctx.bg_words) == ("stuff", 0.15, ("background",))
    assert resolved("sclip-family", "coco_object").bg_threshold == 0.25
    assert resolved("sclip-family", "ade20k").short_side == 448
    assert resolved("sclip-family", "cityscapes").short_side == 448
    assert resolved("sclip-family", "context59").background == "none"


def test_unimatch_and_stego():
    p = resolved("unimatch", "voc")
    assert (p.mode, p.size_multiple, p.short_side) == ("whole", 14, None)
    c = resolved("unimatch", "cityscapes")
    assert (c.mode, c.crop, c.stride, c.size_multiple, c.window_merge) == ("slide", 798, 532, None, "probabilities")
    s = resolved("stego", "coco_stuff27")
    assert (s.center_crop, s.mode, s.labelling) == (320, "whole", "hungarian")


def test_dataset_aliases():
    assert canonical_dataset("VOC21") == "voc"
    assert canonical_dataset("Pascal-Context") == "context60"
    assert resolved("groupvit", "VOC21").bg_threshold == 0.95


@pytest.mark.parametrize("name", list(PRESETS))
def test_dict_and_yaml_round_trip(name, tmp_path):
    p = get_preset(name)
    assert Protocol.from_dict(p.to_dict()) == p
    assert Protocol.from_yaml(p.to_yaml()) == p
    r = p.resolve("voc")
    path = tmp_path / "p.yaml"
    r.to_yaml(path)
    assert Protocol.from_yaml(path) == r
    assert yaml.safe_load(path.read_text())["dataset"] == "voc"


def test_overrides_parse_and_win_over_per_dataset():
    p = load_protocol("groupvit", "voc", ["bg_threshold=0.5", "pamr=true", "pamr_dilations=[1,2]",
                                           "size_multiple=14", "templates=tcl"])
    assert p.bg_threshold == 0.5 and p.pamr is True and p.pamr_dilations == (1, 2)
    assert p.size_multiple == 14 and p.templates == "tcl"
    assert load_protocol("groupvit", "voc", ["short_side=none"]).short_side is None
    assert load_protocol("groupvit", "voc", {"bg_words": "a, b;c"}).bg_words == ("a", "b", "c")
    assert load_protocol(None, "voc").mode == "whole"


def test_yaml_file_preset(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nshort_side: 224\nper_dataset:\n  voc: {background: threshold, bg_threshold: 0.7}\n")
    p = load_protocol(path, "voc", ["crop=224", "stride=112"])
    assert (p.name, p.short_side, p.bg_threshold, p.crop) == ("mine", 224, 0.7, 224)


@pytest.mark.parametrize("bad,match", [
    (["shortside=3"], "short_side"),
    (["mode=tiles"], "mode must be one of"),
    (["stride=500"], "stride 500 > crop"),
    (["pamr=maybe"], "pamr"),
    (["size=[224,224]"], "short_side or size"),
    (["nokey"], "key=value"),
    (["bg_words=[a,"], "bg_words: cannot read"),
])
def test_bad_overrides(bad, match):
    with pytest.raises(ConfigError, match=match):  # a ConfigError is printed as one line by the CLI
        load_protocol("groupvit", "voc", bad)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="Did you mean groupvit"):
        get_preset("groupvi")


def test_config_files_match_presets():
    files = sorted(CONFIG_DIR.glob("*.yaml"))
    assert {f.stem for f in files} == set(PRESETS)
    for f in files:
        assert Protocol.from_yaml(f) == get_preset(f.stem), f.name
