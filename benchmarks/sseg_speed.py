"""S-Seg training speed at the paper's sizes, and the pseudo-mask generator's amortised cost.

Training: MaskFormer (6 decoder layers, 64 queries, width 256) on a ViT-S/16 with random weights
(the paper does not name its backbone; third-party notes say Swin-S, which the registry lacks),
a 12-layer width-256 text transformer (vocabulary 49408, context 77), pseudo-masks from DINO
ViT-S/8 + K-means (K = 8) computed on the fly, Hungarian matching, dice + focal and contrastive
losses, AdamW, 448 px images. Speed does not depend on weight values. Reported: images/s and the
share of each part of a step (bf16 autocast on CUDA).

Pseudo-masks: seconds per image of leafseg's generator (DINO ViT-S/8 at 448 px, K = 8, k-means of
all images of a batch at once on the device) amortised over a batch (128 on a GPU, as in the paper's
Table 1; 4 on a CPU), against the naive per-image loop a user of the authors' code runs (one image at a
time through DINO, its tokens to the host, scikit-learn ``KMeans``; :func:`naive_pseudo_masks`), and
the paper's 0.002 s (GPU); plus pixel K-means at 1/8 resolution (paper: 0.188 s). Protocol
(docs/benchmarks.md): one warm-up of each, then ``--rounds`` (>= 5) rounds in which the two take turns
(the first alternates); reported as the median seconds per image with the range over rounds, and the
speed-up as the median (range) of the per-round ratios. Threads are pinned for torch and, through
threadpoolctl, for scikit-learn's BLAS / OpenMP (``--threads``, default 1); the device and the 1-minute
load average before and after are printed. The last line gives the figures.

    python benchmarks/sseg_speed.py [--device cuda] [--batch 32] [--steps 5] [--pm-batch 128] [--rounds 5]
    python benchmarks/sseg_speed.py --quick     # a smoke run: 112 px, batch 1, 1 step, 2 images
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
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
def naive_pseudo_masks(encoder, images: torch.Tensor, k: int = 8, *, max_iter: int = 50, tol: float = 1e-4,
                       seed: int = 0, upsample: str = "bilinear") -> torch.Tensor:
    """The per-image loop a user of the authors' code runs: one image at a time through the encoder, its
    last-block tokens copied to the host, L2-normalised (cosine, the generator's metric) and clustered
    with scikit-learn's ``KMeans`` (k-means++, one initialisation, ``max_iter`` / ``tol`` as the
    generator), the token label map resized to the image as the generator does.

    images: (B, 3, H, W) in [0, 1] -> (B, H, W) int64 region ids in [0, k)."""
    from sklearn.cluster import KMeans

    from leafseg.grouping.pseudo_masks import encoder_input, upsample_labels

    out = []
    for i in range(len(images)):
        fmap = encoder.features(encoder_input(images[i : i + 1], encoder.patch_size), layers=(-1,),
                                kind="tokens").maps[0]  # (1, C, h, w)
        _, _, h, w = fmap.shape
        tokens = fmap[0].flatten(1).T.float().cpu().numpy()  # (h*w, C)
        tokens /= np.linalg.norm(tokens, axis=1, keepdims=True) + 1e-12
        labels = KMeans(k, n_init=1, max_iter=max_iter, tol=tol, random_state=seed).fit(tokens).labels_
        token_map = torch.from_numpy(labels.astype(np.int64)).view(1, h, w).to(images.device)
        out.append(upsample_labels(token_map, images.shape[-2:], k, upsample))
    return torch.cat(out)


def spread(values: list[float]) -> tuple[float, float, float]:
    """(median, min, max)."""
    return statistics.median(values), min(values), max(values)


@torch.no_grad()
def pm_speed(name: str, x: torch.Tensor, batch: int, device: torch.device, *, rounds: int = 5,
             naive_images: int = 8, threads: int = 1) -> dict:
    """Seconds per image of the generator with encoder ``name``: leafseg's batched path over all of ``x``
    in batches of ``batch``, and the naive per-image loop over the first ``naive_images`` images, taking
    turns in each of ``rounds`` rounds after one warm-up of each. Returns {"batched": [s/img per round],
    "naive": [...], "ratio": [naive / batched per round]}."""
    from threadpoolctl import threadpool_limits

    from leafseg.grouping import PseudoMaskGenerator, build_feature_extractor

    encoder = build_feature_extractor(name, weights="random" if not name.startswith("pixels") else None,
                                      device=str(device)).eval()
    generator = PseudoMaskGenerator(encoder, k=8)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    x = x.to(device)
    single = x[: min(len(x), naive_images)]
    runs = {"batched": lambda: [generator(x[i : i + batch]) for i in range(0, len(x), batch)],
            "naive": lambda: naive_pseudo_masks(encoder, single, 8)}
    counts = {"batched": len(x), "naive": len(single)}
    seconds = {key: [] for key in runs}
    with amp, threadpool_limits(threads):
        generator(x[: min(len(x), batch)])  # warm-up
        naive_pseudo_masks(encoder, x[:1], 8)
        for r in range(rounds):
            for key in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
                timer = Timer(device)
                with timer(key):
                    runs[key]()
                seconds[key].append(timer.seconds[key] / counts[key])
    seconds["ratio"] = [n / b for n, b in zip(seconds["naive"], seconds["batched"], strict=True)]
    return seconds


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, default=None, help="image side (448)")
    ap.add_argument("--batch", type=int, default=None, help="training batch (default 32 on GPU, 2 on CPU)")
    ap.add_argument("--steps", type=int, default=None, help="measured steps (default 10 on GPU, 2 on CPU)")
    ap.add_argument("--pm-batch", type=int, default=None, help="pseudo-mask batch (default 128 on GPU, 4 on CPU)")
    ap.add_argument("--pm-images", type=int, default=None, help="images for the batched pseudo-mask timing")
    ap.add_argument("--naive-images", type=int, default=None, help="images for the per-image loop (32 GPU, 4 CPU)")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds of the pseudo-mask comparison, at least 5")
    ap.add_argument("--threads", type=int, default=1, help="torch, BLAS and OpenMP threads (threadpoolctl)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 112 px, batch 1, 1 step, 2 images")
    args = ap.parse_args(argv)
    gpu = torch.device(args.device).type == "cuda"
    quick = ({"size": 112, "batch": 1, "steps": 1, "pm_batch": 2, "pm_images": 2, "naive_images": 2}
             if args.quick else {})
    for key, value in quick.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.size = args.size or 448
    args.batch = args.batch or (32 if gpu else 2)
    args.steps = args.steps or (10 if gpu else 2)
    args.pm_batch = args.pm_batch or (128 if gpu else 4)
    args.pm_images = args.pm_images or (2 * args.pm_batch if gpu else args.pm_batch)
    args.naive_images = min(args.naive_images or (32 if gpu else 4), args.pm_images)
    if args.rounds < 5:
        ap.error("--rounds must be at least 5 (a median of fewer says little)")
    return args


def main(argv=None) -> str:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    threads = f"{args.threads} thread{'s' if args.threads > 1 else ''}"
    speed, shares = train_speed(args, device)
    split = ", ".join(f"{k} {100 * v:.0f}%" for k, v in sorted(shares.items(), key=lambda kv: -kv[1]))
    print(f"training: {speed:.2f} images/s; {split}")
    x, _ = images(args.pm_images, args.size)
    kw = dict(rounds=args.rounds, naive_images=args.naive_images, threads=args.threads)
    dino = pm_speed("dino_vits8", x, args.pm_batch, device, **kw)
    pixels = pm_speed("pixels8", x, args.pm_batch, device, **kw)
    (bm, blo, bhi), (nm, nlo, nhi), (rm, rlo, rhi) = (spread(dino[k]) for k in ("batched", "naive", "ratio"))
    print(f"pseudo-masks dino_vits8 K=8 {args.size}px, {args.rounds} rounds: batched {bm:.4f} s/img "
          f"(range {blo:.4f}-{bhi:.4f}) at batch {args.pm_batch} over {args.pm_images} images; naive loop "
          f"{nm:.4f} s/img (range {nlo:.4f}-{nhi:.4f}) over {args.naive_images} images")
    pm, _, _ = spread(pixels["batched"])
    name = torch.cuda.get_device_name(device) if gpu else "cpu"
    line = (f"sseg_speed [{name}, {threads}, load {load_before:.2f}->{os.getloadavg()[0]:.2f}]: train {speed:.2f} "
            f"img/s at {args.size}px batch {args.batch} ({split}); pseudo-masks dino_vits8 K=8, median of "
            f"{args.rounds} rounds: batched {bm:.4f} s/img ({blo:.4f}-{bhi:.4f}) at batch {args.pm_batch} | naive "
            f"per-image loop {nm:.4f} s/img ({nlo:.4f}-{nhi:.4f}) | speed-up x{rm:.2f} ({rlo:.2f}-{rhi:.2f}) | "
            f"paper 0.002 s/img GPU, x{bm / PAPER_PM_SECONDS:.1f}; pixel K-means {pm:.4f} s/img (paper 0.188)")
    print(line, flush=True)
    return line


if __name__ == "__main__":
    main()
