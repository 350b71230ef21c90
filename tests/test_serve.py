"""`leafseg serve` without a browser: the model shelf, the segmentation behind the page's button, the shares
table, the scenes, the page's handlers (errors become messages) and the command's checks before it starts.
tests/test_serve_browser.py drives the served page in Chromium."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from leafseg.cli import main
from leafseg.data.io import palette, read_image
from leafseg.errors import ConfigError, UserError
from leafseg.eval.report import overlay
from leafseg.serve.handlers import (
    as_rgb,
    class_names_for,
    parse_class_names,
    segment_for_page,
    shares_html,
    write_scenes,
)
from leafseg.serve.models import ModelShelf, PageModel
from leafseg.training import read_exported
from serve_tiny import clip_folder, sseg_weights, unimatch_weights

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_models")
    return {"clip": clip_folder(root), "unimatch": unimatch_weights(root), "sseg": sseg_weights(root)}


@pytest.fixture(scope="module")
def shelf(tiny):
    shelf = ModelShelf("cpu")
    shelf.add_checkpoint(tiny["unimatch"])
    shelf.add_checkpoint(tiny["sseg"])
    shelf.add_method("maskclip", "clip_vitb16", str(tiny["clip"]))
    shelf.add_method("naclip", "clip_vitb16", str(tiny["clip"]))
    shelf.add_method("kmeans")
    return shelf


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A synthetic scene, 64 px high and 80 px wide (not square, to catch a transposed answer)."""
    path = write_scenes(tmp_path_factory.mktemp("scenes"), 1, size=80)[0]
    return read_image(path)[:64]


# -- the shelf ---------------------------------------------------------------------------------------------
def test_the_shelf_offers_each_kind_of_model(shelf, tiny):
    assert shelf.labels() == ["unimatch/final_ema.safetensors (unimatch_v2)", "sseg/final.pt (sseg)",
                              "maskclip (clip_vitb16)", "naclip (clip_vitb16)", "kmeans (pixels8)"]
    fixed, open_, clip, _, kmeans = (shelf.get(label) for label in shelf.labels())
    assert fixed.vocabulary == "fixed" and fixed.classes == read_exported(tiny["unimatch"])["extra"]["classes"]
    assert fixed.about.startswith("unimatch_v2 weights, semi-supervised") and "the 12 classes" in fixed.about
    assert (open_.vocabulary, open_.classes, clip.vocabulary, kmeans.vocabulary) == ("open", None, "open", "regions")


def test_the_shelf_loads_a_file_once_and_tells_same_named_files_apart(shelf, tiny, tmp_path):
    assert shelf.add_checkpoint(tiny["sseg"]) is shelf.get("sseg/final.pt (sseg)")
    twin = tmp_path / "sseg" / "final.pt"
    twin.parent.mkdir()
    twin.write_bytes(tiny["sseg"].read_bytes())
    other = ModelShelf()
    first, second = other.add_checkpoint(tiny["sseg"]), other.add_checkpoint(twin)
    assert first.label == "sseg/final.pt (sseg)" and second.label == f"sseg/final.pt (sseg) [{twin}]"
    assert other.labels() == [first.label, second.label]


def test_the_shelf_refuses_what_it_cannot_offer(tmp_path):
    shelf = ModelShelf()
    with pytest.raises(FileNotFoundError, match="missing.pt: weights not found"):
        shelf.add_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.pt"):
        shelf.add_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(ConfigError, match="unknown training-free method 'proxyclip'"):
        shelf.add_method("proxyclip")
    with pytest.raises(UserError, match="clip_vitb16.*not-here"):
        shelf.add_method("maskclip", "clip_vitb16", str(tmp_path / "not-here"))
    with pytest.raises(ConfigError, match=r"no model 'x' on this page \(models: none\)"):
        shelf.get("x")


def test_maskclip_needs_a_tokenizer_for_typed_names(tmp_path):
    folder = clip_folder(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    with pytest.raises(ConfigError, match="without a CLIP tokenizer"):
        ModelShelf().add_method("maskclip", "clip_vitb16", str(folder))


# -- the segmentation behind the Segment button ----------------------------------------------------------
def test_segment_for_page_with_every_kind_of_model(shelf, scene):
    fixed = shelf.get("unimatch/final_ema.safetensors (unimatch_v2)")
    answer = segment_for_page(fixed, scene, "ignored for a fixed model")
    assert [row["name"] for row in answer.table] == fixed.classes
    assert sum(row["share"] for row in answer.table) == pytest.approx(1.0)
    assert answer.message.startswith("unimatch/final_ema.safetensors (unimatch_v2): 12 classes on a 80 x 64 image")
    for label in ("sseg/final.pt (sseg)", "maskclip (clip_vitb16)", "naclip (clip_vitb16)"):
        answer = segment_for_page(shelf.get(label), scene, " sky, grass,,ball ", alpha=1.0)
        assert [row["name"] for row in answer.table] == ["sky", "grass", "ball"]
        assert sum(row["share"] for row in answer.table) == pytest.approx(1.0)
        assert answer.picture.shape[0] >= 64 and answer.picture.shape[1] > 80
    answer = segment_for_page(shelf.get("kmeans (pixels8)"), scene, "", regions=3)
    assert [row["name"] for row in answer.table] == ["region 1", "region 2", "region 3"]
    assert sum(row["share"] for row in answer.table) == pytest.approx(1.0)


class HalfAndHalf:
    """A closed-vocabulary stand-in: class 0 on the top half, class 2 on the bottom half."""

    class_names = ["sky", "grass", "ball"]

    def prepare(self, names, protocol):
        pass

    def __call__(self, x):
        scores = torch.zeros(1, 3, *x.shape[2:])
        scores[:, 0, : x.shape[2] // 2] = 9.0
        scores[:, 2, x.shape[2] // 2:] = 9.0
        return scores


def test_a_grouping_clip_run_is_an_open_vocabulary_model(scene, tmp_path):
    """The grouping_clip recipe's exported region tokens come back with the run's CLIP and grouping encoder,
    and label the typed class names."""
    from grouping_clip_tiny import gclip_args, write_tiny_clip
    from leafseg.registry import recipe_module
    from sseg_tiny import write_world

    world, clip = write_world(tmp_path / "world"), write_tiny_clip(tmp_path / "clip")
    run = recipe_module("grouping_clip").run(None, gclip_args(world, clip, tmp_path / "run", "iterations=2"))
    model = ModelShelf().add_checkpoint(run["weights"])
    assert (model.label, model.vocabulary, model.classes) == ("run/final.safetensors (grouping_clip)", "open", None)
    answer = segment_for_page(model, scene, "sky, grass, ball")
    assert [row["name"] for row in answer.table] == ["sky", "grass", "ball"]
    assert sum(row["share"] for row in answer.table) == pytest.approx(1.0)
    assert answer.picture.shape[0] >= 64 and answer.picture.shape[1] > 80


def test_the_picture_is_the_overlay_at_the_images_own_size(scene):
    model = PageModel("halves", HalfAndHalf(), HalfAndHalf.class_names, "fixed", "")
    answer = segment_for_page(model, scene, None, alpha=0.3)
    labels = np.zeros((64, 80), np.uint8)
    labels[32:] = 2
    assert answer.picture.shape[0] == 64 and answer.picture.shape[1] > 80
    assert np.array_equal(answer.picture[:, :80], overlay(scene, labels, palette(3), alpha=0.3))
    assert [(row["name"], row["share"]) for row in answer.table] == [("sky", 0.5), ("grass", 0.0), ("ball", 0.5)]
    assert answer.message.startswith("halves: 3 classes on a 80 x 64 image")


def test_a_large_image_is_shrunk_for_the_model_but_answered_at_its_size(shelf, scene):
    big = np.repeat(np.repeat(scene, 4, axis=0), 4, axis=1)  # 256 x 320
    answer = segment_for_page(shelf.get("maskclip (clip_vitb16)"), big, "sky, grass", max_side=64)
    assert answer.picture.shape[:2] >= (256, 321) and "shrunk to 64 px" in answer.message
    assert sum(row["share"] for row in answer.table) == pytest.approx(1.0)


@pytest.mark.parametrize(("image", "text", "message"), [
    (None, "sky", "No image yet"),
    ("scene", "", "Type at least one class name"),
    ("scene", " , ,", "Type at least one class name"),
    ("scene", "sky, grass, sky", "sky appears more than once"),
    (np.zeros((4, 4, 2), np.uint8), "sky", "Cannot read this image"),
])
def test_bad_input_is_a_sentence_for_the_page(shelf, scene, image, text, message):
    image = scene if isinstance(image, str) else image
    with pytest.raises(UserError, match=message):
        segment_for_page(shelf.get("maskclip (clip_vitb16)"), image, text)


def test_class_names_and_images_from_the_page():
    assert parse_class_names("sky,  grass ,ball,") == ["sky", "grass", "ball"]
    assert as_rgb(np.full((3, 4), 9, np.uint8)).shape == (3, 4, 3)
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 3] = 255
    assert as_rgb(rgba).shape == (3, 4, 3) and (as_rgb(rgba) == 0).all()


def test_kmeans_regions_are_named_and_bounded(shelf):
    assert class_names_for(shelf.get("kmeans (pixels8)"), "sky, grass", 3) == ["region 1", "region 2", "region 3"]
    with pytest.raises(UserError, match="1 to 64 regions"):
        class_names_for(shelf.get("kmeans (pixels8)"), None, 0)


# -- the table and the scenes -----------------------------------------------------------------------------
def test_shares_html_lists_classes_largest_first_with_colours():
    table = [{"index": 0, "name": "sky", "colour": [1, 2, 3], "share": 0.25},
             {"index": 1, "name": "<b>grass</b>", "colour": [4, 5, 6], "share": 0.75},
             {"index": 2, "name": "ball", "colour": [7, 8, 9], "share": 0.0},
             {"index": 3, "name": "tree", "colour": [7, 8, 9], "share": 0.0}]
    text = shares_html(table)
    assert text.index("&lt;b&gt;grass&lt;/b&gt;") < text.index(">sky<") < text.index("not in the image: ball, tree")
    assert "<b>" not in text and "75.0 %" in text and "25.0 %" in text and "0.0 %" not in text
    assert 'data-share="0.250000"' in text and "background:rgb(4, 5, 6)" in text
    assert text.count("data-name=") == 2 and 'data-absent="ball, tree"' in text
    assert "not in the image" not in shares_html(table[:2])


def test_write_scenes(tmp_path):
    paths = write_scenes(tmp_path / "scenes", 3, size=48, seed=2)
    assert [p.name for p in paths] == ["scene_1.png", "scene_2.png", "scene_3.png"]
    assert read_image(paths[0]).shape == (48, 48, 3)
    assert not np.array_equal(read_image(paths[0]), read_image(paths[1]))


# -- the page's handlers: every error is a message, the server never sees an exception -------------------
def test_the_page_builds_and_its_handlers_answer_with_messages(shelf, scene, monkeypatch):
    from leafseg.serve import page as page_module

    page = page_module.build_page(shelf, [])
    assert type(page).__name__ == "Blocks"
    label = "maskclip (clip_vitb16)"
    picture, table, message = page_module._answer(shelf, label, scene, "sky, grass", 4, 0.5, 1024)
    assert picture.shape[0] >= 64 and "sky" in table and message.startswith(label)
    assert page_module._answer(shelf, label, None, "sky", 4, 0.5, 1024) == (
        None, "", "**Cannot segment:** No image yet: upload one, paste one, or pick a synthetic scene.")
    assert page_module._answer(shelf, "gone", scene, "sky", 4, 0.5, 1024)[2].startswith("**Cannot segment:** no model")

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(page_module, "segment_for_page", broken)
    picture, table, message = page_module._answer(shelf, label, scene, "sky", 4, 0.5, 1024)
    assert picture is None and message.startswith("**Internal error** (RuntimeError: a bug)")


def test_the_class_box_follows_the_model(shelf):
    import gradio as gr

    from leafseg.serve.page import _model_widgets, class_box

    fixed = class_box(shelf.get("unimatch/final_ema.safetensors (unimatch_v2)"))
    assert fixed["interactive"] is False and fixed["value"].startswith("sky, grass, water")
    assert class_box(shelf.get("maskclip (clip_vitb16)")) == {
        "value": None, "interactive": True, "visible": True, "label": "class names, comma-separated"}
    assert class_box(shelf.get("kmeans (pixels8)"))["visible"] is False
    box, regions, about = _model_widgets(gr, shelf.get("kmeans (pixels8)"))
    assert box["visible"] is False and "value" not in box and regions["visible"] is True
    assert about == f"*{shelf.get('kmeans (pixels8)').about}*"
    box, regions, _ = _model_widgets(gr, shelf.get("unimatch/final_ema.safetensors (unimatch_v2)"))
    assert box["interactive"] is False and box["value"].startswith("sky, grass") and regions["visible"] is False


def test_loading_a_typed_path(shelf, tiny, tmp_path):
    import gradio as gr

    from leafseg.serve.page import _load

    other = ModelShelf()
    other.add_method("kmeans")
    update, message = _load(gr, other, f"  {tiny['sseg']} ")
    assert message == "Loaded sseg/final.pt (sseg)." and update["value"] == "sseg/final.pt (sseg)"
    assert update["choices"] == ["kmeans (pixels8)", "sseg/final.pt (sseg)"]
    missing = tmp_path / "nope.pt"
    assert _load(gr, other, str(missing))[1] == f"**Cannot load:** {missing}: weights not found"
    assert _load(gr, other, "  ")[1].startswith("**Cannot load:** type the path")


# -- the command: every mistake is one line and exit status 2, before a server starts ---------------------
def _busy_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


@pytest.mark.parametrize("argv", [
    ["serve", "--model", "missing.pt"],
    ["serve", "--backbone", "pixels8"],
    ["serve", "--method", "maskclip", "--backbone", "clip_vitb16", "--weights", "no/such/folder"],
    ["serve", "--port", "70000"],
    ["serve", "--host", "no-such-host.invalid"],
])
def test_serve_checks_its_arguments_before_starting(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--scenes", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("leafseg: error: ") and err.count("\n") == 1, err


def test_serve_refuses_a_port_in_use(capsys):
    with _busy_port() as s:
        port = s.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
