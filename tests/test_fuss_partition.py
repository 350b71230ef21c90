"""Federated partitions (iid, Dirichlet label skew, whole domains) and the multi-domain synthetic world."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dataset_trees import _pairs
from leafseg.data import SyntheticDataset, SyntheticWorld
from leafseg.data.datasets import build_dataset
from leafseg.data.partition import (
    client_file,
    dirichlet_split,
    domain_split,
    iid_split,
    make_partition,
    read_partition,
    sample_domain,
    write_partition,
)
from leafseg.data.synthetic_domains import domain_layouts, write_domain_world
from leafseg.errors import ConfigError


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fed") / "world"
    write_domain_world(root, 3, train=6, val=2, size=32, seed=5)
    return root


def test_iid_split_deals_every_index_once_in_near_equal_parts():
    parts = iid_split(10, 3, seed=1)
    assert sorted(i for p in parts for i in p) == list(range(10))
    assert sorted(len(p) for p in parts) == [3, 3, 4]
    assert parts == iid_split(10, 3, seed=1) and parts != iid_split(10, 3, seed=2)


def test_dirichlet_split_skews_labels_with_small_alpha_and_not_with_large():
    labels = np.repeat(np.arange(5), 40)

    def skew(alpha):
        parts = dirichlet_split(labels, 4, alpha, seed=0, min_size=5)
        assert sorted(i for p in parts for i in p) == list(range(200)) and min(len(p) for p in parts) >= 5
        shares = [np.bincount(labels[p], minlength=5).max() / len(p) for p in parts]
        return float(np.mean(shares))

    assert skew(0.1) > 0.6 > 0.35 > skew(1000.0)
    assert dirichlet_split(labels, 4, 0.5, seed=3) == dirichlet_split(labels, 4, 0.5, seed=3)
    with pytest.raises(ConfigError, match="alpha"):
        dirichlet_split(labels, 4, 0.0)


def test_domain_split_cuts_sorted_domains_into_contiguous_blocks():
    cities = [f"city{k:02d}" for k in range(18)]
    domains = [c for c in cities for _ in range(2)]
    for clients, per in ((3, 6), (6, 3), (18, 1)):
        parts, blocks = domain_split(domains, clients)
        assert [len(b) for b in blocks] == [per] * clients
        assert blocks[0] == cities[:per]
        assert all({domains[i] for i in p} == set(b) for p, b in zip(parts, blocks, strict=True))
    with pytest.raises(ConfigError, match="only 18 domains"):
        domain_split(domains, 19)


def test_multi_domain_world_reads_as_one_dataset_and_keeps_single_worlds_unchanged(world, tmp_path):
    names = [n for n, _ in domain_layouts(world)]
    assert names == ["domain0", "domain1", "domain2"]
    train = build_dataset("synthetic", world, "train")
    assert len(train) == 18 and train.classes == tuple(SyntheticWorld.classes)
    assert {sample_domain("synthetic", img, world) for img, _ in train.samples} == set(names)
    assert train.sample_name(0) == "domain0/images/train/0000000"
    assert len(build_dataset("synthetic", world, "val")) == 6
    # domain k draws from world seed + k with its domain: the same scenes a single-domain world writes
    meta = json.loads((world / "domains.json").read_text())
    single = SyntheticWorld(seed=6, size=32, domain=type(SyntheticWorld().domain)(**meta["generator"]["domains"][1]))
    assert np.array_equal(train[6]["image"].mul(255).round().byte().permute(1, 2, 0).numpy(), single.scene(0).image)
    # a single-domain folder reads as before
    SyntheticWorld(seed=0, size=32).write(tmp_path / "one", 3, "train")
    assert len(build_dataset("synthetic", tmp_path / "one", "train")) == 3 == len(SyntheticDataset(tmp_path / "one"))
    with pytest.raises(ValueError, match="another multi-domain world"):
        write_domain_world(world, 2, train=6, size=32, seed=5)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "domain"])
def test_partitions_are_written_as_split_files_the_datasets_read(world, tmp_path, scheme):
    part = make_partition("synthetic", world, scheme=scheme, clients=3, alpha=0.5, seed=0)
    out = write_partition(part, tmp_path / scheme)
    meta = read_partition(out)
    assert meta["scheme"] == scheme and meta["clients"] == 3 and sum(meta["sizes"]) == 18
    seen = []
    for c in range(3):
        data = build_dataset("synthetic", world, split_file=client_file(out, c))
        assert len(data) == meta["sizes"][c]
        seen += [str(p) for p, _ in data.samples]
    assert sorted(seen) == sorted(str(p) for p, _ in build_dataset("synthetic", world, "train").samples)
    if scheme == "domain":
        assert meta["domains"] == [["domain0"], ["domain1"], ["domain2"]]
    if scheme == "dirichlet":
        assert [sum(c) for c in meta["dominant_class_counts"]] == meta["sizes"]
    with pytest.raises(ConfigError, match="already holds a partition"):
        write_partition(part, out)


def test_cityscapes_domains_are_cities(tmp_path):
    cities = ["aachen", "bochum", "bremen", "cologne"]
    stems = [f"{c}/{c}_000000_0000{k}9" for c in cities for k in range(2)]
    _pairs(tmp_path / "cityscapes", [(f"leftImg8bit/train/{s}_leftImg8bit.png", f"gtFine/train/{s}_gtFine_labelIds.png")
                                     for s in stems], range(34))
    part = make_partition("cityscapes27", tmp_path, scheme="domain", clients=2)
    assert part.meta["domains"] == [["aachen", "bochum"], ["bremen", "cologne"]]
    assert all(img.split("/")[2] in ("aachen", "bochum") for img, _ in part.clients[0])
    with pytest.raises(ConfigError, match="only 4 domains"):
        make_partition("cityscapes27", tmp_path, scheme="domain", clients=5)
