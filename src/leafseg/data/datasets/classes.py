"""Class names of the benchmarks, in label order (index = the label value after mapping).

Names follow the reference implementations (mmseg dataset classes, STEGO, SegNet), with
two deliberate changes: ADE20K's ``'bed '`` loses mmseg's trailing space, and STEGO's
repeated coarse names ``food`` / ``furniture`` (a thing and a stuff class each) become
``food-stuff`` / ``furniture-stuff`` for the stuff ones, so that every name is unique.
"""

from __future__ import annotations

VOC21: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
VOC20: tuple[str, ...] = VOC21[1:]

# Pascal Context in mmseg's (alphabetical) order; 0 = background in the 60-class version.
CONTEXT59: tuple[str, ...] = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow",
    "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground",
    "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate", "platform", "pottedplant",
    "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa", "table",
    "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood",
)
CONTEXT60: tuple[str, ...] = ("background",) + CONTEXT59

# The 80 COCO thing classes in the standard (category id) order.
COCO_THINGS: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)
COCO_OBJECT81: tuple[str, ...] = ("background",) + COCO_THINGS

# The 91 COCO-Stuff stuff classes in id order (raw ids 91..181); after the things they make mmseg's 171.
COCO_STUFF_ONLY: tuple[str, ...] = (
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff",
    "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood",
    "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill",
    "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net",
    "paper", "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad",
    "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow",
    "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel",
    "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)
COCO_STUFF171: tuple[str, ...] = COCO_THINGS + COCO_STUFF_ONLY

# STEGO's 27 coarse COCO-Stuff classes: things 0..11, stuff 12..26.
COCO_STUFF27: tuple[str, ...] = (
    "electronic", "appliance", "food", "furniture", "indoor", "kitchen", "accessory", "animal", "outdoor",
    "person", "sports", "vehicle", "ceiling", "floor", "food-stuff", "furniture-stuff", "rawmaterial",
    "textile", "wall", "window", "building", "ground", "plant", "sky", "solid", "structural", "water",
)

CITYSCAPES19: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
# Label ids 7..33 in order (STEGO's 27-class Cityscapes).
CITYSCAPES27: tuple[str, ...] = (
    "road", "sidewalk", "parking", "rail track", "building", "wall", "fence", "guard rail", "bridge", "tunnel",
    "pole", "polegroup", "traffic light", "traffic sign", "vegetation", "terrain", "sky", "person", "rider",
    "car", "truck", "bus", "caravan", "trailer", "train", "motorcycle", "bicycle",
)

# ADE20K SceneParsing in mmseg's order (objectInfo150 order).
ADE20K150: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door",
    "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill",
    "bench", "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight",
    "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister",
    "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt",
    "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal",
    "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase",
    "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board",
    "shower", "radiator", "glass", "clock", "flag",
)

# CamVid as in SegNet (value 11 = void, ignored).
CAMVID11: tuple[str, ...] = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
)

_ALL = {
    "VOC21": (VOC21, 21), "VOC20": (VOC20, 20), "CONTEXT60": (CONTEXT60, 60), "CONTEXT59": (CONTEXT59, 59),
    "COCO_THINGS": (COCO_THINGS, 80), "COCO_OBJECT81": (COCO_OBJECT81, 81), "COCO_STUFF_ONLY": (COCO_STUFF_ONLY, 91),
    "COCO_STUFF171": (COCO_STUFF171, 171), "COCO_STUFF27": (COCO_STUFF27, 27), "CITYSCAPES19": (CITYSCAPES19, 19),
    "CITYSCAPES27": (CITYSCAPES27, 27), "ADE20K150": (ADE20K150, 150), "CAMVID11": (CAMVID11, 11),
}
for _name, (_names, _n) in _ALL.items():  # a mistyped list fails at import, not in a metric
    assert len(_names) == _n and len(set(_names)) == _n, f"{_name}: {len(_names)} names, expected {_n} unique"
del _ALL, _name, _names, _n
