"""Training speed of UniMatch V2 with ViT-S at the Pascal setting: leafseg's default path against
the authors' configuration, measured in the same run.

One iteration = teacher forward on the weak view, strong augmentation and CutMix on the device,
one student forward/backward over labelled + two strong views with Complementary Dropout,
AdamW step, EMA update (``leafseg.recipes.unimatch_v2.train_step``). Batch 4 labelled + 4
unlabelled, crop 518 (``--crop 224`` is the default on a CPU), DINOv2-S + DPT-S with random
weights (speed does not depend on weight values), 21 classes.

* leafseg default: PyTorch SDPA attention, bf16 autocast on CUDA (fp32 on a CPU);
* authors' configuration: eager attention, fp32.

Each configuration runs in its own process so that its peak memory is its own (CUDA: peak
allocated; CPU: peak resident set size of the process). The last line gives both, their
ratio, and the device.

    python benchmarks/unimatch_speed.py                 # crop 518 on CUDA, 224 on CPU
    python benchmarks/unimatch_speed.py --crop 518 --iters 5
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

CONFIGS = {
    "leafseg default (SDPA, bf16 autocast on CUDA)": {"attn": "sdpa", "amp": "auto"},
    "authors (eager attention, fp32)": {"attn": "eager", "amp": "off"},
}


def measure(task: tuple) -> dict:
    """Time ``iters`` training iterations of one configuration in this (fresh) process."""
    label, attn, amp, crop, batch, iters, warmup, device = task
    import resource

    import torch

    from leafseg.data.augment import StrongAugment
    from leafseg.losses import build_loss
    from leafseg.recipes.unimatch_v2 import UniMatchV2Config, build_model, train_step
    from leafseg.training import ModelEMA, resolve_precision, set_reproducible

    dev = torch.device(device)
    cfg = UniMatchV2Config(method="unimatch_v2", backbone="dinov2_vits14", weights="random", crop_size=crop,
                           batch_size=batch, attn_implementation=attn, amp=amp, num_labeled=1)
    precision = resolve_precision(cfg.amp, cfg.deterministic, dev)
    amp_dtype = precision.dtype
    set_reproducible(precision.deterministic)
    torch.manual_seed(0)
    model, optimizer = build_model(cfg, 21, dev)
    ema = ModelEMA(model)
    strong, criterion = StrongAugment().to(dev), build_loss("ce")
    batch_l = {"image": torch.rand(batch, 3, crop, crop), "mask": torch.randint(0, 21, (batch, crop, crop))}
    batch_u = {"image": torch.rand(batch, 3, crop, crop), "ignore": torch.zeros(batch, crop, crop, dtype=torch.long)}

    def step(i: int) -> None:
        loss, _ = train_step(model, ema.module, batch_l, batch_u, cfg=cfg, criterion=criterion, strong=strong,
                             amp_dtype=amp_dtype, device=dev)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema.update(model, i)

    for i in range(warmup):
        step(i)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for i in range(iters):
        step(warmup + i)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    seconds = time.perf_counter() - start
    return {"label": label, "its": iters / seconds, "peak_gib": peak, "deterministic": precision.deterministic,
            "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32", "attn": attn}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--crop", type=int, default=None, help="crop side, a multiple of 14 (518 on CUDA, 224 on CPU)")
    parser.add_argument("--batch", type=int, default=4, help="labelled and unlabelled images per iteration, each")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations (20 on CUDA, 3 on CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed iterations first (5 on CUDA, 1 on CPU)")
    args = parser.parse_args()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.startswith("cuda")
    crop = args.crop or (518 if gpu else 224)
    iters, warmup = args.iters or (20 if gpu else 3), args.warmup if args.warmup is not None else (5 if gpu else 1)
    if crop % 14:
        parser.error("--crop must be a multiple of 14")
    ctx = mp.get_context("spawn")
    rows = []
    for label, c in CONFIGS.items():
        with ctx.Pool(1) as pool:
            rows.append(pool.apply(measure, ((label, c["attn"], c["amp"], crop, args.batch, iters, warmup, device),)))
        r = rows[-1]
        print(f"{label:<48} {r['its']:.3f} it/s   peak {r['peak_gib']:.2f} GiB   ({r['attn']}, {r['amp']}, "
              f"deterministic={r['deterministic']})", flush=True)
    ours, theirs = rows
    name = torch.cuda.get_device_name(device) if gpu else f"cpu ({torch.get_num_threads()} threads)"
    memory = "peak allocated" if gpu else "peak RSS"
    print(f"unimatch_speed: ViT-S + DPT, crop {crop}, batch {args.batch}+{args.batch}: leafseg default "
          f"{ours['its']:.3f} it/s, {ours['peak_gib']:.2f} GiB | authors (eager, fp32) {theirs['its']:.3f} it/s, "
          f"{theirs['peak_gib']:.2f} GiB | speed-up x{ours['its'] / theirs['its']:.2f}, memory x"
          f"{ours['peak_gib'] / theirs['peak_gib']:.2f} ({memory}) | device {name}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
