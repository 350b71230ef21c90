"""Sentence-transformers text encoders (all-MiniLM-L6-v2 by default) in plain transformers.

A sentence-transformers folder is a Hugging Face model folder plus ``modules.json`` (the
pipeline), ``1_Pooling/config.json`` (how token states become one vector) and
``sentence_bert_config.json`` (the maximum sequence length). This module reads those files
and reproduces the pipeline (transformer -> pooling -> optional L2 normalisation) with
``AutoModel`` and ``AutoTokenizer``, so the sentence-transformers package is not needed and
every parameter stays an ordinary trainable ``nn.Module`` parameter.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .loading import from_pretrained, random_model
from .registry import BackboneSpec
from .sources import Source, minilm_package_folder

POOLING_MODES = ("mean", "cls", "max")


class SentenceEncoder(nn.Module):
    """``encode_text(list[str]) -> (T, D)`` sentence embeddings.

    pooling: "mean" (masked mean of token states), "cls" or "max"; normalize: L2-normalise.
    """

    def __init__(self, model: nn.Module, tokenizer, *, name: str, pooling: str = "mean",
                 normalize: bool = True, max_length: int = 256) -> None:
        super().__init__()
        if pooling not in POOLING_MODES:
            raise ValueError(f"{name}: pooling must be one of {POOLING_MODES}, got {pooling!r}")
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        self.max_length = int(max_length)
        self.embed_dim = int(model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """texts (T strings) -> (T, D) embeddings. Gradients flow (wrap in ``torch.no_grad()``
        for frozen use)."""
        if isinstance(texts, str):
            texts = [texts]
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        states = self.model(**batch).last_hidden_state  # (T, L, D)
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)  # (T, L, 1)
        if self.pooling == "cls":
            emb = states[:, 0]
        elif self.pooling == "max":
            emb = states.masked_fill(mask == 0, torch.finfo(states.dtype).min).amax(dim=1)
        else:
            emb = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)
        return nn.functional.normalize(emb, dim=-1) if self.normalize else emb

    def forward(self, texts: list[str]) -> torch.Tensor:
        return self.encode_text(texts)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, embed_dim={self.embed_dim}, pooling={self.pooling!r}, normalize={self.normalize}"


def _read_json(path: Path) -> dict | list | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot parse {path}: {err}") from err


def read_pipeline(folder: Path) -> tuple[Path, str, bool, int]:
    """(transformer folder, pooling mode, normalize, max length) of a sentence-transformers
    folder; a plain Hugging Face folder gives (folder, "mean", True, 256)."""
    modules = _read_json(folder / "modules.json") or []
    model_dir, pooling, normalize, max_length = folder, "mean", not modules, 256
    for entry in modules:
        kind = str(entry.get("type", "")).rsplit(".", 1)[-1]
        sub = folder / entry.get("path", "")
        if kind == "Transformer":
            model_dir = sub
        elif kind == "Pooling":
            cfg = _read_json(sub / "config.json") or {}
            for mode in POOLING_MODES:
                if cfg.get(f"pooling_mode_{mode}_token" if mode == "cls" else f"pooling_mode_{mode}_tokens"):
                    pooling = mode
                    break
        elif kind == "Normalize":
            normalize = True
    st_cfg = _read_json(model_dir / "sentence_bert_config.json") or _read_json(folder / "sentence_bert_config.json")
    if st_cfg and st_cfg.get("max_seq_length"):
        max_length = int(st_cfg["max_seq_length"])
    return model_dir, pooling, normalize, max_length


def build_text(spec: BackboneSpec, source: Source, arch_overrides: dict | None = None) -> SentenceEncoder:
    """Build a sentence encoder from a sentence-transformers folder, a Hub id, or random weights
    (random weights reuse the packaged model's tokenizer)."""
    from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

    if source.kind == "file":
        raise ValueError(f"{spec.name} loads from a sentence-transformers folder, not a single file: {source.path}")
    if source.kind == "random":
        folder = minilm_package_folder(spec)
        kw = dict(hidden_size=spec.embed_dim, num_hidden_layers=spec.depth, num_attention_heads=spec.heads,
                  intermediate_size=spec.mlp_dim, vocab_size=spec.vocab_size, layer_norm_eps=spec.layer_norm_eps)
        model = random_model(BertModel, BertConfig(**{**kw, **(arch_overrides or {})}))
        model_dir, pooling, normalize, max_length = read_pipeline(folder)
    elif source.kind == "hub":
        model_dir, pooling, normalize, max_length = source.hf_id, "mean", True, spec.context_length
        model = from_pretrained(AutoModel, source)
    else:
        model_dir, pooling, normalize, max_length = read_pipeline(source.path)
        model = from_pretrained(AutoModel, Source("folder", model_dir))
    local = source.kind != "hub"
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=local)
    except Exception as err:  # noqa: BLE001 - reported with the folder
        raise ValueError(f"cannot load the tokenizer in {model_dir}: {err}") from err
    return SentenceEncoder(model, tokenizer, name=spec.name, pooling=pooling, normalize=normalize,
                           max_length=max_length)
