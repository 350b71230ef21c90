"""Image-text sources: tar shards (img2dataset layout) and caption folders, with corrupt samples
skipped and counted, worker / rank sharding, shuffling, and cached pseudo-masks."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from leafseg.data.imagetext import (
    CaptionFolder,
    TarShards,
    cache_regions,
    collate_image_text,
    expand_shards,
    region_file,
    square_view,
)
from leafseg.data.io import DataError, write_image


def _jpeg(seed: int, size=(20, 30)) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _write_shard(path, keys, corrupt=(), no_caption=()):
    with tarfile.open(path, "w") as tar:
        for k in keys:
            image = b"\xff\xd8 not a jpeg" if k in corrupt else _jpeg(int(k))
            _add(tar, f"{k}.jpg", image)
            if k not in no_caption:
                _add(tar, f"{k}.txt", f"caption {k}".encode())
            _add(tar, f"{k}.json", json.dumps({"key": k}).encode())
    return path


@pytest.fixture()
def shards(tmp_path):
    paths = [_write_shard(tmp_path / "data-000.tar", ["000", "001", "002", "003"], corrupt={"001"}),
             _write_shard(tmp_path / "data-001.tar", ["004", "005", "006"], no_caption={"006"})]
    return tmp_path, paths


def test_tar_shards_skip_and_count_corrupt_samples(shards):
    folder, _ = shards
    source = TarShards(str(folder / "data-{000..001}.tar"), image_size=16, shuffle_buffer=0)
    samples = list(source)
    assert sorted(s["caption"] for s in samples) == [f"caption {k}" for k in ("000", "002", "003", "004", "005")]
    assert source.skipped == 2  # the undecodable jpeg and the sample without caption
    s = samples[0]
    assert s["image"].shape == (3, 16, 16) and s["image"].dtype == torch.float32 and 0 <= s["image"].min()
    assert s["key"].startswith("data-00") and ":" in s["key"]


def test_truncated_shard_ends_early_and_is_counted(shards):
    folder, paths = shards
    data = paths[0].read_bytes()
    cut = folder / "cut.tar"
    cut.write_bytes(data[: len(data) // 2 + 100])
    source = TarShards([cut, paths[1]], image_size=8, shuffle_buffer=0)
    captions = [s["caption"] for s in source]
    assert "caption 004" in captions and "caption 000" in captions
    assert source.skipped >= 2  # at least the truncation and the missing caption


def test_worker_and_rank_sharding_cover_every_sample_once(shards):
    folder, paths = shards
    for spec in (folder, paths):  # 2 shards: whole shards per worker; 4 slots: every n-th sample
        source = TarShards(spec, image_size=8, shuffle_buffer=3, seed=1)
        loader = DataLoader(source, batch_size=2, num_workers=2, collate_fn=collate_image_text)
        keys = [k for batch in loader for k in batch["key"]]
        assert len(keys) == 5 and len(set(keys)) == 5
        per_rank = [[s["key"] for s in TarShards(spec, image_size=8, rank=r, world_size=2)] for r in (0, 1)]
        assert not set(per_rank[0]) & set(per_rank[1]) and len(per_rank[0] + per_rank[1]) == 5
        rank_workers = TarShards(spec, image_size=8, rank=1, world_size=2)
        loader = DataLoader(rank_workers, batch_size=1, num_workers=2, collate_fn=collate_image_text)
        assert sorted(k for b in loader for k in b["key"]) == sorted(per_rank[1]) or len(paths) < 4


def test_shuffle_depends_on_seed_and_epoch_only(tmp_path):
    shard = _write_shard(tmp_path / "a.tar", [f"{i:03d}" for i in range(30)])
    source = TarShards(shard, image_size=8, shuffle_buffer=10, seed=0)
    first = [s["key"] for s in source]
    assert [s["key"] for s in source] == first
    source.set_epoch(1)
    second = [s["key"] for s in source]
    assert second != first and sorted(second) == sorted(first)
    assert first != sorted(first)


def _caption_folder(root, n=6, bad=None):
    records = []
    for i in range(n):
        rel = f"images/train/{i:03d}.png"
        if i == bad:
            (root / "images" / "train").mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(b"\x89PNG broken")
        else:
            write_image(root / rel, np.full((12, 18, 3), 10 * i, np.uint8))
        records.append({"image": rel, "mask": "ignored.png", "caption": f"scene {i}", "split": "train"})
    records.append({"image": "images/val/x.png", "caption": "val scene", "split": "val"})
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def test_caption_folder_reads_the_synthetic_layout(tmp_path):
    root = _caption_folder(tmp_path, bad=2)
    source = CaptionFolder(root, split="train", image_size=12, shuffle_buffer=0)
    assert len(source) == 6
    samples = list(source)
    assert len(samples) == 5 and source.skipped == 1
    assert {s["key"] for s in samples} == {f"images/train/{i:03d}" for i in (0, 1, 3, 4, 5)}
    assert samples[0]["image"].shape == (3, 12, 12)
    assert source.captions(3) == ["scene 0", "scene 1", "scene 2"]
    assert len(CaptionFolder(root, split="train", n=2, image_size=12)) == 2
    with pytest.raises(DataError, match="captions.jsonl"):
        CaptionFolder(tmp_path / "nowhere", image_size=12)


def test_region_cache_round_trip(tmp_path):
    root = _caption_folder(tmp_path / "world")
    source = CaptionFolder(root, image_size=12, shuffle_buffer=0)

    def regions_fn(images):  # (B, 3, 12, 12) -> ids from the brightness
        return (images[:, 0] * 10).long().clamp(0, 7)

    assert cache_regions(source, regions_fn, tmp_path / "cache", batch_size=4) == 6
    assert cache_regions(source, regions_fn, tmp_path / "cache", batch_size=4) == 0  # all cached
    assert region_file(tmp_path / "cache", "images/train/003").is_file()
    cached = CaptionFolder(root, image_size=12, shuffle_buffer=0, regions_dir=tmp_path / "cache")
    for s in cached:
        assert torch.equal(s["regions"], regions_fn(s["image"][None])[0])
    with pytest.raises(ValueError, match="centred"):
        CaptionFolder(root, image_size=12, regions_dir=tmp_path / "cache", random_crop=True)


def test_square_view_and_shard_specs(tmp_path):
    image = np.arange(20 * 40 * 3, dtype=np.uint8).reshape(20, 40, 3)
    view, box = square_view(image, 10, None)
    assert view.shape == (10, 10, 3) and box == (0, 5, 10, 20)
    for i in range(3):
        (tmp_path / f"s-{i:02d}.tar").write_bytes(b"")
    assert [p.name for p in expand_shards(str(tmp_path / "s-{00..02}.tar"))] == ["s-00.tar", "s-01.tar", "s-02.tar"]
    assert len(expand_shards(str(tmp_path / "s-*.tar"))) == 3 and len(expand_shards(tmp_path)) == 3
    with pytest.raises(DataError, match="not found"):
        TarShards(tmp_path / "missing.tar", image_size=8)
