"""Vocabulary and caption writing for the synthetic world.

Every class has training synonyms (the only words captions ever use for it) and
held-out evaluation synonyms that never appear in any caption, so an open-vocabulary
model can later be asked for a class by a word it was never shown.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np

STUFF: tuple[str, ...] = ("sky", "grass", "water", "sand", "wall")
THINGS: tuple[str, ...] = ("ball", "box", "tree", "star", "car", "house", "flower")
CLASSES: tuple[str, ...] = STUFF + THINGS

SYNONYMS: dict[str, tuple[str, ...]] = {
    "sky": ("sky", "skies", "air"),
    "grass": ("grass", "lawn", "turf"),
    "water": ("water", "lake", "river"),
    "sand": ("sand", "beach", "dune"),
    "wall": ("wall", "brick wall", "brickwork"),
    "ball": ("ball", "sphere", "orb"),
    "box": ("box", "crate", "carton"),
    "tree": ("tree", "oak", "pine"),
    "star": ("star", "star shape", "starburst"),
    "car": ("car", "automobile", "vehicle"),
    "house": ("house", "cottage", "home"),
    "flower": ("flower", "blossom", "daisy"),
}
EVAL_SYNONYMS: dict[str, tuple[str, ...]] = {
    "sky": ("heavens",),
    "grass": ("meadow",),
    "water": ("ocean", "pond"),
    "sand": ("desert",),
    "wall": ("masonry",),
    "ball": ("globe",),
    "box": ("parcel",),
    "tree": ("maple",),
    "star": ("pentagram",),
    "car": ("sedan",),
    "house": ("cabin",),
    "flower": ("bloom",),
}
FILLERS: tuple[str, ...] = ("nice", "today", "outdoors", "bright", "quiet", "lovely", "simple",
                            "calm", "colourful", "small")
NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}

WITH_STUFF = (
    "a photo of {t} on {s}",
    "{s} with {t}",
    "there is {t} near {s}",
    "{t} in front of {s}",
    "an image of {t} and {s}",
    "a picture showing {t}, with {s} behind",
    "{t} next to {s}",
)
THINGS_ONLY = ("a photo of {t}", "{t}", "there is {t} here")


def plural(word: str) -> str:
    """English plural of a (possibly multi-word) noun phrase: 'box' -> 'boxes'."""
    if word.endswith(("s", "x", "sh", "ch")):
        return word + "es"
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _join(parts: Sequence[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def make_caption(rng: np.random.Generator, thing_counts: Mapping[str, int], stuff: Sequence[str],
                 noise: float = 0.1) -> str:
    """Write one caption naming the things (with counts) and usually the stuff.

    ``thing_counts`` maps thing class names to instance counts (order is kept);
    ``stuff`` lists stuff class names, largest first. With probability ``noise`` the
    caption gets a random filler word or, when two or more thing classes are present,
    leaves one of them out.
    """
    names = list(thing_counts)
    if noise > 0 and rng.random() < noise and len(names) > 1 and rng.random() < 0.5:
        names.pop(int(rng.integers(len(names))))
        noise = 0.0  # one corruption per caption
    phrases = []
    for name in names:
        syn = SYNONYMS[name][int(rng.integers(len(SYNONYMS[name])))]
        count = thing_counts[name]
        phrases.append(_article(syn) if count == 1 else f"{NUMBERS.get(count, 'many')} {plural(syn)}")
    if not phrases:  # every object was left out (tiny scenes): describe the backgrounds alone
        words = ["the " + SYNONYMS[s][int(rng.integers(len(SYNONYMS[s])))] for s in stuff]
        return f"a view of {_join(words)}" if words else "an empty scene"
    order = rng.permutation(len(phrases))
    things = _join([phrases[k] for k in order])
    if stuff and rng.random() >= 0.15:
        words = ["the " + SYNONYMS[s][int(rng.integers(len(SYNONYMS[s])))] for s in stuff]
        template = WITH_STUFF[int(rng.integers(len(WITH_STUFF)))]
        caption = template.format(t=things, s=_join(words))
    else:
        caption = THINGS_ONLY[int(rng.integers(len(THINGS_ONLY)))].format(t=things)
    if noise > 0 and rng.random() < noise:
        words = caption.split(" ")
        words.insert(int(rng.integers(len(words) + 1)), FILLERS[int(rng.integers(len(FILLERS)))])
        caption = " ".join(words)
    return caption


def _word_pattern(words: Sequence[str]) -> re.Pattern[str]:
    forms = sorted({f for w in words for f in (w, plural(w))}, key=len, reverse=True)
    return re.compile(r"\b(" + "|".join(re.escape(f) for f in forms) + r")\b")


_TRAIN_PATTERNS = {name: _word_pattern(SYNONYMS[name]) for name in CLASSES}
_EVAL_PATTERNS = {name: _word_pattern(EVAL_SYNONYMS[name]) for name in CLASSES}


def caption_classes(caption: str, eval_words: bool = False) -> set[str]:
    """Class names that ``caption`` mentions by a training synonym (singular or plural).

    With ``eval_words=True``, look for the held-out evaluation synonyms instead.
    """
    patterns = _EVAL_PATTERNS if eval_words else _TRAIN_PATTERNS
    text = caption.lower()
    return {name for name, pat in patterns.items() if pat.search(text)}
