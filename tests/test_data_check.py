"""`leafseg data check`: every injected fault is caught and its file named; the exit status says so."""

import argparse
import json

import numpy as np
import pytest

from leafseg.data.check import check_dataset
from leafseg.data.cli_check import register_cli
from leafseg.data.io import DataError, palette, write_image, write_mask

H, W = 6, 8


def _voc(top, ids):
    root = top / "VOCdevkit" / "VOC2012"
    for k, i in enumerate(ids):
        write_image(root / "JPEGImages" / f"{i}.jpg", np.full((H, W, 3), 30 * k, np.uint8))
        mask = np.full((H, W), 255, np.uint8)
        mask[1:-1, 1:-1] = k
        write_mask(root / "SegmentationClass" / f"{i}.png", mask, palette=palette())
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "val.txt").write_text("\n".join(ids) + "\n")
    return root


def _run(*argv):
    parser = argparse.ArgumentParser(prog="leafseg")
    register_cli(parser.add_subparsers(required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


@pytest.fixture
def faulty(tmp_path):
    ids = ["good", "corrupt", "truncated", "jpegcut", "size", "label", "nomask", "noimage"]
    root = _voc(tmp_path, ids)
    (root / "JPEGImages" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    cut = root / "JPEGImages" / "jpegcut.jpg"
    cut.write_bytes(cut.read_bytes()[:200])
    png = root / "SegmentationClass" / "truncated.png"
    png.write_bytes(png.read_bytes()[:-30])
    write_mask(root / "SegmentationClass" / "size.png", np.zeros((H, W + 2), np.uint8))
    label = np.zeros((H, W), np.uint8)
    label[0, :3] = 30
    label[1, 0] = 21
    write_mask(root / "SegmentationClass" / "label.png", label)
    (root / "SegmentationClass" / "nomask.png").unlink()
    (root / "JPEGImages" / "noimage.jpg").unlink()
    return tmp_path, root


def test_check_names_every_fault(faulty):
    top, root = faulty
    report = check_dataset("voc", top, "val", workers=0, progress=False)
    assert not report.ok and report.samples == 8
    names = {kind: sorted(p.rsplit("/", 1)[-1] for p in report.files(kind)) for kind in report.problems}
    assert names == {
        "unreadable": ["corrupt.jpg", "jpegcut.jpg", "truncated.png"],
        "size_mismatch": ["size.png"],
        "bad_labels": ["label.png"],
        "missing_mask": ["nomask.png"],
        "missing_image": ["noimage.jpg"],
    }
    assert report.label_values == {21: 1, 30: 3}
    assert report.counts() == {"unreadable": 3, "size_mismatch": 1, "bad_labels": 1, "missing_mask": 1,
                               "missing_image": 1}
    text = report.summary(limit=2)
    assert "unreadable files: 3" in text and "... and 1 more" in text and "FAILED: 7 problems" in text
    assert "21 (1 px), 30 (3 px)" in text and "mask is 6x10 (HxW)" in text


def test_check_cli_exit_status_and_json(faulty, capsys):
    top, root = faulty
    out = top / "report.json"
    assert _run("data", "check", "voc", str(top), "--split", "val", "--workers", "2", "--quiet",
                "--json", str(out)) == 1
    printed = capsys.readouterr().out
    assert "corrupt.jpg" in printed and "FAILED" in printed
    saved = json.loads(out.read_text())
    assert saved["ok"] is False and saved["counts"]["unreadable"] == 3 and saved["label_values"] == {"21": 1, "30": 3}
    assert saved["problems"]["missing_mask"][0]["file"].endswith("nomask.png")


def test_clean_tree_passes(tmp_path, capsys):
    _voc(tmp_path, ["a", "b", "c"])
    assert _run("data", "check", "voc", str(tmp_path), "--workers", "0", "--quiet") == 0
    assert "OK: no problems found" in capsys.readouterr().out
    assert check_dataset("voc20", tmp_path, workers=0, progress=False).ok


def test_check_folder_options_and_masks_without_images(tmp_path, capsys):
    for stem in ("a", "b"):
        write_image(tmp_path / "images" / f"{stem}.png", np.zeros((H, W, 3), np.uint8))
        write_mask(tmp_path / "masks" / f"{stem}_m.png", np.ones((H, W), np.uint8))
    write_mask(tmp_path / "masks" / "orphan_m.png", np.ones((H, W), np.uint8))
    assert _run("data", "check", "folder", str(tmp_path), "-o", "classes=[sky,road]", "-o", "mask_suffix=_m",
                "--workers", "0", "--quiet") == 1
    printed = capsys.readouterr().out
    assert "masks without images: 1" in printed and "orphan_m.png" in printed
    write_mask(tmp_path / "masks" / "a_m.png", np.full((H, W), 2, np.uint8))
    report = check_dataset("folder", tmp_path, workers=0, progress=False, classes=["sky", "road"], mask_suffix="_m")
    assert report.files("bad_labels")[0].endswith("a_m.png") and report.label_values == {2: H * W}


def test_layout_errors_are_raised_not_reported(tmp_path):
    with pytest.raises(DataError, match="not a Pascal VOC 2012 folder"):
        check_dataset("voc", tmp_path, workers=0, progress=False)
