"""Group, then recognise on the synthetic world: a CLIP trained from scratch on the world's captions names
class-agnostic regions by class name, without and with region-level adaptation (the orderings of the
grouping + CLIP paper's Fig. 5 and Tab. 4-5).

Per model seed, on one synthetic world (captions only for training; the masks are read for scoring):

* CLIP: ``configs/clip/synthetic.yaml`` through the ``clip`` recipe, from random weights on the world's
  training pairs; its exported Hugging Face folder is the recognition model of every row below. One CLIP
  per seed, cached in ``OUT/seed<s>/clip`` (a later run with the same settings reuses it).
* The grouping (``configs/grouping_clip/synthetic.yaml``): per-image k-means of ``pixels4`` features (mean
  RGB of 4x4 cells), never trained on anything; the k-means draws use the model seed.
* No adaptation, the ``grouping_clip`` method over the CLIP through the harness, by class name on the
  world's held-out scenes: (a) ``mode=pixels``, every region encoded alone from its masked image; (b)
  ``mode=drop``, every region's class token with only the patch tokens inside it; (c) ``mode=context``,
  context-aware masking (the patches attend as in the whole image, each region token only to its own
  patches).
* (c) adapted: the ``grouping_clip`` recipe trains the region tokens (and the temperature, nothing of CLIP)
  with the noun-region loss one-way (noun to region, the paper's), two-way (both) and reverse (region to
  noun); the run's own harness evaluation at its end.
* The grouping's oracle: every region takes the majority class of its pixels (``leafseg.eval.matching``,
  the harness's ``labelling=oracle``), on the same batches, hence the same regions, as (a)-(c).

Verdict protocol (docs/benchmarks.md, ``benchmarks/verdict.py``): every setting was chosen on the
development world (world seed 0, model seeds 0 and 1); the verdicts are computed on the held-out world
(world seed 1, its own training and validation scenes) with model seeds never used for a choice, and only
from at least 3 seeds. An ordering holds when the mean of the per-seed differences exceeds their standard
deviation (both figures of a seed come from the same CLIP and grouping, so the comparison is paired).

    python benchmarks/grouping_clip_synthetic.py                      # held-out world, seeds 100 101 102
    python benchmarks/grouping_clip_synthetic.py --seeds 10 11 12     # the run docs/grouping_clip.md quotes
    python benchmarks/grouping_clip_synthetic.py --world dev          # development world, seeds 0 1 2
    python benchmarks/grouping_clip_synthetic.py --quick              # a tiny world and a few steps: the pipeline only

The runs go in parallel, one process per core (``--workers``), each with ``--threads`` torch threads.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import torch

from leafseg.eval.segmenter import Segmenter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from verdict import add_arguments, describe, die_with_parent, resolve, verdict  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLIP_CONFIG = ROOT / "configs" / "clip" / "synthetic.yaml"
GCLIP_CONFIG = ROOT / "configs" / "grouping_clip" / "synthetic.yaml"
WORLD = {"train": 2048, "val": 256, "size": 64}
MODES = {"a": "pixels", "b": "drop", "c": "context"}
DIRECTIONS = {"one-way": "noun_to_region", "two-way": "both", "reverse": "region_to_noun"}
# The adaptation's steps and learning rate, chosen on the development world (docs/grouping_clip.md): the
# config's 500 steps at the paper's lr 5e-4 reach 26.5 mIoU on development seed 0, 200 steps at 4e-3 27.6.
ADAPTATION = ["iterations=200", "lr=0.004"]
# --quick: a tiny world and a few steps, to check the pipeline (its figures mean nothing)
QUICK_WORLD = {"train": 64, "val": 16, "size": 64}
QUICK_CLIP = ["iterations=4", "batch_size=16", "warmup=1", "retrieval.limit=16", "retrieval.batch_size=16",
              "eval.protocol.batch_size=16", "log_every=1", "save_every=4"]
QUICK_GCLIP = ["iterations=2", "batch_size=16", "eval.protocol.batch_size=16", "log_every=1", "save_every=2"]
VERDICTS = [("c", "b", "(c)>(b)"), ("one-way", "c", "tokens>none")]     # (better, worse, label): decided
ALSO = [("c", "a", "(c)>(a)"), ("one-way", "two-way", "one-way>two-way"), ("one-way", "reverse", "one-way>reverse")]
COLUMNS = [("r1", "CLIP R@1"), ("maskclip", "MaskCLIP"), ("a", "(a)"), ("b", "(b)"), ("c", "(c)"),
           ("one-way", "(c)+tokens one-way"), ("two-way", "two-way"), ("reverse", "reverse"),
           ("oracle", "oracle")]


# ------------------------------------------------------------------------------ run settings
def world_spec(args) -> dict:
    return {**(QUICK_WORLD if args.quick else WORLD), "seed": args.world_seed}


def clip_overrides(seed: int, args) -> list[str]:
    """The clip recipe's settings for one model seed: the world, the seed, the run folder, the threads."""
    spec = world_spec(args)
    return [f"seed={seed}", f"data.path={args.world_dir}", f"data.synthetic={json.dumps(spec)}",
            f"eval.root={args.world_dir}",
            f"out_dir={Path(args.out) / f'seed{seed}' / 'clip'}", f"device={args.device}", f"threads={args.threads}",
            "progress=false", "echo=false"] + (QUICK_CLIP if args.quick else []) + list(args.clip_set)


def gclip_overrides(seed: int, args, out: str) -> list[str]:
    """The grouping_clip recipe's settings for one model seed: the world, the seed's CLIP, the k-means seed."""
    spec = world_spec(args)
    clip = Path(args.out) / f"seed{seed}" / "clip" / "clip"
    return [f"seed={seed}", f"data={args.world_dir}", f"synthetic={json.dumps(spec)}", f"eval.root={args.world_dir}",
            f"clip.weights={clip}", f"grouping.seed={seed}", f"out_dir={Path(args.out) / f'seed{seed}' / out}",
            f"device={args.device}", f"threads={args.threads}", "progress=false", "echo=false"] \
        + ADAPTATION + (QUICK_GCLIP if args.quick else []) + list(args.set)


def run_cached(recipe, config: Path, overrides: list[str]) -> dict:
    """``recipe.run`` unless its folder already holds a finished run of exactly this resolved config."""
    from leafseg.config import dump_config, load_config

    cfg = load_config(recipe.CONFIG, config, overrides)
    out = Path(cfg.out_dir)
    saved = out / "config.yaml"
    if (out / "results.json").is_file() and saved.is_file() and saved.read_text() == dump_config(cfg):
        return {**json.loads((out / "results.json").read_text()), "cached": True}
    return recipe.run(config, overrides, overwrite=True)


# ------------------------------------------------------------------------------------ tasks
def train_clip(seed: int, args) -> dict:
    """The seed's CLIP: recall at 1 on the held-out pairs (mean of both directions), MaskCLIP's mIoU."""
    from leafseg.recipes import clip_pretrain

    res = run_cached(clip_pretrain, CLIP_CONFIG, clip_overrides(seed, args))
    return {"r1": 50 * (res["r1_image_to_text"] + res["r1_text_to_image"]), "maskclip": 100 * res["miou"]}


def without_adaptation(seed: int, args) -> dict:
    """(a), (b), (c) over the seed's CLIP with its class-token copies as region tokens, and the oracle of
    the grouping, all through the harness on the same batches of the held-out scenes."""
    from leafseg.config import load_config
    from leafseg.data.datasets import build_dataset
    from leafseg.eval.harness import evaluate
    from leafseg.recipes import grouping_clip

    row, out, dataset = {}, Path(args.out) / f"seed{seed}" / "no_adaptation", None
    device = torch.device(args.device)
    for key, mode in MODES.items():
        cfg = load_config(grouping_clip.CONFIG, GCLIP_CONFIG,
                          gclip_overrides(seed, args, "no_adaptation") + [f"recognition.mode={mode}"])
        grouping_clip.check_config(cfg)
        dataset = dataset or build_dataset(cfg.eval.dataset, cfg.eval.root, split=cfg.eval.split)
        segmenter = grouping_clip.build_segmenter(cfg, device)
        row[key] = 100 * grouping_clip.evaluate_grouping_clip(segmenter, cfg, device, out_dir=out / mode,
                                                              dataset=dataset).miou
    protocol = cfg.eval.resolve(cfg.eval.dataset).with_overrides(
        {"labelling": "oracle", "num_clusters": segmenter.num_regions})
    report = evaluate(GroupingRegions(segmenter.grouper), dataset, protocol, out / "oracle", progress=False,
                      device=device, method_name="grouping oracle")
    row["oracle"] = 100 * report.miou
    return row


def adapt(seed: int, direction: str, args) -> dict:
    """(c) with region tokens trained by the grouping_clip recipe, the noun-region loss in ``direction``."""
    from leafseg.recipes import grouping_clip

    overrides = gclip_overrides(seed, args, f"tokens_{direction}") + [f"loss.direction={DIRECTIONS[direction]}",
                                                                      "recognition.mode=context"]
    res = run_cached(grouping_clip, GCLIP_CONFIG, overrides)
    return {direction: 100 * res["miou"]}


def one_task(task: tuple) -> tuple[int, str, dict, tuple[float, float]]:
    """Run one (kind, seed) in this process; returns (seed, kind, figures, (wall, CPU) seconds)."""
    kind, seed, args = task
    torch.set_num_threads(args.threads)
    start, cpu = time.perf_counter(), time.process_time()
    if kind == "clip":
        row = train_clip(seed, args)
    elif kind == "none":
        row = without_adaptation(seed, args)
    else:
        row = adapt(seed, kind, args)
    return seed, kind, row, (time.perf_counter() - start, time.process_time() - cpu)


class GroupingRegions(Segmenter):
    """The grouping alone as a cluster method: images (B, 3, H, W) in [0, 1] -> each pixel's region id
    (B, H, W) int64 in [0, M), for the harness's oracle labelling."""

    outputs = "clusters"

    def __init__(self, grouper):
        super().__init__()
        self.grouper, self.num_clusters = grouper, int(grouper.num_regions)

    def forward(self, images):
        return self.grouper(images).labels_high


# ---------------------------------------------------------------------------------- schedule
def run_all(args) -> tuple[dict, dict]:
    """Every task of every seed: the CLIPs first, a seed's other tasks as soon as its CLIP is done."""
    rows = {seed: {} for seed in args.seeds}
    seconds = {seed: {} for seed in args.seeds}
    follow = ["none", *DIRECTIONS]

    def record(result):
        seed, kind, row, secs = result
        rows[seed].update(row)
        seconds[seed][kind] = {"wall": secs[0], "cpu": secs[1]}
        print(f"seed {seed} {kind}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items())
              + f" ({secs[0]:.0f} s, CPU {secs[1]:.0f} s)", flush=True)
        return seed, kind

    if args.workers <= 1:
        for seed in args.seeds:
            for kind in ["clip", *follow]:
                record(one_task((kind, seed, args)))
        return rows, seconds
    with ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn"), initializer=die_with_parent,
                             initargs=(os.getpid(),)) as pool:
        pending = {pool.submit(one_task, ("clip", seed, args)) for seed in args.seeds}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                seed, kind = record(future.result())
                if kind == "clip":
                    pending |= {pool.submit(one_task, (k, seed, args)) for k in follow}
    return rows, seconds


def prepare_world(args) -> None:
    """Write the world once, before the workers start (every run would otherwise race to)."""
    from leafseg.training import SyntheticSpec

    SyntheticSpec(**world_spec(args)).ensure(args.world_dir)


# ---------------------------------------------------------------------------------- verdicts
def verdict_text(rows: list[dict], args) -> str:
    """The two orderings the benchmark decides (``benchmarks/verdict.py``, paired), then the paper's other
    orderings with their figures only."""
    def gap(better, worse, label):
        return verdict(label, [r[better] for r in rows], [r[worse] for r in rows], args, paired=True)

    decided = "; ".join(gap(*check) for check in VERDICTS)
    also = "; ".join(gap(*check).split(":")[0] for check in ALSO)
    return f"{decided}; paper's other orderings, not decided: {also}"


def summary(rows: list[dict], key: str) -> str:
    values = [r[key] for r in rows]
    return f"{statistics.mean(values):.1f}" + (f"±{statistics.stdev(values):.1f}" if len(values) > 1 else "")


def table(seeds: list[int], rows: list[dict]) -> list[str]:
    """The per-seed table (mIoU by class name, %; CLIP R@1: recall at 1 of the held-out pairs, %)."""
    lines = ["| seed | " + " | ".join(name for _, name in COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 1) + "|"]
    for seed, row in zip(seeds, rows, strict=True):
        lines.append(f"| {seed} | " + " | ".join(f"{row[k]:.1f}" for k, _ in COLUMNS) + " |")
    if len(rows) > 1:
        lines.append("| mean ± sd | " + " | ".join(summary(rows, k) for k, _ in COLUMNS) + " |")
    return lines


def machine(args) -> str:
    """"device cpu, 2 processes x 1 thread, torch 2.x" (or the GPU's name)."""
    if torch.device(args.device).type != "cpu":
        return f"device {torch.cuda.get_device_name(args.device)}, torch {torch.__version__}"
    return (f"device cpu, {args.workers} process{'es' if args.workers > 1 else ''} x {args.threads} "
            f"thread{'s' if args.threads > 1 else ''}, torch {torch.__version__}")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    ap.add_argument("--out", default=None, help="folder for the runs (default runs/bench_grouping_clip/world<W>)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                    help="runs in parallel, one process each (default: 2, one per core)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="overrides for every grouping_clip run and evaluation")
    ap.add_argument("--clip-set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for the CLIP runs")
    ap.add_argument("--quick", action="store_true", help="tiny world, a few steps, one seed: the pipeline only")
    args = ap.parse_args(argv)
    args.world_seed, seeds = resolve(args)
    args.seeds = seeds = seeds[:1] if args.quick else seeds
    args.out = args.out or f"runs/bench_grouping_clip/world{args.world_seed}{'_quick' if args.quick else ''}"
    args.world_dir = str(Path(args.out) / "world")
    if torch.device(args.device).type == "cuda":
        args.workers = 1
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    print(f"grouping_clip_synthetic: {describe(args)}, world folder {args.world_dir}"
          f"{', QUICK' if args.quick else ''}", flush=True)
    start = time.perf_counter()
    prepare_world(args)
    by_seed, seconds = run_all(args)
    minutes = (time.perf_counter() - start) / 60
    cpu = sum(t["cpu"] for kinds in seconds.values() for t in kinds.values()) / 60
    rows = [by_seed[seed] for seed in args.seeds]
    print("\n".join(table(args.seeds, rows)))
    (Path(args.out) / "results.json").write_text(json.dumps(
        {"world": args.world, "world_seed": args.world_seed, "seeds": args.seeds, "rows": rows, "seconds": seconds,
         "minutes": minutes, "cpu_minutes": cpu, "quick": args.quick}, indent=2))

    seeds = " ".join(map(str, args.seeds))
    figures = ", ".join(f"{name} {summary(rows, key)}" for key, name in COLUMNS[2:])
    print(f"grouping_clip_synthetic [{args.world} world {args.world_seed}, seeds {seeds}"
          f"{', QUICK' if args.quick else ''}]: mIoU by class name {figures}; {verdict_text(rows, args)}; "
          f"{machine(args)}, {minutes:.1f} min wall, {cpu:.1f} min CPU")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
