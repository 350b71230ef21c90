"""Prompt templates and class-name text embeddings for open-vocabulary segmentation.

A class entry may list several names separated by commas or semicolons
("person, people; human"). Every name becomes one text query; a class scores the maximum over
its names (the SCLIP family's convention), so :func:`text_embeddings` returns one row per name
and the class each row belongs to::

    emb = text_embeddings(clip.encode_text, ["sky", "car, automobile"], get_templates("tcl"))
    emb.embeddings        # (3, E) unit rows: sky, car, automobile
    emb.query_classes     # tensor([0, 1, 1])
    reduce_queries(scores, emb.query_classes, 2)   # (B, 3, H, W) -> (B, 2, H, W), max over names
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from leafseg.errors import ConfigError

__all__ = [
    "TEMPLATE_SETS",
    "FALLBACKS",
    "PaddedNouns",
    "TextEmbeddings",
    "expand_class_names",
    "get_templates",
    "noun_embeddings",
    "reduce_queries",
    "split_names",
    "text_embeddings",
]

# TCL's set: seven of CLIP's ImageNet templates plus two plural forms.
_TCL = (
    "itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
    "a {} in a video game.", "art of the {}.", "a photo of the small {}.",
    "a photo of many {}.", "a photo of {}s.",
)

# The 80 prompt templates CLIP used for ImageNet zero-shot classification.
_IMAGENET80 = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "single": ("a photo of a {}.",),
    "tcl": _TCL,
    "imagenet80": _IMAGENET80,
    "name": ("{}",),
}


def get_templates(name: str | Sequence[str]) -> tuple[str, ...]:
    """A template set by name, or a sequence of templates checked to contain ``{}`` once."""
    if isinstance(name, str):
        if name not in TEMPLATE_SETS:
            raise ValueError(f"unknown template set {name!r}; known: {', '.join(TEMPLATE_SETS)}")
        return TEMPLATE_SETS[name]
    templates = tuple(name)
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise ValueError(f"every template needs exactly one '{{}}' for the class name; bad: {bad or 'empty set'}")
    return templates


def split_names(entry: str) -> list[str]:
    """One class entry -> its names: "person, people; human" -> ["person", "people", "human"]."""
    names = [n.strip() for n in re.split(r"[,;]", entry) if n.strip()]
    if not names:
        raise ValueError(f"class entry {entry!r} holds no name")
    return names


def expand_class_names(class_entries: Sequence[str | Sequence[str]]) -> tuple[list[str], list[int]]:
    """Class entries (strings with separators, or lists of names) -> (names, class index of each name)."""
    names, owners = [], []
    for c, entry in enumerate(class_entries):
        parts = split_names(entry) if isinstance(entry, str) else [n.strip() for n in entry if n.strip()]
        if not parts:
            raise ValueError(f"class {c} has no name")
        names += parts
        owners += [c] * len(parts)
    return names, owners


class TextEmbeddings(NamedTuple):
    """embeddings: (Q, E) unit-norm, one row per name; query_classes: (Q,) int64 class of each row."""

    embeddings: Tensor
    query_classes: Tensor

    @property
    def num_classes(self) -> int:
        return int(self.query_classes.max()) + 1 if self.query_classes.numel() else 0


@torch.no_grad()
def text_embeddings(
    encode_text: Callable[[list[str]], Tensor],
    class_names: Sequence[str | Sequence[str]],
    templates: str | Sequence[str] = "single",
    batch_size: int = 256,
) -> TextEmbeddings:
    """Template-averaged text embeddings, CLIP's recipe: each prompt embedding is L2-normalised,
    the prompts of one name are averaged, the mean is normalised again.

    Args:
        encode_text: list of T strings -> (T, E) embeddings (e.g. ``ClipEncoder.encode_text``).
        class_names: C entries; an entry with several names (comma/semicolon separated, or a list)
            gives several rows.
        templates: a set name (see ``TEMPLATE_SETS``) or the templates themselves.
        batch_size: prompts per ``encode_text`` call.

    Returns:
        :class:`TextEmbeddings` with embeddings (Q, E) float32 and query_classes (Q,) int64, where
        Q is the total number of names (Q == C when no entry lists synonyms).
    """
    templates = get_templates(templates)
    names, owners = expand_class_names(class_names)
    prompts = [t.format(n) for n in names for t in templates]
    chunks = [encode_text(prompts[i : i + batch_size]) for i in range(0, len(prompts), batch_size)]
    emb = F.normalize(torch.cat(chunks).float(), dim=-1)  # (Q * T, E)
    emb = emb.view(len(names), len(templates), -1).mean(1)
    emb = F.normalize(emb, dim=-1)
    return TextEmbeddings(emb, torch.tensor(owners, dtype=torch.long, device=emb.device))


def reduce_queries(scores: Tensor, query_classes: Tensor | None, num_classes: int | None = None) -> Tensor:
    """Per-name scores -> per-class scores, maximum over each class's names.

    scores: (B, Q, ...) any float; query_classes: (Q,) int64 class of every name, or None (identity).
    Returns (B, C, ...), C = ``num_classes`` or ``query_classes.max() + 1``. A class without any
    name scores -inf.
    """
    if query_classes is None:
        return scores
    q = scores.shape[1]
    if query_classes.numel() != q:
        raise ValueError(f"scores have {q} channels but query_classes names {query_classes.numel()}")
    c = int(query_classes.max()) + 1 if num_classes is None else int(num_classes)
    index = query_classes.to(scores.device)
    if c == q and bool((index == torch.arange(q, device=index.device)).all()):
        return scores
    shape = (scores.shape[0], c, *scores.shape[2:])
    index = index.view(1, q, *([1] * (scores.ndim - 2))).expand_as(scores)
    out = scores.new_full(shape, float("-inf"))
    return out.scatter_reduce(1, index, scores, reduce="amax", include_self=True)


FALLBACKS = ("drop", "caption")


class PaddedNouns(NamedTuple):
    """Noun embeddings of a batch of captions, padded to the caption with the most nouns.

    embeddings: (B, N, E) float32 unit rows, zeros at padding; mask: (B, N) bool, True for a noun;
    texts: B lists of what each row encodes (a noun, or the caption itself with ``fallback="caption"``).
    """

    embeddings: Tensor
    mask: Tensor
    texts: list[list[str]]


def noun_embeddings(
    captions: Sequence[str],
    vocabulary: set[str] | Sequence[str],
    encode_text: Callable[[list[str]], Tensor],
    templates: str | Sequence[str] = "single",
    *,
    max_nouns: int | None = None,
    fallback: str = "drop",
    batch_size: int = 256,
) -> PaddedNouns:
    """Prompted embeddings of the nouns of every caption (:func:`leafseg.text.nouns.caption_nouns`).

    Each distinct noun of the batch is encoded once, template-averaged as :func:`text_embeddings` does.
    captions: B strings; vocabulary: the noun vocabulary; encode_text: list of T strings -> (T, E);
    templates: a set name or the templates; max_nouns: keep the first nouns of a caption (None: all).
    fallback: what a caption without a noun gives: "drop" (no row: the noun-region loss drops its pair)
        or "caption" (one row, the caption itself encoded without a template).
    Returns :class:`PaddedNouns`; N is 0 when no caption gives a row (embeddings then (B, 0, 0)).
    No gradient flows to the text encoder (the text side is frozen).
    """
    from leafseg.text.nouns import caption_nouns

    if fallback not in FALLBACKS:
        raise ConfigError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    keys = [[("noun", w) for w in nouns] for nouns in caption_nouns(captions, vocabulary, max_nouns)]
    if fallback == "caption":
        keys = [k or ([("caption", c.strip())] if c.strip() else []) for k, c in zip(keys, captions, strict=True)]
    texts = [[t for _, t in ks] for ks in keys]
    unique = list(dict.fromkeys(k for ks in keys for k in ks))
    if not unique:
        return PaddedNouns(torch.zeros(len(captions), 0, 0), torch.zeros(len(captions), 0, dtype=torch.bool), texts)
    parts, order = [], []
    for kind, kind_templates in (("noun", templates), ("caption", ("{}",))):
        names = [t for k, t in unique if k == kind]
        if names:
            parts.append(text_embeddings(encode_text, [[t] for t in names], kind_templates, batch_size).embeddings)
            order += [(kind, t) for t in names]
    table = torch.cat(parts)  # (U, E)
    row = {k: i for i, k in enumerate(order)}
    n = max(len(ks) for ks in keys)
    index = torch.tensor([[row[k] for k in ks] + [0] * (n - len(ks)) for ks in keys], dtype=torch.long)
    mask = torch.tensor([[True] * len(ks) + [False] * (n - len(ks)) for ks in keys], dtype=torch.bool)
    index, mask = index.to(table.device), mask.to(table.device)
    return PaddedNouns(table[index] * mask[..., None], mask, texts)
