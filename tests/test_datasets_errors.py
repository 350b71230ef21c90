"""Dataset errors: bad layouts, bad samples (stop or skip-and-count), and split files."""

import numpy as np
import pytest
import torch

from leafseg.data.datasets import build_dataset, read_split_file, write_split_file
from leafseg.data.io import DataError, write_image, write_mask

H, W = 6, 8


def _voc(top, ids=("a", "b", "c", "d")):
    root = top / "VOCdevkit" / "VOC2012"
    for k, i in enumerate(ids):
        write_image(root / "JPEGImages" / f"{i}.jpg", np.full((H, W, 3), 40 * k, np.uint8))
        write_mask(root / "SegmentationClass" / f"{i}.png", np.full((H, W), k, np.uint8))
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "val.txt").write_text("\n".join(ids) + "\n")
    return root


def test_layout_errors_name_the_path_and_show_the_tree(tmp_path):
    with pytest.raises(DataError, match=r"(?s)nothing.*root folder not found.*JPEGImages/<id>\.jpg"):
        build_dataset("voc", tmp_path / "nothing")
    with pytest.raises(DataError, match=r"(?s)not a Pascal VOC 2012 folder.*SegmentationClass/<id>\.png"):
        build_dataset("voc", tmp_path)
    root = _voc(tmp_path)
    with pytest.raises(DataError, match=r"(?s)train\.txt: split list not found \(found: val\.txt\).*ImageSets"):
        build_dataset("voc", tmp_path, "train")
    with pytest.raises(DataError, match=r"(?s)images/val2017: image \(val\) folder not found.*coco_stuff164k/"):
        (tmp_path / "coco" / "annotations").mkdir(parents=True)
        build_dataset("coco_stuff27", tmp_path / "coco", "val")
    with pytest.raises(DataError, match=r"(?s)leftImg8bit/val: image \(val\) folder not found \(found: train\)"):
        (tmp_path / "cs" / "leftImg8bit" / "train").mkdir(parents=True)
        build_dataset("cityscapes", tmp_path / "cs", "val")
    with pytest.raises(ValueError, match="unknown dataset 'vocc'; known: ade20k, camvid"):
        build_dataset("vocc", root)
    with pytest.raises(ValueError, match="does not take option.*from_raw.*it takes: mask_dir"):
        build_dataset("voc", root, from_raw=True)
    with pytest.raises(ValueError, match="on_error"):
        build_dataset("voc", root, on_error="ignore")
    with pytest.raises(ValueError, match="needs classes="):
        build_dataset("folder", tmp_path)


def _break(root):
    """b: truncated JPEG, c: mask of another size, d: label 30 (VOC has 21), e: no mask."""
    data = (root / "JPEGImages" / "b.jpg").read_bytes()
    (root / "JPEGImages" / "b.jpg").write_bytes(data[: len(data) // 2])
    write_mask(root / "SegmentationClass" / "c.png", np.zeros((H + 1, W), np.uint8))
    write_mask(root / "SegmentationClass" / "d.png", np.full((H, W), 30, np.uint8))


def test_bad_samples_stop_with_the_file_named(tmp_path):
    root = _voc(tmp_path, ids=("a", "b", "c", "d", "e"))
    (root / "SegmentationClass" / "e.png").unlink()
    _break(root)
    ds = build_dataset("voc", tmp_path)
    assert ds[0]["name"] == "a"
    with pytest.raises(DataError, match=r"b\.jpg: cannot decode image"):
        ds[1]
    with pytest.raises(DataError, match=r"c\.png: mask is 7x8 \(HxW\) but its image is 6x8"):
        ds[2]
    with pytest.raises(DataError, match=r"d\.png: 48 pixels have stored values outside the 21 classes.*30 \(48 px\)"):
        ds[3]
    with pytest.raises(DataError, match=r"e\.png: mask file not found"):
        ds[4]


def test_skip_mode_substitutes_and_counts(tmp_path):
    root = _voc(tmp_path, ids=("a", "b", "c", "d", "e", "f"))
    (root / "SegmentationClass" / "e.png").unlink()
    _break(root)
    ds = build_dataset("voc", tmp_path, on_error="skip")
    item = ds[1]  # b, c, d, e are bad: f stands in, carrying b's message (the others come at their own index)
    assert item["name"] == "f" and "\n" not in item["skipped"] and "b.jpg: cannot decode image" in item["skipped"]
    assert len(ds.skipped) == 4 and ds[0]["skipped"] == ""  # all four were met on the way
    stream = [build_dataset("voc", tmp_path, on_error="skip")[i]["skipped"] for i in range(6)]
    assert [s.split(":")[0].rsplit("/", 1)[-1] for s in stream if s] == ["b.jpg", "c.png", "d.png", "e.png"]
    assert [ds[i]["name"] for i in range(len(ds))] == ["a", "f", "f", "f", "f", "f"]  # never raises
    assert len(ds.skipped) == 4  # each bad file counted once
    assert [x["name"] for x in ds.iter_valid()] == ["a", "f"]

    fresh = build_dataset("voc", tmp_path, on_error="skip")
    loader = torch.utils.data.DataLoader(fresh, batch_size=3, num_workers=2)
    names = []
    for batch in loader:  # the batches keep their size; messages come back from the workers
        assert batch["image"].shape == (3, 3, H, W)
        fresh.collect_skipped(batch)
        names += [n for n, s in zip(batch["name"], batch["skipped"], strict=True) if not s]
    assert names == ["a", "f"] and len(fresh.skipped) == 4
    assert sorted(m.split(":")[0].rsplit("/", 1)[-1] for m in fresh.skipped) == ["b.jpg", "c.png", "d.png", "e.png"]
    assert [x["name"] for x in build_dataset("voc", tmp_path, on_error="skip").iter_valid(num_workers=2)] == ["a", "f"]


def test_skip_mode_with_nothing_good_raises(tmp_path):
    root = _voc(tmp_path, ids=("a",))
    (root / "SegmentationClass" / "a.png").unlink()
    with pytest.raises(DataError, match="all 1 samples of voc split 'val' are bad"):
        build_dataset("voc", tmp_path, on_error="skip")[0]


def test_split_files_round_trip_and_select_exactly(tmp_path):
    root = _voc(tmp_path)
    pairs = [(root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png") for i in ("d", "b")]
    path = write_split_file(pairs, tmp_path / "splits" / "1_4" / "labeled.txt", root=root)
    assert path.read_text() == ("JPEGImages/d.jpg SegmentationClass/d.png\n"
                                "JPEGImages/b.jpg SegmentationClass/b.png\n")
    assert read_split_file(path, root) == pairs
    ds = build_dataset("voc", tmp_path, split_file=path)
    assert ds.split == "labeled" and ds.samples == pairs and [ds[i]["name"] for i in range(2)] == ["d", "b"]
    assert np.array_equal(ds[0]["mask"].numpy(), np.full((H, W), 3))
    assert build_dataset("voc20", tmp_path, "1_4", split_file=path).split == "1_4"
    bad = tmp_path / "bad.txt"
    bad.write_text("JPEGImages/a.jpg SegmentationClass/a.png\nJPEGImages/b.jpg\n")
    with pytest.raises(DataError, match=r"bad\.txt, line 2: expected 'image_relpath mask_relpath'"):
        build_dataset("voc", root, split_file=bad)
    with pytest.raises(ValueError, match="whitespace"):
        write_split_file([("a b.jpg", "a.png")], tmp_path / "x.txt")
    with pytest.raises(ValueError, match="not under the dataset root"):
        write_split_file([(tmp_path / "a.jpg", root / "a.png")], tmp_path / "x.txt", root=root)


def test_transform_is_applied(tmp_path):
    _voc(tmp_path)

    def flip(item):
        return {**item, "mask": item["mask"].flip(-1) + 1}

    ds = build_dataset("voc", tmp_path, transform=flip)
    assert int(ds[2]["mask"][0, 0]) == 3
