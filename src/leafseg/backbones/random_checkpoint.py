"""Tiny random checkpoints in the standard formats, for tests and demos.

``make_random_checkpoint(name, folder)`` writes a small random model of ``name``'s family as a
Hugging Face folder (config.json + model.safetensors, plus a small tokenizer for CLIP and
MiniLM), so that ``build_backbone(name, weights=folder)`` exercises the real loading path.
``fmt="official"`` additionally writes the same weights in the authors' format beside it.

Tiny sizes use 64-wide attention heads, like every released model, so the head count of an
authors' file is recovered from its width without ``arch_overrides``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from .convert import from_hub, merge_overrides
from .loading import quiet_progress, random_model
from .registry import get_spec

TINY_WORDS = [
    "a photo of a cat", "an image of a kitten", "a red car", "a dog on the grass", "the sky above the road",
    "a person riding a bicycle", "a tree near the water", "background", "building", "wall floor ceiling",
]
_CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _tiny_config(spec, vocab_size: int) -> dict:
    """Config keywords of a tiny model in ``spec``'s family (2 blocks, 128 wide, 4x4 patches)."""
    vit = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=4 * spec.patch_size,
               patch_size=spec.patch_size, layer_norm_eps=spec.layer_norm_eps, hidden_act="gelu")
    if spec.family == "dino":
        return {**vit, "intermediate_size": 256, "qkv_bias": True}
    if spec.family == "dinov2":
        kw = {**vit, "mlp_ratio": 4, "use_swiglu_ffn": spec.swiglu, "layerscale_value": 1.0}
        return {**kw, "num_register_tokens": spec.registers} if spec.registers else kw
    if spec.family == "clip":
        return dict(
            projection_dim=32,
            vision_config=dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
                               image_size=4 * spec.patch_size, patch_size=spec.patch_size, hidden_act="quick_gelu",
                               layer_norm_eps=spec.layer_norm_eps),
            text_config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=1, intermediate_size=128,
                             max_position_embeddings=16, vocab_size=vocab_size, hidden_act="quick_gelu",
                             layer_norm_eps=spec.layer_norm_eps, bos_token_id=vocab_size - 2,
                             eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1))
    return dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                vocab_size=vocab_size, max_position_embeddings=64, layer_norm_eps=spec.layer_norm_eps)


def _clip_tokenizer(context_length: int):
    """A byte-level BPE tokenizer with CLIP's pipeline, trained on ``TINY_WORDS``; every byte
    (with and without the end-of-word mark) is in the vocabulary; the start/end-of-text tokens
    are the last two ids, as in OpenAI's tokenizer."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>", continuing_subword_prefix=""))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=alphabet, end_of_word_suffix="</w>",
                                  show_progress=False)
    tok.train_from_iterator(TINY_WORDS, trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = dict(model["vocab"])
    for char in sorted(alphabet):
        for token in (char, char + "</w>"):
            vocab.setdefault(token, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=context_length)


def _bert_tokenizer():
    """A WordPiece tokenizer over letters, digits and the words of ``TINY_WORDS``."""
    from transformers import BertTokenizer

    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"
    pieces += list(chars) + ["##" + c for c in chars]
    pieces += sorted({w for line in TINY_WORDS for w in line.split()})
    return BertTokenizer(vocab={p: i for i, p in enumerate(dict.fromkeys(pieces))}, model_max_length=64)


def _perturb(model: nn.Module, seed: int) -> None:
    """Add small noise to every weight so no tensor is a constant (biases, norms, layer scale)."""
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def _write_sentence_transformers_files(folder: Path, max_length: int) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 64, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
         "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}, indent=2))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_length,
                                                                  "do_lower_case": False}))


def _model_classes(spec):
    import transformers as tf

    if spec.family == "dino":
        return tf.ViTConfig, tf.ViTModel, {"add_pooling_layer": False}
    if spec.family == "dinov2":
        if spec.registers:
            return tf.Dinov2WithRegistersConfig, tf.Dinov2WithRegistersModel, {}
        return tf.Dinov2Config, tf.Dinov2Model, {}
    if spec.family == "clip":
        return tf.CLIPConfig, tf.CLIPModel, {}
    return tf.BertConfig, tf.BertModel, {}


def make_random_checkpoint(name: str, folder: str | Path, fmt: str = "hf", seed: int = 0, **overrides) -> Path:
    """Write a tiny random ``name`` checkpoint into ``folder`` and return the path to load.

    fmt: "hf" -> the folder (config.json + model.safetensors [+ tokenizer]);
         "official" -> also the authors' file beside it, holding the same weights, and return
         that file: a plain state dict for DINO / DINOv2 (``spec.official_file``), a
         TorchScript archive of OpenAI's state dict for CLIP;
         "official_safetensors" -> the authors' key names in ``<official stem>.safetensors``.
    overrides: config keywords replacing the tiny defaults (nested dicts merge, e.g.
        ``vision_config={"image_size": 64}`` for CLIP).
    """
    spec = get_spec(name)
    if fmt not in ("hf", "official", "official_safetensors"):
        raise ValueError(f"fmt must be 'hf', 'official' or 'official_safetensors', got {fmt!r}")
    if fmt != "hf" and spec.family == "minilm":
        raise ValueError(f"{name} has no authors' single-file format; use fmt='hf'")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = None
    if spec.family == "clip":
        tokenizer = _clip_tokenizer(context_length=16)
    elif spec.family == "minilm":
        tokenizer = _bert_tokenizer()
    vocab = len(tokenizer) if tokenizer is not None else 0
    config_cls, model_cls, extra = _model_classes(spec)
    config = config_cls(**merge_overrides(_tiny_config(spec, vocab), overrides))
    torch.manual_seed(seed)
    model = random_model(model_cls, config, **extra)
    _perturb(model, seed)
    with quiet_progress():
        model.save_pretrained(str(folder))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    if spec.family == "minilm":
        _write_sentence_transformers_files(folder, max_length=64)
    if fmt == "hf":
        return folder
    return _write_official(spec, folder, fmt)


def _write_official(spec, folder: Path, fmt: str) -> Path:
    from safetensors.torch import load_file, save_file

    official = from_hub(load_file(str(folder / "model.safetensors")), spec.family)
    stem = Path(spec.official_file).stem
    if fmt == "official_safetensors":
        path = folder / f"{stem}.safetensors"
        save_file({k: v.contiguous() for k, v in official.items()}, str(path))
    elif spec.family == "clip":
        path = folder / spec.official_file
        extras = {"input_resolution": torch.tensor(0), "context_length": torch.tensor(0),
                  "vocab_size": torch.tensor(0)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.script(_tensor_tree({**official, **extras})).save(str(path))
    else:
        path = folder / spec.official_file
        torch.save(official, str(path))
    return path


class _Holder(nn.Module):
    """A module that only holds tensors (its state dict is the tree it was built from)."""


def _tensor_tree(sd: dict[str, torch.Tensor]) -> nn.Module:
    root = _Holder()
    for key, value in sd.items():
        *parents, leaf = key.split(".")
        module = root
        for part in parents:
            child = dict(module.named_children()).get(part)
            if child is None:
                child = _Holder()
                module.add_module(part, child)
            module = child
        module.register_parameter(leaf, nn.Parameter(value.clone(), requires_grad=False))
    return root
