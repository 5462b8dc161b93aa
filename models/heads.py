"""Heads and the complete network: backbone -> pooling head -> linear classifier.

The GCP head is ``eigpool.backends.torch.GCPHead`` (1x1 reduction + BN + ReLU, covariance, matrix square root by any
method, upper-triangle vector); this module only chooses its arguments. The baseline is global average pooling.
``FGVCNet`` keeps the backbone and the head apart (``forward_features``, ``forward_head``, as timm's ResNet does), so a
head replaces pooling and classifier and leaves the backbone untouched.
"""

from __future__ import annotations

import torch
from torch import nn

from eigpool.backends.torch import GCPHead, MatrixFunction

from .backbones import Backbone, build_backbone

__all__ = ["HEADS", "AvgPoolHead", "FGVCNet", "build_head", "build_model", "set_gcp_method"]

HEADS = ("gcp", "avg")


class AvgPoolHead(nn.Module):
    """Global average pooling, (B, C, H, W) -> (B, C): the first-order baseline. ``out_features`` = C."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.out_features = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def build_head(kind: str, in_channels: int, *, reduction: int | None = 256, method: str = "eigen",
               grad: str = "exact", seb: bool = False, truncate: int = 0, iterations: int = 5,
               compute_dtype: str = "float64") -> nn.Module:
    """A pooling head: ``kind`` "gcp" (GCPHead with the other arguments) or "avg" (AvgPoolHead, which ignores them)."""
    if kind == "avg":
        return AvgPoolHead(in_channels)
    if kind == "gcp":
        return GCPHead(in_channels, reduction=reduction, method=method, grad=grad, seb=seb, truncate=truncate,
                       iterations=iterations, compute_dtype=compute_dtype)
    raise ValueError(f"build_head: kind must be one of {HEADS}, got {kind!r}")


class FGVCNet(nn.Module):
    """backbone (B, 3, H, W) -> feature map (B, C, h, w) -> head (B, F) -> linear classifier (B, num_classes).

    The classifier is a single ``nn.Linear(F, num_classes)``: F = d(d+1)/2 for GCP (32,896 for d = 256), C for average
    pooling.
    """

    def __init__(self, backbone: Backbone, head: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.classifier = nn.Linear(head.out_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's last feature map, (B, C, h, w)."""
        return self.backbone(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Pooling and classifier: (B, C, h, w) -> logits (B, num_classes)."""
        return self.classifier(self.head(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def build_model(backbone: str, head: str, num_classes: int, *, pretrained: str | None = None,
                **head_options: object) -> FGVCNet:
    """``FGVCNet`` from names: ``backbone`` in BACKBONES, ``head`` in HEADS, ``head_options`` for ``build_head``."""
    trunk = build_backbone(backbone, pretrained)
    return FGVCNet(trunk, build_head(head, trunk.out_channels, **head_options), num_classes)


def set_gcp_method(model: FGVCNet, method: str, *, grad: str = "exact", seb: bool = False, truncate: int = 0,
                   iterations: int = 5, compute_dtype: str = "float64") -> None:
    """Replace the matrix function of a GCP head in place (the hybrid protocol: Newton-Schulz, then an eigen method).

    The matrix function has no parameters, so the swap keeps every learned weight and the optimizer state.
    """
    if not isinstance(model.head, GCPHead):
        raise ValueError(f"set_gcp_method: the model's head is {type(model.head).__name__}, not a GCPHead")
    model.head.normalise = MatrixFunction(method=method, grad=grad, seb=seb, truncate=truncate, iterations=iterations,
                                          compute_dtype=compute_dtype)
