"""Foundation-model backbones: DINO, DINOv2 (with and without registers), CLIP, MiniLM.

    from leafseg.backbones import build_backbone, list_backbones
    encoder = build_backbone("dinov2_vits14")              # local Hugging Face cache only
    out = encoder.features(images, layers=(2, 5, 8, 11))   # images (B, 3, H, W) in [0, 1]
    out.maps[0]                                            # (B, 384, ceil(H/14), ceil(W/14))

Image encoders share one contract (``ImageEncoder.features``), with ``mean``/``std`` and
``normalize(images)`` for their input normalisation and ``tokens_before_last_block(images)`` for
methods that rebuild the last block; CLIP adds ``encode_text``, ``image_embedding``,
``project_tokens`` and the last block's parts ``value_branch`` and ``mlp_branch``, and ``last_block``
rebuilds CLIP's last block under another attention rule (dense CLIP methods); ``RegionEncoder``
embeds M region masks per image with CLIP in one pass (context-aware masking); ``minilm_l6`` is
a sentence encoder with ``encode_text``. ``make_random_checkpoint`` writes tiny random models in the Hugging Face and
authors' formats for tests and demos.
"""

from .base import BackboneNotAvailable, BackboneOutput, ImageEncoder
from .build import build_backbone
from .clip import ClipEncoder
from .clip_dense import BlockHeads, Mix, last_block
from .clip_regions import RegionEncoder
from .random_checkpoint import make_random_checkpoint
from .registry import BackboneSpec, get_spec, list_backbones
from .text import SentenceEncoder
from .vit import ViTEncoder

__all__ = [
    "BackboneNotAvailable",
    "BackboneOutput",
    "BackboneSpec",
    "BlockHeads",
    "ClipEncoder",
    "ImageEncoder",
    "Mix",
    "RegionEncoder",
    "SentenceEncoder",
    "ViTEncoder",
    "build_backbone",
    "get_spec",
    "last_block",
    "list_backbones",
    "make_random_checkpoint",
]
