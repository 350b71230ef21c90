"""A procedural synthetic world: seeded scenes with exact masks and captions.

Each scene has 1-3 background ("stuff") regions with smooth random boundaries and
1-4 objects ("things") drawn on top with partial occlusion. Colours are drawn from
overlapping class distributions, so a pixel's colour does not give its class away;
classes differ instead by texture (frequency, orientation, pattern) and shape. Small
CNNs and ViTs trained from scratch learn it on a CPU in minutes.

    world = SyntheticWorld(seed=0, size=96)
    scene = world.scene(7)          # image (96, 96, 3) uint8, mask (96, 96) uint8, caption
    world.write("synth", 256, split="train")

A scene depends only on (seed, index, domain and generator settings), never on call
order. Splits are disjoint index ranges: split "train" is indices 0.., "val" starts at
1_000_000 and "test" at 2_000_000 (see :data:`SPLIT_OFFSETS`).

``world.write(root, n, split)`` writes scenes as PNG files indexed by captions.jsonl and
classes.json; :mod:`leafseg.data.synthetic_layout` describes the layout and reads it back
(:func:`~leafseg.data.synthetic_layout.load_synthetic`).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from leafseg.data.io import write_image, write_mask
from leafseg.data.synthetic_captions import CLASSES, EVAL_SYNONYMS, STUFF, SYNONYMS, THINGS, make_caption
from leafseg.data.synthetic_layout import check_generator, scene_paths, write_index
from leafseg.data.synthetic_render import STUFF_PAINTERS, hue_rotation, lattice_noise, pixel_grid
from leafseg.data.synthetic_shapes import THING_PAINTERS

STUFF_IDS: tuple[int, ...] = tuple(range(len(STUFF)))
THING_IDS: tuple[int, ...] = tuple(range(len(STUFF), len(CLASSES)))
SPLIT_OFFSETS: dict[str, int] = {"train": 0, "val": 1_000_000, "test": 2_000_000}
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class Domain:
    """Appearance and content shift for one client or site (non-iid data).

    hue_shift: degrees to rotate all colours about the grey axis. saturation, contrast:
    multipliers (1 = unchanged). brightness: added to [0, 1] intensities.
    class_weights: class name -> relative sampling weight (missing names weigh 1; 0 never
    draws the class).
    """

    name: str = "default"
    hue_shift: float = 0.0
    saturation: float = 1.0
    brightness: float = 0.0
    contrast: float = 1.0
    class_weights: dict[str, float] = field(default_factory=dict)

    def weights(self) -> np.ndarray:
        """Per-class sampling weights: (num_classes,) float64, in CLASSES order."""
        unknown = set(self.class_weights) - set(CLASSES)
        if unknown:
            raise ValueError(f"Domain {self.name!r}: unknown class names {sorted(unknown)}; known: {CLASSES}")
        w = np.array([float(self.class_weights.get(c, 1.0)) for c in CLASSES])
        if (w < 0).any():
            raise ValueError(f"Domain {self.name!r}: class weights must be >= 0")
        return w

    def apply(self, img: np.ndarray) -> np.ndarray:
        """Apply the colour shift to a float image (H, W, 3) in [0, 1]; returns float32 (H, W, 3)."""
        out = img
        if self.hue_shift:
            out = out @ hue_rotation(self.hue_shift).T
        if self.saturation != 1.0:
            grey = out.mean(axis=2, keepdims=True)
            out = grey + np.float32(self.saturation) * (out - grey)
        if self.contrast != 1.0 or self.brightness:
            out = 0.5 + np.float32(self.contrast) * (out - 0.5) + np.float32(self.brightness)
        return out.astype(np.float32, copy=False)


def random_domains(n: int, seed: int = 0, strength: float = 1.0) -> list[Domain]:
    """``n`` distinct domains: spread-out hue shifts, random lighting and skewed class mixes.

    ``strength`` scales every shift (0 gives n copies of the default domain).
    """
    rng = np.random.default_rng([seed, 7919])
    hues = (np.arange(n) / max(n, 1) * 120.0 - 60.0 + rng.uniform(-10, 10, n)) * strength
    out = []
    for k in range(n):
        skew = rng.gamma(0.7, size=len(CLASSES))
        weights = 1.0 + strength * (skew / skew.mean() - 1.0)
        out.append(Domain(
            name=f"domain{k}",
            hue_shift=float(hues[k]),
            saturation=float(1.0 + strength * rng.uniform(-0.3, 0.2)),
            brightness=float(strength * rng.uniform(-0.12, 0.12)),
            contrast=float(1.0 + strength * rng.uniform(-0.25, 0.2)),
            class_weights={c: round(float(max(w, 0.05)), 4) for c, w in zip(CLASSES, weights, strict=True)},
        ))
    return out


@dataclass
class Scene:
    """One generated scene.

    image: (H, W, 3) uint8 RGB. mask: (H, W) uint8 class ids in 0..num_classes-1.
    instances: (H, W) uint8, 0 on stuff and k = 1..n on the k-th visible thing.
    classes_present: sorted class ids occurring in ``mask``.
    thing_counts: class name -> number of instances, in drawing order.
    """

    index: int
    image: np.ndarray
    mask: np.ndarray
    instances: np.ndarray
    caption: str
    classes_present: tuple[int, ...]
    thing_counts: dict[str, int]

    @property
    def name(self) -> str:
        return f"{self.index:07d}"


class SyntheticWorld:
    """Deterministic generator of scenes; see the module docstring for the layout."""

    classes: tuple[str, ...] = CLASSES
    stuff: tuple[str, ...] = STUFF
    things: tuple[str, ...] = THINGS
    synonyms: dict[str, tuple[str, ...]] = SYNONYMS
    eval_synonyms: dict[str, tuple[str, ...]] = EVAL_SYNONYMS

    def __init__(self, seed: int = 0, size: int = 96, domain: Domain | None = None, min_things: int = 1,
                 max_things: int = 4, max_stuff: int = 3, caption_noise: float = 0.1):
        if not 1 <= min_things <= max_things:
            raise ValueError(f"need 1 <= min_things <= max_things, got {min_things}, {max_things}")
        if not 1 <= max_stuff <= 3:
            raise ValueError(f"max_stuff must be 1, 2 or 3, got {max_stuff}")
        if size < 16:
            raise ValueError(f"size must be at least 16 pixels, got {size}")
        self.seed, self.size, self.domain = int(seed), int(size), domain or Domain()
        self.min_things, self.max_things, self.max_stuff = min_things, max_things, max_stuff
        self.caption_noise = float(caption_noise)
        weights = self.domain.weights()
        self._stuff_w, self._thing_w = weights[list(STUFF_IDS)], weights[list(THING_IDS)]
        if (self._stuff_w > 0).sum() < 1 or (self._thing_w > 0).sum() < 1:
            raise ValueError("the domain's class weights must leave at least one stuff and one thing class")
        self._yy, self._xx = pixel_grid(self.size, self.size)

    @property
    def num_classes(self) -> int:
        return len(CLASSES)

    def settings(self) -> dict:
        """The generator settings (JSON-serialisable) that, with an index, fix a scene."""
        return {"seed": self.seed, "size": self.size, "domain": asdict(self.domain),
                "min_things": self.min_things, "max_things": self.max_things, "max_stuff": self.max_stuff,
                "caption_noise": self.caption_noise, "version": GENERATOR_VERSION}

    def index(self, split: str, k: int) -> int:
        """Global scene index of the ``k``-th scene of ``split``."""
        if split not in SPLIT_OFFSETS:
            raise ValueError(f"unknown split {split!r}; use one of {tuple(SPLIT_OFFSETS)}")
        if not 0 <= k < 1_000_000:
            raise ValueError(f"scene number {k} outside 0..999999")
        return SPLIT_OFFSETS[split] + k

    def scene(self, i: int) -> Scene:
        """Generate scene ``i`` (an int >= 0). Deterministic in (seed, i, domain, settings)."""
        rng = np.random.default_rng([self.seed, int(i)])
        mask = np.zeros((self.size, self.size), dtype=np.uint8)
        img = np.zeros((self.size, self.size, 3), dtype=np.float32)
        for cid, region in self._stuff_regions(rng):
            img[region] = STUFF_PAINTERS[CLASSES[cid]](rng, self._yy, self._xx)[region]
            mask[region] = cid
        instances, counts = self._place_things(rng, img, mask)
        img = img * np.float32(rng.uniform(0.88, 1.12))
        img += rng.normal(0.0, 0.015, img.shape).astype(np.float32)
        img = self.domain.apply(img)
        image = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
        areas = np.bincount(mask.ravel(), minlength=len(CLASSES))
        present = tuple(int(c) for c in np.flatnonzero(areas))
        stuff_by_area = [CLASSES[c] for c in sorted(STUFF_IDS, key=lambda c: -areas[c]) if areas[c] > 0]
        cap_rng = np.random.default_rng([self.seed, int(i), 1])
        caption = make_caption(cap_rng, counts, stuff_by_area, noise=self.caption_noise)
        return Scene(int(i), image, mask, instances, caption, present, counts)

    def batch(self, indices) -> dict:
        """Scenes stacked: image (N, H, W, 3) uint8, mask and instances (N, H, W) uint8,
        caption list[str], index (N,) int64."""
        scenes = [self.scene(int(i)) for i in indices]
        hw = (self.size, self.size)
        return {
            "image": np.stack([s.image for s in scenes]) if scenes else np.zeros((0, *hw, 3), np.uint8),
            "mask": np.stack([s.mask for s in scenes]) if scenes else np.zeros((0, *hw), np.uint8),
            "instances": np.stack([s.instances for s in scenes]) if scenes else np.zeros((0, *hw), np.uint8),
            "caption": [s.caption for s in scenes],
            "index": np.array([s.index for s in scenes], dtype=np.int64),
        }

    def write(self, root: str | os.PathLike, n: int, split: str = "train", start: int = 0) -> Path:
        """Write scenes ``start .. start+n-1`` of ``split`` under ``root`` in the layout of
        :mod:`leafseg.data.synthetic_layout`; returns ``root``.

        Writing more splits (or more scenes) into the same root adds to captions.jsonl;
        rewriting a scene replaces its record. A root holding scenes from different
        generator settings is refused (ValueError).
        """
        root, settings = Path(root), self.settings()
        check_generator(root, settings)
        records = []
        for k in range(start, start + n):
            scene = self.scene(self.index(split, k))
            image_rel, mask_rel = scene_paths(split, scene.name)
            write_image(root / image_rel, scene.image)
            write_mask(root / mask_rel, scene.mask)
            records.append({"image": image_rel, "mask": mask_rel, "caption": scene.caption, "split": split,
                            "classes": list(scene.classes_present)})
        write_index(root, records, classes=list(self.classes), stuff=list(self.stuff), things=list(self.things),
                    synonyms={c: list(s) for c, s in self.synonyms.items()},
                    eval_synonyms={c: list(s) for c, s in self.eval_synonyms.items()},
                    generator=settings, split_offsets=SPLIT_OFFSETS)
        return root

    # --- layout -------------------------------------------------------------------------

    def _boundary(self, rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
        """A wavy, slightly tilted horizon: (W,) float32 row per column."""
        s = self.size
        x = self._xx[0]
        y0 = rng.uniform(lo, hi) * s
        tilt = rng.uniform(-0.3, 0.3)
        wave = rng.uniform(0.0, 0.06) * s * np.sin(x * np.float32(2 * np.pi * rng.uniform(0.5, 2.5) / s)
                                                   + np.float32(rng.uniform(0, 2 * np.pi)))
        rough = lattice_noise(rng, x / 10.0, np.zeros_like(x)) * np.float32(rng.uniform(0.0, 0.02) * s)
        return (y0 + tilt * (x - s / 2) + wave + rough).astype(np.float32)

    def _stuff_regions(self, rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
        """Partition the image into 1-3 stuff regions: list of (class id, (H, W) bool mask)."""
        k = int(rng.choice([1, 2, 3], p=[0.2, 0.5, 0.3]))
        k = min(k, self.max_stuff, int((self._stuff_w > 0).sum()))
        p = self._stuff_w / self._stuff_w.sum()
        ids = [int(c) for c in rng.choice(STUFF_IDS, size=k, replace=False, p=p)]
        sky = STUFF.index("sky")
        if sky in ids:  # the sky is always the top region
            ids.remove(sky)
            ids.insert(0, sky)
        yy = self._yy
        if k == 1:
            return [(ids[0], np.ones_like(yy, dtype=bool))]
        if k == 2 or rng.random() < 0.5:
            if k == 2:
                cuts = [self._boundary(rng, 0.3, 0.7)]
            else:
                cuts = [self._boundary(rng, 0.2, 0.4), self._boundary(rng, 0.6, 0.8)]
            band = sum((yy >= c[None, :]).astype(np.int64) for c in cuts)
            return [(ids[j], band == j) for j in range(k)]
        top = yy < self._boundary(rng, 0.25, 0.5)[None, :]  # a horizon plus a blob below it
        cy, cx = rng.uniform(0.6, 0.85) * self.size, rng.uniform(0.25, 0.75) * self.size
        dy, dx = yy - np.float32(cy), self._xx - np.float32(cx)
        angle = np.arctan2(dy, dx)
        radius = rng.uniform(0.15, 0.3) * self.size * (1 + 0.18 * np.sin(3 * angle + rng.uniform(0, 6))
                                                       + 0.1 * np.sin(5 * angle + rng.uniform(0, 6)))
        blob = (dy * dy + (dx * 0.7) ** 2 <= radius ** 2) & ~top
        return [(ids[0], top), (ids[1], ~top & ~blob), (ids[2], blob)]

    def _place_things(self, rng: np.random.Generator, img: np.ndarray,
                      mask: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
        """Draw 1-4 things into ``img`` (H, W, 3) and ``mask`` (H, W) in place.

        A placement that would hide more than half of an earlier thing is redrawn (up to
        six tries), so every thing stays at least half visible. Returns the (H, W) uint8
        instance map and the per-class instance counts.
        """
        instances = np.zeros(mask.shape, dtype=np.uint8)
        full_areas: list[int] = []
        counts: Counter[str] = Counter()
        n = int(rng.integers(self.min_things, self.max_things + 1))
        p = self._thing_w / self._thing_w.sum()
        for cid in rng.choice(THING_IDS, size=n, p=p):
            name = CLASSES[int(cid)]
            for _ in range(6):
                r = rng.uniform(0.09, 0.2) * self.size
                cy, cx = rng.uniform(0.7 * r, self.size - 0.7 * r, size=2)
                shape, rgb = THING_PAINTERS[name](rng, self._yy, self._xx, cy, cx, r)
                area = int(shape.sum())
                if area < 12:
                    continue
                hidden = np.bincount(instances[shape], minlength=len(full_areas) + 1)[1:]
                visible = np.bincount(instances.ravel(), minlength=len(full_areas) + 1)[1:]
                if np.all(visible - hidden >= 0.5 * np.asarray(full_areas, dtype=np.float64)):
                    img[shape] = rgb[shape]
                    mask[shape] = cid
                    full_areas.append(area)
                    instances[shape] = len(full_areas)
                    counts[name] += 1
                    break
        return instances, dict(counts)
