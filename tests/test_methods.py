import pytest
import torch
import torch.nn.functional as F

from leafseg.backbones import build_backbone, make_random_checkpoint
from leafseg.errors import ConfigError
from leafseg.eval.methods import (
    KMeansSegmenter,
    MaskClip,
    ModelSegmenter,
    build_method,
    list_methods,
    load_model,
)
from leafseg.eval.protocol import Protocol
from leafseg.grouping import PixelFeatures


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return make_random_checkpoint("clip_vitb16", tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def clip(clip_dir):
    return build_backbone("clip_vitb16", weights=clip_dir)


def test_maskclip_logits(clip):
    method = MaskClip(clip)
    method.prepare(["sky", "car, automobile", "tree"], Protocol(templates="tcl", logit_scale=40))
    assert method.query_classes.tolist() == [0, 1, 1, 2]
    images = torch.rand(2, 3, 48, 64)
    with torch.no_grad():
        logits = method(images)
        emb = method.dense_embeddings(images)
    assert logits.shape == (2, 4, 3, 4)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2, 3, 4))
    assert logits.abs().max() <= 40 + 1e-4
    # the names, embedded by hand: TCL's nine templates written out, each prompt normalised, averaged, normalised
    tcl = ("itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
           "a {} in a video game.", "art of the {}.", "a photo of the small {}.", "a photo of many {}.",
           "a photo of {}s.")
    with torch.no_grad():
        text = torch.stack([F.normalize(F.normalize(clip.encode_text([t.format(name) for t in tcl]), dim=-1)
                                        .mean(0), dim=0) for name in ("sky", "car", "automobile", "tree")])
    torch.testing.assert_close(method.text, text, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits, 40 * torch.einsum("behw,qe->bqhw", emb, text), atol=1e-4, rtol=1e-4)


def test_maskclip_reduced_block_matches_captured_values(clip):
    """Without residual and MLP, a patch embedding is proj(post_ln(out_proj(v))) of the last block's values."""
    method = MaskClip(clip, residual=False, ffn=False)
    images = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        values = clip.features(images, layers=(-1,), kind="values").maps[0]  # (1, C, 2, 3)
        attn = clip.blocks[-1].self_attn
        v = attn.out_proj(values.flatten(2).transpose(1, 2))
        expected = F.normalize(clip.project_tokens(v), dim=-1).transpose(1, 2).reshape(1, -1, 2, 3)
        torch.testing.assert_close(method.dense_embeddings(images), expected, atol=1e-5, rtol=1e-4)
        full = MaskClip(clip).dense_embeddings(images)
    assert not torch.allclose(full, expected, atol=1e-3)


def test_maskclip_needs_prepare_and_clip(clip):
    with pytest.raises(RuntimeError, match="prepare"):
        MaskClip(clip)(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="CLIP backbone"):
        MaskClip(PixelFeatures(8))


def test_kmeans_segmenter():
    method = KMeansSegmenter(PixelFeatures(8))
    method.prepare(["a", "b", "c"], Protocol(labelling="oracle"))
    assert method.num_clusters == 3 and method.outputs == "clusters"
    ids = method(torch.rand(2, 3, 40, 48))
    assert ids.shape == (2, 40, 48) and ids.dtype == torch.int64
    assert ids.min() >= 0 and ids.max() < 3
    method.prepare(["a", "b", "c"], Protocol(labelling="oracle", num_clusters=5))
    assert method.num_clusters == 5
    fixed = KMeansSegmenter(PixelFeatures(8), k=2)
    fixed.prepare(["a", "b", "c"], Protocol(labelling="oracle", num_clusters=5))
    assert fixed.num_clusters == 2


def test_model_segmenter_normalises_and_unwraps():
    seen = {}

    def model(x):
        seen["x"] = x
        return {"logits": x[:, :2] * 2}

    seg = ModelSegmenter(model, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], num_classes=2)
    images = torch.rand(1, 3, 8, 8)
    out = seg(images)
    torch.testing.assert_close(seen["x"], (images - 0.5) / 0.25)
    torch.testing.assert_close(out, 2 * (images[:, :2] - 0.5) / 0.25)
    seg.prepare(["a", "b"], Protocol())
    with pytest.raises(ValueError, match="predicts 2 classes"):
        seg.prepare(["a", "b", "c"], Protocol())
    assert ModelSegmenter(lambda x: (x, None))(images).shape == (1, 3, 8, 8)


def test_build_method(clip_dir):
    assert list_methods() == ["maskclip", "sclip", "clearclip", "naclip", "proxyclip", "grouping_clip", "kmeans",
                              "model"]
    assert isinstance(build_method("maskclip", "clip_vitb16", str(clip_dir)), MaskClip)
    assert isinstance(build_method("kmeans", "pixels8", k=4), KMeansSegmenter)
    with pytest.raises(ConfigError, match="unknown method"):
        build_method("nope")
    with pytest.raises(ConfigError, match="needs --weights"):
        build_method("model")
    with pytest.raises(ConfigError, match="takes no option kk .* it takes: k, layer"):
        build_method("kmeans", "pixels8", kk=4)


def test_exported_weights_must_name_a_known_recipe(tmp_path):
    from leafseg.training import export_weights

    conv = torch.nn.Conv2d(3, 4, 1)
    export_weights(tmp_path / "other.pt", conv.state_dict(), recipe="other", config={})
    with pytest.raises(ConfigError, match="recipe 'other'"):
        load_model(tmp_path / "other.pt")
    torch.save({"model": conv.state_dict()}, tmp_path / "anonymous.pt")
    with pytest.raises(ConfigError, match="carries no recipe name"):
        load_model(tmp_path / "anonymous.pt")
    from safetensors.torch import save_file

    save_file(conv.state_dict(), str(tmp_path / "bare.safetensors"))
    with pytest.raises(ConfigError, match="carries no recipe name"):
        load_model(tmp_path / "bare.safetensors")
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="notes.pt"):
        load_model(tmp_path / "notes.pt")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.pt")


def test_the_recipe_table_imports_nothing():
    import subprocess
    import sys

    code = ("import sys, leafseg.registry as r; r.recipe_names(); "
            "print(sorted(m for m in sys.modules if m.startswith('leafseg.recipes') or m == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
