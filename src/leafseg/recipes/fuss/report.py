"""A page comparing FUSS runs: mIoU against rounds for every strategy run, and a table of the figures.

    out/report.html   the table (strategy, clients, partition, rounds, final / best mIoU, final accuracy),
                      then the pictures
    out/miou.png      per run, the round's headline mIoU (the global model; for local-only training, the
                      mean of the clients' models) against rounds, and thin lines for each client's model

Each run folder is read as the engine leaves it (``metrics.jsonl``, ``config.yaml``), so a run still going
can be drawn too. Pictures are drawn on matplotlib's Agg canvas (no pyplot).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from leafseg.errors import UserError

__all__ = ["read_fuss_run", "write_fuss_report"]


def read_fuss_run(folder: str | os.PathLike) -> dict:
    """A FUSS run folder's label, settings and per-round rows."""
    import yaml

    from leafseg.eval.run_folders import read_jsonl

    folder = Path(folder)
    rows = read_jsonl(folder / "metrics.jsonl")
    if not rows and not (folder / "config.yaml").is_file():
        raise UserError(f"{folder}: not a FUSS run folder (no metrics.jsonl or config.yaml)")
    cfg = yaml.safe_load((folder / "config.yaml").read_text()) if (folder / "config.yaml").is_file() else {}
    strategy = (cfg.get("strategy") or {}).get("name") or (rows[-1].get("strategy") if rows else "?")
    fed, part = cfg.get("federation") or {}, cfg.get("partition") or {}
    return {"folder": folder, "strategy": strategy, "clients": fed.get("clients"), "scheme": part.get("scheme"),
            "rows": [r for r in rows if isinstance(r.get("round"), int)]}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _percent(value) -> float:
    return 100 * float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan


def miou_figure(runs: list[dict]):
    """mIoU (%) against round, a line per run (thin lines: its clients' models); the matplotlib Figure."""
    import matplotlib

    fig = _figure(8, 4.5)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["tab10" if len(runs) <= 10 else "tab20"]
    for i, run in enumerate(runs):
        colour, rows = cmap(i % cmap.N), run["rows"]
        rounds = [r["round"] for r in rows]
        ax.plot(rounds, [_percent(r.get("miou")) for r in rows], color=colour, marker="o", lw=2, label=run["label"])
        each = [r.get("clients_miou") or [] for r in rows]
        for c in range(max((len(e) for e in each), default=0)):
            ax.plot(rounds, [_percent(e[c]) if c < len(e) else math.nan for e in each], color=colour, lw=0.7,
                    alpha=0.45)
    ax.set(xlabel="round", ylabel="mIoU (%)", title="Validation mIoU (thin: each client's own model)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return fig


def write_fuss_report(folders: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Write ``out/report.html`` and ``out/miou.png`` for FUSS run folders; returns the page's path."""
    from leafseg.eval import report
    from leafseg.eval.run_folders import RunFolder, unique_labels

    if not folders:
        raise UserError("give at least one FUSS run folder")
    runs = [read_fuss_run(f) for f in folders]
    labels = unique_labels([RunFolder(Path(r["folder"]), "train", "fuss") for r in runs])
    for run, label in zip(runs, labels, strict=True):
        run["label"] = label if label == run["strategy"] else f"{label} ({run['strategy']})"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = []
    for run in runs:
        scores = [_percent(r.get("miou")) for r in run["rows"]]
        last = run["rows"][-1] if run["rows"] else {}
        table.append({"run": run["label"], "clients": run["clients"], "partition": run["scheme"],
                      "rounds": last.get("round", 0), "final mIoU": _percent(last.get("miou")),
                      "best mIoU": max((s for s in scores if not math.isnan(s)), default=math.nan),
                      "final acc.": _percent(last.get("acc"))})
    sections = [("Runs", report.metrics_table(table, list(table[0])))]
    if any(run["rows"] for run in runs):
        miou_figure(runs).savefig(out / "miou.png")
        sections.append(("mIoU against rounds", '<img src="miou.png" alt="miou.png">'))
    return report.write_html(out / "report.html", "FUSS: " + ", ".join(r["label"] for r in runs), sections)
