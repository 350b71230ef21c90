"""Oracle mIoU and speed of the pseudo-mask generator on synthetic scenes (S-Seg Table 1's measure).

Every region (K = 8 per image) takes its majority ground-truth class; the confusion matrix is accumulated
over all scenes. Rows: K-means on raw RGB at 1/8 resolution (the paper's "pixel K-means" row), and K-means
on the features of ViT configs with random weights (no pretrained weights can be downloaded here; with a
pretrained checkpoint pass --weights NAME=PATH). Images per second count the encoder, the clustering and
the upsampling, on batches of 32, after a warm-up batch.

    python benchmarks/pseudo_masks.py [--scenes 256] [--size 224] [--device cuda]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from leafseg.data.synthetic import SyntheticWorld
from leafseg.eval import ConfusionMatrix, oracle_labels
from leafseg.grouping import PseudoMaskGenerator, build_feature_extractor

ROWS = [
    # (label, registry name, feature kind)
    ("pixel K-means", "pixels8", "tokens"),
    ("dino_vits8 random, tokens", "dino_vits8", "tokens"),
    ("dino_vits8 random, keys", "dino_vits8", "keys"),
    ("dinov2_vits14 random, tokens", "dinov2_vits14", "tokens"),
]


def scenes(n: int, size: int, seed: int):
    """(n, 3, size, size) float images in [0, 1] and (n, size, size) int64 masks; class count."""
    world = SyntheticWorld(seed=seed, size=size)
    items = [world.scene(i) for i in range(n)]
    images = torch.from_numpy(np.stack([s.image for s in items])).permute(0, 3, 1, 2).float() / 255
    masks = torch.from_numpy(np.stack([s.mask for s in items]).astype(np.int64))
    return images, masks, world.num_classes


def evaluate(generator, images, masks, num_classes, batch: int, device: str):
    """Oracle metrics over all scenes and images/s (after one warm-up batch)."""
    confusion = ConfusionMatrix(num_classes, device=device)
    generator(images[:batch].to(device))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        x, y = images[i : i + batch].to(device), masks[i : i + batch].to(device)
        regions = generator(x)
        confusion.update(oracle_labels(regions, y, num_classes, num_regions=generator.k), y)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return confusion.compute(), len(images) / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", type=int, default=256)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", action="append", default=[], help="NAME=PATH: a checkpoint for a row's model")
    args = ap.parse_args()
    weights = dict(w.split("=", 1) for w in args.weights)
    images, masks, num_classes = scenes(args.scenes, args.size, args.seed)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"{args.scenes} scenes of {args.size} px, {num_classes} classes, K={args.k}, device={device}")
    figures = []
    for label, name, kind in ROWS:
        torch.manual_seed(args.seed)
        encoder = build_feature_extractor(name, weights=weights.get(name, "random"), device=args.device)
        generator = PseudoMaskGenerator(encoder.eval(), k=args.k, kind=kind, seed=args.seed)
        metrics, speed = evaluate(generator, images, masks, num_classes, args.batch, args.device)
        print(f"{label:30s} oracle mIoU {100 * metrics['miou']:5.1f}  pixel acc. {100 * metrics['acc']:5.1f}"
              f"  {speed:7.1f} images/s")
        figures.append(f"{label} {100 * metrics['miou']:.1f} mIoU @ {speed:.1f} img/s")
    print(f"pseudo_masks [{device}, {args.scenes} scenes, {args.size} px, K={args.k}]: " + "; ".join(figures))


if __name__ == "__main__":
    main()
