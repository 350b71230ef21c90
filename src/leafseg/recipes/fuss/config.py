"""FUSS's config: the data and its partition, the local learner, the exchange strategy, the federation.

Nested sections (``leafseg config fuss configs/fuss/synthetic.yaml``)::

    data:        dataset, root, splits, the working view (short side resized, centre crop), an optional
                 multi-domain synthetic world written on first use
    partition:   a folder from `leafseg fed partition`, or the scheme the run writes one with
    model:       the frozen encoder (registry name + weights), STEGO's head, K centroids
    local:       one round of a client: steps, batch, learning rates, nearest neighbours, and STEGO's
                 correspondence loss (``local.loss``: a preset, any of its six values overridable)
    strategy:    how the server combines the replies (a preset, its parts overridable)
    federation:  clients, rounds, timeouts, the fraction of answers a round needs
    eval:        the harness protocol of the shared validation set (STEGO's: Hungarian-matched clusters)

Values the paper leaves open are settings with the stated defaults (see ``docs/fuss.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from leafseg.errors import ConfigError
from leafseg.eval.settings import EvalSettings
from leafseg.recipes.stego_config import LossSettings
from leafseg.training.settings import RunSettings

STRATEGIES = ("local_only", "fedavg", "fedprox", "weighted", "fedcc_maxmin", "fedcc_kmeans", "head_only",
              "centroids_only", "fuss")



@dataclass
class SyntheticDomains:
    """A multi-domain synthetic world (:mod:`leafseg.data.synthetic_domains`) written to ``data.root`` on first
    use: ``domains`` domains of ``train`` + ``val`` scenes each, ``size`` pixels, world ``seed``."""

    domains: int = 4
    train: int = 64
    val: int = 16
    size: int = 64
    seed: int = 0
    strength: float = 1.0        # scales every domain's colour and class-mix shift (0: identical domains)

    def __post_init__(self):
        if self.domains < 1 or self.train < 1 or self.val < 0 or self.size < 16:
            raise ConfigError(f"data.synthetic: need domains >= 1, train >= 1, val >= 0, size >= 16, got {self}")

    def ensure(self, root) -> None:
        from leafseg.data.synthetic_domains import write_domain_world

        write_domain_world(root, self.domains, train=self.train, val=self.val, size=self.size, seed=self.seed,
                           strength=self.strength)


@dataclass
class DataSettings:
    dataset: str = "synthetic"               # a leafseg dataset name (leafseg eval datasets)
    root: str = "data/fuss_synthetic"
    options: dict = field(default_factory=dict)   # the dataset's own options
    split: str = "train"                     # the split dealt out to the clients
    val_split: str = "val"                   # the shared validation set
    val_limit: int = 0                       # score only its first N images (0: all)
    size: int = 224                          # training view: short side resized to it, then the centre square
    synthetic: SyntheticDomains | None = None


@dataclass
class PartitionSettings:
    dir: str | None = None                   # a folder from `leafseg fed partition`; null: written to out_dir
    scheme: Literal["iid", "dirichlet", "domain"] = "domain"
    alpha: float = 0.5                       # Dirichlet concentration (scheme dirichlet)
    seed: int = 0


@dataclass
class ModelSettings:
    backbone: str = "dino_vits8"             # a registry name, or pixels<cell> (raw RGB cells)
    weights: str | None = None               # None: the registry's checkpoint, offline; "random"; a folder/file
    arch_overrides: dict = field(default_factory=dict)
    layer: int = -1                          # the block whose patch tokens are the features
    code_dim: int = 70                       # STEGO's code dimension
    clusters: int = 27                       # K, the same for every client (a limit the paper states)
    dropout: float = 0.1                     # Dropout2d on the features (each head branch, and the loss's target)


# local.loss's default: STEGO's published values for DINO ViT-S/8 (the default backbone), the weights STEGO's
# synthetic config also keeps (configs/fuss/synthetic.yaml sets that config's shifts on top)
DEFAULT_LOSS_PRESET = "cocostuff27_vits8"


def _fuss_loss() -> LossSettings:
    return LossSettings(preset=DEFAULT_LOSS_PRESET)


@dataclass
class LocalSettings:
    steps: int = 1000                        # local steps per round (FUSS: 2500 Cityscapes, 1000 COCO-Stuff)
    batch_size: int = 8
    lr_head: float = 5e-4
    lr_probe: float = 5e-3
    knn: int = 7                             # nearest neighbours per image (STEGO: 7)
    loss: LossSettings = field(default_factory=_fuss_loss)   # STEGO's correspondence loss: preset + overrides
    flip: bool = True                        # horizontal flips of the cached feature maps
    feature_batch: int = 32                  # images per encoder pass when the features are cached
    threads: int = 1                         # torch CPU threads of a client (its figures repeat at a fixed count)

    RENAMED = {"points": "local.loss.feature_samples"}


@dataclass
class StrategySettings:
    name: Literal["local_only", "fedavg", "fedprox", "weighted", "fedcc_maxmin", "fedcc_kmeans", "head_only",
                  "centroids_only", "fuss"] = "fuss"
    head: Literal["keep", "mean", "weighted"] | None = None        # override the preset's head rule
    centroids: Literal["keep", "mean", "weighted", "maxmin", "kmeans"] | None = None   # and centroid rule
    proximal_mu: float = 0.001               # FedProx's mu (used by fedprox; others send 0)
    kmeans_restarts: int = 10                # FedCC k-means restarts

    def __post_init__(self):
        if self.proximal_mu < 0 or self.kmeans_restarts < 1:
            raise ConfigError(f"strategy: need proximal_mu >= 0 and kmeans_restarts >= 1, got {self}")


@dataclass
class FederationSettings:
    clients: int = 3
    rounds: int = 10                         # communication rounds (FUSS: 10)
    round_timeout: float = 3600.0            # seconds the server waits for a round's replies
    start_timeout: float = 600.0             # seconds it waits for the clients to connect and load their data
    min_fraction: float = 0.5                # a round needs valid replies from at least this share of clients
    eval_clients: bool = True                # also score every client's own model on the validation set
    client_eval: bool = True                 # clients score the global model on their own images (Flower evaluate)
    actors: int = 0                          # simulation: client processes at once (0: min(clients, CPUs))
    faults: dict[str, Literal["raise", "timeout", "nan", "inf", "shape", "keys"]] = field(default_factory=dict)
    # ^ a testing aid: "<client>" or "<client>@<round>" -> a fault that client commits in its train reply

    def __post_init__(self):
        if self.clients < 1 or self.rounds < 1 or min(self.round_timeout, self.start_timeout) <= 0 \
                or not 0 < self.min_fraction <= 1:
            raise ConfigError("federation: need clients >= 1, rounds >= 1, round_timeout and start_timeout > 0, "
                              f"and 0 < min_fraction <= 1, got {self}")
        for key in self.faults:
            client, _, rnd = str(key).partition("@")
            if not client.isdigit() or (rnd and not rnd.isdigit()):
                raise ConfigError(f"federation.faults: keys are '<client>' or '<client>@<round>', got {key!r}")


def _stego_eval() -> EvalSettings:
    return EvalSettings(preset="stego")


@dataclass
class FussConfig(RunSettings):
    """FUSS on the shared run engine; ``leafseg fed run CONFIG --clients N`` or ``leafseg train fuss CONFIG``."""

    data: DataSettings = field(default_factory=DataSettings)
    partition: PartitionSettings = field(default_factory=PartitionSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    local: LocalSettings = field(default_factory=LocalSettings)
    strategy: StrategySettings = field(default_factory=StrategySettings)
    federation: FederationSettings = field(default_factory=FederationSettings)
    eval: EvalSettings = field(default_factory=_stego_eval)
    out_dir: str = "runs/fuss"
    log_every: int = 1                       # rounds between rows of train_log (one row per round)


def check_config(cfg: FussConfig) -> None:
    """What the types cannot say."""
    m, loc = cfg.model, cfg.local
    if m.code_dim < 1 or m.clusters < 1 or not 0 <= m.dropout < 1:
        raise ConfigError(f"model: need code_dim >= 1, clusters >= 1, 0 <= dropout < 1, got {m}")
    if loc.steps < 1 or loc.batch_size < 1 or loc.knn < 0 or loc.feature_batch < 1:
        raise ConfigError(f"local: need steps, batch_size, feature_batch >= 1 and knn >= 0, got {loc}")
    if loc.batch_size < 2 and loc.loss.negatives:
        raise ConfigError(f"local.batch_size must be at least 2 for the loss's random pairs (local.loss.negatives "
                          f"> 0), got {loc.batch_size}")
    if loc.lr_head <= 0 or loc.lr_probe <= 0 or loc.threads < 0:
        raise ConfigError(f"local: need positive learning rates and threads >= 0, got {loc}")
    if cfg.data.size < 16:
        raise ConfigError(f"data.size must be at least 16 pixels, got {cfg.data.size}")
    if cfg.partition.alpha <= 0:
        raise ConfigError(f"partition.alpha must be > 0, got {cfg.partition.alpha}")
    if cfg.eval.resolve(cfg.data.dataset).labelling != "hungarian":
        raise ConfigError("eval: FUSS predicts cluster ids; its protocol needs labelling: hungarian")
    for key in cfg.federation.faults:
        if int(str(key).partition("@")[0]) >= cfg.federation.clients:
            raise ConfigError(f"federation.faults: client {key} is not one of the {cfg.federation.clients} clients")
