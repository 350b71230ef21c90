"""Zero-shot image-text retrieval: recall at 1 of paired embeddings.

Image i and caption i form a pair. Image-to-text: each image retrieves the caption of highest cosine
similarity among all N captions; text-to-image: each caption retrieves one of the N images. A retrieval
is a hit when it returns the pair's partner, where captions with the same text count as the same
caption (a generated world repeats captions, and no model can tell identical texts apart): an image hits
when its best caption reads exactly like its own, a caption hits when its best image has a caption that
reads like it.

    r = recall_at_1(image_embeddings, text_embeddings, captions)
    r["image_to_text"], r["text_to_image"]          # fractions in [0, 1]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["recall_at_1"]


def recall_at_1(image: torch.Tensor, text: torch.Tensor, captions: Sequence[str], chunk: int = 4096) -> dict:
    """image, text: (N, E) embeddings of N pairs (normalised here); captions: the N caption texts.

    Returns {"image_to_text": float, "text_to_image": float, "pairs": N}. The similarity matrix is
    scored ``chunk`` rows at a time, so N may be large.
    """
    if image.ndim != 2 or image.shape != text.shape:
        raise ValueError(f"need (N, E) image and text embeddings of one shape, got {tuple(image.shape)} "
                         f"and {tuple(text.shape)}")
    if len(captions) != image.shape[0]:
        raise ValueError(f"{len(captions)} captions for {image.shape[0]} pairs")
    n = image.shape[0]
    if n == 0:
        return {"image_to_text": float("nan"), "text_to_image": float("nan"), "pairs": 0}
    index: dict[str, int] = {}
    groups = torch.tensor([index.setdefault(c, len(index)) for c in captions], device=image.device)
    x, y = F.normalize(image.float(), dim=-1), F.normalize(text.float(), dim=-1)
    hits = []
    for queries, keys in ((x, y), (y, x)):
        best = torch.cat([(queries[i : i + chunk] @ keys.t()).argmax(1) for i in range(0, n, chunk)])
        hits.append(float((groups[best] == groups).float().mean()))
    return {"image_to_text": hits[0], "text_to_image": hits[1], "pairs": n}
