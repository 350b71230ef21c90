"""Dense heads in plain PyTorch: the DPT decoder and the DINOv2 + DPT segmenter; MaskFormer's pixel
decoder and query decoder (S-Seg's variant, without a class head)."""

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

__all__ = [
    "DPT_SIZES",
    "TAPPED_BLOCKS",
    "DPTHead",
    "DPTSegmenter",
    "FusionBlock",
    "MaskFormer",
    "PixelDecoder",
    "QueryDecoder",
    "ResidualConvUnit",
    "ViTPyramid",
    "build_dpt_segmenter",
    "build_maskformer",
    "default_head_dims",
    "default_tapped_blocks",
    "semantic_inference",
]
