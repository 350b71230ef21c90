"""The synthetic world: determinism, exact masks, captions, colour ambiguity, domains."""

import re

import numpy as np
import pytest

from leafseg.data.synthetic import STUFF_IDS, THING_IDS, Domain, SyntheticWorld, random_domains
from leafseg.data.synthetic_captions import (
    CLASSES,
    EVAL_SYNONYMS,
    STUFF,
    SYNONYMS,
    THINGS,
    caption_classes,
    plural,
)


@pytest.fixture(scope="module")
def world():
    return SyntheticWorld(seed=0, size=96)


@pytest.fixture(scope="module")
def scenes(world):
    return [world.scene(i) for i in range(120)]


def test_class_lists_are_consistent(world):
    assert world.classes == CLASSES == STUFF + THINGS
    assert world.num_classes == len(CLASSES) == 12
    assert [CLASSES[i] for i in STUFF_IDS] == list(STUFF)
    assert [CLASSES[i] for i in THING_IDS] == list(THINGS)
    for name in CLASSES:
        assert SYNONYMS[name] and EVAL_SYNONYMS[name]
        assert not set(SYNONYMS[name]) & set(EVAL_SYNONYMS[name])


def test_same_seed_same_bytes_and_order_independent():
    a, b = SyntheticWorld(seed=3), SyntheticWorld(seed=3)
    forward = [a.scene(i) for i in range(6)]
    backward = [b.scene(i) for i in reversed(range(6))][::-1]
    for s, t in zip(forward, backward, strict=True):
        assert s.image.tobytes() == t.image.tobytes()
        assert s.mask.tobytes() == t.mask.tobytes()
        assert s.caption == t.caption
    again = a.scene(2)
    assert again.image.tobytes() == forward[2].image.tobytes()


def test_different_seeds_and_indices_differ():
    a, b = SyntheticWorld(seed=0), SyntheticWorld(seed=1)
    assert not np.array_equal(a.scene(0).image, b.scene(0).image)
    assert not np.array_equal(a.scene(0).image, a.scene(1).image)


def test_scene_shapes_and_exact_masks(world, scenes):
    for s in scenes:
        assert s.image.shape == (96, 96, 3) and s.image.dtype == np.uint8
        assert s.mask.shape == (96, 96) and s.mask.dtype == np.uint8
        assert s.mask.max() < world.num_classes
        assert s.classes_present == tuple(np.unique(s.mask).tolist())
        assert any(c in THING_IDS for c in s.classes_present)
        assert any(c in STUFF_IDS for c in s.classes_present)
        # every instance is a single thing class; stuff pixels carry no instance
        assert set(np.unique(s.mask[s.instances == 0]).tolist()) <= set(STUFF_IDS)
        for k in range(1, int(s.instances.max()) + 1):
            ids = np.unique(s.mask[s.instances == k])
            assert len(ids) == 1 and ids[0] in THING_IDS
        assert sum(s.thing_counts.values()) == s.instances.max()
        assert {CLASSES.index(n) for n in s.thing_counts} == set(s.classes_present) & set(THING_IDS)


def test_every_class_occurs(scenes):
    seen = set().union(*(s.classes_present for s in scenes))
    assert seen == set(range(len(CLASSES)))


def test_captions_name_things_by_training_synonyms(scenes):
    full = 0
    for s in scenes:
        named = caption_classes(s.caption)
        things = set(s.thing_counts)
        full += things <= named
        assert named <= {CLASSES[c] for c in s.classes_present}
    assert full >= 0.85 * len(scenes)
    stuff_named = sum(bool(caption_classes(s.caption) & set(STUFF)) for s in scenes)
    assert stuff_named >= 0.7 * len(scenes)


def test_noise_free_captions_name_every_thing_with_counts():
    world = SyntheticWorld(seed=5, caption_noise=0.0)
    numbers = {2: "two", 3: "three", 4: "four"}
    for i in range(60):
        s = world.scene(i)
        assert set(s.thing_counts) <= caption_classes(s.caption), s.caption
        for name, count in s.thing_counts.items():
            if count > 1:
                pattern = rf"\b{numbers[count]} ({'|'.join(plural(w) for w in SYNONYMS[name])})\b"
                assert re.search(pattern, s.caption), s.caption


def test_captions_never_use_eval_synonyms(world):
    captions = [world.scene(i).caption for i in range(300)]
    assert all(not caption_classes(c, eval_words=True) for c in captions)
    assert len(set(captions)) > 280  # varied wording


def _pixels(world, indices):
    batch = world.batch(indices)
    return batch["image"].reshape(-1, 3).astype(np.int64), batch["mask"].ravel().astype(np.int64)


def test_colour_alone_does_not_give_the_class_away(world):
    x, y = _pixels(world, range(0, 80))
    xt, yt = _pixels(world, range(500, 560))
    c = world.num_classes
    means = np.stack([x[y == k].mean(0) for k in range(c)])
    nearest = ((xt[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert (nearest == yt).mean() < 0.5
    bins = 16
    code = lambda a: ((a[:, 0] * bins // 256) * bins + a[:, 1] * bins // 256) * bins + a[:, 2] * bins // 256  # noqa: E731
    hist = np.zeros((bins**3, c))
    np.add.at(hist, (code(x), y), 1)
    bayes = hist[code(xt)].argmax(1)
    assert (bayes == yt).mean() < 0.7
    # even a histogram fit on the very pixels it is scored on stays far from perfect
    oracle = np.zeros((bins**3, c))
    np.add.at(oracle, (code(xt), yt), 1)
    assert (oracle[code(xt)].argmax(1) == yt).mean() < 0.8


def test_domain_lighting_changes_colours_not_layout():
    base = SyntheticWorld(seed=0)
    shifted = SyntheticWorld(seed=0, domain=Domain(name="dusk", hue_shift=90, brightness=-0.1, contrast=0.8))
    a, b = base.batch(range(20)), shifted.batch(range(20))
    assert np.array_equal(a["mask"], b["mask"])
    mean_a = a["image"].reshape(-1, 3).mean(0)
    mean_b = b["image"].reshape(-1, 3).mean(0)
    assert np.abs(mean_a - mean_b).max() > 15
    assert b["image"].std() < a["image"].std()


def test_domain_class_weights_change_frequencies():
    no_balls = SyntheticWorld(seed=0, domain=Domain(class_weights={"ball": 0.0, "sky": 0.0}))
    lots = SyntheticWorld(seed=0, domain=Domain(class_weights={"ball": 20.0}))
    ball, sky = CLASSES.index("ball"), CLASSES.index("sky")
    masks = no_balls.batch(range(40))["mask"]
    assert not (masks == ball).any() and not (masks == sky).any()
    assert (lots.batch(range(40))["mask"] == ball).any(axis=(1, 2)).mean() > 0.6
    with pytest.raises(ValueError, match="unknown class"):
        SyntheticWorld(domain=Domain(class_weights={"unicorn": 1.0}))


def test_random_domains_are_distinct():
    doms = random_domains(4, seed=0)
    assert len({d.hue_shift for d in doms}) == 4
    images = [SyntheticWorld(seed=0, domain=d).scene(0).image.reshape(-1, 3).mean(0) for d in doms]
    assert max(np.abs(images[0] - im).max() for im in images[1:]) > 5


def test_batch_stacks_the_scenes(world):  # its speed: benchmarks/synthetic_speed.py
    batch = world.batch(range(64))
    assert batch["image"].shape == (64, 96, 96, 3) and batch["mask"].shape == (64, 96, 96)
    assert len(batch["caption"]) == 64
    one = world.scene(5)
    assert (batch["image"][5] == one.image).all() and (batch["mask"][5] == one.mask).all()
    assert batch["caption"][5] == one.caption and batch["index"][5] == 5


def test_other_sizes_and_bad_settings():
    s = SyntheticWorld(seed=0, size=64).scene(0)
    assert s.image.shape == (64, 64, 3) and s.mask.shape == (64, 64)
    with pytest.raises(ValueError):
        SyntheticWorld(min_things=3, max_things=2)
    with pytest.raises(ValueError, match="split"):
        SyntheticWorld().index("holdout", 0)


def test_tiny_scenes_without_objects_still_get_captions():
    world = SyntheticWorld(seed=0, size=16)
    captions = [world.scene(i).caption for i in range(300)]
    assert all(captions)
