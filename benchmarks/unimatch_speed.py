"""Training speed of UniMatch V2 with ViT-S at the Pascal setting: leafseg's default iteration against
the authors' iteration as their released code runs it, measured in the same run.

Both methods train the same network (leafseg's DINOv2-S + DPT-S, random weights: speed does not depend
on weight values; 21 classes) on the same batch composition (``--batch`` labelled + ``--batch``
unlabelled crops, Pascal-like JPEG images and PNG masks written to a temporary folder), and one timed
iteration is everything from asking the loaders for the next batches to the EMA update:

* **leafseg default**: the recipe's loop body. Loaders of ``SeededCrops`` (geometric part in the
  workers); ``leafseg.recipes.unimatch_v2.train_step`` (teacher on the weak view, strong views and
  CutMix batched on the device with kornia, one student forward over labelled + both strong views with
  Complementary Dropout); ``zero_grad``, ``backward``, AdamW step, ``ModelEMA.update``, poly schedule.
  PyTorch SDPA attention; bf16 autocast on CUDA; deterministic algorithms on a CPU (the recipe's
  ``deterministic: auto``).
* **authors' step** (``benchmarks/unimatch_authors_step.py``): per-sample PIL strong augmentation and
  CutMix boxes in the loader workers, separate student forwards for the labelled batch and the two
  strong views, their loss composition with its host reads, their AdamW groups, a Python-loop EMA,
  fp32, eager attention, ``cudnn.benchmark``.

Protocol (docs/benchmarks.md): after ``--warmup`` untimed iterations of each method, ``--rounds``
rounds; in each round the methods take turns (the first alternates), each starting fresh loader
iterators (workers stay alive), running one untimed iteration so that its workers are as far ahead as
in steady training, then ``--iters`` timed iterations. Reported: seconds per iteration as the median
over rounds with the range, and the speed-up as the median (range) of the per-round ratios. Torch
threads are pinned (``--threads``, default 1; loader workers run one thread each); the device, thread
and worker counts and the 1-minute load average before and after are printed. The last line gives
the figures.

    python benchmarks/unimatch_speed.py                 # crop 518 on CUDA, 224 on a CPU
    python benchmarks/unimatch_speed.py --quick         # a smoke run: crop 28, batch 2, 1 iteration a round
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from unimatch_authors_step import AuthorsStep, authors_loaders  # noqa: E402

NUM_CLASSES = 21
PASCAL_SIZE = (500, 375)  # a typical Pascal VOC image, scaled with the crop (crop 518 keeps it)


# ------------------------------------------------------------------------------------- data
def write_images(root: Path, count: int, size: tuple[int, int], seed: int = 0) -> tuple[Path, Path, Path]:
    """A Pascal VOC tree of ``count`` JPEG images (``size`` = (W, H)) and palette-index PNG masks at ``root``;
    half labelled, half unlabelled. Returns (VOC root, labelled split file, unlabelled split file)."""
    rng = np.random.default_rng(seed)
    voc = root / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    w, h = size
    lines = []
    for i in range(count):
        coarse = rng.integers(0, 256, (max(h // 16, 2), max(w // 16, 2), 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.int16)
        image = np.clip(smooth + rng.integers(-20, 21, smooth.shape), 0, 255).astype(np.uint8)
        labels = rng.integers(0, NUM_CLASSES, (max(h // 32, 2), max(w // 32, 2)), dtype=np.uint8)
        mask = np.array(Image.fromarray(labels).resize((w, h), Image.NEAREST))
        mask[:, :2] = 255  # a void border, as VOC masks have
        name = f"{i:06d}"
        Image.fromarray(image).save(voc / "JPEGImages" / f"{name}.jpg", quality=90)
        Image.fromarray(mask).save(voc / "SegmentationClass" / f"{name}.png")
        lines.append(f"JPEGImages/{name}.jpg SegmentationClass/{name}.png\n")
    (voc / "ImageSets/Segmentation/train.txt").write_text("".join(f"{i:06d}\n" for i in range(count)))
    half = count // 2
    lab, unl = root / "labeled.txt", root / "unlabeled.txt"
    lab.write_text("".join(lines[:half]))
    unl.write_text("".join(lines[half:]))
    return voc, lab, unl


# ---------------------------------------------------------------------------------- methods
class LeafsegMethod:
    """The recipe's iteration (``leafseg.recipes.unimatch_v2.train``'s loop body) with its defaults."""

    name = "leafseg default"

    def __init__(self, voc: Path, lab: Path, unl: Path, *, backbone: str, crop: int, batch: int, workers: int,
                 device: torch.device, total: int):
        from leafseg.data.augment import StrongAugment
        from leafseg.data.datasets import build_dataset
        from leafseg.data.transforms import RandomScaleCropFlip, SeededCrops
        from leafseg.losses import build_loss
        from leafseg.recipes.unimatch_v2 import UniMatchV2Config, build_model
        from leafseg.training import ModelEMA, ResumableSampler, poly_schedule, resolve_precision

        cfg = UniMatchV2Config(method="unimatch_v2", backbone=backbone, weights="random", crop_size=crop,
                               batch_size=batch, num_labeled=1, num_workers=workers, data_root=str(voc))
        self.cfg, self.device = cfg, device
        self.precision = resolve_precision(cfg.amp, cfg.deterministic, device)
        torch.manual_seed(0)
        self.model, self.optimizer = build_model(cfg, NUM_CLASSES, device)
        self.ema = ModelEMA(self.model, cfg.ema_momentum)
        self.scheduler = poly_schedule(self.optimizer, total, cfg.poly_power)
        self.criterion = build_loss("ce", ignore_index=255)
        self.strong = StrongAugment(blur_sigma=tuple(cfg.blur_sigma))
        transform = RandomScaleCropFlip(crop, tuple(cfg.scale_range))
        views = (SeededCrops(build_dataset("voc", voc, split_file=lab), transform, 0, 0, True),
                 SeededCrops(build_dataset("voc", voc, split_file=unl), transform, 0, 1, False))
        self.samplers = [ResumableSampler(len(v), 100_000, seed=v.stream) for v in views]
        self.loaders = [torch.utils.data.DataLoader(v, batch_size=batch, sampler=s, num_workers=workers,
                                                    drop_last=True, pin_memory=device.type == "cuda",
                                                    persistent_workers=workers > 0, generator=torch.Generator())
                        for v, s in zip(views, self.samplers, strict=True)]
        self.iteration, self.parts = 0, []
        self.label = (f"{self.cfg.attn_implementation}, "
                      f"{str(self.precision.dtype).replace('torch.', '') if self.precision.dtype else 'fp32'}, "
                      f"deterministic={self.precision.deterministic}")

    def start_round(self, epoch: int):
        from leafseg.training import set_reproducible

        set_reproducible(self.precision.deterministic)
        for s in self.samplers:
            s.set_epoch(epoch)
        return zip(*self.loaders, strict=False)

    def step(self, batches) -> None:
        from leafseg.recipes.unimatch_v2 import train_step

        batch_l, batch_u = batches
        loss, parts = train_step(self.model, self.ema.module, batch_l, batch_u, cfg=self.cfg,
                                 criterion=self.criterion, strong=self.strong, amp_dtype=self.precision.dtype,
                                 device=self.device)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.ema.update(self.model, self.iteration)
        self.scheduler.step()
        self.iteration += 1
        self.parts.append({"loss": loss.detach(), **parts})  # what Run.step_done keeps between log lines
        del self.parts[:-20]


class AuthorsMethod:
    """Their iteration (``unimatch_authors_step.AuthorsStep``) on the same network, built from the same seed."""

    name = "authors' step"
    label = "eager, fp32, cudnn.benchmark"

    def __init__(self, voc: Path, lab: Path, unl: Path, *, backbone: str, crop: int, batch: int, workers: int,
                 device: torch.device, total: int):
        from leafseg.recipes.unimatch_v2 import UniMatchV2Config, build_segmenter

        cfg = UniMatchV2Config(backbone=backbone, weights="random", crop_size=crop, attn_implementation="eager")
        torch.manual_seed(0)
        self.step_fn = AuthorsStep(build_segmenter(cfg, NUM_CLASSES, device), device)
        self.loaders = authors_loaders(voc, lab, unl, crop=crop, batch=batch, workers=workers,
                                       pin_memory=device.type == "cuda")
        self.iteration, self.total = 0, total

    def start_round(self, epoch: int):
        AuthorsStep.configure_backends()
        return zip(*self.loaders, strict=False)

    def step(self, batches) -> None:
        self.step_fn(*batches, self.iteration, self.total)
        self.iteration += 1


# ---------------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_round(method, epoch: int, iters: int, device: torch.device) -> tuple[float, float]:
    """(seconds per iteration, CUDA peak GiB above the round's start or 0) of one round."""
    batches = method.start_round(epoch)
    method.step(next(batches))  # untimed: the workers get one iteration's head start, as in steady training
    sync(device)
    base = 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    for _ in range(iters):
        method.step(next(batches))
    sync(device)
    seconds = (time.perf_counter() - start) / iters
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**30 if device.type == "cuda" else 0.0
    return seconds, peak


def spread(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--backbone", default="dinov2_vits14")
    ap.add_argument("--crop", type=int, default=None, help="crop side, a multiple of 14 (518 on CUDA, 224 on a CPU)")
    ap.add_argument("--batch", type=int, default=None, help="labelled and unlabelled images per iteration, each (4)")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds, at least 5 (7 on CUDA, 5 on a CPU)")
    ap.add_argument("--iters", type=int, default=None, help="timed iterations per round (10 on CUDA, 2 on a CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed iterations of each method first (5 CUDA, 1 CPU)")
    ap.add_argument("--workers", type=int, default=None, help="loader workers per loader (4 on CUDA as the "
                    "authors, 1 on a CPU)")
    ap.add_argument("--images", type=int, default=16, help="images written (half labelled, half unlabelled)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads of the main process")
    ap.add_argument("--quick", action="store_true", help="a smoke run: crop 28, batch 2, 1 iteration a round")
    args = ap.parse_args(argv)
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = args.device.type == "cuda"
    quick = {"crop": 28, "batch": 2, "rounds": 5, "iters": 1, "warmup": 1, "workers": 1} if args.quick else {}
    defaults = ({"crop": 518, "batch": 4, "rounds": 7, "iters": 10, "warmup": 5, "workers": 4} if gpu else
                {"crop": 224, "batch": 4, "rounds": 5, "iters": 2, "warmup": 1, "workers": 1})
    for key, value in {**defaults, **quick}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.crop % 14:
        ap.error("--crop must be a multiple of 14")
    if args.rounds < 5:
        ap.error("--rounds must be at least 5 (a median of fewer says little)")
    return args


def main(argv=None) -> str:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device, load_before = args.device, os.getloadavg()[0]
    size = tuple(max(round(s * args.crop / 518), 16) for s in PASCAL_SIZE)
    total = args.warmup + args.rounds * (args.iters + 1) + 10
    with tempfile.TemporaryDirectory() as tmp:
        voc, lab, unl = write_images(Path(tmp), args.images, size)
        common = dict(backbone=args.backbone, crop=args.crop, batch=args.batch, workers=args.workers, device=device,
                      total=total)
        methods = [LeafsegMethod(voc, lab, unl, **common), AuthorsMethod(voc, lab, unl, **common)]
        for m in methods:  # warm-up: kernels chosen, allocator and workers started
            batches = m.start_round(0)
            for _ in range(args.warmup):
                m.step(next(batches))
            sync(device)
        times = {m.name: [] for m in methods}
        peaks = {m.name: 0.0 for m in methods}
        for r in range(args.rounds):
            for m in (methods if r % 2 == 0 else methods[::-1]):
                seconds, peak = timed_round(m, r + 1, args.iters, device)
                times[m.name].append(seconds)
                peaks[m.name] = max(peaks[m.name], peak)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f} s/it" for k, v in times.items()), flush=True)
        labels = {m.name: m.label for m in methods}
        del methods
    ours, theirs = times["leafseg default"], times["authors' step"]
    ratios = [t / o for o, t in zip(ours, theirs, strict=True)]
    gpu = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if gpu else "cpu"
    for label, values in (("leafseg default", ours), ("authors' step", theirs)):
        med, lo, hi = spread(values)
        memory = f", step memory {peaks[label]:.2f} GiB above resident" if gpu else ""
        print(f"{label:<16} {med:.3f} s/it (range {lo:.3f}-{hi:.3f}) ({labels[label]}){memory}")
    (om, olo, ohi), (tm, tlo, thi), (rm, rlo, rhi) = spread(ours), spread(theirs), spread(ratios)
    line = (f"unimatch_speed [{name}, {args.threads} thread{'s' if args.threads > 1 else ''}, {args.workers} "
            f"worker{'s' if args.workers > 1 else ''}/loader, load {load_before:.2f}->{os.getloadavg()[0]:.2f}]: "
            f"{args.backbone} + DPT, crop {args.crop}, batch {args.batch}+{args.batch}, median of {args.rounds} "
            f"rounds x {args.iters} it: leafseg default {om:.3f} s/it ({olo:.3f}-{ohi:.3f}) | authors' step "
            f"{tm:.3f} s/it ({tlo:.3f}-{thi:.3f}) | speed-up x{rm:.2f} ({rlo:.2f}-{rhi:.2f}) | "
            f"torch {torch.__version__}")
    print(line, flush=True)
    return line


if __name__ == "__main__":
    main()
