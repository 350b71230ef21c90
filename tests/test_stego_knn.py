"""STEGO's training data: fixed square views, k-NN tables under a frozen encoder (self excluded, cached beside
the data, recomputed for another encoder or dataset), and the (view, neighbour) pairs."""

from __future__ import annotations

import math

import pytest
import torch

from leafseg.backbones import build_backbone, make_random_checkpoint
from leafseg.data.datasets import build_dataset
from leafseg.data.views import CropViews, NeighbourPairs, five_crop_box
from leafseg.grouping import knn as knn_module
from leafseg.grouping.knn import knn_table, nearest_neighbours
from sseg_tiny import write_world

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    """Two tiny random DINO ViTs (8 px patches) of different weights, loaded through the real path."""
    folder = tmp_path_factory.mktemp("encoders")
    return [build_backbone("dino_vits8", weights=make_random_checkpoint("dino_vits8", folder / f"s{seed}", seed=seed))
            for seed in (0, 1)]


def test_nearest_neighbours_by_cosine_self_excluded():
    angles = [0, 10, 95, 100, 170]  # degrees: unit vectors in the plane
    feats = torch.tensor([[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in angles])
    table = nearest_neighbours(feats, 2, block=2)  # blocks of 2 rows: the diagonal masked in every block
    assert table.tolist() == [[1, 2], [0, 2], [3, 4], [2, 4], [3, 2]]
    twins = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert nearest_neighbours(twins, 1).tolist() == [[1], [0], [0]]  # an identical image is not "self"
    with pytest.raises(ValueError, match="k must be"):
        nearest_neighbours(feats, 5)


def test_views_five_crops_and_fingerprint(world):
    train = build_dataset("synthetic", world, split="train")
    assert five_crop_box(40, 60, 0, 0.5) == (0, 0, 20, 30) and five_crop_box(40, 60, 3, 0.5) == (20, 30, 20, 30)
    assert five_crop_box(40, 60, 4, 0.5) == (10, 15, 20, 30) and five_crop_box(40, 60, 1, 0.5) == (0, 30, 20, 30)
    views = CropViews(train, 16, five_crop=True)
    assert len(views) == 5 * len(train)
    item = views[7]  # crop 2 (bottom-left) of image 1
    assert item["image"].shape == (3, 16, 16) and item["mask"].shape == (16, 16) and item["index"] == 7
    image = train[1]["image"]
    expected = torch.nn.functional.interpolate(image[None, :, 16:, :16], size=(16, 16), mode="bilinear",
                                               align_corners=False, antialias=True)[0]
    assert torch.allclose(item["image"], expected, atol=1e-6)
    whole = CropViews(train, 16)
    prints = {whole.fingerprint(), views.fingerprint(), CropViews(train, 24).fingerprint(),
              CropViews(train, 16, indices=range(8)).fingerprint()}
    assert len(prints) == 4 and whole.fingerprint() == CropViews(train, 16).fingerprint()
    assert len(CropViews(train, 16, indices=[3, 5])) == 2


def test_knn_table_cached_reused_and_invalidated(world, encoders, tmp_path, monkeypatch):
    calls = []
    pooled = knn_module.pooled_features
    monkeypatch.setattr(knn_module, "pooled_features", lambda *a, **kw: calls.append(1) or pooled(*a, **kw))
    views = CropViews(build_dataset("synthetic", world, split="train"), 32)
    kw = dict(k=3, cache_dir=tmp_path / "knn", fingerprint=views.fingerprint(), resolution=32, progress=False)
    table = knn_table(encoders[0], views, **kw)
    assert table.shape == (16, 3) and table.dtype == torch.int64 and len(calls) == 1
    assert not (table == torch.arange(16)[:, None]).any()  # no image is its own neighbour
    files = sorted((tmp_path / "knn").glob("knn_*.safetensors"))
    assert len(files) == 1
    assert torch.equal(knn_table(encoders[0], views, **kw), table) and len(calls) == 1  # read from the cache
    knn_table(encoders[1], views, **kw)  # another backbone: its own table
    assert len(calls) == 2 and len(list((tmp_path / "knn").glob("knn_*.safetensors"))) == 2
    knn_table(encoders[0], views, **{**kw, "resolution": 24})  # another resolution (its views would differ)
    knn_table(encoders[0], views, **{**kw, "fingerprint": "other"})  # other files
    knn_table(encoders[0], views, **{**kw, "k": 2})
    assert len(calls) == 5
    files[0].write_bytes(b"not a table")  # a damaged cache file is recomputed and replaced
    assert torch.equal(knn_table(encoders[0], views, **kw), table) and len(calls) == 6


def test_pairs_draw_a_listed_neighbour_per_key(world):
    views = CropViews(build_dataset("synthetic", world, split="train"), 32)
    table = torch.stack([torch.arange(1, 4) + i for i in range(16)]) % 16
    pairs = NeighbourPairs(views, table, seed=3)
    drawn = set()
    for draw in range(20):
        item = pairs[(5, 0, draw)]
        again = pairs[(5, 0, draw)]
        assert torch.equal(item["neighbour"], again["neighbour"])  # the same key, the same neighbour
        match = [j for j in table[5].tolist() if torch.equal(views[j]["image"], item["neighbour"])]
        assert match
        drawn.update(match)
    assert drawn == set(table[5].tolist())  # every listed neighbour turns up
    with pytest.raises(ValueError, match="rows"):
        NeighbourPairs(views, table[:4])
