"""S-Seg training speed at the paper's sizes, and the pseudo-mask generator's amortised cost.

Training: MaskFormer (6 decoder layers, 64 queries, width 256) on a ViT-S/16 with random weights
(the paper does not name its backbone; third-party notes say Swin-S, which the registry lacks),
a 12-layer width-256 text transformer (vocabulary 49408, context 77), pseudo-masks from DINO
ViT-S/8 + K-means (K = 8) computed on the fly, Hungarian matching, dice + focal and contrastive
losses, AdamW, 448 px images. Speed does not depend on weight values. Reported: images/s and the
share of each part of a step (bf16 autocast on CUDA).

Pseudo-masks: seconds per image of the generator (DINO ViT-S/8 at 448 px, K = 8) amortised over a
batch (128 on a GPU, as in the paper's Table 1; smaller on a CPU), next to the same images one at a
time and the paper's 0.002 s (GPU); plus pixel K-means at 1/8 resolution (paper: 0.188 s).

    python benchmarks/sseg_speed.py [--device cuda] [--batch 32] [--steps 5] [--pm-batch 128]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
import torch

from leafseg.data.synthetic import SyntheticWorld
from leafseg.recipes import sseg
from leafseg.text import BPETokenizer, ScratchTextEncoder, TextTransformer
from leafseg.training import load_config

PAPER_PM_SECONDS = 0.002
PAPER_PIXEL_KMEANS_SECONDS = 0.188


class Timer:
    """``timer(name)`` contexts accumulating seconds per name (CUDA synchronised)."""

    def __init__(self, device: torch.device):
        self.device, self.seconds = device, {}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def __call__(self, name: str):
        self._sync()
        start = time.perf_counter()
        yield
        self._sync()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def images(n: int, size: int) -> tuple[torch.Tensor, list[str]]:
    """(n, 3, size, size) synthetic scenes in [0, 1] and their captions."""
    world = SyntheticWorld(seed=0, size=size)
    scenes = [world.scene(i) for i in range(n)]
    x = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float() / 255
    return x, [s.caption for s in scenes]


def paper_model(cfg, captions: list[str], device: torch.device) -> sseg.SSegModel:
    """The S-Seg model at the paper's sizes, its text transformer with CLIP's vocabulary size."""
    tokenizer = BPETokenizer.train(captions, vocab_size=1000, context_length=77)
    model = sseg.build_model(cfg, tokenizer, device)
    model.text = ScratchTextEncoder(tokenizer, TextTransformer(vocab_size=49408, width=256, layers=12, heads=4,
                                                               context_length=77)).to(device)
    return model


def train_speed(args, device: torch.device) -> tuple[float, dict]:
    """(images/s, {part: share of the step}) over ``args.steps`` steps after one warm-up step."""
    cfg = load_config(sseg.SSegConfig, None, [f"image_size={args.size}", "backbone=dino_vits16", "weights=random",
                                             "pseudo_masks={backbone: dino_vits8, weights: random}"])
    x, captions = images(args.batch, args.size)
    torch.manual_seed(0)
    model = paper_model(cfg, captions, device)
    generator = sseg.build_pseudo_mask_generator(cfg, device)
    criterion = sseg.build_criterion(cfg)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    amp = torch.bfloat16 if device.type == "cuda" else None
    batch = {"image": x.to(device), "caption": captions}
    timer = Timer(device)
    for step in range(args.steps + 1):
        if step == 1:
            timer.seconds.clear()
        with timer("step"):
            loss, _ = sseg.train_step(model, batch, generator=generator, criterion=criterion, cfg=cfg, device=device,
                                      amp_dtype=amp, timer=timer)
            with timer("backward"):
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            with timer("optimizer"):
                optimizer.step()
    total = timer.seconds.pop("step")
    shares = {k: v / total for k, v in timer.seconds.items()}
    shares["other"] = max(0.0, 1 - sum(shares.values()))
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"model: {params:.1f}M parameters; batch {args.batch} at {args.size} px; {total / args.steps:.2f} s/step")
    return args.steps * args.batch / total, shares


@torch.no_grad()
def pm_speed(name: str, x: torch.Tensor, batch: int, device: torch.device) -> tuple[float, float]:
    """(batched, one-at-a-time) seconds per image of the generator with encoder ``name``."""
    from leafseg.grouping import PseudoMaskGenerator, build_feature_extractor

    encoder = build_feature_extractor(name, weights="random" if not name.startswith("pixels") else None,
                                      device=str(device)).eval()
    generator = PseudoMaskGenerator(encoder, k=8)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    timer = Timer(device)
    x = x.to(device)
    with amp:
        generator(x[:2])  # warm-up
        with timer("batched"):
            for i in range(0, len(x), batch):
                generator(x[i : i + batch])
        single = x[: min(len(x), 8)]
        with timer("single"):
            for i in range(len(single)):
                generator(single[i : i + 1])
    return timer.seconds["batched"] / len(x), timer.seconds["single"] / len(single)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--batch", type=int, default=None, help="training batch (default 32 on GPU, 2 on CPU)")
    ap.add_argument("--steps", type=int, default=None, help="measured steps (default 10 on GPU, 2 on CPU)")
    ap.add_argument("--pm-batch", type=int, default=None, help="pseudo-mask batch (default 128 on GPU, 4 on CPU)")
    ap.add_argument("--pm-images", type=int, default=None, help="images for the pseudo-mask timing")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    args.batch = args.batch or (32 if gpu else 2)
    args.steps = args.steps or (10 if gpu else 2)
    args.pm_batch = args.pm_batch or (128 if gpu else 4)
    args.pm_images = args.pm_images or (2 * args.pm_batch if gpu else args.pm_batch)
    label = torch.cuda.get_device_name(device) if gpu else f"cpu, {torch.get_num_threads()} threads"
    speed, shares = train_speed(args, device)
    split = ", ".join(f"{k} {100 * v:.0f}%" for k, v in sorted(shares.items(), key=lambda kv: -kv[1]))
    print(f"training: {speed:.2f} images/s; {split}")
    x, _ = images(args.pm_images, args.size)
    dino, dino_single = pm_speed("dino_vits8", x, args.pm_batch, device)
    pixels, _ = pm_speed("pixels8", x, args.pm_batch, device)
    print(f"pseudo-masks dino_vits8 K=8 {args.size}px: {dino:.4f} s/img at batch {args.pm_batch}, "
          f"{dino_single:.4f} s/img one at a time; pixel K-means 1/8 res: {pixels:.4f} s/img")
    print(f"sseg_speed [{label}]: train {speed:.2f} img/s at {args.size}px batch {args.batch} ({split}); "
          f"pseudo-masks {dino:.4f} s/img at batch {args.pm_batch} "
          f"(paper 0.002 s/img GPU, x{dino / PAPER_PM_SECONDS:.1f}; "
          f"one at a time x{dino_single / dino:.1f} slower); pixel K-means {pixels:.4f} s/img (paper 0.188)")


if __name__ == "__main__":
    main()
