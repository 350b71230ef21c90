"""Label encodings as 256-entry lookup tables, applied to whole masks at once.

A table ``lut`` is a (256,) uint8 array: the stored value ``v`` of a mask pixel becomes
``lut[v]``. 255 is the ignore value everywhere. Values that no valid file of a benchmark
can contain (e.g. 34..254 in a Cityscapes labelIds file, 182..254 in a raw COCO-Stuff
file) are passed through unchanged, so that they land outside the class range and the
range check reports them instead of silently ignoring a corrupt file.
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255

# Cityscapes label ids of the 19 train ids, in train-id order.
CITYSCAPES_TRAIN_LABEL_IDS: tuple[int, ...] = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
CITYSCAPES_NUM_LABEL_IDS = 34  # valid labelIds are 0..33

# Raw COCO-Stuff ids (category id - 1) of the 11 thing categories that have no annotations.
COCO_UNUSED_THING_IDS: tuple[int, ...] = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
COCO_NUM_RAW_IDS = 182  # valid raw values are 0..181 (things 0..90, stuff 91..181) and 255
COCO_USED_IDS: tuple[int, ...] = tuple(i for i in range(COCO_NUM_RAW_IDS) if i not in COCO_UNUSED_THING_IDS)

# STEGO's coarse COCO-Stuff classes: coarse id -> raw fine ids (inclusive ranges as pairs).
COCO_STUFF27_GROUPS: tuple[tuple[tuple[int, int], ...], ...] = (
    ((71, 76),), ((77, 82),), ((51, 60),), ((61, 70),), ((83, 90),), ((43, 50),), ((25, 32),), ((15, 24),),
    ((9, 14),), ((0, 0),), ((33, 42),), ((1, 8),),  # 0..11: the thing supercategories
    ((101, 102),),                                                             # 12 ceiling
    ((100, 100), (113, 117)),                                                  # 13 floor
    ((120, 121), (152, 152), (169, 169)),                                      # 14 food-stuff
    ((97, 97), (106, 107), (109, 109), (111, 111), (122, 122), (129, 129), (132, 132), (155, 155), (160, 160),
     (164, 164)),                                                              # 15 furniture-stuff
    ((99, 99), (131, 131), (138, 138), (142, 142)),                            # 16 rawmaterial
    ((91, 92), (103, 104), (108, 108), (130, 130), (136, 136), (140, 140), (151, 151), (166, 167)),  # 17 textile
    ((170, 176),),                                                             # 18 wall
    ((179, 180),),                                                             # 19 window
    ((94, 95), (127, 127), (150, 150), (157, 157), (165, 165)),                # 20 building
    ((110, 110), (124, 125), (135, 135), (139, 139), (143, 144), (146, 146), (148, 148), (153, 153),
     (158, 158)),                                                              # 21 ground
    ((93, 93), (96, 96), (118, 118), (123, 123), (128, 128), (133, 133), (141, 141), (162, 162),
     (168, 168)),                                                              # 22 plant
    ((105, 105), (156, 156)),                                                  # 23 sky
    ((126, 126), (134, 134), (149, 149), (159, 159), (161, 161), (181, 181)),  # 24 solid
    ((98, 98), (112, 112), (137, 137), (145, 145), (163, 163)),                # 25 structural
    ((119, 119), (147, 147), (154, 154), (177, 178)),                          # 26 water
)


def identity_lut() -> np.ndarray:
    """Stored value = label: (256,) uint8."""
    return np.arange(256, dtype=np.uint8)


def reduce_zero_label_lut() -> np.ndarray:
    """mmseg's ``reduce_zero_label``: 0 -> 255, v -> v - 1 for 1..254, 255 stays 255. (256,) uint8."""
    lut = (np.arange(256) - 1).astype(np.uint8)
    lut[0] = lut[255] = IGNORE_INDEX
    return lut


def void_lut(void: int) -> np.ndarray:
    """Identity except ``void`` -> 255 (e.g. CamVid's 11 = Unlabelled). (256,) uint8."""
    lut = identity_lut()
    lut[void] = IGNORE_INDEX
    return lut


def cityscapes_train_id_lut() -> np.ndarray:
    """Cityscapes labelIds -> the 19 train ids; every other id 0..33 -> 255. (256,) uint8."""
    lut = identity_lut()
    lut[:CITYSCAPES_NUM_LABEL_IDS] = IGNORE_INDEX
    for train_id, label_id in enumerate(CITYSCAPES_TRAIN_LABEL_IDS):
        lut[label_id] = train_id
    return lut


def cityscapes27_lut() -> np.ndarray:
    """STEGO's Cityscapes: labelId - 7 (ids 7..33 -> 0..26), ids below 7 -> 255. (256,) uint8."""
    lut = (np.arange(256) - 7).clip(0, 255).astype(np.uint8)
    lut[:7] = lut[255] = IGNORE_INDEX
    return lut


def coco_stuff171_lut() -> np.ndarray:
    """Raw COCO-Stuff id -> mmseg's 171 compact ids (its rank among the used ids); unused ids and 255 -> 255."""
    lut = identity_lut()
    lut[:COCO_NUM_RAW_IDS] = IGNORE_INDEX
    lut[list(COCO_USED_IDS)] = np.arange(len(COCO_USED_IDS))
    return lut


def coco_object_lut() -> np.ndarray:
    """Raw COCO-Stuff id -> COCO-Object: thing ids 0..90 -> compact id + 1 (1..80), stuff and 255 -> 0."""
    lut = identity_lut()
    lut[:COCO_NUM_RAW_IDS] = 0
    lut[255] = 0
    things = [i for i in COCO_USED_IDS if i <= 90]
    lut[things] = np.arange(1, len(things) + 1)
    return lut


def coco_stuff27_lut() -> np.ndarray:
    """Raw COCO-Stuff id -> STEGO's 27 coarse ids; 255 stays 255. (256,) uint8."""
    lut = identity_lut()
    lut[:COCO_NUM_RAW_IDS] = IGNORE_INDEX
    for coarse, ranges in enumerate(COCO_STUFF27_GROUPS):
        for lo, hi in ranges:
            lut[lo:hi + 1] = coarse
    return lut


def map_labels(raw: np.ndarray, lut: np.ndarray | None, num_classes: int,
               ignore_index: int = IGNORE_INDEX) -> tuple[np.ndarray, dict[int, int]]:
    """Apply ``lut`` to a stored mask and find the pixels outside the class set.

    raw: (H, W) uint8 (or a wider integer type for 16-bit masks). Returns the labels,
    (H, W) uint8 with values in 0..num_classes-1 or ``ignore_index`` where valid, and
    ``{stored value: pixel count}`` for the pixels whose label falls outside that set
    (empty when the mask is valid). Stored values outside 0..255 are always invalid.
    """
    raw = np.asarray(raw)
    wide = None
    if raw.dtype != np.uint8:
        wide = (raw < 0) | (raw > 255)
        raw8 = np.where(wide, 0, raw).astype(np.uint8)
    else:
        raw8 = raw
    labels = raw8 if lut is None else lut[raw8]
    table = identity_lut() if lut is None else lut
    invalid_value = (table >= num_classes) & (table != ignore_index)  # (256,) bool: stored values that are out
    bad = invalid_value[raw8]
    if wide is not None:
        bad |= wide
    if not bad.any():
        return labels, {}
    values, counts = np.unique(raw[bad], return_counts=True)
    return labels, {int(v): int(c) for v, c in zip(values, counts, strict=True)}


def describe_values(values: dict[int, int], limit: int = 10) -> str:
    """``{37: 12, 40: 3}`` -> ``'37 (12 px), 40 (3 px)'``, at most ``limit`` entries then ``...``."""
    items = sorted(values.items())
    text = ", ".join(f"{v} ({c} px)" for v, c in items[:limit])
    return text + (", ..." if len(items) > limit else "")
