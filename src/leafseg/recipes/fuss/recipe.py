"""FUSS as a leafseg recipe: ``run`` (every client on this machine, on Flower's simulation engine) and
``load_segmenter`` (exported FUSS weights as a harness method), read by the recipe table
(:mod:`leafseg.registry`): ``leafseg train fuss``, ``leafseg config fuss``, ``leafseg eval model``."""

from __future__ import annotations

import os
from pathlib import Path

from leafseg.recipes.fuss.config import FussConfig, check_config

CONFIG = FussConfig

__all__ = ["CONFIG", "check_config", "load_segmenter", "run", "simulate"]


__all__ = ["CONFIG", "FussConfig", "check_config", "load_segmenter", "run", "simulate"]


def load_segmenter(exported: dict, device: str = "cpu"):
    """Exported FUSS weights (a global or a client's model) as a harness method."""
    from leafseg.config import load_config
    from leafseg.recipes.fuss.components import make_encoder, segmenter_from_state

    cfg = load_config(FussConfig, None, exported["config"])
    method = segmenter_from_state(cfg, make_encoder(cfg, device), exported["model"]).to(device)
    return method.eval()


def run(config_path: str | Path | None = None, overrides: list[str] | None = None, resume: bool | str = False,
        overwrite: bool = False) -> dict:
    """FUSS with the config at ``config_path`` plus ``key=value`` overrides, every client on this machine
    (Flower's simulation engine). Returns the run's figures: final_miou, final_acc, best_miou, rounds,
    strategy, out_dir, history (one row per round)."""
    from leafseg.config import load_config
    from leafseg.recipes.fuss.server_app import FussServer

    cfg = load_config(FussConfig, config_path, overrides)
    check_config(cfg)
    server = FussServer(cfg, resume=resume, overwrite=overwrite)
    simulate(server)
    return server.result


def simulate(server) -> None:
    """Run a :class:`~leafseg.recipes.fuss.server_app.FussServer` with its clients on Flower's simulation
    engine (Ray): one virtual SuperNode per client, ``federation.actors`` client processes at once."""
    import logging

    import torch
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from leafseg.recipes.fuss.client_app import app as client_app

    cfg = server.cfg
    fed = cfg.federation
    actors = fed.actors or max(1, min(fed.clients, os.cpu_count() or 1))
    gpu = server.device.type == "cuda" and torch.cuda.is_available()
    backend = {"init_args": {"num_cpus": actors, "num_gpus": 1 if gpu else 0},
               "client_resources": {"num_cpus": 1, "num_gpus": 1.0 / actors if gpu else 0.0}}
    server_app = ServerApp()

    @server_app.main()
    def _main(grid, context) -> None:
        server.serve(grid)

    logging.getLogger("flwr").setLevel(logging.WARNING)  # a line per round comes from the run's echo
    try:
        run_simulation(server_app, client_app, num_supernodes=fed.clients, backend_config=backend)
    finally:
        if server.result is None:
            server.run.close()
