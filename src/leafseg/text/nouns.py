"""Nouns of captions for GroupViT's multi-label contrastive loss, without a part-of-speech tagger.

GroupViT pairs every image with prompts of nouns taken from its caption ("a photo of a dog.") so the
text encoder also learns to embed one concept in a prompt, the form class names take at test time.
It tags nouns with NLTK, whose tagger data cannot be fetched offline; here a noun vocabulary is read
from the captions instead: a word that follows a determiner or a number word ("a", "the", "three")
and is not itself a function word. Any vocabulary word found in a caption is one of its nouns.

    vocab = build_noun_vocabulary(captions, size=1000)       # most frequent first
    extract_nouns("two oaks and the lake", vocab)             # ['oaks', 'lake']
    prompts, targets = noun_batch(captions, vocab, k=3, templates=("a photo of a {}.",))
    caption_nouns(["a dog and a ball", "the sky"], vocab)    # [['dog', 'ball'], ['sky']]
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import torch

from leafseg.errors import ConfigError

DETERMINERS = frozenset(
    "a an the this that these those some many several few one two three four five six seven eight nine ten".split())
FUNCTION_WORDS = DETERMINERS | frozenset(
    "of with and or in on at near behind front next to by from for there here is are was were be being been "
    "it its they their he his she her we our you your i my not no very".split())
_WORD = re.compile(r"[a-z]+")


def words(text: str) -> list[str]:
    """Lower-case alphabetic words of ``text``."""
    return _WORD.findall(text.lower())


def build_noun_vocabulary(captions: Iterable[str], size: int = 1000, min_count: int = 3) -> list[str]:
    """Words seen right after a determiner or number word, at least ``min_count`` times: the
    ``size`` most frequent, most frequent first (ties alphabetical)."""
    counts: Counter[str] = Counter()
    for caption in captions:
        w = words(caption)
        counts.update(b for a, b in zip(w, w[1:], strict=False)
                      if a in DETERMINERS and b not in FUNCTION_WORDS and len(b) > 1)
    ranked = sorted((n for n, c in counts.items() if c >= min_count), key=lambda n: (-counts[n], n))
    return ranked[:size]


def extract_nouns(caption: str, vocabulary: set[str] | Sequence[str]) -> list[str]:
    """The vocabulary words of ``caption``, each once, in caption order."""
    vocab = vocabulary if isinstance(vocabulary, set | frozenset) else set(vocabulary)
    return list(dict.fromkeys(w for w in words(caption) if w in vocab))


def caption_nouns(captions: Sequence[str], vocabulary: set[str] | Sequence[str],
                  max_nouns: int | None = None) -> list[list[str]]:
    """The nouns of every caption (:func:`extract_nouns`): each once, in caption order, the first
    ``max_nouns`` when given (None: all). A caption without a vocabulary word gives an empty list."""
    if max_nouns is not None and max_nouns < 1:
        raise ConfigError(f"max_nouns must be at least 1 (or None for all), got {max_nouns}")
    vocab = vocabulary if isinstance(vocabulary, set | frozenset) else set(vocabulary)
    return [extract_nouns(c, vocab)[:max_nouns] for c in captions]


def noun_batch(captions: Sequence[str], vocabulary: set[str] | Sequence[str], k: int,
               templates: Sequence[str]) -> tuple[list[str], torch.Tensor]:
    """Prompts of up to ``k`` nouns drawn from each caption (torch's global RNG), and which caption
    contains which drawn noun.

    Returns (prompts: U str, one per distinct drawn noun, each with a template drawn at random;
    targets: (len(captions), U) bool, True where the caption contains that noun, drawn or not).
    A noun shared by several captions is one prompt with several positive images.
    """
    if k < 1 or not templates:
        raise ValueError(f"need k >= 1 and at least one template, got k={k}, {len(templates)} templates")
    found = [extract_nouns(c, vocabulary) for c in captions]
    drawn: dict[str, None] = {}
    for nouns in found:
        for j in torch.randperm(len(nouns))[:k].tolist():
            drawn.setdefault(nouns[j])
    unique = list(drawn)
    which = torch.randint(len(templates), (len(unique),)).tolist() if len(templates) > 1 else [0] * len(unique)
    prompts = [templates[t].format(n) for t, n in zip(which, unique, strict=True)]
    sets = [set(nouns) for nouns in found]
    targets = torch.tensor([[n in have for n in unique] for have in sets], dtype=torch.bool)
    return prompts, targets.reshape(len(captions), len(unique))
