"""Recall at 1 of paired image-text embeddings (leafseg.eval.retrieval)."""

from __future__ import annotations

import pytest
import torch

from leafseg.eval.retrieval import recall_at_1


def test_recall_at_1_in_both_directions():
    image = torch.eye(4)
    text = torch.eye(4)[[0, 1, 3, 2]] * 3.0  # pairs 2 and 3 swapped (and not unit length)
    text[1] = torch.tensor([0.9, 0.1, 0.0, 0.0])  # caption 1 looks like image 0
    r = recall_at_1(image, text, ["a", "b", "c", "d"])
    # image 0 -> caption 0 or 1 (0: 1.0 vs 0.99): hit; image 1 -> caption 1 (0.11 cosine, the only one): hit;
    # images 2, 3 -> the swapped captions: misses
    assert r == {"image_to_text": 0.5, "text_to_image": 0.25, "pairs": 4}


def test_identical_captions_count_as_one_caption():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    text = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # captions 0 and 1 read the same: both retrieve image 0, which is right for both of them
    shared = recall_at_1(image, text, ["a ball", "a ball", "the sky"])
    distinct = recall_at_1(image, text, ["a ball", "two balls", "the sky"])
    assert shared["text_to_image"] == pytest.approx(2 / 3) and distinct["text_to_image"] == pytest.approx(1 / 3)
    # image 0 hits; image 1 retrieves "the sky" (image 2's); image 2 ties and takes the first, caption 0
    assert shared["image_to_text"] == distinct["image_to_text"] == pytest.approx(1 / 3)


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="one shape"):
        recall_at_1(torch.zeros(3, 4), torch.zeros(3, 5), ["a", "b", "c"])
    with pytest.raises(ValueError, match="captions"):
        recall_at_1(torch.zeros(3, 4), torch.zeros(3, 4), ["a", "b"])
