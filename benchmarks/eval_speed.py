"""Evaluation throughput of the harness (images/s) on 448 px synthetic scenes with ViT-S-sized encoders.

Speed does not depend on weight values, so the encoders have random weights:
* maskclip: a CLIP whose vision tower has ViT-S/16 dimensions (12 blocks, width 384, 6 heads); the
  text tower is tiny (text embeddings are computed once, before the timed loop);
* kmeans: dino_vits16 patch tokens clustered per image (k = the 12 classes), oracle labelling.

Configurations, each timed over the whole set after a warm-up run:
* whole image at 448 (one forward per image), batch 1 and batch 8;
* sliding window 224 / stride 112 over the 448 image (9 windows per image, 8 per forward);
* the named alternative for the harness overhead: a bare loop calling the model on the same
  tensors, already in memory (no data loading, post-processing or metrics).

    python benchmarks/eval_speed.py [--device cuda] [--images 32] [--amp]

The last line gives the figures and the ratios.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from leafseg.backbones import build_backbone, make_random_checkpoint
from leafseg.data import SyntheticDataset, SyntheticWorld
from leafseg.eval.harness import evaluate
from leafseg.eval.methods import KMeansSegmenter, MaskClip
from leafseg.eval.protocol import Protocol

VIT_S = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
             image_size=224, patch_size=16)


def clip_vits16(folder: Path, device: str) -> MaskClip:
    ckpt = make_random_checkpoint("clip_vitb16", folder, vision_config=VIT_S)
    return MaskClip(build_backbone("clip_vitb16", weights=ckpt, device=device))


def timed(method, dataset, protocol: Protocol, device: str) -> float:
    """images/s of a full evaluation (after a warm-up on a few images)."""
    warm = torch.utils.data.Subset(dataset, range(min(2, len(dataset))))
    warm.classes = dataset.classes
    evaluate(method, warm, protocol, progress=False, device=device)
    report = evaluate(method, dataset, protocol, progress=False, device=device)
    return report.images_per_second


def bare_loop(method, dataset, device: str, amp: bool) -> float:
    """images/s of ``method(image)`` alone, images already on the device."""
    images = [dataset[i]["image"][None].to(device) for i in range(len(dataset))]
    ctx = torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and device.startswith("cuda"))
    with torch.no_grad(), ctx:
        method(images[0])
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        for x in images:
            method(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return len(images) / (time.perf_counter() - start)


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({torch.get_num_threads()} threads)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = SyntheticWorld(seed=0, size=448).write(Path(tmp) / "world", args.images, split="val")
        dataset = SyntheticDataset(root, "val")
        common = dict(workers=args.workers, amp=args.amp, short_side=448)
        whole = Protocol(name="whole", mode="whole", **common)
        whole8 = Protocol(name="whole-b8", mode="whole", batch_size=8, **common)
        slide = Protocol(name="slide", mode="slide", crop=224, stride=112, batch_windows=8, **common)
        maskclip = clip_vits16(Path(tmp) / "clip", args.device)
        results = {
            "maskclip whole": timed(maskclip, dataset, whole, args.device),
            "maskclip whole b8": timed(maskclip, dataset, whole8, args.device),
            "maskclip slide 224/112": timed(maskclip, dataset, slide, args.device),
        }
        results["maskclip bare loop"] = bare_loop(maskclip, dataset, args.device, args.amp)
        kmeans = KMeansSegmenter(build_backbone("dino_vits16", weights="random", device=args.device))
        oracle = Protocol(name="kmeans", mode="whole", labelling="oracle", **common)
        results["kmeans dino_vits16 whole"] = timed(kmeans, dataset, oracle, args.device)
    for name, value in results.items():
        print(f"{name:28s} {value:8.2f} images/s")
    r = results
    print(f"eval speed on {device_name(args.device)}{' bf16' if args.amp else ''}, {args.images} synthetic scenes at "
          f"448 px, ViT-S/16 random weights: maskclip whole {r['maskclip whole']:.2f} img/s "
          f"(batch 8: {r['maskclip whole b8']:.2f}, x{r['maskclip whole b8'] / r['maskclip whole']:.2f}), "
          f"slide 224/112 {r['maskclip slide 224/112']:.2f} img/s "
          f"(x{r['maskclip slide 224/112'] / r['maskclip whole']:.2f} of whole), harness/bare-loop "
          f"x{r['maskclip whole'] / r['maskclip bare loop']:.2f}; kmeans dino_vits16 whole "
          f"{r['kmeans dino_vits16 whole']:.2f} img/s")


if __name__ == "__main__":
    main()
