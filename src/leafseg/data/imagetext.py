"""Image-text pairs for language-supervised training, streamed.

Two layouts:

* **tar shards** (:class:`TarShards`), the img2dataset / webdataset layout: each ``.tar`` holds
  samples as consecutive members ``<key>.jpg`` (or .jpeg/.png/.webp) and ``<key>.txt`` (the caption),
  other members (``<key>.json``...) ignored. Read with Python's ``tarfile`` in streaming mode.
* **a folder with captions.jsonl** (:class:`CaptionFolder`, the format of :mod:`leafseg.data.captions`),
  the synthetic world's layout: one JSON record per line with ``image`` (a path relative to the
  folder) and ``caption`` (and optionally ``split``). Masks, if present, are never read.

Both stream samples ``dict(image (3, S, S) float in [0, 1], caption str, key str)`` (plus
``regions`` (S, S) int64 when a pseudo-mask cache folder is given), shuffled through a buffer,
split across ``torch.distributed`` ranks and DataLoader workers (whole shards per worker when there
are enough shards, every n-th sample otherwise). Images are resized so their short side is S and
cropped to S x S (a random crop when ``random_crop``, else the centre). A sample that cannot be
decoded, lacks its image or caption, or sits after the point where a shard is truncated is
skipped, logged and counted in ``source.skipped`` (shared by all workers).
"""

from __future__ import annotations

import glob
import io
import logging
import multiprocessing
import os
import random
import re
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from leafseg.data.captions import read_captions
from leafseg.data.io import DataError, read_image, read_mask

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def expand_shards(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Shard paths from a list, a folder (its ``*.tar``), a glob, or a brace range ``data-{000..009}.tar``."""
    if isinstance(spec, (list, tuple)):
        return [p for s in spec for p in expand_shards(s)]
    text = str(spec)
    brace = re.search(r"\{(\d+)\.\.(\d+)\}", text)
    if brace:
        lo, hi, width = int(brace[1]), int(brace[2]), len(brace[1])
        return [p for i in range(lo, hi + 1)
                for p in expand_shards(text[: brace.start()] + f"{i:0{width}d}" + text[brace.end():])]
    path = Path(text)
    if path.is_dir():
        return sorted(path.glob("*.tar"))
    if any(c in text for c in "*?["):
        return [Path(p) for p in sorted(glob.glob(text))]
    return [path]


def region_file(folder: str | os.PathLike, key: str) -> Path:
    """Where a sample's cached pseudo-mask lives: ``folder/<key with '/' as '__'>.png``."""
    return Path(folder) / (key.replace("/", "__").replace("\\", "__") + ".png")


def square_view(image: np.ndarray, size: int,
                rng: random.Random | None) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Resize (H, W, 3) uint8 so its short side is ``size``, then crop ``size`` x ``size`` (random
    position with ``rng``, else centred). Returns the crop and its box (top, left, height, width)
    in the resized image."""
    h, w = image.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) != (h, w):
        image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
    top = rng.randint(0, nh - size) if rng else (nh - size) // 2
    left = rng.randint(0, nw - size) if rng else (nw - size) // 2
    return image[top : top + size, left : left + size], (top, left, nh, nw)


class ImageTextSource(IterableDataset):
    """Shared streaming, sharding, shuffling, decoding and skip-counting; see the module docstring.

    Args:
        image_size: side S of the square samples.
        shuffle_buffer: samples held for shuffling (0 or 1: stream order).
        seed: seeds the per-epoch order and crops (with the epoch, rank and worker).
        random_crop: random instead of centred crops.
        regions_dir: a folder of cached pseudo-masks (``region_file``) at the centred view; requires
            ``random_crop=False``.
        rank, world_size: default to torch.distributed's (or 0, 1).
    """

    def __init__(self, *, image_size: int = 448, shuffle_buffer: int = 1000, seed: int = 0, random_crop: bool = False,
                 regions_dir: str | os.PathLike | None = None, rank: int | None = None,
                 world_size: int | None = None):
        if regions_dir is not None and random_crop:
            raise ValueError("cached pseudo-masks are made on the centred view; use random_crop=False with them")
        self.image_size, self.shuffle_buffer, self.seed = int(image_size), int(shuffle_buffer), int(seed)
        self.random_crop, self.regions_dir = bool(random_crop), regions_dir
        inited = dist.is_available() and dist.is_initialized()
        self.rank = rank if rank is not None else (dist.get_rank() if inited else 0)
        self.world_size = world_size if world_size is not None else (dist.get_world_size() if inited else 1)
        self.epoch = 0
        self._skipped = multiprocessing.get_context().Value("l", 0)

    @property
    def skipped(self) -> int:
        """Samples skipped so far, over all workers of this process."""
        return int(self._skipped.value)

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` for the next iteration (call before creating the iterator)."""
        self.epoch = int(epoch)

    def describe(self) -> str:
        """Where the pairs come from, for messages."""
        return type(self).__name__

    def captions(self, limit: int) -> list[str]:
        """Up to ``limit`` captions in stream order (e.g. to train a tokenizer)."""
        out = []
        for _, _, caption in self._raw(0, 1, random.Random(0)):
            text = caption.decode("utf-8", "replace") if isinstance(caption, bytes) else caption
            if text and str(text).strip():
                out.append(str(text).strip())
            if len(out) >= limit:
                break
        return out

    def _slot(self) -> tuple[int, int]:
        """(this reader's slot, number of slots) over ranks x DataLoader workers."""
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        return self.rank * workers + worker, self.world_size * workers

    def _skip(self, key: str, reason: str) -> None:
        with self._skipped.get_lock():
            self._skipped.value += 1
        log.warning("skipped sample %s: %s", key, reason)

    def _raw(self, slot: int, slots: int, rng: random.Random) -> Iterator[tuple[str, object, object]]:
        """(key, image source, caption source) of this slot's samples (``None`` for a missing part)."""
        raise NotImplementedError

    def _decode(self, key: str, image, caption, rng: random.Random) -> dict:
        """Raises DataError on any problem."""
        if image is None or caption is None:
            raise DataError(f"{key}: missing {'image' if image is None else 'caption'}")
        text = caption.decode("utf-8", "replace").strip() if isinstance(caption, bytes) else str(caption).strip()
        if not text:
            raise DataError(f"{key}: empty caption")
        if isinstance(image, bytes):
            try:
                with Image.open(io.BytesIO(image)) as im:
                    array = np.asarray(im.convert("RGB"))
            except _DECODE_ERRORS as exc:
                raise DataError(f"{key}: cannot decode the image ({type(exc).__name__}: {exc})") from exc
        else:
            array = read_image(image)
        view, _ = square_view(array, self.image_size, rng if self.random_crop else None)
        sample = {"image": torch.from_numpy(np.array(view)).permute(2, 0, 1).float().div_(255.0),
                  "caption": text, "key": key}
        if self.regions_dir is not None:
            regions = read_mask(region_file(self.regions_dir, key), expected_size=view.shape[:2])
            sample["regions"] = torch.from_numpy(regions.astype(np.int64))
        return sample

    def __iter__(self) -> Iterator[dict]:
        slot, slots = self._slot()
        rng = random.Random(f"{self.seed}-{self.epoch}-{slot}")
        buffer: list[dict] = []
        for key, image, caption in self._raw(slot, slots, rng):
            try:
                sample = self._decode(key, image, caption, rng)
            except DataError as err:
                self._skip(key, str(err))
                continue
            if self.shuffle_buffer <= 1:
                yield sample
                continue
            buffer.append(sample)
            if len(buffer) >= self.shuffle_buffer:
                yield buffer.pop(rng.randrange(len(buffer)))
        rng.shuffle(buffer)
        yield from buffer


class TarShards(ImageTextSource):
    """Samples of webdataset-style tar shards (``expand_shards`` spec); see :class:`ImageTextSource`.

    The shard order is shuffled per epoch; with at least as many shards as slots each slot reads
    whole shards, otherwise every slot reads every shard and keeps every n-th sample.
    """

    def __init__(self, shards, **kwargs):
        super().__init__(**kwargs)
        self.shards = expand_shards(shards)
        missing = [str(p) for p in self.shards if not p.is_file()]
        if not self.shards or missing:
            raise DataError(f"tar shards not found: {missing or shards}")

    def describe(self) -> str:
        return f"{len(self.shards)} tar shards ({self.shards[0].parent})"

    def _raw(self, slot, slots, rng):
        order = list(self.shards)
        random.Random(f"{self.seed}-{self.epoch}").shuffle(order)
        whole = len(order) >= slots
        count = 0
        for i, shard in enumerate(order):
            if whole and i % slots != slot:
                continue
            for key, parts in self._groups(shard):
                count += 1
                if whole or (count - 1) % slots == slot:
                    image = next((parts[s] for s in IMAGE_SUFFIXES if s in parts), None)
                    yield key, image, parts.get("txt")

    def _groups(self, shard: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
        """(key, {suffix: bytes}) for consecutive members sharing a key; a truncated or corrupt
        shard ends early with one skip counted."""
        key, parts = None, {}
        try:
            with tarfile.open(shard, mode="r|*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    folder, _, base = member.name.rpartition("/")
                    stem, _, suffix = base.partition(".")
                    name = f"{folder}/{stem}" if folder else stem
                    if name != key and key is not None:
                        yield f"{shard.name}:{key}", parts
                        parts = {}
                    key = name
                    parts[suffix.lower()] = tar.extractfile(member).read()
        except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
            self._skip(f"{shard.name}:{key}", f"shard unreadable from here on ({type(err).__name__}: {err})")
            return
        if key is not None:
            yield f"{shard.name}:{key}", parts


class CaptionFolder(ImageTextSource):
    """Image-caption records of ``root/captions.jsonl`` (optionally one ``split``); see
    :class:`ImageTextSource`. Keys are the image paths without suffix (``images/train/0000042``).
    ``n`` keeps the first n records of the split."""

    def __init__(self, root: str | os.PathLike, split: str | None = "train", n: int | None = None,
                 captions: str = "captions.jsonl", **kwargs):
        super().__init__(**kwargs)
        self.root = Path(root)
        path = self.root / captions
        if not path.is_file():
            raise DataError(f"{path}: not found; an image-text folder needs a captions.jsonl "
                            '(one {"image": ..., "caption": ...} per line)')
        records = [(str(Path(rec["image"]).with_suffix("")), rec["image"], rec.get("caption"))
                   for rec in read_captions(path, required=("image",))
                   if split is None or rec.get("split", split) == split]
        self.records = records[:n] if n is not None else records
        if not self.records:
            raise DataError(f"{path}: no records" + (f" for split {split!r}" if split else ""))

    def __len__(self) -> int:
        """Samples per epoch over all slots (before any are skipped)."""
        return len(self.records)

    def describe(self) -> str:
        return f"{self.root} ({len(self.records)} pairs)"

    def captions(self, limit: int) -> list[str]:
        """The first ``limit`` non-empty captions, in file order."""
        return [str(c).strip() for _, _, c in self.records if c and str(c).strip()][:limit]

    def _raw(self, slot, slots, rng):
        order = list(range(len(self.records)))
        random.Random(f"{self.seed}-{self.epoch}").shuffle(order)
        for i in order[slot::slots]:
            key, image, caption = self.records[i]
            yield key, self.root / image, caption


def epoch_batches(source: ImageTextSource, *, batch_size: int, num_workers: int = 0, epoch: int = 0, skip: int = 0,
                  pin_memory: bool = False) -> Iterator[tuple[int, int, int, dict]]:
    """Endless (epoch, batch number in the epoch, samples skipped so far, batch) stream of full batches
    (:func:`collate_image_text`), starting at ``epoch`` after its first ``skip`` batches: a run resumed
    from a checkpoint that recorded (epoch, batches done) sees the batches it would have seen. The loaders
    draw nothing from the global random generators. Raises ConfigError when an epoch has no full batch."""
    from torch.utils.data import DataLoader

    from leafseg.errors import ConfigError

    while True:
        source.set_epoch(epoch)
        loader = DataLoader(source, batch_size=batch_size, num_workers=num_workers, drop_last=True,
                            collate_fn=collate_image_text, pin_memory=pin_memory, generator=torch.Generator())
        count = 0
        for count, batch in enumerate(loader, start=1):
            if count > skip:
                yield epoch, count, source.skipped, batch
        if count == 0:
            raise ConfigError(f"{source.describe()}: no full batch of batch_size={batch_size} pairs in an epoch")
        epoch, skip = epoch + 1, 0


def collate_image_text(items: list[dict]) -> dict:
    """Stack samples: image (B, 3, S, S), caption list of B str, key list, regions (B, S, S) if present."""
    batch = {"image": torch.stack([it["image"] for it in items]), "caption": [it["caption"] for it in items],
             "key": [it["key"] for it in items]}
    if items and "regions" in items[0]:
        batch["regions"] = torch.stack([it["regions"] for it in items])
    return batch


@torch.no_grad()
def cache_regions(source: ImageTextSource, regions_fn, folder: str | os.PathLike, *, batch_size: int = 64,
                  num_workers: int = 0, device="cpu") -> int:
    """Write ``regions_fn(images (B, 3, S, S) on device) -> (B, S, S)`` region ids (< 256) of every
    sample of ``source`` (use a non-shuffled, centre-crop source) to ``region_file(folder, key)``.
    Samples whose file exists are not recomputed. Returns the number of files written."""
    from torch.utils.data import DataLoader

    from leafseg.data.io import write_mask

    written = 0
    loader = DataLoader(source, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_image_text)
    for batch in loader:
        todo = [i for i, k in enumerate(batch["key"]) if not region_file(folder, k).exists()]
        if todo:
            regions = regions_fn(batch["image"][todo].to(device)).cpu().numpy().astype(np.uint8)
            for i, r in zip(todo, regions, strict=True):
                write_mask(region_file(folder, batch["key"][i]), r)
            written += len(todo)
    return written


def build_image_text(layout: str, path, **kwargs) -> ImageTextSource:
    """An image-text source by layout: "folder" (``path`` = a folder with captions.jsonl; ``split``,
    ``n`` accepted) or "tar" (``path`` = shards: a folder, glob, brace range or list)."""
    if layout == "folder":
        return CaptionFolder(path, **kwargs)
    if layout == "tar":
        return TarShards(path, **kwargs)
    raise ValueError(f"unknown image-text layout {layout!r}; use 'folder' or 'tar'")
