"""``leafseg segment``'s outputs: the labels PNG, the overlay with its legend, the classes JSON with colours
and pixel shares, and the overlay opacity ``--alpha``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from leafseg.cli import build_parser, main
from leafseg.data.io import palette, read_mask, write_image
from leafseg.errors import ConfigError
from leafseg.eval.report import overlay, with_legend
from leafseg.eval.segment import (
    DEFAULT_ALPHA,
    class_table,
    model_class_names,
    predict_labels,
    render_segmentation,
    segment,
    write_segmentation,
)

NAMES = ["sky", "grass", "ball", "tree"]


def scene(h: int = 24, w: int = 32):
    """An image and a label map with classes 0, 1 and 2 (class 3, "tree", is absent)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    labels = np.zeros((h, w), np.uint8)
    labels[h // 2:] = 1
    labels[h // 2:, w // 2:] = 2
    return image, labels


def swatch_at(picture: np.ndarray, width: int, i: int, swatch: int = 12, pad: int = 4) -> np.ndarray:
    """The pixels of legend entry i's colour square (the layout :func:`with_legend` documents)."""
    y, x = pad + i * (swatch + pad), width + pad
    return picture[y:y + swatch, x:x + swatch]


def test_legend_keeps_the_image_and_adds_a_swatch_per_entry():
    image, _ = scene()
    colours = palette(3)[[0, 2]]
    out = with_legend(image, ["sky", "ball"], colours)
    assert out.dtype == np.uint8 and out.shape[0] >= 24 and out.shape[1] > 32
    assert np.array_equal(out[:24, :32], image)  # the image itself, at its own resolution
    for i in range(2):
        assert (swatch_at(out, 32, i) == colours[i]).all()
    assert (out[:, 32 + 4 + 12 + 4:] < 64).all(axis=-1).any()  # dark text beside the squares


def test_legend_taller_than_a_small_image_grows_the_canvas():
    image = np.full((8, 8, 3), 7, np.uint8)
    out = with_legend(image, NAMES, palette(4))
    assert out.shape[0] == 4 + 4 * (12 + 4) and np.array_equal(out[:8, :8], image)
    assert (out[8:, :8] == 255).all()  # white below the image


def test_class_table_lists_every_class_with_colour_and_share():
    _, labels = scene()
    table = class_table(labels, NAMES, palette(4))
    assert [row["name"] for row in table] == NAMES and [row["index"] for row in table] == [0, 1, 2, 3]
    assert [row["colour"] for row in table] == palette(4).tolist()
    assert [row["share"] for row in table] == [0.5, 0.25, 0.25, 0.0]
    assert sum(row["share"] for row in table) == pytest.approx(1.0)


def test_write_segmentation_files(tmp_path):
    image, labels = scene()
    paths = write_segmentation(tmp_path, "photo", image, labels, NAMES, alpha=0.3)
    assert paths == {"labels": tmp_path / "photo_labels.png", "overlay": tmp_path / "photo_overlay.png",
                     "classes": tmp_path / "photo_classes.json"}
    assert np.array_equal(read_mask(paths["labels"]), labels)
    assert Image.open(paths["labels"]).mode == "P"
    picture = np.asarray(Image.open(paths["overlay"]).convert("RGB"))
    assert picture.shape[1] > 32 and picture.shape[0] >= 24
    assert np.array_equal(picture[:24, :32], overlay(image, labels, palette(4), alpha=0.3))
    colours = palette(4)
    for entry, cls in enumerate([0, 1, 2]):  # the legend lists the classes present, in index order
        assert (swatch_at(picture, 32, entry) == colours[cls]).all()
    assert picture.shape[0] == max(24, 4 + 3 * 16)  # "tree" is absent: no fourth entry
    table = json.loads(paths["classes"].read_text())
    assert [row["name"] for row in table] == NAMES
    assert sum(row["share"] for row in table) == pytest.approx(1.0)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), "0.5", True])
def test_write_segmentation_refuses_a_bad_alpha(tmp_path, alpha):
    image, labels = scene()
    with pytest.raises(ConfigError, match="alpha"):
        write_segmentation(tmp_path, "photo", image, labels, NAMES, alpha=alpha)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("text", ["-0.1", "1.01", "half", "nan"])
def test_cli_alpha_must_be_between_0_and_1(text, capsys):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["segment", "x.png", "--weights", "c.pt", "--alpha", text])
    assert stop.value.code == 2 and "--alpha" in capsys.readouterr().err


def test_cli_alpha_default_is_the_overlays():
    assert build_parser().parse_args(["segment", "x.png", "--weights", "c.pt"]).alpha == DEFAULT_ALPHA
    assert build_parser().parse_args(["segment", "x.png", "--weights", "c.pt", "--alpha", "0"]).alpha == 0.0


class FixedModel:
    """A closed-vocabulary stand-in for a loaded model: class 0 on the top half, class 2 elsewhere."""

    class_names = ["sky", "grass", "ball"]
    activation = "softmax"

    def prepare(self, names, protocol):
        pass

    def __call__(self, x):
        b, _, h, w = x.shape
        scores = torch.zeros(b, 3, h, w)
        scores[:, 0, : h // 2] = 5.0
        scores[:, 2, h // 2:] = 5.0
        return scores


def test_segment_command_end_to_end(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("leafseg.eval.methods.load_model", lambda path, device="cpu": FixedModel())
    image, _ = scene()
    write_image(tmp_path / "photo.png", image)
    (tmp_path / "model.pt").write_bytes(b"")
    code = main(["segment", str(tmp_path / "photo.png"), "--weights", str(tmp_path / "model.pt"),
                 "--out", str(tmp_path / "out"), "--alpha", "1"])
    assert code == 0, capsys.readouterr().err
    table = json.loads((tmp_path / "out" / "photo_classes.json").read_text())
    assert [(row["name"], row["share"]) for row in table] == [("sky", 0.5), ("grass", 0.0), ("ball", 0.5)]
    picture = np.asarray(Image.open(tmp_path / "out" / "photo_overlay.png").convert("RGB"))
    colours = palette(3)
    assert (picture[1, 1] == colours[0]).all() and (picture[20, 1] == colours[2]).all()  # alpha 1: colours only
    assert (swatch_at(picture, 32, 0) == colours[0]).all() and (swatch_at(picture, 32, 1) == colours[2]).all()


def test_segment_refuses_a_bad_alpha_before_loading(tmp_path):
    with pytest.raises(ConfigError, match="alpha"):
        segment(tmp_path / "photo.png", tmp_path / "missing.pt", tmp_path, alpha=2)


# -- the functions behind `leafseg segment` and the page of `leafseg serve` ----------------------------------
def test_predict_labels_at_the_images_size_even_when_the_model_sees_it_smaller():
    seen = []

    class Recording(FixedModel):
        def __call__(self, x):
            seen.append(tuple(x.shape[2:]))
            return super().__call__(x)

    image = np.zeros((40, 100, 3), np.uint8)
    labels, names = predict_labels(Recording(), image, ["sky", "grass", "ball"], max_side=50)
    assert seen == [(20, 50)] and labels.shape == (40, 100) and labels.dtype == np.uint8
    assert (labels[:20] == 0).all() and (labels[20:] == 2).all() and names == ["sky", "grass", "ball"]
    predict_labels(Recording(), image, ["sky", "grass", "ball"], max_side=100)
    assert seen[-1] == (40, 100)  # already small enough: unchanged


def test_predict_labels_takes_the_best_name_of_each_class():
    class Synonyms(FixedModel):
        query_classes = torch.tensor([0, 1, 1])  # class 1 has two names; the second one fires on the bottom half

        def __call__(self, x):
            scores = torch.zeros(1, 3, *x.shape[2:])
            scores[:, 2, x.shape[2] // 2:] = 5.0
            return scores

    labels, names = predict_labels(Synonyms(), np.zeros((8, 8, 3), np.uint8), ["sky", "car"])
    assert names == ["sky", "car"] and labels.max() == 1 and (labels[4:] == 1).all()


def test_predict_labels_background_threshold():
    labels, names = predict_labels(FixedModel(), np.zeros((8, 8, 3), np.uint8), ["sky", "grass", "ball"],
                                   bg_threshold=0.999)
    assert names == ["background", "sky", "grass", "ball"] and (labels == 0).all()


def test_predict_labels_of_a_cluster_method():
    from leafseg.eval.methods import KMeansSegmenter
    from leafseg.grouping import PixelFeatures

    image, _ = scene(40, 48)
    labels, names = predict_labels(KMeansSegmenter(PixelFeatures(8)), image, ["region 1", "region 2", "region 3"])
    assert labels.shape == (40, 48) and labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2}
    assert names == ["region 1", "region 2", "region 3"]
    with pytest.raises(ConfigError, match="cluster method"):
        predict_labels(KMeansSegmenter(PixelFeatures(8)), image, ["a", "b"], bg_threshold=0.5)


def test_predict_labels_refuses_no_names_or_too_many():
    with pytest.raises(ConfigError, match="1 to 255"):
        predict_labels(FixedModel(), np.zeros((8, 8, 3), np.uint8), [])
    with pytest.raises(ConfigError, match="1 to 255"):
        predict_labels(FixedModel(), np.zeros((8, 8, 3), np.uint8), [f"c{i}" for i in range(256)])


def test_model_class_names():
    class Open:
        pass

    assert model_class_names(FixedModel(), None, "m.pt") == ["sky", "grass", "ball"]
    assert model_class_names(FixedModel(), ["sky", "grass", "ball"], "m.pt") == ["sky", "grass", "ball"]
    assert model_class_names(Open(), ["cat", "dog"], "m.pt") == ["cat", "dog"]
    with pytest.raises(ConfigError, match=r"m\.pt is an open-vocabulary model.*\(--classes\)"):
        model_class_names(Open(), [], "m.pt")
    own = r"predicts its own 3 classes \(sky, grass, ball\); leave out the class names$"
    with pytest.raises(ConfigError, match=own):
        model_class_names(FixedModel(), ["cat"], "m.pt", option=None)


def test_render_segmentation_is_what_write_segmentation_writes(tmp_path):
    image, labels = scene()
    picture, table = render_segmentation(image, labels, NAMES, alpha=0.3)
    paths = write_segmentation(tmp_path, "photo", image, labels, NAMES, alpha=0.3)
    assert np.array_equal(np.asarray(Image.open(paths["overlay"]).convert("RGB")), picture)
    assert json.loads(paths["classes"].read_text()) == table
    assert np.array_equal(picture[:24, :32], overlay(image, labels, palette(4), alpha=0.3))
