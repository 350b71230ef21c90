"""Training infrastructure: run records, checkpoints, EMA, lr schedules, distributed set-up, seeding,
configuration and logs."""

from leafseg.training.checkpoint import (
    load_checkpoint,
    restore_training_state,
    save_checkpoint,
    save_weights,
    state_digest,
    training_state,
)
from leafseg.training.config import config_dict, load_config, parse_overrides, save_config
from leafseg.training.distributed import (
    DistInfo,
    ResumableSampler,
    all_reduce_mean,
    cleanup_distributed,
    distributed_session,
    init_distributed,
    shard_indices,
)
from leafseg.training.ema import ModelEMA, ema_momentum
from leafseg.training.logs import MetricsLog, progress
from leafseg.training.schedule import PolyLR, poly_lr
from leafseg.training.seeding import rng_states, seed_everything, set_reproducible, set_rng_states

__all__ = [
    "DistInfo",
    "MetricsLog",
    "ModelEMA",
    "PolyLR",
    "ResumableSampler",
    "all_reduce_mean",
    "cleanup_distributed",
    "distributed_session",
    "config_dict",
    "ema_momentum",
    "init_distributed",
    "load_checkpoint",
    "load_config",
    "parse_overrides",
    "poly_lr",
    "progress",
    "restore_training_state",
    "rng_states",
    "save_checkpoint",
    "save_config",
    "save_weights",
    "seed_everything",
    "set_reproducible",
    "set_rng_states",
    "shard_indices",
    "state_digest",
    "training_state",
]
