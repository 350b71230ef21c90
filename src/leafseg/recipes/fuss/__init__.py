"""FUSS (federated unsupervised semantic segmentation): clients each train a label-free segmentation head and K
centroids on their own images over a frozen encoder; a Flower server combines what they send (the head's
weights and the centroids, never images, features or labels) round after round.

Reading order, as the paper goes::

    config.py           the settings (data and partition, model, local round and loss, strategy, federation,
                        eval)
    task.py             LocalLearner: a client's learning in plain PyTorch (get_state / set_state / fit /
                        predict / evaluate)
    components.py       the config turned into objects, the same on the server and every client: STEGO's
                        frozen encoder, head, K centroids, correspondence loss and segmenter (the shared
                        components, built as the STEGO recipe builds them), a client's learner
    strategies.py       the server's combinations as pure functions (averages, FedCC max-min and k-means)
    flower_strategy.py  the same as a Flower strategy: per-client start states, reply checks, quorum
    messages.py         what the messages carry; states <-> Flower records
    client_app.py       the Flower ClientApp (query / train / evaluate)
    server_app.py       the Flower ServerApp: the rounds on the run engine (logs, checkpoints, resume)
    report.py           mIoU against rounds for several runs
    recipe.py           run (simulation on this machine) and load_segmenter, for the recipe table
    cli.py              `leafseg fed partition / run / report`

``run(config, overrides)`` (in ``recipe.py``) runs FUSS on Flower's simulation engine on this machine
(``leafseg fed run``, ``leafseg train fuss``); ``configs/fuss/app`` is the Flower app for a deployment
(``docs/fuss.md``). Flower is imported only by the modules that talk to it, and this package's names are
imported on first use, so the registry, ``leafseg config fuss``, ``leafseg eval model`` on FUSS weights and
``leafseg --help`` work without it.
"""

from __future__ import annotations

from leafseg.lazy import lazy_exports

__all__ = ["CONFIG", "FussConfig", "check_config", "load_segmenter", "run", "simulate"]

__getattr__, __dir__ = lazy_exports(__name__, {"CONFIG": "recipe", "FussConfig": "config", "check_config": "config",
                                               "load_segmenter": "recipe", "run": "recipe", "simulate": "recipe"})
