"""The contract every evaluable method follows (see :mod:`leafseg.eval.methods` for the methods)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["Segmenter"]


class Segmenter(nn.Module):
    """Base of the evaluable methods: see the :mod:`leafseg.eval.methods` docstring for the contract."""

    outputs: str = "logits"
    num_clusters: int | None = None
    query_classes: Tensor | None = None

    def prepare(self, class_names: Sequence[str | Sequence[str]], protocol) -> None:
        """Called once before an evaluation with the class entries and the resolved protocol."""

    def forward(self, images: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
