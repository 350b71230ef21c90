"""What FUSS's server and clients put in Flower messages, and the conversions between records and states.

Every message carries the server's resolved config as YAML (``config["settings"]``), so a client is
stateless: it rebuilds (or finds in its cache) its learner from the settings, its node config and its data.

==========  ==============================================  =======================================================
message     server -> client                                client -> server
==========  ==============================================  =======================================================
query       config: settings                                metrics: partition-id, num-examples
train       arrays: the state to start from;                arrays: the trained state (head.*, centroids);
            config: settings, server-round, seed,           metrics: num-examples, partition-id, loss, objective,
            proximal-mu                                     probe, proximal, seconds
evaluate    arrays: the client's model after the round;     metrics: num-examples, partition-id, probe_loss, and
            config: settings, server-round                  local_miou / local_acc on its own images
==========  ==============================================  =======================================================

Importing this module switches Flower's usage telemetry off unless ``FLWR_TELEMETRY_ENABLED`` is set (the
machines leafseg runs on are often offline).
"""

from __future__ import annotations

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import numpy as np  # noqa: E402
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict  # noqa: E402

ARRAYS, CONFIG, METRICS = "arrays", "config", "metrics"
SETTINGS = "settings"
NUM_EXAMPLES, PARTITION_ID = "num-examples", "partition-id"

__all__ = ["ARRAYS", "CONFIG", "METRICS", "NUM_EXAMPLES", "PARTITION_ID", "SETTINGS", "content", "record_of",
           "state_of"]


def record_of(state: dict) -> ArrayRecord:
    """A state (name -> numpy array) as an ArrayRecord, in the state's key order."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in state.items()})


def state_of(record: ArrayRecord) -> dict[str, np.ndarray]:
    """An ArrayRecord as a state (name -> numpy array)."""
    return {k: v.numpy() for k, v in record.items()}


def content(*, arrays: dict | None = None, config: dict | None = None, metrics: dict | None = None) -> RecordDict:
    """A message's RecordDict from a state, config values and metric values (each optional)."""
    records = {}
    if arrays is not None:
        records[ARRAYS] = record_of(arrays)
    if config is not None:
        records[CONFIG] = ConfigRecord(config)
    if metrics is not None:
        records[METRICS] = MetricRecord(metrics)
    return RecordDict(records)
