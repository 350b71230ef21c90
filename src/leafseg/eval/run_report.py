"""``leafseg report``: compare training runs and evaluations in one page of pictures.

    out/report.html           the table of runs, then the pictures below, with a note for any part left out
    out/loss.png              every loss column of train_log.jsonl against iteration, all runs on each plot
    out/miou.png              every mIoU column of metrics.jsonl against iteration, all runs on one plot
                              (an evaluation folder is a horizontal line at its mIoU)
    out/per_class_iou.png     IoU per class at each run's last evaluation, grouped bars, one group per class
    out/predictions_<i>.png   the first few validation scenes: image | ground truth | each trained model,
                              one picture per validation set

Predictions come from each run's exported weights (:func:`leafseg.eval.methods.load_model`), scored by the
harness under the run's own ``protocol.yaml``, so they are the predictions the run's mIoU counted.
Pictures are drawn with matplotlib's Agg canvas directly (no pyplot, no global backend change);
matplotlib, torch and the models are imported only when a report is written.
"""

from __future__ import annotations

import html
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from leafseg.errors import UserError
from leafseg.eval import report
from leafseg.eval.run_folders import WEIGHT_FILES, DatasetSpec, RunFolder, miou_columns, read_run_folder, unique_labels

__all__ = ["loss_figure", "miou_figure", "per_class_figure", "run_colours", "write_run_report"]

_STYLES = ("-", "--", ":", "-.")
_BARS_PER_ROW = 30  # classes per row of the per-class picture


def write_run_report(folders: Sequence[str | os.PathLike], out: str | os.PathLike, *, scenes: int = 4,
                     device: str = "cpu") -> Path:
    """Write ``out/report.html`` and its pictures for training run folders and ``leafseg eval`` output
    folders (see the module docstring); ``scenes`` validation scenes are shown (0: no predictions).
    Returns the path of report.html."""
    if not folders:
        raise UserError("give at least one run folder")
    runs = [read_run_folder(f) for f in folders]
    for run, label in zip(runs, unique_labels(runs), strict=True):
        run.label = label
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    colour = run_colours(runs)
    datasets = _Datasets()
    for run in runs:  # name the classes of training runs, whose logs number them
        names = datasets.classes(run.dataset) if run.dataset else None
        if names is not None and len(names) == len(run.per_class) and all(k.isdigit() for k in run.per_class):
            run.per_class = dict(zip(names, run.per_class.values(), strict=True))
    summary = report.metrics_table([r.summary_row() for r in runs], list(runs[0].summary_row()))
    sections = [
        ("Runs", summary + '<p class="note">mIoU: the last evaluation (UniMatch V2: the EMA model); '
                           "best mIoU: the best evaluation of the run</p>"),
        ("Training curves", _curves_section(runs, colour, out)),
        ("Per-class IoU", _per_class_section(runs, colour, out)),
        ("Predictions", _predictions_section(runs, datasets, out, scenes, device)),
    ]
    return report.write_html(out / "report.html", "Run report: " + ", ".join(r.label for r in runs), sections)


# -- matplotlib, without pyplot ----------------------------------------------------------------------
def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def run_colours(runs: list[RunFolder]) -> dict[str, tuple]:
    """A colour per run label, the same in every picture of a report."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(runs) <= 10 else "tab20"]
    return {run.label: cmap(i % cmap.N) for i, run in enumerate(runs)}


def _img(name: str) -> str:
    return f'<img src="{html.escape(name)}" alt="{html.escape(name)}">'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _series(rows: list[dict], key: str) -> tuple[list, list]:
    """(iterations, values) of the rows that hold a number for ``key``."""
    pairs = [(r["iteration"], r[key]) for r in rows if isinstance(r.get("iteration"), int | float)
             and isinstance(r.get(key), int | float) and not isinstance(r.get(key), bool)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _run_legend(fig, runs: list[RunFolder], colour: dict) -> None:
    """One colour key for every run, under the figure."""
    from matplotlib.patches import Patch

    handles = [Patch(color=colour[r.label], label=r.label) for r in runs]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(4, len(runs)))


# -- training curves ---------------------------------------------------------------------------------
def _ordered_keys(rows: list[dict], keep) -> list[str]:
    keys: dict[str, None] = {}
    for row in rows:
        keys.update((k, None) for k in row if keep(k, row[k]))
    return list(keys)


def _curves_section(runs: list[RunFolder], colour: dict, out: Path) -> str:
    trained = [r for r in runs if r.kind == "train"]
    parts = []
    loss_cols = _ordered_keys([row for r in trained for row in r.train_rows],
                              lambda k, v: k.startswith("loss") and isinstance(v, int | float))
    if loss_cols:
        loss_figure(trained, loss_cols, colour).savefig(out / "loss.png")
        parts.append(_img("loss.png"))
    else:
        parts.append(_note("No training logs (train_log.jsonl) among the folders given: no loss curves."))
    if any(r.eval_rows for r in trained):
        miou_figure(runs, colour).savefig(out / "miou.png")
        parts.append(_img("miou.png"))
    else:
        parts.append(_note("No evaluation during training (metrics.jsonl) among the folders given: "
                           "no mIoU curves."))
    return "".join(parts)


def loss_figure(runs: list[RunFolder], cols: list[str], colour: dict):
    """A plot per loss column of the training logs, a line per run; returns the matplotlib Figure."""
    ncols = min(3, len(cols))
    nrows = math.ceil(len(cols) / ncols)
    fig = _figure(4.2 * ncols, 3.0 * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, col in zip(axes, cols, strict=False):
        for run in runs:
            x, y = _series(run.train_rows, col)
            if x:
                ax.plot(x, y, color=colour[run.label], label=run.label, marker="o" if len(x) == 1 else None)
        ax.set(title=col, xlabel="iteration")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    for ax in axes[len(cols):]:
        ax.set_visible(False)
    _run_legend(fig, runs, colour)
    fig.suptitle("Training loss (train_log.jsonl)")
    return fig


def miou_figure(runs: list[RunFolder], colour: dict):
    """Every mIoU column of the runs' evaluations against iteration on one plot, an evaluation folder
    as a horizontal line; returns the matplotlib Figure."""
    fig = _figure(8, 4.5)
    ax = fig.add_subplot()
    for run in runs:
        if run.kind == "eval":
            if not math.isnan(run.miou):
                ax.axhline(100 * run.miou, color=colour[run.label], ls=":", label=f"{run.label} ({run.source})")
            continue
        cols = _ordered_keys(run.eval_rows, lambda k, v: k in miou_columns({k: v}))
        for style, col in zip(_STYLES * len(cols), cols, strict=False):
            x, y = _series(run.eval_rows, col)
            ax.plot(x, [100 * v for v in y], color=colour[run.label], ls=style, marker="o" if len(x) <= 30 else None,
                    label=run.label if len(cols) == 1 else f"{run.label}: {col}")
    ax.set(xlabel="iteration", ylabel="mIoU (%)", title="Validation mIoU (metrics.jsonl)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return fig


# -- IoU per class -----------------------------------------------------------------------------------
def _per_class_section(runs: list[RunFolder], colour: dict, out: Path) -> str:
    scored = [r for r in runs if r.per_class]
    if not scored:
        return _note("No per-class IoU in the folders given (metrics.jsonl rows with an IoU list, or "
                     "metrics.json).")
    classes = list(dict.fromkeys(c for r in scored for c in r.per_class))
    per_class_figure(scored, classes, colour).savefig(out / "per_class_iou.png")
    notes = [f"{r.label}: classes by number (its validation data could not be read for their names)"
             for r in scored if all(k.isdigit() for k in r.per_class)]
    missing = [r.label for r in runs if not r.per_class]
    if missing:
        notes.append(f"no per-class IoU in: {', '.join(missing)}")
    return _img("per_class_iou.png") + "".join(_note(n) for n in notes)


def per_class_figure(runs: list[RunFolder], classes: list[str], colour: dict):
    """Grouped bars, one group per class and a bar per run, in rows of at most 30 classes; returns the
    matplotlib Figure."""
    chunks = [classes[i:i + _BARS_PER_ROW] for i in range(0, len(classes), _BARS_PER_ROW)]
    width = min(18.0, max(6.0, 0.35 * len(chunks[0]) * max(1, len(runs)) ** 0.5 + 2))
    fig = _figure(width, 3.2 * len(chunks) + 0.6)
    axes = fig.subplots(len(chunks), 1, squeeze=False).ravel()
    step = 0.8 / len(runs)
    for ax, chunk in zip(axes, chunks, strict=True):
        for i, run in enumerate(runs):
            xs = [j - 0.4 + step * (i + 0.5) for j in range(len(chunk))]
            ax.bar(xs, [100 * run.per_class.get(c, math.nan) for c in chunk], width=step, color=colour[run.label],
                   label=run.label)
        ax.set_xticks(range(len(chunk)), chunk, rotation=45 if max(map(len, chunk)) > 4 else 0, ha="right"
                      if max(map(len, chunk)) > 4 else "center")
        ax.set(ylabel="IoU (%)", ylim=(0, 100), xlim=(-0.6, len(chunk) - 0.4))
        ax.grid(axis="y", alpha=0.3)
    _run_legend(fig, runs, colour)
    fig.suptitle("IoU per class at the last evaluation (a missing bar: class absent from that evaluation)")
    return fig


# -- predictions -------------------------------------------------------------------------------------
class _Datasets:
    """Validation sets by spec, read once; a set that cannot be read is remembered with its error."""

    def __init__(self):
        self._cache: dict[DatasetSpec, object] = {}

    def get(self, spec: DatasetSpec):
        """The dataset, or the error (text) that stopped it from being read."""
        if spec not in self._cache:
            from leafseg.data.datasets import build_dataset

            try:
                self._cache[spec] = build_dataset(spec.name, spec.root, split=spec.split, split_file=spec.split_file,
                                                  **dict(spec.options))
            except (UserError, OSError) as err:
                self._cache[spec] = str(err)
        return self._cache[spec]

    def classes(self, spec: DatasetSpec) -> list[str] | None:
        ds = self.get(spec)
        return None if isinstance(ds, str) else list(ds.classes)


class _FirstScenes:
    """The first ``n`` samples of a dataset, with the attributes the harness reads."""

    def __init__(self, dataset, n: int):
        self.dataset, self.n = dataset, n
        for name in ("classes", "name", "ignore_index", "has_background"):
            setattr(self, name, getattr(dataset, name, None))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return self.dataset[i]


def _predictions_section(runs: list[RunFolder], datasets: _Datasets, out: Path, scenes: int, device: str) -> str:
    if scenes == 0:
        return _note("Left out (--scenes 0).")
    trained = [r for r in runs if r.kind == "train"]
    if not trained:
        return _note("Evaluation folders hold no model; their own report.html shows their predictions.")
    notes, groups = [], {}
    for run in trained:
        if run.weights is None:
            notes.append(f"{run.label}: no exported weights ({', '.join(WEIGHT_FILES)}) in the folder; left "
                         "out (the run may not have finished)")
        elif run.dataset is None:
            notes.append(f"{run.label}: its config names no validation data; left out")
        else:
            groups.setdefault(run.dataset, []).append(run)
    parts = []
    for i, (spec, members) in enumerate(groups.items(), start=1):
        ds = datasets.get(spec)
        if isinstance(ds, str):
            notes.append(f"{', '.join(r.label for r in members)}: validation data {spec.describe()} could not be "
                         f"read ({ds}); left out")
            continue
        if len(ds) == 0:
            notes.append(f"{spec.describe()}: no samples; left out")
            continue
        name = f"predictions_{i}.png"
        drawn = _prediction_figure(members, _FirstScenes(ds, min(scenes, len(ds))), out / name, device, notes)
        if drawn:
            parts.append(f"<p>{html.escape(spec.describe())}</p>{_img(name)}")
    return "".join(parts) + "".join(_note(n) for n in notes)


def _predict(run: RunFolder, scenes: _FirstScenes, device: str) -> list:
    """The harness's labels (H, W) uint8 for each scene, under the run's protocol.yaml."""
    from leafseg.data.io import read_mask
    from leafseg.eval.harness import evaluate
    from leafseg.eval.methods import load_model
    from leafseg.eval.outputs import safe_name
    from leafseg.eval.protocol import load_protocol

    method = load_model(run.weights, device)
    protocol = load_protocol(run.protocol) if run.protocol is not None else None
    with tempfile.TemporaryDirectory() as tmp:
        evaluate(method, scenes, protocol, tmp, progress=False, device=device, save_predictions=True, num_overlays=0,
                 method_name=run.label)
        return [read_mask(Path(tmp) / "predictions" / f"{safe_name(scenes[j].get('name', f'{j:06d}'))}.png")
                for j in range(len(scenes))]


def _prediction_figure(runs: list[RunFolder], scenes: _FirstScenes, path: Path, device: str,
                       notes: list[str]) -> bool:
    """image | ground truth | each run's prediction, a row per scene; False when no run could predict."""
    import numpy as np

    from leafseg.data.io import palette

    items = [scenes[j] for j in range(len(scenes))]
    images = [(it["image"].permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8) for it in items]
    masks = [np.asarray(it["mask"]) for it in items]
    columns = []
    for run in runs:
        try:
            labels = _predict(run, scenes, device)
        except (UserError, OSError, ValueError, KeyError) as err:
            notes.append(f"{run.label}: its weights {run.weights.name} could not be used ({err}); left out")
            continue
        if any(lab.shape != m.shape for lab, m in zip(labels, masks, strict=True)):
            notes.append(f"{run.label}: its protocol crops the scenes, so its predictions do not line up with "
                         "the ground truth; left out")
            continue
        columns.append((run.label, labels))
    if not columns:
        return False
    colours = palette(max(len(scenes.classes), 2))
    titles = ["image", "ground truth", *(label for label, _ in columns)]
    h, w = masks[0].shape
    tile = 2.2
    fig = _figure(tile * len(titles), tile * h / w * len(items) + 0.9)
    axes = fig.subplots(len(items), len(titles), squeeze=False)
    for r, (image, mask) in enumerate(zip(images, masks, strict=True)):
        tiles = [image, report.overlay(image, mask, colours),
                 *(report.overlay(image, labels[r], colours) for _, labels in columns)]
        for c, picture in enumerate(tiles):
            ax = axes[r, c]
            ax.imshow(picture, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize="small")
        axes[r, 0].set_ylabel(str(items[r].get("name", r)), fontsize="small")
    _class_legend(fig, scenes, masks, [labels for _, labels in columns], colours)
    fig.savefig(path)
    return True


def _class_legend(fig, scenes: _FirstScenes, masks: list, predictions: list, colours) -> None:
    """A colour key for the classes that appear in the ground truth or a prediction."""
    import numpy as np
    from matplotlib.patches import Patch

    shown = set()
    for labels in [masks, *predictions]:
        for lab in labels:
            shown.update(int(v) for v in np.unique(lab) if v < len(scenes.classes))
    handles = [Patch(color=colours[i] / 255, label=scenes.classes[i]) for i in sorted(shown)]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=min(6, len(handles)), fontsize="small")
