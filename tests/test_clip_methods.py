"""The training-free CLIP baselines SCLIP, ClearCLIP, NACLIP and ProxyCLIP: each rule's attention
against a hand computation, every method through `leafseg eval` with the sclip-family preset, and the
errors a user can make. The hook itself and MaskCLIP are tested in test_clip_dense.py."""

import argparse
import json
import math

import pytest
import torch
import torch.nn.functional as F

from leafseg.backbones import build_backbone, make_random_checkpoint
from leafseg.backbones.clip_dense import block_heads
from leafseg.data import SyntheticWorld
from leafseg.errors import ConfigError
from leafseg.eval.cli_eval import register_cli
from leafseg.eval.clip_methods import ClearClip, NaClip, ProxyClip, SClip
from leafseg.eval.methods import build_method, method_options
from leafseg.eval.protocol import get_preset
from tiny_clip import TWO_HEADS

HEADS, GRID = 2, (2, 3)  # 32 x 48 images on 16-pixel patches


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return build_backbone("clip_vitb16", "random", arch_overrides=TWO_HEADS)


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return make_random_checkpoint("clip_vitb16", tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory):
    return make_random_checkpoint("dino_vits8", tmp_path_factory.mktemp("dino"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return SyntheticWorld(seed=0, size=48).write(tmp_path_factory.mktemp("world"), 4, split="val")


# -- plain formulas ------------------------------------------------------------------------
def hand_qkv(clip, tokens):
    """{"q"|"k"|"v": [batch][head] -> (T, d)} taken from the last block's linear layers by column slices."""
    layer = clip.blocks[-1]
    x = layer.layer_norm1(tokens)
    d = x.shape[-1] // HEADS
    out = {}
    for name, linear in (("q", layer.self_attn.q_proj), ("k", layer.self_attn.k_proj), ("v", layer.self_attn.v_proj)):
        y = linear(x)
        out[name] = [[y[b, :, h * d:(h + 1) * d] for h in range(HEADS)] for b in range(x.shape[0])]
    return out, d ** -0.5


def softmax(row, keep=None):
    """A list of logits -> a list of probabilities; entries with keep[j] False get 0."""
    keep = keep or [True] * len(row)
    top = max(x for x, k in zip(row, keep, strict=True) if k)
    e = [math.exp(x - top) if k else 0.0 for x, k in zip(row, keep, strict=True)]
    return [x / sum(e) for x in e]


def by_hand(clip, images, row_of):
    """(B, H, N, T) weights with row_of(a, i, s) -> the list of weights of patch token i (index in T) over
    all T tokens, where a = {"q", "k", "v"} of one image and head and s = head_dim^-1/2."""
    tokens, _ = clip.tokens_before_last_block(images)
    qkv, s = hand_qkv(clip, tokens)
    t = tokens.shape[1]
    rows = [[[row_of({n: qkv[n][b][h] for n in qkv}, i, s) for i in range(1, t)] for h in range(HEADS)]
            for b in range(tokens.shape[0])]
    return torch.tensor(rows)


def dot(a, b):
    return float((a * b).sum())


def heads_of(clip, images):
    tokens, grid = clip.tokens_before_last_block(images)
    return block_heads(clip, tokens, grid)


# -- each rule against a hand computation ----------------------------------------------------
@pytest.mark.parametrize("scale", [None, 0.5])
@torch.no_grad()
def test_sclip_attention_by_hand(clip, images, scale):
    def row(a, i, s):
        s = scale or s
        qq = [s * dot(a["q"][i], a["q"][j]) for j in range(7)]
        kk = [s * dot(a["k"][i], a["k"][j]) for j in range(7)]
        return [x + y for x, y in zip(softmax(qq), softmax(kk), strict=True)]

    method = SClip(clip, scale=scale)
    assert (method.residual, method.ffn) == (True, True)
    got = method.attention(heads_of(clip, images))
    torch.testing.assert_close(got, by_hand(clip, images, row), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.sum(-1), torch.full((2, HEADS, 6), 2.0))  # the two softmaxes are summed


@torch.no_grad()
def test_clearclip_attention_by_hand(clip, images):
    def row(a, i, s):
        return softmax([s * dot(a["q"][i], a["q"][j]) for j in range(7)])

    method = ClearClip(clip)
    assert (method.residual, method.ffn) == (False, False)
    torch.testing.assert_close(method.attention(heads_of(clip, images)), by_hand(clip, images, row),
                               atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("std", [5.0, 0.7])
@torch.no_grad()
def test_naclip_attention_by_hand(clip, images, std):
    w = GRID[1]

    def gauss(i, j):  # i, j: token indices; 0 is CLS, patches are row-major on the 2 x 3 grid
        if i == 0 or j == 0:
            return 0.0
        (yi, xi), (yj, xj) = divmod(i - 1, w), divmod(j - 1, w)
        return math.exp(-((yi - yj) ** 2 + (xi - xj) ** 2) / (2 * std * std))

    def row(a, i, s):
        return softmax([s * dot(a["k"][i], a["k"][j]) + gauss(i, j) for j in range(7)])

    method = NaClip(clip, std=std)
    assert (method.residual, method.ffn) == (False, False)
    torch.testing.assert_close(method.attention(heads_of(clip, images)), by_hand(clip, images, row),
                               atol=1e-5, rtol=1e-4)


def proxy_by_hand(maps, beta, gamma):
    """maps (B, C, h, w) -> (B, M, M) ProxyCLIP weights from plain cosine similarities."""
    b_, _, h, w = maps.shape
    out = []
    for b in range(b_):
        f = [maps[b, :, m // w, m % w] for m in range(h * w)]
        sim = [[dot(x, y) / math.sqrt(dot(x, x) * dot(y, y)) for y in f] for x in f]
        mean = sum(sum(r) for r in sim) / (h * w) ** 2
        rows = []
        for m, r in enumerate(sim):
            a = [gamma * (x - beta * mean) for x in r]
            rows.append(softmax(a, keep=[x >= 0 or n == m for n, x in enumerate(a)]))
        out.append(rows)
    return torch.tensor(out)


@torch.no_grad()
def test_proxyclip_attention_by_hand(clip, images):
    maps = torch.randn(2, 5, 4, 6, generator=torch.Generator().manual_seed(2)) + 0.5
    heads = heads_of(clip, images)
    for beta, gamma in ((1.2, 3.0), (0.5, 7.0)):
        method = ProxyClip(clip, vfm=_Stub(), beta=beta, gamma=gamma)
        weights, values, grid = method.attention(heads, maps)
        assert weights.shape == (2, 1, 24, 24) and values.shape == (2, HEADS, 24, 32) and grid == (4, 6)
        expected = proxy_by_hand(maps, beta, gamma)
        torch.testing.assert_close(weights[:, 0], expected, atol=1e-5, rtol=1e-4)
        assert (expected == 0).any()  # the cut removed something
    # grid "clip": the features are resized to CLIP's 2 x 3 grid first, and CLIP's values mix unresized
    method = ProxyClip(clip, vfm=_Stub(), grid="clip")
    weights, values, grid = method.attention(heads, maps)
    small = F.interpolate(maps, size=GRID, mode="bilinear", align_corners=False)
    torch.testing.assert_close(weights[:, 0], proxy_by_hand(small, 1.2, 3.0), atol=1e-5, rtol=1e-4)
    assert grid == GRID and torch.equal(values, heads.v[:, :, 1:])


@torch.no_grad()
def test_proxyclip_keeps_a_token_whose_every_entry_is_cut(clip, images):
    same = torch.ones(2, 5, 4, 6)  # S = 1 everywhere, so S - 1.2 mean(S) < 0 everywhere
    weights = ProxyClip(clip, vfm=_Stub()).attention(heads_of(clip, images), same).weights
    assert torch.equal(weights[:, 0], torch.eye(24).expand(2, 24, 24))


@torch.no_grad()
def test_proxyclip_mixes_clip_values_on_the_dino_grid(clip, images, dino_dir):
    dino = build_backbone("dino_vits8", weights=dino_dir)
    method = ProxyClip(clip, vfm=dino)
    emb = method.dense_embeddings(images)
    assert emb.shape == (2, clip.proj_dim, 4, 6)  # DINO's 8-pixel grid, twice CLIP's
    # by hand: CLIP's patch values, bilinearly resized to DINO's grid, mixed by the weights, out_proj, projection
    maps = dino.features(images).maps[0]
    tokens, _ = clip.tokens_before_last_block(images)
    layer = clip.blocks[-1]
    v = layer.self_attn.v_proj(layer.layer_norm1(tokens))[:, 1:]  # (2, 6, 64)
    v = F.interpolate(v.transpose(1, 2).reshape(2, 64, *GRID), size=(4, 6), mode="bilinear", align_corners=False)
    mixed = proxy_by_hand(maps, 1.2, 3.0) @ v.flatten(2).transpose(1, 2)  # (2, 24, 64)
    expected = F.normalize(clip.project_tokens(layer.self_attn.out_proj(mixed)), dim=-1)
    torch.testing.assert_close(emb, expected.transpose(1, 2).reshape(2, -1, 4, 6), atol=1e-5, rtol=1e-4)
    on_clip = ProxyClip(clip, vfm=dino, grid="clip").dense_embeddings(images)
    assert on_clip.shape == (2, clip.proj_dim, *GRID)


class _Stub(torch.nn.Module):
    """An image encoder that is never run (the attention tests pass the features themselves)."""

    patch_size = 8

    def features(self, images, **kwargs):  # pragma: no cover - not called
        raise AssertionError


# -- through `leafseg eval` with the sclip-family preset --------------------------------------
@pytest.mark.parametrize("method", ["sclip", "clearclip", "naclip", "proxyclip"])
def test_every_baseline_runs_through_leafseg_eval(method, world, clip_dir, dino_dir, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="leafseg")
    register_cli(parser.add_subparsers())
    options = {"sclip": {"scale": 0.1}, "clearclip": {"residual": True}, "naclip": {"std": 2},
               "proxyclip": {"vfm": "dino_vits8", "vfm_weights": str(dino_dir), "gamma": 4}}[method]
    out = tmp_path / method
    argv = ["eval", method, "synthetic", str(world), "--backbone", "clip_vitb16", "--weights", str(clip_dir),
            "--out", str(out), "--quiet", "--save-predictions",  # no --preset: each takes sclip-family
            "short_side=64", "crop=32", "stride=16", "workers=0"]
    for key, value in options.items():
        argv += ["--option", f"{key}={str(value).lower() if isinstance(value, bool) else value}"]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    assert "mIoU" in capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == method and m["num_images"] == 4 and 0.0 <= m["miou"] <= 1.0
    assert m["protocol"]["name"] == "sclip-family" and m["protocol"]["logit_scale"] == 40.0
    assert m["protocol"]["templates"] == "imagenet80" and m["protocol"]["mode"] == "slide"
    assert m["run"]["config"]["options"] == options
    assert len(list((out / "predictions").glob("*.png"))) == 4


@pytest.mark.parametrize("method", ["maskclip", "sclip", "clearclip", "naclip", "proxyclip"])
def test_logits_are_finite_scaled_cosines(method, clip_dir, dino_dir):
    options = {"vfm": "dino_vits8", "vfm_weights": str(dino_dir)} if method == "proxyclip" else {}
    seg = build_method(method, "clip_vitb16", str(clip_dir), **options)
    seg.prepare(["sky", "car, automobile", "tree"], get_preset("sclip-family"))
    with torch.no_grad():
        logits = seg(torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(3)))
    grid = (6, 8) if method == "proxyclip" else (3, 4)  # DINO's 8-pixel grid, CLIP's 16-pixel grid
    assert logits.shape == (1, 4, *grid) and torch.isfinite(logits).all()
    assert logits.abs().max() <= 40 + 1e-4 and seg.query_classes.tolist() == [0, 1, 1, 2]


def test_options_and_published_defaults(clip, dino_dir):
    assert method_options("sclip") == ("scale", "residual", "ffn")
    assert method_options("clearclip") == ("scale", "residual", "ffn")
    assert method_options("naclip") == ("std", "scale", "residual", "ffn")
    assert method_options("proxyclip") == ("vfm", "vfm_weights", "beta", "gamma", "grid")
    sclip, naclip = SClip(clip), NaClip(clip)
    assert (sclip.residual, sclip.ffn, sclip.scale) == (True, True, None) and naclip.std == 5.0
    proxy = ProxyClip(clip, vfm="dino_vits8", vfm_weights=str(dino_dir))
    assert (proxy.beta, proxy.gamma, proxy.grid, proxy.vfm.name) == (1.2, 3.0, "vfm", "dino_vits8")
    assert not proxy.residual and not proxy.ffn


# -- errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["sclip", "clearclip", "naclip", "proxyclip"])
def test_a_non_clip_backbone_is_refused(method, dino_dir):
    with pytest.raises(ConfigError, match=f"{method} needs a CLIP backbone .*'dino_vits8'"):
        build_method(method, "dino_vits8", str(dino_dir))


@pytest.mark.parametrize("method, options, message", [
    ("naclip", {"std": 0}, "std .* must be > 0, got 0"),
    ("sclip", {"scale": -1.0}, "scale must be a positive number"),
    ("clearclip", {"scale": "big"}, "scale must be a positive number"),
    ("naclip", {"sigma": 3}, "takes no option sigma .* it takes: std, scale, residual, ffn"),
    ("proxyclip", {"grid": "patch"}, "grid must be one of vfm, clip"),
    ("proxyclip", {"gamma": 0}, "gamma .* must be > 0, got 0"),
    ("proxyclip", {"beta": -1}, "beta .* must be >= 0, got -1"),
    ("proxyclip", {"vfm": "dino_vits9"}, "Unknown backbone 'dino_vits9'"),
    ("proxyclip", {"vfm": "minilm_l6"}, "must name an image encoder"),
    ("proxyclip", {"residual": False}, "takes no option residual"),
])
def test_bad_options_are_config_errors(method, options, message, clip_dir):
    with pytest.raises(ConfigError, match=message):
        build_method(method, "clip_vitb16", str(clip_dir), **options)
