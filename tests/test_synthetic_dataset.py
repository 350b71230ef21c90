"""The synthetic world on disk: layout, round trip, torch Dataset."""

import json

import numpy as np
import pytest
import torch

from leafseg.data.io import DataError, read_image, read_mask
from leafseg.data.synthetic import SyntheticWorld
from leafseg.data.synthetic_dataset import SyntheticDataset, load_synthetic


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    world = SyntheticWorld(seed=0, size=64)
    root = tmp_path_factory.mktemp("synth")
    assert world.write(root, 10, split="train") == root
    world.write(root, 4, split="val")
    return world, root


def test_layout_on_disk(written):
    world, root = written
    assert len(list((root / "images" / "train").glob("*.png"))) == 10
    assert len(list((root / "masks" / "val").glob("*.png"))) == 4
    meta = json.loads((root / "classes.json").read_text())
    assert meta["classes"] == list(world.classes)
    assert meta["stuff"] + meta["things"] == meta["classes"]
    assert set(meta["synonyms"]) == set(meta["eval_synonyms"]) == set(meta["classes"])
    assert meta["generator"]["seed"] == 0 and meta["generator"]["size"] == 64
    assert meta["splits"] == {"train": 10, "val": 4}
    lines = (root / "captions.jsonl").read_text().splitlines()
    assert len(lines) == 14
    rec = json.loads(lines[0])
    assert {"image", "mask", "caption", "split"} <= set(rec)
    assert rec["image"].startswith("images/train/") and rec["mask"].startswith("masks/train/")


def test_files_match_the_generator(written):
    world, root = written
    layout = load_synthetic(root)
    assert layout.num_classes == world.num_classes
    recs = layout.split("val")
    assert len(recs) == 4
    scene = world.scene(world.index("val", 2))
    rec = recs[2]
    assert np.array_equal(read_image(root / rec["image"]), scene.image)
    assert np.array_equal(read_mask(root / rec["mask"], num_classes=world.num_classes), scene.mask)
    assert rec["caption"] == scene.caption
    assert rec["classes"] == list(scene.classes_present)


def test_dataset_from_folder_equals_dataset_from_world(written):
    world, root = written
    on_disk = SyntheticDataset(root, split="train")
    live = SyntheticDataset(world, split="train", n=10)
    assert len(on_disk) == len(live) == 10
    a, b = on_disk[3], live[3]
    assert a["image"].dtype == torch.float32 and a["image"].shape == (3, 64, 64)
    assert 0.0 <= a["image"].min() and a["image"].max() <= 1.0
    assert a["mask"].dtype == torch.int64 and a["mask"].shape == (64, 64)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert a["caption"] == b["caption"] and a["name"] == b["name"] == "0000003"
    assert len(SyntheticDataset(root, split="train", n=5)) == 5
    batch = next(iter(torch.utils.data.DataLoader(on_disk, batch_size=4)))
    assert batch["image"].shape == (4, 3, 64, 64) and len(batch["caption"]) == 4


def test_dataset_transform_and_errors(written):
    world, root = written

    def flip(sample):
        return {**sample, "image": sample["image"].flip(-1), "mask": sample["mask"].flip(-1)}

    plain, flipped = SyntheticDataset(root, "val"), SyntheticDataset(root, "val", transform=flip)
    assert torch.equal(plain[1]["mask"].flip(-1), flipped[1]["mask"])
    with pytest.raises(DataError, match="has 4 scenes"):
        SyntheticDataset(root, "val", n=9)
    with pytest.raises(DataError, match="no scenes"):
        SyntheticDataset(root, "test")
    with pytest.raises(ValueError, match="needs n"):
        SyntheticDataset(world, "train")
    with pytest.raises(DataError, match="classes.json"):
        load_synthetic(root / "images")


def test_rewrite_replaces_and_other_settings_are_refused(tmp_path):
    world = SyntheticWorld(seed=0, size=32)
    root = world.write(tmp_path / "s", 4, split="val")
    world.write(root, 2, split="val", start=3)  # scene 3 again, scene 4 new
    assert len(load_synthetic(root).split("val")) == 5
    with pytest.raises(ValueError, match="other generator settings"):
        SyntheticWorld(seed=1, size=32).write(root, 1)


def test_corrupt_file_in_folder_names_the_file(tmp_path):
    root = SyntheticWorld(seed=0, size=32).write(tmp_path / "s", 3)
    bad = sorted((root / "masks" / "train").glob("*.png"))[1]
    bad.write_bytes(bad.read_bytes()[:40])
    ds = SyntheticDataset(root, "train")
    ds[0]
    with pytest.raises(DataError, match=bad.name):
        ds[1]
