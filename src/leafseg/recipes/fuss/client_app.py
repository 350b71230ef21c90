"""FUSS's Flower ClientApp: a client trains its head and centroids on its own images, label-free.

``app`` answers three message types (:mod:`leafseg.recipes.fuss.messages`): ``query`` (which client it
is, how many images it holds), ``train`` (one round of local learning from the state received) and
``evaluate`` (the figures of the model it is sent, on its own images).

Which client a node is and where its data lies come from the node config, with the server's settings as
the fallback (one machine)::

    flower-supernode --superlink HOST:9092 --node-config \\
        "partition-id=0 data-root='/data/cityscapes' partition-file='/data/fuss_split/client_000.txt'"

``partition-id`` is required (the simulation engine sets it); without ``data-root`` the settings'
``data.root`` is read, without ``partition-file`` the settings' ``partition.dir/client_<id>.txt``.
Learners are cached per process (their encoders' features are computed once).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict

import numpy as np
import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from leafseg.recipes.fuss.messages import ARRAYS, CONFIG, NUM_EXAMPLES, PARTITION_ID, SETTINGS, content, state_of

app = ClientApp()

_CACHE: OrderedDict[tuple, object] = OrderedDict()
_CACHE_SIZE = 8


def settings_of(message: Message):
    """The server's resolved config carried by ``message`` (a FussConfig)."""
    import yaml

    from leafseg.config import load_config
    from leafseg.recipes.fuss.config import FussConfig

    text = str(message.content[CONFIG][SETTINGS])
    return load_config(FussConfig, None, yaml.safe_load(text)), text


def client_seed(seed: int, server_round: int, partition_id: int) -> int:
    """The seed of one client's round: a function of the run's seed, the round and the client only."""
    return int(np.random.SeedSequence([int(seed), int(server_round), int(partition_id)]).generate_state(1)[0])


def _location(cfg, context: Context) -> tuple[int, str, str]:
    """(partition id, data root, split file) of this node."""
    from leafseg.data.partition import client_file

    node = context.node_config
    if "partition-id" not in node:
        raise ValueError("this node has no partition-id in its node config (flower-supernode --node-config "
                         "\"partition-id=0 ...\")")
    pid = int(node["partition-id"])
    root = str(node.get("data-root") or cfg.data.root)
    split = node.get("partition-file")
    if not split:
        if not cfg.partition.dir:
            raise ValueError("no partition-file in the node config and no partition.dir in the settings")
        split = str(client_file(cfg.partition.dir, pid))
    return pid, root, str(split)


def learner_for(message: Message, context: Context):
    """(settings, partition id, learner) of this node for the settings ``message`` carries (cached)."""
    from leafseg.recipes.fuss.components import client_images, make_encoder, make_learner
    from leafseg.training import init_distributed, resolve_precision, set_reproducible

    cfg, text = settings_of(message)
    pid, root, split = _location(cfg, context)
    if cfg.local.threads:
        torch.set_num_threads(cfg.local.threads)
    device = init_distributed(cfg.device).device  # auto: a GPU when this process is given one
    set_reproducible(resolve_precision(cfg.amp, cfg.deterministic, device).deterministic)
    key = (hashlib.sha256(text.encode()).hexdigest(), pid, root, split)
    if key not in _CACHE:
        encoder = make_encoder(cfg, device)
        _CACHE[key] = make_learner(cfg, encoder, client_images(cfg, split, root), device)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(key)
    return cfg, pid, _CACHE[key]


@app.query()
def hello(message: Message, context: Context) -> Message:
    """Which client this node is and how many images it holds (its learner is built now)."""
    _, pid, learner = learner_for(message, context)
    return Message(content(metrics={PARTITION_ID: pid, NUM_EXAMPLES: learner.num_examples}), reply_to=message)


def _fault(cfg, pid: int, server_round: int) -> str | None:
    faults = cfg.federation.faults
    return faults.get(f"{pid}@{server_round}") or faults.get(str(pid))


def _corrupt(state: dict, fault: str) -> dict:
    """A state broken the way ``fault`` says (a testing aid, see ``federation.faults``)."""
    state = dict(state)
    key = next(iter(state))
    if fault in ("nan", "inf"):
        state[key] = np.full_like(state[key], np.nan if fault == "nan" else np.inf)
    elif fault == "shape":
        state[key] = state[key][..., :-1] if state[key].shape[-1] > 1 else np.concatenate([state[key]] * 2, -1)
    elif fault == "keys":
        state["unexpected"] = state.pop(key)
    return state


@app.train()
def train(message: Message, context: Context) -> Message:
    """One round of local learning from the state received; replies with the trained state."""
    cfg, pid, learner = learner_for(message, context)
    config = message.content[CONFIG]
    server_round = int(config["server-round"])
    fault = _fault(cfg, pid, server_round)
    if fault == "raise":
        raise RuntimeError(f"client {pid}: fault 'raise' injected by federation.faults")
    start = state_of(message.content[ARRAYS])
    learner.set_state(start)
    mu = float(config.get("proximal-mu", 0.0))
    began = time.perf_counter()
    figures = learner.fit(cfg.local.steps, seed=client_seed(int(config["seed"]), server_round, pid),
                          proximal=(start, mu) if mu else None)
    if fault == "timeout":
        time.sleep(cfg.federation.round_timeout + 2.0)
    state = learner.get_state()
    if fault in ("nan", "inf", "shape", "keys"):
        state = _corrupt(state, fault)
    metrics = {NUM_EXAMPLES: learner.num_examples, PARTITION_ID: pid, **figures,
               "seconds": time.perf_counter() - began}
    return Message(content(arrays=state, metrics=metrics), reply_to=message)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """The model received, scored on this client's own images: the centroids' loss (label-free) and, when
    the client's samples have masks, the Hungarian-matched mIoU and accuracy (masks used for scoring only)."""
    from leafseg.data.datasets import build_dataset

    cfg, pid, learner = learner_for(message, context)
    learner.set_state(state_of(message.content[ARRAYS]))
    metrics = {NUM_EXAMPLES: learner.num_examples, PARTITION_ID: pid, "probe_loss": learner.probe_loss()}
    _, root, split = _location(cfg, context)
    data = build_dataset(cfg.data.dataset, root, split_file=split, **cfg.data.options)
    figures = learner.evaluate(data, cfg.eval.resolve(cfg.data.dataset))
    metrics.update(local_miou=figures["miou"], local_acc=figures["acc"])
    return Message(content(metrics=metrics), reply_to=message)
