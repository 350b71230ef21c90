"""Text side of image-text training: offline tokenizers, a causal text transformer, text encoders.

    from leafseg.text import BPETokenizer, build_text_encoder
    tok = BPETokenizer.train(captions, vocab_size=4096, context_length=77)
    text = build_text_encoder("scratch", tokenizer=tok, width=256, layers=12, heads=4)
    feats = text(["a photo of a ball"])        # (1, 256), the [EOS] token's final state
    minilm = build_text_encoder("minilm")      # pretrained all-MiniLM-L6-v2, frozen: (T, 384)
"""

from leafseg.text.encoders import MiniLMTextEncoder, ScratchTextEncoder, build_text_encoder
from leafseg.text.tokenizer import (
    BPETokenizer,
    WordPieceTokenizer,
    build_tokenizer,
    normalize,
    tokenizer_from_state,
)
from leafseg.text.transformer import CausalBlock, TextTransformer

__all__ = [
    "BPETokenizer",
    "CausalBlock",
    "MiniLMTextEncoder",
    "ScratchTextEncoder",
    "TextTransformer",
    "WordPieceTokenizer",
    "build_text_encoder",
    "build_tokenizer",
    "normalize",
    "tokenizer_from_state",
]
