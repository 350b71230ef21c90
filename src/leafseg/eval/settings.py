"""How a recipe evaluates: a harness protocol by preset name plus field overrides, on a dataset. This
is a recipe config's ``eval`` section::

    eval:
      preset: unimatch                       # a harness preset (leafseg eval --preset), or a YAML file
      protocol: {batch_size: 32, window_merge: probabilities}   # Protocol fields over the preset
      dataset: synthetic                     # null: the recipe's own validation data
      root: data/synthetic64

The same preset and overrides given to ``leafseg eval model`` score exported weights with the same code,
so a run's reported mIoU and ``leafseg eval`` agree exactly; every run also saves the resolved protocol
as ``protocol.yaml`` for ``--preset``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from leafseg.errors import ConfigError


@dataclass
class EvalSettings:
    """Evaluation through the harness (``leafseg.eval.harness``): a protocol preset (``leafseg eval
    --preset``) with protocol fields overridden, on a dataset (null: the recipe's own validation set)."""

    preset: str = "default"                  # a harness preset name (leafseg.eval.protocol.PRESETS) or a YAML file
    protocol: dict = field(default_factory=dict)   # Protocol fields over the preset, e.g. {batch_size: 32}
    dataset: str | None = None               # a leafseg dataset name; null: the recipe's own validation data
    root: str = ""
    split: str = "val"
    every: int = 0                           # iterations between evaluations (0: the recipe's default)

    def __post_init__(self):
        self.resolve(None)  # unknown protocol fields and bad values fail now, before any work
        if self.every < 0:
            raise ConfigError(f"eval.every must be >= 0, got {self.every}")

    def resolve(self, dataset: str | None):
        """The harness :class:`~leafseg.eval.protocol.Protocol` for ``dataset``."""
        from leafseg.eval.protocol import load_protocol

        try:
            return load_protocol(self.preset, dataset, dict(self.protocol))
        except (ValueError, TypeError) as err:
            raise ConfigError(f"eval (preset {self.preset!r}, protocol {self.protocol}): {err}") from None
