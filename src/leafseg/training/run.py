"""The plumbing around a recipe's training loop, the same for every recipe. The loop itself stays in the
recipe, where it reads like the paper::

    run = Run("unimatch_v2", cfg, info, resume=resume, overwrite=overwrite)   # folder checks, precision
    ... build data, model, optimizer, scheduler ...
    run.restore(model=model, optimizer=optimizer, scheduler=scheduler, ema=ema)   # if resuming
    run.start()                                   # config.yaml, run.json, logs cut back to the checkpoint
    while run.state.iteration < total:
        ... one step ...
        run.state.iteration += 1
        run.log_train(running)                    # every log_every iterations
        run.save(model=model.state_dict(), optimizer=optimizer, scheduler=scheduler)
    run.finish(result)                            # results.json, lock released

``Run`` owns: the output folder (:mod:`leafseg.training.folder`), the precision
(:mod:`leafseg.training.precision`), the run state and the checkpoint layout
(:mod:`leafseg.training.checkpoint`), the run record (:mod:`leafseg.training.runinfo`) and the metrics
logs (:class:`~leafseg.training.logs.MetricsLog`: ``train_log`` and ``metrics``, CSV + JSON lines,
TensorBoard when asked). Every process of a torchrun job builds one; only the main process writes.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from leafseg.config import config_dict, save_config
from leafseg.errors import RunFolderError
from leafseg.training.checkpoint import (
    RunState,
    read_training_checkpoint,
    restore_training,
    save_checkpoint,
    training_checkpoint,
)
from leafseg.training.distributed import DistInfo, barrier, broadcast_object
from leafseg.training.folder import close_run_folder, last_checkpoint, open_run_folder
from leafseg.training.logs import MetricsLog, progress
from leafseg.training.precision import resolve_precision
from leafseg.training.runinfo import run_record, write_json
from leafseg.training.seeding import set_reproducible


class Run:
    """One training run of ``recipe`` with config ``cfg`` (a :class:`RunSettings` subclass).

    resume: False, True (``out_dir/checkpoints/last.pt``) or a checkpoint path; overwrite: replace an
    earlier run in ``out_dir``. ``extra_outputs``: names of the recipe's own files in ``out_dir`` (caches)
    that belong to a run. Sets the deterministic mode of the precision resolver.
    """

    def __init__(self, recipe: str, cfg, info: DistInfo, *, resume: bool | str = False, overwrite: bool = False,
                 extra_outputs: tuple[str, ...] = ()):
        self.recipe, self.cfg, self.info = recipe, cfg, info
        self.out = Path(cfg.out_dir)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.precision = resolve_precision(cfg.amp, cfg.deterministic, info.device)
        set_reproducible(self.precision.deterministic)
        outcome = None
        if info.is_main:
            try:
                outcome = ("ok", open_run_folder(self.out, resume=resume, overwrite=overwrite,
                                                 extra_outputs=extra_outputs))
            except RunFolderError as err:
                outcome = ("error", str(err))
        outcome = broadcast_object(outcome)
        if outcome[0] == "error":
            raise RunFolderError(outcome[1])
        self.resume_from: Path | None = Path(outcome[1]) if outcome[1] else None
        self.state = RunState()
        self.checkpoint: dict | None = None
        self.logs = {"train": MetricsLog(self.out, "train_log", cfg.tensorboard),
                     "eval": MetricsLog(self.out, "metrics", cfg.tensorboard)} if info.is_main else {}
        self._bar = None
        self._running: list[dict] = []
        self._t0 = time.perf_counter()

    # -- resume ------------------------------------------------------------------------------
    def read_checkpoint(self) -> dict | None:
        """The checkpoint to resume from (read once), or None for a fresh run."""
        if self.resume_from is not None and self.checkpoint is None:
            self.checkpoint = read_training_checkpoint(self.resume_from, self.recipe, map_location=self.info.device)
        return self.checkpoint

    def restore(self, *, model=None, optimizer=None, scheduler=None, ema=None, load_model=None) -> RunState:
        """Load the checkpoint (when resuming) into the objects; returns the run state. ``load_model(state)``
        replaces ``model.load_state_dict`` for models whose checkpoints leave frozen parts out."""
        ckpt = self.read_checkpoint()
        if ckpt is None:
            return self.state
        (load_model or model.load_state_dict)(ckpt["model"])
        self.state = restore_training(ckpt, optimizer=optimizer, scheduler=scheduler, ema=ema,
                                      rank=self.info.rank, world_size=self.info.world_size)
        return self.state

    def start(self, total: int | None = None) -> None:
        """Write config.yaml and run.json, cut the logs back to the restored iteration, open the
        progress bar (over ``total`` iterations, when given)."""
        if self.info.is_main:
            for log in self.logs.values():
                log.truncate_after(self.state.iteration)
            save_config(self.cfg, self.out / "config.yaml")
            record = run_record(seed=self.cfg.seed, config=config_dict(self.cfg), device=self.info.device)
            record.update(recipe=self.recipe, world_size=self.info.world_size,
                          resumed_from=str(self.resume_from) if self.resume_from else None,
                          precision=str(self.precision.dtype or "float32"),
                          deterministic=self.precision.deterministic)
            write_json(self.out / "run.json", record)
        if total is not None:
            self._bar = progress(total, self.state.iteration, self.info.is_main and self.cfg.progress, self.recipe)
        self._t0 = time.perf_counter()

    # -- during the loop -----------------------------------------------------------------------
    def step_done(self, parts: dict, lr: dict, samples: int, last: int) -> None:
        """After an optimiser step (``state.iteration`` already counted): keep the step's detached loss
        parts, advance the bar, and every ``log_every`` iterations (and at iteration ``last``) log the
        mean of each part over those iterations and over ranks, the learning rates ``lr`` and the
        throughput (``samples`` per step on this rank)."""
        self._running.append(parts)
        if self._bar is not None:
            self._bar.update(1)
        it = self.state.iteration
        if it % self.cfg.log_every and it != last:
            return
        from leafseg.training.distributed import all_reduce_mean

        keys = list(self._running[0])
        means = all_reduce_mean(torch.stack([torch.stack([r[k].float() for r in self._running]).mean()
                                             for k in keys]))
        seconds = time.perf_counter() - self._t0
        row = {"iteration": it, **dict(zip(keys, means.tolist(), strict=True)), **lr,
               "seconds_per_iter": seconds / len(self._running),
               "images_per_second": len(self._running) * samples * self.info.world_size / max(seconds, 1e-9),
               **self.state.extra}
        if self.info.is_main:
            self.logs["train"].log(row, step=it)
        self._running, self._t0 = [], time.perf_counter()

    def save_protocol(self, protocol) -> None:
        """Write the resolved evaluation protocol as ``protocol.yaml``: ``leafseg eval model ... --preset
        OUT_DIR/protocol.yaml`` then scores exported weights exactly as the run did."""
        if self.info.is_main:
            from leafseg.files import atomic_write_text

            atomic_write_text(self.out / "protocol.yaml", protocol.to_yaml())

    def log_eval(self, row: dict) -> None:
        """Record one evaluation: in the state's history and in metrics.csv / metrics.jsonl."""
        self.state.history.append(row)
        if self.info.is_main:
            self.logs["eval"].log(row, step=self.state.iteration)
            if self.cfg.echo:
                self._echo(row)

    def _echo(self, row: dict) -> None:
        """One line for an evaluation: the run, where it stands and every mIoU and recall at 1 (``r1_*``)
        in the row (in %)."""
        where = ", ".join(f"{k} {row[k]}" for k in ("epoch", "iteration") if isinstance(row.get(k), int))
        scores = ", ".join(f"{k} {100 * v:.1f}" for k, v in row.items()
                           if ("miou" in k or k.startswith("r1_")) and isinstance(v, float))
        line = f"{self.recipe} [{self.out.name}] {where}: {scores or 'evaluated'}"
        if self._bar is not None and not self._bar.disable:
            self._bar.write(line)
        else:
            print(line, flush=True)

    def save(self, *, model: dict, optimizer=None, scheduler=None, ema: dict | None = None,
             extra: dict | None = None) -> None:
        """Write ``checkpoints/last.pt`` (every rank calls: the RNG states are gathered); ``optimizer``
        None: a run without one (a federated server, whose clients start each round afresh)."""
        ckpt = training_checkpoint(recipe=self.recipe, state=self.state, config=config_dict(self.cfg), model=model,
                                   optimizer=optimizer, scheduler=scheduler, ema=ema, extra=extra)
        if self.info.is_main:
            save_checkpoint(ckpt, last_checkpoint(self.out))

    def stop_requested(self) -> bool:
        """Whether ``stop_after`` asks the run to stop here, as if killed."""
        return bool(self.cfg.stop_after) and self.state.iteration >= self.cfg.stop_after

    def stopped(self) -> dict:
        """End a run stopped by ``stop_after``: bar closed, lock released; returns its short result."""
        self.close()
        return {"stopped_at": self.state.iteration, "out_dir": str(self.out)}

    # -- the end -------------------------------------------------------------------------------
    def train_rows(self) -> list[dict]:
        return self.logs["train"].rows() if self.info.is_main else []

    def finish(self, result: dict) -> dict:
        """Write results.json (without the bulky train log), close logs, release the folder; returns
        ``result``."""
        if self.info.is_main:
            write_json(self.out / "results.json", {k: v for k, v in result.items() if k != "train_log"})
        self.close()
        return result

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        for log in self.logs.values():
            log.close()
        barrier()
        close_run_folder(self.out, self.info.is_main)


def wrap_ddp(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """The model wrapped in DistributedDataParallel under torchrun (itself otherwise)."""
    if not info.distributed:
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
