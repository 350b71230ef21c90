"""STEGO's central claim on the synthetic world: distilling the frozen features' correspondences into a head
gives better label-free segments than clustering the features themselves.

For each model seed, on the same frozen encoder (``configs/stego/synthetic.yaml``: a random-weight ViT, since
no encoder here may have seen labels):

* STEGO: the ``stego`` recipe (head + cluster probe) trained on the training scenes;
* K-means: spherical k-means (K = the number of classes, that seed) of the encoder's patch features over the
  same training views, each pixel given the centroid of highest cosine, exactly as the cluster probe does.

Both are scored by the same harness under the run's protocol (Hungarian-matched mIoU on the validation
scenes). The claim holds when STEGO's mean beats K-means' by more than the two standard deviations added.

Verdict protocol (docs/benchmarks.md, ``benchmarks/verdict.py``): the settings were chosen on the development
world (``--world dev``: world seed 0, model seeds 0-2); the verdict is read on the held-out world (seed 1)
with fresh model seeds (100-102), never from fewer than 3 seeds. Runs go in parallel, one single-threaded
process each (``--workers``).

    python benchmarks/stego_synthetic.py                      # the verdict: held-out world, 3 fresh seeds
    python benchmarks/stego_synthetic.py --world dev          # the development world (for choosing settings)
    python benchmarks/stego_synthetic.py --quick              # 100 iterations, 1 seed: a smoke check
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path

from verdict import add_arguments, describe, die_with_parent, resolve, verdict

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "stego" / "synthetic.yaml"


def kmeans_miou(run_dir: Path, seed: int) -> dict:
    """K-means of the run's frozen features over its training views, scored like the run's cluster probe."""
    import torch
    import yaml

    from leafseg.config import load_config
    from leafseg.eval.harness import evaluate
    from leafseg.eval.protocol import Protocol
    from leafseg.grouping import batched_kmeans
    from leafseg.recipes.stego import StegoConfig, StegoSegmenter, build_data, build_encoder
    from leafseg.recipes.stego_model import encode
    from leafseg.training import DistInfo

    cfg = load_config(StegoConfig, run_dir / "config.yaml")
    data = build_data(cfg, DistInfo())
    encoder = build_encoder(cfg.backbone, "cpu")
    feats = []
    for start in range(0, len(data.views), 64):
        images = torch.stack([data.views[i]["image"] for i in range(start, min(start + 64, len(data.views)))])
        feats.append(encode(encoder, images, cfg.backbone.layer).permute(0, 2, 3, 1).flatten(0, 2))
    k = cfg.probes.clusters or data.num_classes
    result = batched_kmeans(torch.cat(feats)[None], k, metric="cosine", seed=seed)
    method = StegoSegmenter(encoder, torch.nn.Identity(), result.centroids[0], layer=cfg.backbone.layer)
    protocol = Protocol.from_dict(yaml.safe_load((run_dir / "protocol.yaml").read_text()))
    report = evaluate(method, data.val, protocol, progress=False, method_name="kmeans")
    return {"kmeans_miou": report.miou, "kmeans_acc": report.acc}


def one_run(task: tuple) -> dict:
    """Train STEGO for one seed in this process (single-threaded), then its K-means baseline."""
    seed, world_root, world_seed, out_dir, overrides = task
    import torch

    torch.set_num_threads(1)
    from leafseg.recipes.stego import run

    start = time.perf_counter()
    result = run(str(CONFIG), [f"data_root={world_root}", f"synthetic.seed={world_seed}", f"seed={seed}",
                               f"out_dir={out_dir}", "progress=false", "echo=false", "threads=1", *overrides],
                 overwrite=True)
    row = {"seed": seed, "stego_miou": result["miou"], "stego_acc": result["acc"],
           "linear_miou": result["linear_miou"], "iterations": result["iterations"]}
    row.update(kmeans_miou(Path(out_dir), seed))
    row["seconds"] = time.perf_counter() - start
    return row


def prepare_world(root: Path, world_seed: int, overrides: list[str]) -> None:
    """Write the world once (and its k-NN table's folder is beside it), before parallel runs share it."""
    from leafseg.config import load_config
    from leafseg.recipes.stego import StegoConfig

    cfg = load_config(StegoConfig, CONFIG, [f"data_root={root}", f"synthetic.seed={world_seed}", *overrides])
    cfg.synthetic.ensure(root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--workers", type=int, default=3, help="runs at once, one thread each")
    parser.add_argument("--quick", action="store_true", help="100 iterations and one seed")
    parser.add_argument("--out", default=None, help="folder for the world and runs (default: a temporary folder)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every run")
    args = parser.parse_args()
    world_seed, seeds = resolve(args)
    args.seeds = seeds = seeds[:1] if args.quick else seeds
    overrides = (["iterations=100"] if args.quick else []) + list(args.set)
    out = Path(args.out or tempfile.mkdtemp(prefix="stego_synthetic_"))
    world = out / f"world{world_seed}"
    prepare_world(world, world_seed, overrides)
    print(f"stego_synthetic on the {describe(args)}", flush=True)
    tasks = [(s, world, world_seed, out / f"seed{s}", overrides) for s in seeds]
    workers = min(args.workers, len(tasks))
    start = time.perf_counter()
    if workers > 1:
        with mp.get_context("spawn").Pool(workers, die_with_parent, (os.getpid(),)) as pool:
            rows = pool.map(one_run, tasks)
    else:
        rows = [one_run(t) for t in tasks]
    total = time.perf_counter() - start
    print(f"{'seed':>6} {'STEGO mIoU':>11} {'K-means mIoU':>13} {'diff':>6} {'STEGO acc':>10} {'K-means acc':>12} "
          f"{'linear mIoU':>12} {'seconds':>8}")
    for r in rows:
        print(f"{r['seed']:>6} {100 * r['stego_miou']:>11.1f} {100 * r['kmeans_miou']:>13.1f} "
              f"{100 * (r['stego_miou'] - r['kmeans_miou']):>+6.1f} {100 * r['stego_acc']:>10.1f} "
              f"{100 * r['kmeans_acc']:>12.1f} {100 * r['linear_miou']:>12.1f} {r['seconds']:>8.0f}")
    claim = verdict("STEGO - K-means", [100 * r["stego_miou"] for r in rows], [100 * r["kmeans_miou"] for r in rows],
                    args)
    (out / "stego_synthetic.json").write_text(json.dumps({"world": args.world, "world_seed": world_seed,
                                                          "seeds": seeds, "rows": rows, "overrides": overrides,
                                                          "verdict": claim, "seconds": total}, indent=1))
    import torch

    print(f"stego_synthetic (Hungarian mIoU %, {describe(args)}, {rows[0]['iterations']} iterations each): "
          f"{summary(rows)} | {claim} | device cpu ({workers} processes x 1 thread, torch {torch.__version__}) | "
          f"{total:.0f} s")


def summary(rows: list[dict]) -> str:
    """Both methods' mean ± standard deviation of mIoU and their mean pixel accuracy, in %."""
    def stat(key: str) -> str:
        values = [100 * r[key] for r in rows]
        return f"{statistics.mean(values):.1f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.1f}"

    accs = [statistics.mean(100 * r[k] for r in rows) for k in ("stego_acc", "kmeans_acc")]
    return (f"STEGO {stat('stego_miou')}, K-means {stat('kmeans_miou')} (pixel accuracy {accs[0]:.1f} vs "
            f"{accs[1]:.1f})")


if __name__ == "__main__":
    main()
