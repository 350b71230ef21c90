"""STEGO's segmentation head (Hamilton et al., "Unsupervised Semantic Segmentation by Distilling Feature
Correspondences"): frozen patch features -> a low-dimensional "code" per patch.

    head = StegoHead(384, code_dim=70)          # ViT-S features in, 70-dimensional codes out
    codes = head(feats)                         # feats (B, 384, h, w) -> codes (B, 70, h, w)

Two 1x1 branches summed: a linear one (conv) and a nonlinear one (conv, ReLU, conv, the hidden width equal
to the input width), each reading the features through its own draw of ``Dropout2d(0.1)`` (whole channels
dropped during training, as the authors' head does). ``head.dropout`` is the same module, for the training
step that also compares the codes with dropped features (STEGO's correlation target).
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["StegoHead"]


class StegoHead(nn.Module):
    """feats (B, C, h, w) -> codes (B, code_dim, h, w).

    Args:
        in_dim: C, the backbone's feature width.
        code_dim: width of the codes (STEGO: 70).
        dropout: channel dropout probability on the features, per branch (STEGO: 0.1; 0: none).
        nonlinear: add the conv-ReLU-conv branch (STEGO's "nonlinear" projection; False: linear only).
    """

    def __init__(self, in_dim: int, code_dim: int = 70, dropout: float = 0.1, *, nonlinear: bool = True):
        super().__init__()
        if in_dim < 1 or code_dim < 1:
            raise ValueError(f"in_dim and code_dim must be positive, got {in_dim} and {code_dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_dim, self.code_dim = int(in_dim), int(code_dim)
        self.dropout = nn.Dropout2d(dropout)
        self.linear = nn.Conv2d(in_dim, code_dim, 1)
        self.nonlinear = nn.Sequential(nn.Conv2d(in_dim, in_dim, 1), nn.ReLU(),
                                       nn.Conv2d(in_dim, code_dim, 1)) if nonlinear else None

    def forward(self, feats: Tensor) -> Tensor:
        """feats (B, in_dim, h, w) -> codes (B, code_dim, h, w)."""
        if feats.ndim != 4 or feats.shape[1] != self.in_dim:
            raise ValueError(f"StegoHead expects features (B, {self.in_dim}, h, w), got {tuple(feats.shape)}")
        codes = self.linear(self.dropout(feats))
        if self.nonlinear is not None:
            codes = codes + self.nonlinear(self.dropout(feats))
        return codes
