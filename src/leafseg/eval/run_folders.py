"""Read what a training run or an evaluation left in its folder, for :mod:`leafseg.eval.run_report`.

Two kinds of folder are understood::

    training run (leafseg train)      config.yaml, run.json ("recipe"), train_log.jsonl, metrics.jsonl,
                                      protocol.yaml, results.json, exported weights
    evaluation (leafseg eval)         metrics.json ("miou", "per_class_iou", "method", "dataset")

Only JSON, JSONL and YAML are read here (no torch): a half-written last log line of a run that is
still going is ignored, so a live run can be reported on.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from leafseg.errors import UserError

__all__ = ["DatasetSpec", "RunFolder", "WEIGHT_FILES", "read_run_folder", "unique_labels"]

# exported weights a recipe leaves, most wanted first: UniMatch V2's EMA model, S-Seg / S-Seg+'s model, the
# model of STEGO, DINO (the teacher's k-means probe) and grouping_clip, the trained CLIP's Hugging Face folder
# (recipe clip)
WEIGHT_FILES = ("final_ema.safetensors", "final.pt", "final.safetensors", "best_ema.safetensors",
                "final_student.safetensors", "clip/model.safetensors")


@dataclass(frozen=True)
class DatasetSpec:
    """The validation data a run was scored on: ``build_dataset(name, root, split=split,
    split_file=split_file, **options)``."""

    name: str
    root: str
    split: str | None = None
    split_file: str | None = None
    options: tuple = ()                  # (key, value) pairs of dataset options

    def describe(self) -> str:
        return f"{self.name} {self.split or self.split_file} at {self.root}"


@dataclass
class RunFolder:
    """One folder given to the report.

    kind: "train" (a training run) or "eval" (a ``leafseg eval`` output).
    source: the recipe (training run) or the method (evaluation).
    train_rows / eval_rows: the rows of train_log.jsonl / metrics.jsonl (empty for an evaluation).
    per_class: the last evaluation's IoU per class, fractions in [0, 1] (NaN where undefined);
        keys are class names where the folder names them, else class indices as text.
    miou / best_miou: the last and the best mIoU, fractions (NaN when there is none).
    """

    path: Path
    kind: str
    source: str
    label: str = ""                      # the folder's name; write_run_report tells equal names apart
    dataset_name: str = ""
    iterations: int | None = None
    train_rows: list[dict] = field(default_factory=list)
    eval_rows: list[dict] = field(default_factory=list)
    per_class: dict[str, float] = field(default_factory=dict)
    miou: float = math.nan
    best_miou: float = math.nan
    weights: Path | None = None
    dataset: DatasetSpec | None = None
    protocol: Path | None = None

    def summary_row(self) -> dict:
        """A row of the report's table of runs (mIoU in %)."""
        return {"run": self.label, "kind": "training" if self.kind == "train" else "evaluation",
                "recipe / method": self.source, "dataset": self.dataset_name or "?",
                "iterations": "" if self.iterations is None else self.iterations,
                "mIoU": 100 * self.miou, "best mIoU": 100 * self.best_miou, "folder": str(self.path)}


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines log; lines that do not parse (a write in progress) are left out."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def _fraction(value) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan


def miou_columns(row: dict) -> list[str]:
    """The mIoU columns of an evaluation row (``miou``, ``ema_miou``, ``student_miou``...), not the
    running bests."""
    return [k for k, v in row.items() if k.endswith("miou") and not k.startswith("best")
            and isinstance(v, int | float)]


def _main_miou(row: dict) -> float:
    for key in ("ema_miou", "miou"):
        if key in row:
            return _fraction(row[key])
    cols = miou_columns(row)
    return _fraction(row[cols[0]]) if cols else math.nan


def _iou_list(row: dict) -> list | None:
    """The per-class IoU list of an evaluation row: the EMA model's for UniMatch V2, else ``iou``."""
    for key in ("ema_iou", "iou"):
        if isinstance(row.get(key), list):
            return row[key]
    return None


def _dataset_spec(cfg: dict) -> DatasetSpec | None:
    """The validation data of a run's resolved config: UniMatch V2's dataset / data_root / val_split,
    else the ``eval:`` section's dataset / root / split (S-Seg, S-Seg+, CLIP pretraining)."""
    if cfg.get("dataset") and cfg.get("data_root"):
        split = str(cfg.get("val_split") or "val")
        options = tuple(sorted((cfg.get("dataset_options") or {}).items()))
        if split.endswith(".txt"):
            return DatasetSpec(str(cfg["dataset"]), str(cfg["data_root"]), split_file=split, options=options)
        return DatasetSpec(str(cfg["dataset"]), str(cfg["data_root"]), split=split, options=options)
    ev = cfg.get("eval") or {}
    if isinstance(ev, dict) and ev.get("dataset") and ev.get("root"):
        return DatasetSpec(str(ev["dataset"]), str(ev["root"]), split=str(ev.get("split") or "val"))
    return None


def _read_training_run(path: Path) -> RunFolder:
    info = _read_json(path / "run.json") if (path / "run.json").is_file() else {}
    cfg = {}
    if (path / "config.yaml").is_file():
        cfg = yaml.safe_load((path / "config.yaml").read_text()) or {}
    results = _read_json(path / "results.json") if (path / "results.json").is_file() else {}
    recipe = str(info.get("recipe") or cfg.get("method") or "training run")
    run = RunFolder(path, "train", recipe, train_rows=read_jsonl(path / "train_log.jsonl"),
                    eval_rows=read_jsonl(path / "metrics.jsonl"))
    if not run.eval_rows and any(k.endswith("miou") for k in results):
        # a recipe that scores only once, at the end, may leave that score in results.json alone
        run.eval_rows = [{"iteration": results.get("iterations"),
                          **{k: v for k, v in results.items() if k.endswith("miou") or k == "iou"}}]
    iterations = [r["iteration"] for r in run.train_rows + run.eval_rows if isinstance(r.get("iteration"), int)]
    run.iterations = results.get("iterations") or (max(iterations) if iterations else None)
    run.dataset = _dataset_spec(cfg)
    run.dataset_name = run.dataset.name if run.dataset else ""
    if run.eval_rows:
        last = run.eval_rows[-1]
        run.miou = _main_miou(last)
        scores = [_main_miou(r) for r in run.eval_rows]
        run.best_miou = max((s for s in scores if not math.isnan(s)), default=math.nan)
        ious = _iou_list(last)
        if ious is not None:
            run.per_class = {str(i): _fraction(v) for i, v in enumerate(ious)}
    run.weights = next((path / n for n in WEIGHT_FILES if (path / n).is_file()), None)
    run.protocol = path / "protocol.yaml" if (path / "protocol.yaml").is_file() else None
    return run


def _read_eval_output(path: Path) -> RunFolder:
    metrics = _read_json(path / "metrics.json")
    run = RunFolder(path, "eval", str(metrics.get("method") or "evaluation"),
                    dataset_name=str(metrics.get("dataset") or ""))
    run.miou = run.best_miou = _fraction(metrics.get("miou"))
    run.per_class = {str(k): _fraction(v) for k, v in (metrics.get("per_class_iou") or {}).items()}
    return run


def read_run_folder(path: str | os.PathLike) -> RunFolder:
    """A training run folder or a ``leafseg eval`` output folder, read (see the module docstring)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: folder not found")
    if (path / "train_log.jsonl").is_file() or (path / "metrics.jsonl").is_file():
        run = _read_training_run(path)
    elif (path / "metrics.json").is_file():
        run = _read_eval_output(path)
    else:
        raise UserError(f"{path}: neither a training run folder (train_log.jsonl, metrics.jsonl) nor a "
                        "`leafseg eval` output folder (metrics.json)")
    run.label = path.name
    return run


def unique_labels(runs: list[RunFolder]) -> list[str]:
    """A short legend label per folder: its name, with as many parent folders as it takes to tell
    folders of the same name apart."""
    paths = [r.path.resolve() for r in runs]
    distinct = list(dict.fromkeys(paths))
    depth = 1
    while len({p.parts[-depth:] for p in distinct}) < len(distinct):
        depth += 1
    labels = ["/".join(p.parts[-depth:]).lstrip("/") or str(p) for p in paths]
    seen: dict[str, int] = {}
    out = []
    for label in labels:  # the same folder given twice
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return out
