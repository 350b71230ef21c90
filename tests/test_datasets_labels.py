"""Class lists and label lookup tables of the benchmark readers, checked value by value."""

import numpy as np
import pytest

from leafseg.data.datasets import classes as C
from leafseg.data.datasets import labels as L


@pytest.mark.parametrize("names,n", [
    (C.VOC21, 21), (C.VOC20, 20), (C.CONTEXT60, 60), (C.CONTEXT59, 59), (C.COCO_THINGS, 80),
    (C.COCO_OBJECT81, 81), (C.COCO_STUFF171, 171), (C.COCO_STUFF27, 27), (C.CITYSCAPES19, 19),
    (C.CITYSCAPES27, 27), (C.ADE20K150, 150), (C.CAMVID11, 11),
])
def test_class_lists_have_their_lengths_and_unique_names(names, n):
    assert len(names) == n and len(set(names)) == n
    assert all(isinstance(x, str) and x == x.strip() and x for x in names)


def test_class_list_anchors():
    assert C.VOC21[0] == "background" and C.VOC21[15] == "person" and C.VOC21[20] == "tvmonitor"
    assert C.CONTEXT60[0] == "background" and C.CONTEXT60[1] == "aeroplane" and C.CONTEXT60[59] == "wood"
    assert C.CONTEXT60[37] == "person" and C.CONTEXT60[47] == "sky"
    assert C.COCO_THINGS[0] == "person" and C.COCO_THINGS[-1] == "toothbrush" and C.COCO_THINGS[62] == "tv"
    assert C.COCO_STUFF171[80] == "banner" and C.COCO_STUFF171[170] == "wood"
    assert C.COCO_STUFF171[C.COCO_STUFF171.index("sky-other")] == "sky-other"
    assert C.COCO_STUFF27[9] == "person" and C.COCO_STUFF27[12] == "ceiling" and C.COCO_STUFF27[26] == "water"
    assert C.CITYSCAPES19[0] == "road" and C.CITYSCAPES19[18] == "bicycle"
    assert C.CITYSCAPES27[2] == "parking" and C.CITYSCAPES27[26] == "bicycle"
    assert C.ADE20K150[:5] == ("wall", "building", "sky", "floor", "tree") and C.ADE20K150[7] == "bed"
    assert C.ADE20K150[-1] == "flag" and C.ADE20K150[149] == "flag"
    assert C.CAMVID11[0] == "Sky" and C.CAMVID11[10] == "Bicyclist"


def test_reduce_zero_label():
    lut = L.reduce_zero_label_lut()
    assert lut.shape == (256,) and lut.dtype == np.uint8
    assert lut[0] == 255 and lut[1] == 0 and lut[150] == 149 and lut[254] == 253 and lut[255] == 255


def test_cityscapes_tables():
    lut = L.cityscapes_train_id_lut()
    expected = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
    for label_id in range(34):
        assert lut[label_id] == expected.get(label_id, 255), label_id
    assert lut[255] == 255 and lut[40] == 40  # not a label id: passed through, so the range check reports it
    lut27 = L.cityscapes27_lut()
    assert [int(lut27[i]) for i in range(7)] == [255] * 7
    assert [int(lut27[i]) for i in range(7, 34)] == list(range(27))
    assert lut27[255] == 255 and lut27[34] == 27


def test_coco_stuff171_table():
    lut = L.coco_stuff171_lut()
    unused = {11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90}
    used = [i for i in range(182) if i not in unused]
    assert len(used) == 171
    for raw in range(182):
        assert lut[raw] == (used.index(raw) if raw in used else 255), raw
    assert lut[12] == 11 and lut[91] == 80 and lut[181] == 170 and lut[255] == 255
    assert lut[200] == 200  # not a COCO-Stuff id: reported, not ignored


def test_coco_object_table():
    lut = L.coco_object_lut()
    assert lut[0] == 1 and lut[12] == 12 and lut[89] == 80  # person, stop sign, toothbrush
    assert lut[11] == 0 and lut[90] == 0  # ids without annotations
    assert lut[91] == 0 and lut[181] == 0 and lut[255] == 0  # stuff and unlabelled are background
    things = sorted({int(lut[i]) for i in range(91)} - {0})
    assert things == list(range(1, 81))
    assert [C.COCO_OBJECT81[lut[i]] for i in (89, 61, 62)] == ["toothbrush", "chair", "couch"]


def test_coco_stuff27_table_covers_every_raw_id_once():
    lut = L.coco_stuff27_lut()
    seen = [i for group in L.COCO_STUFF27_GROUPS for lo, hi in group for i in range(lo, hi + 1)]
    assert sorted(seen) == list(range(182))  # every raw id in exactly one coarse class
    spot = {0: "person", 2: "vehicle", 11: "outdoor", 16: "animal", 57: "food", 72: "electronic",
            105: "sky", 156: "sky", 123: "plant", 170: "wall", 176: "wall", 152: "food-stuff",
            155: "furniture-stuff", 181: "solid", 119: "water", 100: "floor", 180: "window"}
    for raw, name in spot.items():
        assert C.COCO_STUFF27[lut[raw]] == name, raw
    assert all(lut[:91] < 12) and all(lut[91:182] >= 12)  # things 0..11, stuff 12..26
    assert lut[255] == 255


def test_map_labels_reports_stored_values_outside_the_class_set():
    raw = np.array([[0, 1, 255], [21, 21, 30]], dtype=np.uint8)
    labels, bad = L.map_labels(raw, None, 21)
    assert labels.dtype == np.uint8 and np.array_equal(labels, raw)
    assert bad == {21: 2, 30: 1}
    labels, bad = L.map_labels(raw, L.reduce_zero_label_lut(), 21)
    assert bad == {30: 1} and labels[0].tolist() == [255, 0, 255] and labels[1, 0] == 20
    wide = np.array([[1, 300], [-1, 2]], dtype=np.int64)  # 16-bit masks
    _, bad = L.map_labels(wide, None, 3)
    assert bad == {-1: 1, 300: 1}
    assert L.describe_values({40: 3, 37: 12}) == "37 (12 px), 40 (3 px)"
