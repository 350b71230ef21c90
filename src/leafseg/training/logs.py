"""Run logs: metrics as CSV and JSON lines, optional TensorBoard, progress bars on the main rank.

``MetricsLog(folder, "eval")`` appends one row per call to ``eval.csv`` and ``eval.jsonl``
(the JSON lines keep lists, e.g. per-class IoU; the CSV keeps scalars). When a run resumes
from a checkpoint, ``truncate_after(iteration)`` drops rows a killed run wrote after it, so
the logs read as if the run had never stopped. TensorBoard scalars are written only when the
``tensorboard`` package is installed and ``tensorboard=True``.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from leafseg.files import atomic_write_text


def _scalar(value) -> bool:
    return isinstance(value, int | float | str | bool) or value is None


class MetricsLog:
    """Append-only metrics of one kind (``name``): ``<name>.jsonl`` and ``<name>.csv`` in ``folder``."""

    def __init__(self, folder: str | os.PathLike, name: str, tensorboard: bool = False):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.jsonl, self.csv = self.folder / f"{name}.jsonl", self.folder / f"{name}.csv"
        self._writer = _tensorboard_writer(self.folder / "tensorboard") if tensorboard else None

    def rows(self) -> list[dict]:
        """Every row logged so far."""
        if not self.jsonl.exists():
            return []
        return [json.loads(line) for line in self.jsonl.read_text(encoding="utf-8").splitlines() if line.strip()]

    def log(self, row: dict, step: int | None = None) -> None:
        """Append ``row`` (a flat dict; lists go to the JSON lines only)."""
        with self.jsonl.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, default=str) + "\n")
        header = self._csv_header()
        if header and all(k in header for k, v in row.items() if _scalar(v)):
            with self.csv.open("a", newline="", encoding="utf-8") as f:
                csv.DictWriter(f, fieldnames=header, extrasaction="ignore").writerow(row)
        else:
            self._rewrite_csv(self.rows())
        if self._writer is not None and step is not None:
            for key, value in row.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    self._writer.add_scalar(f"{self.name}/{key}", value, step)
            self._writer.flush()

    def _csv_header(self) -> list[str]:
        if not self.csv.exists():
            return []
        with self.csv.open(newline="", encoding="utf-8") as f:
            return next(csv.reader(f), [])

    def truncate_after(self, iteration: int, key: str = "iteration") -> None:
        """Drop rows whose ``key`` is greater than ``iteration`` (rows of a killed run)."""
        kept = [r for r in self.rows() if int(r.get(key, 0)) <= iteration]
        atomic_write_text(self.jsonl, "".join(json.dumps(r, default=str) + "\n" for r in kept))
        self._rewrite_csv(kept)

    def _rewrite_csv(self, rows: list[dict]) -> None:
        columns: list[str] = []
        for r in rows:
            columns += [k for k, v in r.items() if _scalar(v) and k not in columns]
        tmp = self.csv.with_name(f".{self.csv.name}.tmp")
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.csv)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _tensorboard_writer(folder: Path):
    """A TensorBoard SummaryWriter, or None when tensorboard is not installed."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(folder))


def progress(total: int, initial: int = 0, enabled: bool = True, desc: str = ""):
    """A tqdm bar over iterations (disabled off the main rank or when asked)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, dynamic_ncols=True, leave=False)
