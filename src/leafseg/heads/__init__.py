"""Dense heads in plain PyTorch: the DPT decoder and the DINOv2 + DPT segmenter; MaskFormer's pixel
decoder and query decoder (S-Seg's variant, without a class head); STEGO's projection head, its cluster probe
and linear probe."""

from leafseg.heads.dpt import (
    DPT_SIZES,
    TAPPED_BLOCKS,
    DPTHead,
    DPTSegmenter,
    FusionBlock,
    ResidualConvUnit,
    build_dpt_segmenter,
    default_head_dims,
    default_tapped_blocks,
)
from leafseg.heads.maskformer import (
    MaskFormer,
    PixelDecoder,
    QueryDecoder,
    ViTPyramid,
    build_maskformer,
    semantic_inference,
)
from leafseg.heads.probes import ClusterProbe, LinearProbe, cosine_assignment
from leafseg.heads.stego import StegoHead

__all__ = [
    "DPT_SIZES",
    "TAPPED_BLOCKS",
    "ClusterProbe",
    "DPTHead",
    "DPTSegmenter",
    "FusionBlock",
    "LinearProbe",
    "MaskFormer",
    "PixelDecoder",
    "QueryDecoder",
    "ResidualConvUnit",
    "StegoHead",
    "ViTPyramid",
    "build_dpt_segmenter",
    "build_maskformer",
    "cosine_assignment",
    "default_head_dims",
    "default_tapped_blocks",
    "semantic_inference",
]
