"""`leafseg demo`: the synthetic world, pseudo-masks from two encoders and their oracle mIoU, a short
semi-supervised run (UniMatch V2 against labelled-only training), and one HTML report with pictures.

Every stage prints a banner when it starts and its figures as soon as they are known. Every model runs
on one CPU thread (``torch.set_num_threads(1)``, restored afterwards), so the figures are the same on
any number of cores; the two semi-supervised runs train side by side in two processes when the machine
has two cores (``jobs``), which changes the wall time only. Without downloadable weights the ViT encoder
has random weights (pass ``--weights`` with a local checkpoint to see a pretrained one); the pixel
K-means row is the baseline of S-Seg's Table 1. The semi-supervised part trains a tiny DINOv2 + DPT from
scratch with 1/16 of the scenes labelled (``semi_epochs`` epochs of 240 iterations for each method; 0
skips it). The federated part runs FUSS through ``leafseg.recipes.fuss.run`` (Flower's simulation engine,
as ``leafseg fed run``): 4 clients, one per domain of a multi-domain synthetic world, local-only training
against FUSS for ``fed_rounds`` rounds (0 skips it); its mIoU-against-rounds picture is FUSS's own report.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from leafseg.data.io import list_images, palette, read_image, read_mask
from leafseg.data.synthetic import SyntheticWorld
from leafseg.errors import ConfigError
from leafseg.eval import report
from leafseg.eval.matching import oracle_labels
from leafseg.eval.pseudo_mask_folder import pseudo_mask_folder
from leafseg.grouping import PseudoMaskGenerator, build_feature_extractor
from leafseg.training.runinfo import run_record, write_json

THREADS = 1  # torch threads of every model of the demo: the figures do not depend on the cores

# The federated part: configs/fuss/synthetic.yaml made smaller (16 + 8 scenes per domain, 40 local steps)
FED_SETTINGS = [
    "data.dataset=synthetic", "data.size=64", "data.synthetic={domains: 4, train: 16, val: 8, size: 64}",
    "partition.scheme=domain", "model.backbone=dino_vits8", "model.weights=random",
    "model.arch_overrides={patch_size: 8, hidden_size: 128, num_hidden_layers: 2, num_attention_heads: 4, "
    "intermediate_size: 256}",
    "model.code_dim=32", "model.clusters=12", "local.steps=40", "local.batch_size=16",
    "local.loss={preset: cocostuff27_vits8, self_shift: 0.38, knn_shift: 0.1, random_shift: 0.05, "
    "feature_samples: 8}", "local.threads=1", "federation.clients=4", "federation.round_timeout=600",
    "eval.preset=stego",
    "eval.protocol={center_crop: 64, batch_size: 32, workers: 0}",
]
FED_STRATEGIES = ("local_only", "fuss")


def default_jobs() -> int:
    """Processes for the semi-supervised pair: 2 where two cores are free to this process, else 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 2 if cores >= 2 else 1


def _encoders(backbone: str, weights: str | None):
    """(label, registry name, weights) of the encoders the demo compares."""
    label = f"{backbone} ({'random weights' if weights == 'random' else weights or 'default weights'})"
    return [("pixel K-means (RGB, 1/8 res.)", "pixels8", None), (f"{label} + K-means", backbone, weights)]


def _gallery_rows(world_dir: Path, out_dirs: list[Path], names: list[str], num_classes: int, k: int):
    """Tiles per scene: image, ground truth, then each encoder's regions and their oracle labelling."""
    class_colours, region_colours = palette(num_classes), palette(k + 8)[8:]
    rows = []
    for name in names:
        image = read_image(world_dir / "images" / "train" / f"{name}.png")
        gt = read_mask(world_dir / "masks" / "train" / f"{name}.png")
        row = [image, report.overlay(image, gt, class_colours)]
        for out in out_dirs:
            regions = read_mask(out / f"{name}.png")
            oracle = oracle_labels(torch.from_numpy(regions.astype(np.int64))[None],
                                   torch.from_numpy(gt.astype(np.int64))[None], num_classes)[0].numpy()
            row += [report.overlay(image, regions, region_colours), report.overlay(image, oracle, class_colours)]
        rows.append(row)
    return rows


class _Stages:
    """Numbered banners with the time since the demo started."""

    def __init__(self, total: int):
        self.total, self.done, self.t0 = total, 0, time.perf_counter()

    def banner(self, text: str) -> None:
        self.done += 1
        print(f"\n[{self.done}/{self.total}] {text}  (at {time.perf_counter() - self.t0:.0f} s)", flush=True)

    def say(self, text: str) -> None:
        print(f"      {text}", flush=True)


def run_demo(out: str | Path = "demo_out", *, scenes: int = 48, size: int = 96, k: int = 8,
             backbone: str = "dino_vits8", weights: str | None = "random", seed: int = 0,
             device: str = "cpu", progress: bool = True, semi_epochs: int = 7,
             semi_overrides: list[str] | None = None, jobs: int | None = None, fed_rounds: int = 3,
             fed_overrides: list[str] | None = None) -> dict:
    """Generate a world, run the pseudo-mask generators, (``semi_epochs`` > 0) the short semi-supervised
    comparison and (``fed_rounds`` > 0) the federated one, write ``report.html``; returns the figures.
    ``semi_overrides`` / ``fed_overrides`` (key=value) go after each part's settings."""
    if semi_epochs < 0:
        raise ConfigError(f"--semi-epochs must be >= 0, got {semi_epochs}")
    if fed_rounds < 0:
        raise ConfigError(f"--fed-rounds must be >= 0, got {fed_rounds}")
    jobs = default_jobs() if jobs is None else jobs
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        return _run(Path(out), scenes=scenes, size=size, k=k, backbone=backbone, weights=weights, seed=seed,
                    device=device, progress=progress, semi_epochs=semi_epochs, semi_overrides=semi_overrides,
                    jobs=jobs, fed_rounds=fed_rounds, fed_overrides=fed_overrides)
    finally:
        torch.set_num_threads(threads)


def _run(out: Path, *, scenes, size, k, backbone, weights, seed, device, progress, semi_epochs, semi_overrides,
         jobs, fed_rounds, fed_overrides) -> dict:
    stages = _Stages(3 + bool(semi_epochs) + bool(fed_rounds))
    for owned in (out / "world", out / "pseudo_masks"):  # the demo's own folders: start them afresh
        shutil.rmtree(owned, ignore_errors=True)
    stages.banner(f"Synthetic world: {scenes} scenes of {size} px (seed {seed}) -> {out / 'world'}")
    torch.manual_seed(seed)
    world = SyntheticWorld(seed=seed, size=size)
    world_dir = world.write(out / "world", scenes, split="train")
    stages.say(f"{world.num_classes} classes: {', '.join(world.classes)}")
    stages.banner(f"Pseudo-masks: K = {k} regions per image by k-means of each encoder's features; "
                  "oracle mIoU against the true masks")
    rows, out_dirs = _pseudo_masks(out, world, world_dir, encoders=_encoders(backbone, weights), k=k, seed=seed,
                                   device=device, progress=progress, say=stages.say)
    names = [p.stem for p in list_images(world_dir / "images" / "train")[:6]]
    titles = ["image", "ground truth"]
    for label, _, _ in _encoders(backbone, weights):
        short = label.split(" (")[0]
        titles += [f"{short}: regions", f"{short}: oracle"]
    gallery = report.gallery(_gallery_rows(world_dir, out_dirs, names, world.num_classes, k), titles,
                             out / "gallery.png")
    semi = None
    if semi_epochs:
        semi = _semi_supervised(out, stages, epochs=semi_epochs, seed=seed, device=device, progress=progress,
                                overrides=semi_overrides, jobs=jobs)
    fed = None
    if fed_rounds:
        fed = _federated(out / "federated", stages, rounds=fed_rounds, seed=seed, device=device, progress=progress,
                         overrides=fed_overrides)
    stages.banner("Report")
    config = dict(scenes=scenes, size=size, k=k, backbone=backbone, weights=weights, seed=seed, device=device,
                  threads=THREADS, jobs=jobs, semi_epochs=semi_epochs, semi_overrides=list(semi_overrides or []),
                  fed_rounds=fed_rounds, fed_overrides=list(fed_overrides or []))
    record = run_record(seed=seed, config=config, device=device)
    record["environment"]["threads"] = THREADS
    record["metrics"] = [dict(r) for r in rows]
    record["semi_supervised"] = semi
    record["federated"] = fed
    write_json(out / "run.json", record)
    page = _write_report(out, world, rows, gallery, record, semi, fed, device)
    for line in _summary(rows, semi, fed):
        stages.say(line)
    stages.say(f"report: {page}")
    stages.say(f"gallery: {gallery}")
    stages.say(f"{time.perf_counter() - stages.t0:.0f} s in all, {THREADS} thread per model")
    return {"rows": rows, "semi_supervised": semi, "federated": fed, "report": page, "gallery": gallery}


def _summary(rows: list[dict], semi: list[dict] | None, fed: list[dict] | None) -> list[str]:
    """The headline figures of every part that ran, one line each."""
    lines = ["oracle mIoU: " + ", ".join(f"{r['oracle mIoU']:.1f} ({r['method'].split(' (')[0]})" for r in rows)]
    if semi:
        lines.append("best EMA mIoU: " + ", ".join(f"{r['best EMA mIoU']:.1f} ({r['method']})" for r in semi))
    if fed:
        lines.append(f"federated mIoU after round {fed[0]['rounds']}: "
                     + ", ".join(f"{r['final mIoU']:.1f} ({r['strategy']})" for r in fed))
    return lines


def _pseudo_masks(out: Path, world, world_dir: Path, *, encoders, k, seed, device, progress, say):
    rows, out_dirs = [], []
    for label, name, w in encoders:
        encoder = build_feature_extractor(name, weights=w, device=device).eval()
        generator = PseudoMaskGenerator(encoder, k=k, seed=seed)
        out_dir = out / "pseudo_masks" / name
        res = pseudo_mask_folder(generator, world_dir / "images" / "train", out_dir,
                                 gt_dir=world_dir / "masks" / "train", num_classes=world.num_classes,
                                 device=device, num_workers=0, progress=progress)
        row = {"method": label, "oracle mIoU": 100 * res.oracle["miou"], "pixel acc.": 100 * res.oracle["acc"],
               "images/s": res.images_per_second, "iou": res.oracle["iou"]}
        say(f"{label}: oracle mIoU {row['oracle mIoU']:.1f}, pixel acc. {row['pixel acc.']:.1f} "
            f"({row['images/s']:.1f} images/s)")
        rows.append(row)
        out_dirs.append(out_dir)
    return rows, out_dirs


def _semi_supervised(out: Path, stages: _Stages, *, epochs, seed, device, progress, overrides, jobs) -> list[dict]:
    from leafseg.recipes import unimatch_v2

    side = "side by side in 2 processes" if jobs > 1 else "one after the other"
    stages.banner(f"Semi-supervised, 1/16 of the scenes labelled: labelled-only and UniMatch V2, {epochs} epochs "
                  f"of 240 iterations each, {side}; a line per epoch (mIoU on 64 held-out scenes)")
    rows = unimatch_v2.demo(out / "semi_supervised", epochs=epochs, seed=seed, device=device, progress=progress,
                            overrides=overrides, jobs=jobs)["rows"]
    for row in rows:
        stages.say(f"{row['method']}: best EMA mIoU {row['best EMA mIoU']:.1f}, final EMA mIoU "
                   f"{row['final EMA mIoU']:.1f} ({row['iterations']} iterations, {row['seconds']:.0f} s)")
    gain = rows[1]["best EMA mIoU"] - rows[0]["best EMA mIoU"]
    stages.say(f"UniMatch V2 - labelled-only: {gain:+.1f} mIoU")
    return rows


def _federated(out: Path, stages: _Stages, *, rounds, seed, device, progress, overrides) -> list[dict] | None:
    """Local-only clients against FUSS through the recipe's own entry (Flower's simulation engine), each run
    into ``out/<strategy>``, then FUSS's report of both in ``out`` (``report.html``, ``miou.png``); None
    (skipped, with a note) without Flower's simulation engine."""
    from leafseg.config import load_config
    from leafseg.recipes.fuss import FussConfig, run
    from leafseg.recipes.fuss.report import write_fuss_report

    settings = FED_SETTINGS + [f"data.root={out / 'world'}", f"data.synthetic.seed={seed}", f"seed={seed}",
                               f"federation.rounds={rounds}", f"device={device}", f"threads={THREADS}",
                               f"progress={progress}", *(overrides or [])]
    cfg = load_config(FussConfig, None, settings)
    world = cfg.data.synthetic
    stages.banner(f"Federated, {cfg.federation.clients} clients, one synthetic domain each, no labels: local-only "
                  f"and FUSS, {rounds} rounds of {cfg.local.steps} local steps each on Flower's simulation engine; "
                  f"a line per round (Hungarian-matched mIoU on {world.domains * world.val} held-out scenes of "
                  "every domain)")
    shutil.rmtree(out, ignore_errors=True)  # the demo's own folder: start it afresh
    missing = [name for name in ("flwr", "ray") if importlib.util.find_spec(name) is None]
    if missing:
        stages.say(f"skipped: {' and '.join(missing)} not installed (pip install 'leafseg[fed]')")
        return None
    rows = []
    for name in FED_STRATEGIES:
        start = time.perf_counter()
        with _quiet_engine():
            result = run(None, [*settings, f"strategy.name={name}", f"out_dir={out / name}"], overwrite=True)
        history = result["history"]
        rows.append({"strategy": name, "final mIoU": 100 * history[-1]["miou"], "best mIoU": 100 * result["best_miou"],
                     "final acc.": 100 * history[-1]["acc"], "rounds": result["rounds"],
                     "mIoU per round": [round(100 * r["miou"], 1) for r in history],
                     "clients' own mIoU": [None if m is None else round(100 * m, 1)
                                           for m in history[-1]["clients_miou"]],
                     "clients": cfg.federation.clients, "centroids": cfg.model.clusters,
                     "seconds": time.perf_counter() - start, "out_dir": result["out_dir"]})
        stages.say(f"{name}: mIoU after rounds 1-{rows[-1]['rounds']}: "
                   f"{', '.join(f'{m:.1f}' for m in rows[-1]['mIoU per round'])}; final acc. "
                   f"{rows[-1]['final acc.']:.1f} ({rows[-1]['seconds']:.0f} s)")
    write_fuss_report([r["out_dir"] for r in rows], out)
    stages.say(f"FUSS - local-only: {rows[1]['final mIoU'] - rows[0]['final mIoU']:+.1f} mIoU after round "
               f"{rows[1]['rounds']}")
    return rows


@contextlib.contextmanager
def _quiet_engine():
    """Leave out the simulation engine's notes that say nothing about the run: Flower's deprecation of
    ``run_simulation`` (the recipe's entry on one machine) and Ray's tip about accelerator variables."""
    import logging
    import warnings

    def keep(record: logging.LogRecord) -> bool:
        return "DEPRECATED FEATURE" not in str(record.msg)

    flwr = logging.getLogger("flwr")
    flwr.addFilter(keep)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*accelerator visible devices", category=FutureWarning)
            yield
    finally:
        flwr.removeFilter(keep)


def _fed_section(rows: list[dict]) -> str:
    picture = '<p><img src="federated/miou.png" alt="mIoU against rounds"></p>'
    intro = (
        f"<p>FUSS through <code>leafseg fed run</code>'s code on Flower's simulation engine: {rows[0]['clients']} "
        "clients, each holding the scenes of one domain of a multi-domain synthetic world (its own colour shift "
        f"and class mix), no labels. Each client trains a projection head and {rows[0]['centroids']} centroids "
        "over a frozen small ViT with random weights. <b>local_only</b>: nothing is shared; <b>fuss</b>: every "
        "round the server averages the heads (weighted by images) and merges the centroids (FedCC max-min). "
        "mIoU is Hungarian-matched on held-out scenes of every domain (for local_only, the mean of the clients' "
        "own models; thin lines: each client's model). With a random encoder the features carry little of the "
        "world, so the two are not expected to separate here (<code>docs/fuss.md</code>). FUSS's own report of "
        "the two runs: <a href='federated/report.html'>federated/report.html</a>.</p>")
    table = report.metrics_table(rows, ["strategy", "final mIoU", "best mIoU", "final acc.", "rounds", "seconds"])
    return intro + table + picture


def _semi_section(out: Path, rows: list[dict], epochs: int, device: str) -> str:
    from leafseg.eval.run_report import write_run_report

    folder = out / "semi_supervised" / "report"
    write_run_report([r["out_dir"] for r in rows], folder, scenes=4, device=device)
    pictures = "".join(f'<p><img src="semi_supervised/report/{name}" alt="{name}"></p>'
                       for name in ("miou.png", "loss.png", "per_class_iou.png", "predictions_1.png")
                       if (folder / name).exists())
    intro = (
        f"<p>A tiny DINOv2 + DPT trained from scratch for {epochs} epochs ({rows[0]['iterations']} iterations) "
        "with 1/16 of 1,024 synthetic scenes labelled, scored on 64 held-out scenes. <b>Labelled-only</b> "
        "sees the 64 labelled scenes; <b>UniMatch V2</b> adds the other 960 through an EMA teacher's "
        "confident pseudo-labels on two strongly augmented views with Complementary Dropout. The teacher "
        "of so small a model becomes confident only after about 1,000 iterations: labelled-only leads for the "
        "first epochs and UniMatch V2 passes it in the last ones (the mIoU curves below), so much shorter runs "
        "show labelled-only ahead. <code>benchmarks/unimatch_synthetic.py</code> runs the full comparison "
        "(four methods, three seeds). The pictures below are "
        "<code>leafseg report</code> of the two run folders (also in "
        "<a href='semi_supervised/report/report.html'>semi_supervised/report/report.html</a>).</p>")
    return intro + report.metrics_table(rows, ["method", "best EMA mIoU", "final EMA mIoU", "iterations",
                                               "seconds"]) + pictures


def _per_class_picture(out: Path, world, rows: list[dict]) -> str:
    """Grouped bars of every encoder's per-class oracle IoU."""
    from leafseg.eval.run_report import per_class_figure, run_colours

    runs = [SimpleNamespace(label=r["method"], per_class=dict(zip(world.classes, r["iou"], strict=True)))
            for r in rows]
    per_class_figure(runs, list(world.classes), run_colours(runs)).savefig(out / "pseudo_mask_per_class.png")
    return '<img src="pseudo_mask_per_class.png" alt="per-class oracle IoU">'


def _write_report(out: Path, world, rows, gallery: Path, record: dict, semi: list[dict] | None,
                  fed: list[dict] | None, device: str) -> Path:
    intro = (
        f"<p>{record['config']['scenes']} synthetic scenes ({world.num_classes} classes, exact masks). "
        f"Each encoder's patch features are clustered into K = {record['config']['k']} regions per image "
        "with batched k-means (S-Seg's pseudo-mask generator). <b>Oracle mIoU</b> gives every region its "
        "majority ground-truth class: it measures how well the regions follow object boundaries, the "
        "measure of S-Seg Table 1.</p><p class='note'>Without downloadable checkpoints the ViT has random "
        "weights; pass <code>--weights PATH</code> (a Hugging Face folder or the authors' .pth) to see a "
        f"pretrained encoder. Every model ran on {THREADS} CPU thread, so these figures repeat on any number "
        "of cores (on the same kind of CPU).</p>"
    )
    sections = [
        ("What you are looking at", intro),
        ("Pseudo-mask quality", report.metrics_table(rows, ["method", "oracle mIoU", "pixel acc.", "images/s"])),
        ("Per-class oracle IoU, every encoder", _per_class_picture(out, world, rows)),
        ("Classes", report.legend_html(world.classes, palette(world.num_classes))),
        ("Gallery", f'<img src="{gallery.name}" alt="gallery">'),
        *([("Semi-supervised: UniMatch V2 vs labelled-only",
            _semi_section(out, semi, record["config"]["semi_epochs"], device))] if semi else []),
        *([("Federated: FUSS vs local-only clients", _fed_section(fed))] if fed else []),
        ("Run", f"<pre>{record['git_commit']}  torch {record['environment']['torch']}  "
                f"{record['environment']['device']}  {THREADS} thread per model  seed {record['seed']}</pre>"),
    ]
    return report.write_html(out / "report.html", "leafseg demo: the synthetic world", sections)
