"""Text encoders for image-text training: ``encoder(texts) -> (T, out_dim)`` features.

* ``"scratch"``: :class:`ScratchTextEncoder`, a tokenizer (BPE trained on the captions, or
  MiniLM's WordPiece vocabulary) and a :class:`~leafseg.text.transformer.TextTransformer`
  trained from scratch, as in S-Seg.
* ``"minilm"``: :class:`MiniLMTextEncoder`, the pretrained all-MiniLM-L6-v2 sentence encoder
  (``leafseg.backbones`` registry name ``minilm_l6``), frozen (features cached per text) or tuned.
  A pretrained text tower is what lets a model be asked for a class by a word its captions
  never contained.
"""

from __future__ import annotations

import torch
from torch import nn

from leafseg.text.tokenizer import BPETokenizer, WordPieceTokenizer
from leafseg.text.transformer import TextTransformer


class ScratchTextEncoder(nn.Module):
    """Tokenizer + causal text transformer, [EOS] pooling. forward(texts: list of T str) -> (T, width)."""

    def __init__(self, tokenizer: BPETokenizer | WordPieceTokenizer, transformer: TextTransformer):
        super().__init__()
        self.tokenizer, self.transformer = tokenizer, transformer
        self.out_dim = transformer.width

    def forward(self, texts: list[str]) -> torch.Tensor:
        ids = self.tokenizer.encode(list(texts))
        end = (ids == self.tokenizer.end_id).int().argmax(1)  # first end token of every row
        device = self.transformer.positional_embedding.device
        return self.transformer(ids.to(device), end.to(device))


class MiniLMTextEncoder(nn.Module):
    """all-MiniLM-L6-v2 sentence embeddings (384-d, mean pooled, unit norm).

    frozen: no gradients, dropout off, and each distinct text is encoded once and cached (on the
    encoder's device); otherwise the encoder is tuned with the rest of the model.
    forward(texts: list of T str) -> (T, 384).
    """

    def __init__(self, sentence_encoder: nn.Module, frozen: bool = True, cache_size: int = 200_000):
        super().__init__()
        self.encoder, self.frozen, self.cache_size = sentence_encoder, bool(frozen), int(cache_size)
        self.out_dim = int(sentence_encoder.embed_dim)
        self._cache: dict[str, torch.Tensor] = {}
        if self.frozen:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> MiniLMTextEncoder:
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def forward(self, texts: list[str]) -> torch.Tensor:
        texts = list(texts)
        if not self.frozen:
            return self.encoder.encode_text(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            with torch.no_grad():
                feats = self.encoder.encode_text(missing)
            if len(self._cache) + len(missing) > self.cache_size:
                self._cache.clear()
            self._cache.update(zip(missing, feats, strict=True))
        return torch.stack([self._cache[t] for t in texts])


def build_text_encoder(kind: str = "scratch", *, tokenizer: BPETokenizer | WordPieceTokenizer | None = None,
                       width: int = 256, layers: int = 12, heads: int = 4, context_length: int = 77,
                       minilm_weights: str | None = None, frozen: bool = True, device: str = "cpu") -> nn.Module:
    """A text encoder by kind: "scratch" (needs ``tokenizer``; width/layers/heads/context_length size
    the transformer) or "minilm" (``minilm_weights``: None for the installed package, a
    sentence-transformers folder, or "random"; ``frozen`` or tuned). The result has ``out_dim``."""
    if kind == "scratch":
        if tokenizer is None:
            raise ValueError("a scratch text encoder needs a tokenizer")
        transformer = TextTransformer(vocab_size=tokenizer.vocab_size, width=width, layers=layers, heads=heads,
                                      context_length=context_length)
        return ScratchTextEncoder(tokenizer, transformer).to(device)
    if kind == "minilm":
        from leafseg.backbones import build_backbone

        return MiniLMTextEncoder(build_backbone("minilm_l6", weights=minilm_weights, device=device), frozen).to(device)
    raise ValueError(f"unknown text encoder {kind!r}; use 'scratch' or 'minilm'")
