"""Training infrastructure shared by every recipe: the run plumbing (:class:`Run`: output folder, run
state, checkpoints, precision, logs), schedules, EMA, distributed helpers, seeding, and the config
system's shared section (:class:`RunSettings`)."""

from leafseg.config import config_dict, dump_config, load_config, parse_key_values, save_config
from leafseg.training.checkpoint import (
    RunState,
    export_weights,
    load_checkpoint,
    read_exported,
    read_training_checkpoint,
    restore_training,
    save_checkpoint,
    state_digest,
    training_checkpoint,
)
from leafseg.training.distributed import (
    DistInfo,
    ResumableSampler,
    all_gather_objects,
    all_reduce_mean,
    barrier,
    broadcast_object,
    cleanup_distributed,
    distributed_session,
    init_distributed,
    shard_indices,
)
from leafseg.training.ema import ModelEMA, ema_momentum
from leafseg.training.logs import MetricsLog, progress
from leafseg.training.precision import Precision, resolve_precision
from leafseg.training.run import Run, wrap_ddp
from leafseg.training.schedule import poly_lr, poly_schedule, warmup_cosine_schedule
from leafseg.training.seeding import rng_states, seed_everything, set_reproducible, set_rng_states
from leafseg.training.settings import RunSettings, SyntheticSpec

__all__ = [
    "all_gather_objects", "all_reduce_mean", "barrier", "broadcast_object", "cleanup_distributed",
    "config_dict", "DistInfo", "distributed_session", "dump_config", "ema_momentum", "export_weights",
    "init_distributed", "load_checkpoint", "load_config", "MetricsLog", "ModelEMA", "parse_key_values", "poly_lr",
    "poly_schedule", "Precision", "progress", "read_exported", "read_training_checkpoint", "resolve_precision",
    "restore_training", "ResumableSampler", "rng_states", "Run", "RunSettings", "RunState", "save_checkpoint",
    "save_config", "seed_everything", "set_reproducible", "set_rng_states", "shard_indices", "state_digest",
    "SyntheticSpec", "training_checkpoint", "warmup_cosine_schedule", "wrap_ddp",
]
