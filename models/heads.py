"""Heads and the complete network: backbone -> pooling head -> linear classifier.

The GCP head is ``eigpool.backends.torch.GCPHead`` (1x1 reduction + BN + ReLU, covariance, matrix square root by any
method, upper-triangle vector), built with the keyword arguments ``eigpool.models.factory`` derives from the settings.
The baseline is global average pooling.
``FGVCNet`` keeps the backbone and the head apart (``forward_features``, ``forward_head``, as timm's ResNet does), so a
head replaces pooling and classifier and leaves the backbone untouched.
"""

from __future__ import annotations

import torch
from torch import nn

from eigpool.backends.torch import GCPHead

from .backbones import Backbone, build_backbone

__all__ = ["HEADS", "AvgPoolHead", "FGVCNet", "build_head", "build_model", "replace_head"]

HEADS = ("gcp", "avg")


class AvgPoolHead(nn.Module):
    """Global average pooling, (B, C, H, W) -> (B, C): the first-order baseline. ``out_features`` = C."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.out_features = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def build_head(kind: str, in_channels: int, **gcp_options: object) -> nn.Module:
    """A pooling head: ``kind`` "gcp" (``GCPHead(in_channels=..., **gcp_options)``) or "avg" (AvgPoolHead, which takes
    no options)."""
    if kind == "avg":
        if gcp_options:
            raise ValueError(f"build_head: the avg head takes no options, got {sorted(gcp_options)}")
        return AvgPoolHead(in_channels)
    if kind == "gcp":
        return GCPHead(in_channels=in_channels, **gcp_options)
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


def replace_head(model: FGVCNet, head: nn.Module) -> None:
    """Put ``head`` in place of the model's head, carrying the old head's parameters and buffers over as the same
    tensors, so that an optimizer (and its state) and DistributedDataParallel keep working on them.

    Both heads must hold parameters and buffers of the same names and shapes: the hybrid protocol's method switch
    changes only the parameter-free matrix function.
    """
    old = model.head
    tensors = dict(old.named_parameters()) | dict(old.named_buffers())
    wanted = dict(head.named_parameters()) | dict(head.named_buffers())
    if {k: v.shape for k, v in tensors.items()} != {k: v.shape for k, v in wanted.items()}:
        raise ValueError(f"replace_head: the new head's parameters and buffers {sorted(wanted)} differ in names or "
                         f"shapes from the old head's {sorted(tensors)}")
    for prefix, module in head.named_modules():
        local = [name for name, _ in module.named_parameters(recurse=False)]
        local += [name for name, _ in module.named_buffers(recurse=False)]
        for name in local:
            setattr(module, name, tensors[f"{prefix}.{name}" if prefix else name])
    model.head = head.train(old.training)
