"""Speed of CLIP region recognition: the context-aware single pass against its alternatives.

ViT-B/16 CLIP (``clip_vitb16``, random weights: speed does not depend on weight values) at 224 px,
M = 27 region masks per image (a random Voronoi partition at image resolution, like a grouping's
27 clusters), timed per image at batch 1 and batch 16 in one run:

* plain: one CLIP image embedding per image (``ClipEncoder.image_embedding``), the floor;
* (c) context-aware masking, ``RegionEncoder(mode="context")``, masked_blocks 1 (the default)
  and 4 (MAFT's setting);
* (b) only the kept patch tokens per region from the input, ``mode="drop", masked_blocks="all"``;
* (a) each region's masked image encoded alone, ``mode="pixels"``: 27 forward passes per image.

Each round runs every configuration once, in that order, under ``torch.inference_mode``, after one
untimed warm-up call each; (a) runs in the first rounds only (``--pixel-repeats``; on a CPU 2 of
5 rounds at batch 1 and 1 of 3 at batch 16, which alone takes 432 forward passes). Times are the
median over rounds with the range; the ratios (a)/(c) and (c)/plain are taken round by round
(same round, adjacent in time) and reported as median [min-max]. Goals: (c) at least 4x faster
than (a), and (c) within 1.3x of plain, at both batch sizes.

On a CPU the clock is the process's CPU time with torch pinned to one thread (``--threads``,
``--clock``): on an idle machine that is the wall time, and on a machine shared with other jobs it
does not count the time the process waits for a core. On CUDA it is wall time.

    python benchmarks/grouping_clip_speed.py                     # CPU: 1 thread, about 7 CPU minutes
    python benchmarks/grouping_clip_speed.py --device cuda --amp

The last line gives the figures.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from leafseg.backbones import RegionEncoder, build_backbone

ORDER = ("plain", "context", "context k=4", "drop", "pixels")


def voronoi_masks(batch: int, regions: int, size: int, seed: int = 0) -> torch.Tensor:
    """(batch, regions, size, size) one-hot masks: each pixel belongs to its nearest random seed."""
    gen = torch.Generator().manual_seed(seed)
    seeds = torch.rand(batch, regions, 2, generator=gen) * size
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    pixels = torch.stack([ys, xs], -1).view(1, -1, 2).expand(batch, -1, -1)
    nearest = torch.cdist(pixels, seeds).argmin(-1)  # (batch, size * size)
    return torch.nn.functional.one_hot(nearest, regions).transpose(1, 2).reshape(batch, regions, size, size).float()


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    model = ""
    info = Path("/proc/cpuinfo")
    if info.exists():
        lines = info.read_text().splitlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        model = f" {names[0]}" if names else ""
    return f"CPU{model}, {torch.get_num_threads()} threads"


def seconds(fn, device: str, clock: str) -> float:
    """Seconds taken by ``fn()``: wall-clock, or this process's CPU time (``clock="cpu"``)."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = now()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return now() - start


def measure(methods: dict, batch: int, rounds: int, pixel_rounds: int, args) -> dict[str, list[float]]:
    """Seconds per image of each method at ``batch``: one list per method, one entry per round."""
    images = torch.rand(batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1)).to(args.device)
    masks = voronoi_masks(batch, args.regions, args.size).to(args.device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.amp and args.device.startswith("cuda"))
    times: dict[str, list[float]] = {name: [] for name in methods}
    with torch.inference_mode(), amp:
        for name, method in methods.items():  # warm-up; (a) on one image (its passes are the same size)
            n = 1 if name == "pixels" else batch
            method(images[:n], masks[:n])
        for r in range(rounds):
            for name, method in methods.items():
                if name == "pixels" and r >= pixel_rounds:
                    continue
                call = lambda fn=method: fn(images, masks)  # noqa: E731
                times[name].append(seconds(call, args.device, args.clock) / batch)
            print(f"  batch {batch} round {r + 1}/{rounds}: "
                  + ", ".join(f"{k} {v[-1] * 1e3:.1f}" for k, v in times.items() if len(v) > r) + " ms/image",
                  flush=True)
    return times


def spread(values: list[float], scale: float = 1.0, fmt: str = ".1f") -> str:
    v = [x * scale for x in values]
    return f"{statistics.median(v):{fmt}} [{min(v):{fmt}}-{max(v):{fmt}}]"


def paired(top: list[float], bottom: list[float]) -> list[float]:
    """Round-by-round ratios top / bottom over the rounds both ran."""
    return [a / b for a, b in zip(top, bottom, strict=False)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads, pinned (1: steadiest on a shared machine)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--regions", type=int, default=27)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default=None,
                        help="wall-clock time, or the process's CPU time (default: cpu on a CPU, wall on CUDA)")
    parser.add_argument("--repeats", type=int, nargs=2, default=None, metavar=("B1", "B16"),
                        help="rounds at batch 1 and 16 (CPU: 5 3; CUDA: 30 20)")
    parser.add_argument("--pixel-repeats", type=int, nargs=2, default=None, metavar=("B1", "B16"),
                        help="rounds that include (a) (CPU: 2 1; CUDA: 10 5)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gpu = args.device.startswith("cuda")
    args.clock = args.clock or ("wall" if gpu else "cpu")
    repeats = args.repeats or ((30, 20) if gpu else (5, 3))
    wanted = args.pixel_repeats or ((10, 5) if gpu else (2, 1))
    pixel_repeats = [min(p, r) for p, r in zip(wanted, repeats, strict=True)]
    encoder = build_backbone("clip_vitb16", weights="random", device=args.device)
    methods = {
        "plain": lambda images, masks: encoder.image_embedding(images),
        "context": RegionEncoder(encoder, mode="context", masked_blocks=1),
        "context k=4": RegionEncoder(encoder, mode="context", masked_blocks=4),
        "drop": RegionEncoder(encoder, mode="drop", masked_blocks="all"),
        "pixels": RegionEncoder(encoder, mode="pixels", chunk=32),
    }
    device = device_name(args.device) + (" bf16" if args.amp and gpu else "") + f", {args.clock} time"
    print(f"grouping_clip_speed: {device}, torch {torch.__version__}, ViT-B/16 {args.size} px, M = {args.regions}",
          flush=True)
    results = {}
    for batch, rounds, pixel_rounds in zip((1, 16), repeats, pixel_repeats, strict=True):
        results[batch] = measure(methods, batch, rounds, pixel_rounds, args)
    parts, goals = [], {"a": True, "plain": True}
    for batch, t in results.items():
        speedup = paired(t["pixels"], t["context"])
        overhead = paired(t["context"], t["plain"])
        goals["a"] &= statistics.median(speedup) >= 4.0
        goals["plain"] &= statistics.median(overhead) <= 1.3
        parts.append(f"batch {batch} ({len(t['plain'])} rounds, (a) {len(t['pixels'])}) ms/image: plain "
                     f"{spread(t['plain'], 1e3)}, (c) {spread(t['context'], 1e3)}, (c) k=4 "
                     f"{spread(t['context k=4'], 1e3)}, (b) {spread(t['drop'], 1e3)}, (a) {spread(t['pixels'], 1e3)}; "
                     f"(a)/(c) x{spread(speedup, fmt='.2f')}, (c)/plain x{spread(overhead, fmt='.3f')}")
    verdict = (f"goal (c) >= 4x faster than (a): {'holds' if goals['a'] else 'FAILS'}; "
               f"goal (c) within 1.3x of plain: {'holds' if goals['plain'] else 'FAILS'}")
    print(f"grouping_clip_speed on {device}: " + " | ".join(parts) + " | " + verdict)


if __name__ == "__main__":
    main()
