"""A run's output folder: what a new run, a resumed run and an overwriting run may find there.

* A new run refuses a folder that holds an earlier run (its config, record, logs or checkpoints), so
  nothing is emptied or overwritten by a slip; ``overwrite`` removes the earlier run's outputs first.
* ``resume`` needs a checkpoint to continue from; without one it is an error, not a fresh start.
* Two runs never share a folder at once: ``run.lock`` holds the owner's process id while it runs.
* Temporary files left by interrupted atomic writes (``.<name>.<random>.tmp``) are removed at the start
  and at the end of a run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from leafseg.errors import RunFolderError

# What a run writes into its folder (recipes add their own caches with ``extra_outputs``).
RUN_OUTPUTS = ("config.yaml", "run.json", "results.json", "protocol.yaml", "checkpoints", "eval", "tensorboard",
               "train_log.csv", "train_log.jsonl", "metrics.csv", "metrics.jsonl", "splits")
LOCK = "run.lock"


def last_checkpoint(out: Path) -> Path:
    return out / "checkpoints" / "last.pt"


def remove_temporary_files(folder: Path) -> int:
    """Delete the ``.*.tmp`` files of interrupted atomic writes under ``folder``; returns how many."""
    count = 0
    if folder.is_dir():
        for path in folder.rglob(".*.tmp"):
            if path.is_file():
                path.unlink(missing_ok=True)
                count += 1
    return count


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def earlier_outputs(out: Path, extra_outputs: tuple[str, ...] = ()) -> list[Path]:
    """The outputs of an earlier run present in ``out`` (any file the engine or the recipe writes)."""
    names = RUN_OUTPUTS + tuple(extra_outputs)
    found = [out / n for n in names if (out / n).exists()]
    return found + sorted(p for p in out.glob("*.safetensors")) + ([out / "final.pt"] if (out / "final.pt").exists()
                                                                    else [])


def open_run_folder(out: str | os.PathLike, *, resume: bool | str = False, overwrite: bool = False,
                    extra_outputs: tuple[str, ...] = (), is_main: bool = True) -> Path | None:
    """Check ``out`` for a run about to start; returns the checkpoint to resume from (None: a fresh run).

    resume: False, True (``out/checkpoints/last.pt``) or a checkpoint path. Only the main process
    changes the folder (lock, clean-up, overwrite); every process gets the same answer.
    """
    out = Path(out)
    if resume and overwrite:
        raise RunFolderError("resume and overwrite exclude each other: continue the run, or replace it")
    lock = out / LOCK
    if is_main and lock.is_file():
        try:
            pid = int(lock.read_text().strip() or 0)
        except ValueError:
            pid = 0
        if pid and pid != os.getpid() and _alive(pid):
            raise RunFolderError(f"out_dir {out} is in use by another run (process {pid}); wait for it to finish, or "
                                 f"choose another out_dir=")
    ckpt = None
    if resume:
        ckpt = Path(resume) if isinstance(resume, str) else last_checkpoint(out)
        if not ckpt.is_file():
            if isinstance(resume, str):
                raise RunFolderError(f"no checkpoint {ckpt} to resume; start the run without --resume")
            if earlier_outputs(out, extra_outputs):  # the run stopped before its first save
                raise RunFolderError(f"no checkpoint in {out} to resume ({ckpt} is missing: the run stopped before "
                                     f"its first save, made every save_every iterations); start it again with "
                                     f"--overwrite instead of --resume")
            raise RunFolderError(f"no checkpoint in {out} to resume ({ckpt} is missing); start the run without "
                                 f"--resume")
    elif is_main:
        earlier = earlier_outputs(out, extra_outputs)
        if earlier and not overwrite:
            names = ", ".join(p.name for p in earlier[:4]) + (", ..." if len(earlier) > 4 else "")
            raise RunFolderError(f"out_dir {out} holds an earlier run ({names}); pass --resume to continue it, "
                                 f"--overwrite to replace it, or choose another out_dir=")
        for path in earlier:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        remove_temporary_files(out)
        lock.write_text(f"{os.getpid()}\n")
    return ckpt


def close_run_folder(out: str | os.PathLike, is_main: bool = True) -> None:
    """End of a run (finished or stopped): temporary files removed, the lock released."""
    if is_main:
        out = Path(out)
        remove_temporary_files(out)
        (out / LOCK).unlink(missing_ok=True)
