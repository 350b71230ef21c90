import hashlib

import pytest
import torch
import torch.nn.functional as F

from leafseg.eval.prompts import (
    TEMPLATE_SETS,
    expand_class_names,
    get_templates,
    reduce_queries,
    split_names,
    text_embeddings,
)

E = 16


def fake_vector(text: str) -> torch.Tensor:
    seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
    return torch.randn(E, generator=torch.Generator().manual_seed(seed)) * (1 + len(text) % 5)


class FakeEncoder:
    """Deterministic, un-normalised embeddings per prompt; records the calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, texts):
        self.calls.append(list(texts))
        return torch.stack([fake_vector(t) for t in texts])


def test_template_sets():
    assert TEMPLATE_SETS["single"] == ("a photo of a {}.",)
    tcl = get_templates("tcl")
    assert len(tcl) == 9 and tcl[-2:] == ("a photo of many {}.", "a photo of {}s.")
    assert "itap of a {}." in tcl and "art of the {}." in tcl
    i80 = get_templates("imagenet80")
    assert len(i80) == 80 and len(set(i80)) == 80
    assert set(tcl[:7]) <= set(i80)
    for templates in TEMPLATE_SETS.values():
        assert all(t.count("{}") == 1 for t in templates)
    with pytest.raises(ValueError, match="unknown template set"):
        get_templates("nope")
    with pytest.raises(ValueError, match="exactly one"):
        get_templates(["no slot"])


def test_split_and_expand_names():
    assert split_names("person, people; human") == ["person", "people", "human"]
    names, owners = expand_class_names(["sky", "car, automobile", ["tree", "oak"]])
    assert names == ["sky", "car", "automobile", "tree", "oak"] and owners == [0, 1, 1, 2, 2]
    with pytest.raises(ValueError):
        split_names(" , ;")


def test_text_embeddings_average_normalised_prompts():
    enc = FakeEncoder()
    templates = ("a photo of a {}.", "art of the {}.", "a {} in a video game.")
    out = text_embeddings(enc, ["sky", "car; automobile"], templates, batch_size=4)
    assert out.embeddings.shape == (3, E)
    assert out.query_classes.tolist() == [0, 1, 1] and out.num_classes == 2
    torch.testing.assert_close(out.embeddings.norm(dim=-1), torch.ones(3))
    for row, name in enumerate(["sky", "car", "automobile"]):
        prompts = torch.stack([F.normalize(fake_vector(t.format(name)), dim=0) for t in templates])
        torch.testing.assert_close(out.embeddings[row], F.normalize(prompts.mean(0), dim=0))
    assert [len(c) for c in enc.calls] == [4, 4, 1]  # 9 prompts in chunks of 4


def test_plain_mean_differs_from_normalised_mean():
    """Averaging raw (un-normalised) embeddings would weight long vectors more; CLIP normalises first."""
    enc = FakeEncoder()
    templates = get_templates("tcl")
    out = text_embeddings(enc, ["flower"], templates).embeddings[0]
    raw = F.normalize(torch.stack([fake_vector(t.format("flower")) for t in templates]).mean(0), dim=0)
    assert not torch.allclose(out, raw, atol=1e-4)


def test_reduce_queries_takes_max_over_names():
    scores = torch.tensor([0.1, 0.7, 0.2, 0.5, 0.9]).view(1, 5, 1, 1).expand(2, 5, 3, 4).clone()
    classes = torch.tensor([0, 1, 1, 2, 2])
    out = reduce_queries(scores, classes)
    assert out.shape == (2, 3, 3, 4)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([0.1, 0.7, 0.9]))
    assert reduce_queries(scores, None) is scores
    assert reduce_queries(scores, torch.arange(5)) is scores
    missing = reduce_queries(scores[:, :2], torch.tensor([0, 2]), num_classes=3)
    assert torch.isinf(missing[:, 1]).all()
    with pytest.raises(ValueError, match="channels"):
        reduce_queries(scores, torch.tensor([0, 1]))
