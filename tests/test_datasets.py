"""Benchmark readers on fixture trees in each exact on-disk layout: what is read, value by value."""

import numpy as np
import pytest
import torch

from leafseg.data.datasets import SegmentationDataset, build_dataset, list_datasets
from leafseg.data.io import DataError, palette, write_image, write_mask

H, W = 6, 8


def _image(seed, h=H, w=W):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _values(values, seed=0, h=H, w=W):
    """An (h, w) uint8 mask cycling through ``values`` (shifted by seed)."""
    flat = np.resize(np.roll(np.asarray(values, dtype=np.uint8), seed), h * w)
    return flat.reshape(h, w)


def _reduce(m):
    m = m.astype(np.int64)
    return np.where((m == 0) | (m == 255), 255, m - 1)


def test_registry_names():
    assert list_datasets() == sorted([
        "voc", "voc20", "context60", "context59", "coco_object", "coco_stuff171", "coco_stuff27",
        "cityscapes", "cityscapes27", "ade20k", "camvid", "folder", "synthetic"])


@pytest.fixture(scope="module")
def voc_tree(tmp_path_factory):
    top = tmp_path_factory.mktemp("voc")
    root = top / "VOCdevkit" / "VOC2012"
    ids = {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033", "2007_000042"], "aug": ["2008_000100"]}
    masks = {}
    for k, i in enumerate(ids["train"] + ids["val"] + ids["aug"]):
        write_image(root / "JPEGImages" / f"{i}.jpg", _image(k))
        m = np.full((H, W), 255, np.uint8)  # the void border band
        m[1:-1, 1:-1] = _values(range(21), k, H - 2, W - 2)
        masks[i] = m
        if i in ids["aug"]:
            write_mask(root / "SegmentationClassAug" / f"{i}.png", m)  # grey, as voc_aug.py writes
        else:
            write_mask(root / "SegmentationClass" / f"{i}.png", m, palette=palette())
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    for split in ("train", "val", "aug"):
        (sets / f"{split}.txt").write_text("\n".join(ids[split]) + "\n")
    (sets / "trainval.txt").write_text("\n".join(ids["train"] + ids["val"]) + "\n")
    return top, root, ids, masks


def test_voc_reads_palette_indices_with_void(voc_tree):
    top, root, ids, masks = voc_tree
    for given in (top, top / "VOCdevkit", root):  # any of these finds the VOC2012 folder
        ds = build_dataset("voc", given, "val")
        assert ds.root == root
    assert isinstance(ds, SegmentationDataset) and torch.utils.data.Dataset in type(ds).__mro__
    assert (ds.name, ds.split, len(ds), ds.num_classes, ds.ignore_index) == ("voc", "val", 2, 21, 255)
    assert ds.has_background and ds.classes[0] == "background" and len(ds.classes) == 21
    item = ds[1]
    assert set(item) == {"image", "mask", "name", "image_path", "mask_path"}
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, H, W)
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["mask"].dtype == torch.int64 and np.array_equal(item["mask"].numpy(), masks["2007_000042"])
    assert item["name"] == "2007_000042" and item["mask_path"].endswith("SegmentationClass/2007_000042.png")
    assert ds.samples[0] == (root / "JPEGImages/2007_000033.jpg", root / "SegmentationClass/2007_000033.png")
    assert len(build_dataset("voc", top, "trainval")) == 4


def test_voc20_reduces_zero_label(voc_tree):
    top, _, _, masks = voc_tree
    ds = build_dataset("voc20", top, "val")
    assert ds.num_classes == 20 and not ds.has_background and ds.classes[0] == "aeroplane"
    got = ds[0]["mask"].numpy()
    assert np.array_equal(got, _reduce(masks["2007_000033"]))
    assert got.max() == 255 and got[got != 255].max() == 19


def test_voc_trainaug_concatenates_class_and_aug_masks(voc_tree):
    top, root, ids, masks = voc_tree
    ds = build_dataset("voc", top, "trainaug")
    assert len(ds) == 3
    assert [m.parent.name for _, m in ds.samples] == ["SegmentationClass"] * 2 + ["SegmentationClassAug"]
    assert np.array_equal(ds[2]["mask"].numpy(), masks["2008_000100"])


def _context_tree(top):
    root = top / "VOCdevkit" / "VOC2010"
    ids, masks = ["2008_000002", "2008_000003"], {}
    for k, i in enumerate(ids):
        write_image(root / "JPEGImages" / f"{i}.jpg", _image(k))
        masks[i] = _values(range(60), k * 7)
        write_mask(root / "SegmentationClassContext" / f"{i}.png", masks[i])
    sets = root / "ImageSets" / "SegmentationContext"
    sets.mkdir(parents=True)
    (sets / "val.txt").write_text("\n".join(ids) + "\n")
    return masks


def test_pascal_context_60_and_59(tmp_path):
    masks = _context_tree(tmp_path)
    ds60, ds59 = build_dataset("context60", tmp_path, "val"), build_dataset("context59", tmp_path, "val")
    assert (ds60.num_classes, ds59.num_classes) == (60, 59) and ds60.has_background and not ds59.has_background
    assert ds60.classes[1:] == ds59.classes and ds59.classes[-1] == "wood"
    for k, i in enumerate(masks):
        assert np.array_equal(ds60[k]["mask"].numpy(), masks[i])
        assert np.array_equal(ds59[k]["mask"].numpy(), _reduce(masks[i]))


COCO_RAW = [0, 2, 11, 12, 61, 62, 89, 90, 91, 100, 105, 123, 152, 170, 181, 255]
COCO_UNUSED = {11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90}
COCO_USED = [i for i in range(182) if i not in COCO_UNUSED]
STEGO27 = {0: 9, 2: 11, 11: 8, 12: 8, 61: 3, 62: 3, 89: 4, 90: 4, 91: 17, 100: 13, 105: 23, 123: 22, 152: 14,
           170: 18, 181: 24, 255: 255}


def _expected_171(v):
    return COCO_USED.index(v) if v in COCO_USED else 255


def _expected_object(v):
    return COCO_USED.index(v) + 1 if v <= 90 and v in COCO_USED else 0


@pytest.fixture
def coco_tree(tmp_path):
    root = tmp_path / "coco_stuff164k"
    ids = ["000000000139", "000000000285"]
    raw = {}
    for k, i in enumerate(ids):
        write_image(root / "images" / "val2017" / f"{i}.jpg", _image(k))
        raw[i] = _values(COCO_RAW, k)
        write_mask(root / "annotations" / "val2017" / f"{i}.png", raw[i])
    write_mask(root / "annotations" / "val2017" / "000000999999.png", raw[ids[0]])  # a mask without an image
    return tmp_path, root, ids, raw


def test_coco_from_raw_pngs(coco_tree):
    top, root, ids, raw = coco_tree
    ds171, obj, s27 = (build_dataset(n, top, "val") for n in ("coco_stuff171", "coco_object", "coco_stuff27"))
    assert (ds171.num_classes, obj.num_classes, s27.num_classes) == (171, 81, 27)
    assert obj.has_background and not ds171.has_background and not s27.has_background
    for k, i in enumerate(ids):
        m = raw[i]
        assert np.array_equal(ds171[k]["mask"].numpy(), np.vectorize(_expected_171)(m))
        assert np.array_equal(obj[k]["mask"].numpy(), np.vectorize(_expected_object)(m))
        assert np.array_equal(s27[k]["mask"].numpy(), np.vectorize(STEGO27.get)(m))
        assert ds171[k]["name"] == i
    assert [p.name for p in ds171.unpaired_masks] == ["000000999999.png"]
    assert len(build_dataset("coco_stuff171", root, "val2017")) == 2
    with pytest.raises(DataError, match=r"(?s)val2017: no converted masks \(\*_labelTrainIds\.png\).*from_raw=True"):
        build_dataset("coco_stuff171", top, "val", from_raw=False)


def test_coco_prefers_converted_masks_and_can_be_told_not_to(coco_tree):
    top, root, ids, raw = coco_tree
    ann = root / "annotations" / "val2017"
    for k, i in enumerate(ids):
        write_mask(ann / f"{i}_labelTrainIds.png", _values([3, 170, 255], k))
        write_mask(ann / f"{i}_instanceTrainIds.png", _values([0, 80, 7], k))
    ds = build_dataset("coco_stuff171", top, "val")
    assert ds.samples[0][1].name == f"{ids[0]}_labelTrainIds.png" and ds.unpaired_masks == []
    assert np.array_equal(ds[0]["mask"].numpy(), _values([3, 170, 255], 0))
    obj = build_dataset("coco_object", top, "val")
    assert np.array_equal(obj[1]["mask"].numpy(), _values([0, 80, 7], 1))
    raw171 = build_dataset("coco_stuff171", top, "val", from_raw=True)
    assert raw171.samples[0][1].name == f"{ids[0]}.png"
    assert np.array_equal(raw171[0]["mask"].numpy(), np.vectorize(_expected_171)(raw[ids[0]]))
    assert [p.name for p in raw171.unpaired_masks] == ["000000999999.png"]  # converted files are not orphans


def test_coco_stuff27_curated_list(coco_tree):
    top, root, ids, _ = coco_tree
    lst = root / "curated" / "val2017" / "Coco164kFull_Stuff_Coarse.txt"
    lst.parent.mkdir(parents=True)
    lst.write_text(ids[1] + "\n")
    ds = build_dataset("coco_stuff27", top, "val", image_list="curated")
    assert [s[0].name for s in ds.samples] == [f"{ids[1]}.jpg"] and ds.unpaired_masks == []
    assert len(build_dataset("coco_stuff27", top, "val", image_list=str(lst.relative_to(root)))) == 1


CS_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
            27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def _cityscapes_tree(top):
    root = top / "cityscapes"
    bases = ["frankfurt/frankfurt_000000_000294", "frankfurt/frankfurt_000000_000576", "lindau/lindau_000000_000019"]
    label_ids = {}
    for k, b in enumerate(bases):
        write_image(root / "leftImg8bit" / "val" / f"{b}_leftImg8bit.png", _image(k))
        label_ids[b] = _values(range(34), k)
        write_mask(root / "gtFine" / "val" / f"{b}_gtFine_labelIds.png", label_ids[b])
    write_mask(root / "gtFine" / "val" / f"{bases[1]}_gtFine_labelTrainIds.png", _values([5, 18, 255], 0))
    return root, bases, label_ids


def test_cityscapes_train_ids_read_or_converted(tmp_path):
    root, bases, label_ids = _cityscapes_tree(tmp_path)
    ds = build_dataset("cityscapes", tmp_path, "val")
    assert ds.num_classes == 19 and [ds.sample_name(i) for i in range(3)] == bases
    assert [m.name.rsplit("_", 1)[-1] for _, m in ds.samples] == ["labelIds.png", "labelTrainIds.png", "labelIds.png"]
    convert = np.vectorize(lambda v: CS_TRAIN.get(int(v), 255))
    assert np.array_equal(ds[0]["mask"].numpy(), convert(label_ids[bases[0]]))
    assert np.array_equal(ds[1]["mask"].numpy(), _values([5, 18, 255], 0))  # the converted file wins
    assert np.array_equal(ds[1]["image"].mul(255).round().byte().permute(1, 2, 0).numpy(), _image(1))
    forced = build_dataset("cityscapes", root, "val", masks="labelIds")
    assert np.array_equal(forced[1]["mask"].numpy(), convert(label_ids[bases[1]]))
    ds27 = build_dataset("cityscapes27", root, "val")
    assert ds27.num_classes == 27 and ds27.classes[2] == "parking"
    expected = label_ids[bases[2]].astype(np.int64) - 7
    assert np.array_equal(ds27[2]["mask"].numpy(), np.where(expected < 0, 255, expected))


def test_ade20k_reduce_zero_label(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    masks = {}
    for k in range(2):
        name = f"ADE_val_{k + 1:08d}"
        write_image(root / "images" / "validation" / f"{name}.jpg", _image(k))
        masks[name] = _values(range(151), k * 40)
        write_mask(root / "annotations" / "validation" / f"{name}.png", masks[name])
    ds = build_dataset("ade20k", tmp_path, "val")
    assert ds.num_classes == 150 and not ds.has_background and ds.classes[0] == "wall"
    assert ds[1]["name"] == "ADE_val_00000002"
    assert np.array_equal(ds[1]["mask"].numpy(), _reduce(masks["ADE_val_00000002"]))
    assert len(build_dataset("ade20k", root, "validation")) == 2
    shifted = root / "annotations" / "validation" / "ADE_val_00000001.png"
    write_mask(shifted, _values([0, 149, 255], 0))
    plain = build_dataset("ade20k", root, "val", reduce_zero_label=False)
    assert np.array_equal(plain[0]["mask"].numpy(), _values([0, 149, 255], 0))


def test_camvid_void_is_ignored_and_segnet_lists_read(tmp_path):
    root = tmp_path / "CamVid"
    lines = []
    for k, name in enumerate(["0001TP_008550", "Seq05VD_f00000"]):
        write_image(root / "val" / f"{name}.png", _image(k))
        write_mask(root / "valannot" / f"{name}.png", _values(range(12), k))
        lines.append(f"/SegNet/CamVid/val/{name}.png /SegNet/CamVid/valannot/{name}.png")
    (root / "val.txt").write_text("\n".join(lines) + "\n")
    ds = build_dataset("camvid", tmp_path, "val")
    assert ds.num_classes == 11 and ds.classes[-1] == "Bicyclist"
    m = _values(range(12), 1)
    assert np.array_equal(ds[1]["mask"].numpy(), np.where(m == 11, 255, m))
    assert np.array_equal(ds[1]["image"].mul(255).round().byte().permute(1, 2, 0).numpy(), _image(1))
    listed = build_dataset("camvid", root, split_file=root / "val.txt")
    assert listed.samples == ds.samples and listed.split == "val"


def test_folder_dataset_options(tmp_path):
    for split in ("train", "val"):
        for k, stem in enumerate(["a", "b"]):
            write_image(tmp_path / "img" / split / f"{stem}.{'jpg' if k else 'png'}", _image(k))
            write_mask(tmp_path / "ann" / split / f"{stem}_mask.png", _values([0, 1, 2, 255], k))
    (tmp_path / "names.txt").write_text("sky\nroad\ncar\n")
    opts = {"image_dir": "img/{split}", "mask_dir": "ann/{split}", "mask_suffix": "_mask"}
    ds = build_dataset("folder", tmp_path, "train", classes=["sky", "road", "car"], **opts)
    assert ds.classes == ("sky", "road", "car") and len(ds) == 2 and ds.sample_name(1) == "b"
    assert np.array_equal(ds[0]["mask"].numpy(), _values([0, 1, 2, 255], 0))
    assert build_dataset("folder", tmp_path, "val", classes=3, **opts).classes == ("class_0", "class_1", "class_2")
    assert build_dataset("folder", tmp_path, "val", classes="names.txt", **opts).classes[1] == "road"
    reduced = build_dataset("folder", tmp_path, "val", classes=["road", "car"], reduce_zero_label=True, **opts)
    assert np.array_equal(reduced[1]["mask"].numpy(), _reduce(_values([0, 1, 2, 255], 1)))


def test_synthetic_folder_matches_synthetic_dataset(tmp_path):
    from leafseg.data.synthetic import SyntheticWorld
    from leafseg.data.synthetic_dataset import SyntheticDataset

    SyntheticWorld(seed=0, size=32).write(tmp_path, 3, split="train")
    ds, ref = build_dataset("synthetic", tmp_path, "train"), SyntheticDataset(tmp_path, "train")
    assert ds.classes == tuple(ref.classes) and len(ds) == 3
    assert torch.equal(ds[2]["image"], ref[2]["image"]) and torch.equal(ds[2]["mask"], ref[2]["mask"])
    assert ds[2]["name"] == ref[2]["name"]
