"""Heads and the complete network: backbone -> pooling head -> linear classifier.

The GCP head is ``eigpool.backends.torch.GCPHead`` (1x1 reduction + BN + ReLU, covariance, matrix square root by any
method, upper-triangle vector), built with the keyword arguments ``eigpool.models.factory`` derives from the settings.
The baseline is global average pooling. Token backbones (ViT-style timm models, (B, N, C)) take the token heads,
``eigpool.backends.torch.TokenGCPHead`` and ``TokenAvgPoolHead``.
``FGVCNet`` keeps the backbone and the head apart (``forward_features``, ``forward_head``, as timm's ResNet does), so a
head replaces pooling and classifier and leaves the backbone untouched.
"""

from __future__ import annotations

import torch
from torch import nn

from eigpool.backends.torch import GCPHead, TokenGCPHead

from .backbones import build_backbone

__all__ = ["AMP_DTYPES", "HEADS", "AvgPoolHead", "FGVCNet", "TokenAvgPoolHead", "build_head", "build_model",
           "build_token_head", "replace_head"]

HEADS = ("gcp", "avg")
#: The ``amp`` setting's autocast dtypes.
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class AvgPoolHead(nn.Module):
    """Global average pooling, (B, C, H, W) -> (B, C): the first-order baseline. ``out_features`` = C."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.out_features = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class TokenAvgPoolHead(nn.Module):
    """Average of the tokens, (B, N, C) -> (B, C): the first-order baseline of token backbones. The first
    ``prefix_tokens`` (class token, ...) are left out with ``class_token="drop"``, averaged in with "keep"."""

    def __init__(self, in_channels: int, class_token: str = "drop", prefix_tokens: int = 1) -> None:
        super().__init__()
        if class_token not in ("drop", "keep"):
            raise ValueError(f"TokenAvgPoolHead: class_token must be 'drop' or 'keep', got {class_token!r}")
        self.out_features, self.class_token, self.prefix_tokens = in_channels, class_token, prefix_tokens

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, self.prefix_tokens if self.class_token == "drop" else 0:].mean(dim=1)


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


def build_token_head(kind: str, in_channels: int, class_token: str = "drop", prefix_tokens: int = 1,
                     **gcp_options: object) -> nn.Module:
    """A pooling head for tokens (B, N, C): ``kind`` "gcp" (``TokenGCPHead``) or "avg" (TokenAvgPoolHead, which takes
    no GCP options); ``class_token`` and ``prefix_tokens`` say which tokens are pooled."""
    if kind == "avg":
        if gcp_options:
            raise ValueError(f"build_token_head: the avg head takes no options, got {sorted(gcp_options)}")
        return TokenAvgPoolHead(in_channels, class_token, prefix_tokens)
    if kind == "gcp":
        return TokenGCPHead(in_channels, class_token=class_token, prefix_tokens=prefix_tokens, **gcp_options)
    raise ValueError(f"build_token_head: kind must be one of {HEADS}, got {kind!r}")


class FGVCNet(nn.Module):
    """backbone (B, 3, H, W) -> feature map (B, C, h, w) or tokens (B, N, C) -> head (B, F) -> linear classifier
    (B, num_classes).

    The classifier is a single ``nn.Linear(F, num_classes)``: F = d(d+1)/2 for GCP (32,896 for d = 256), C for average
    pooling.

    Precision and memory layout, part of the network so that training and evaluation run it alike:
    ``amp`` (None, "bf16" or "fp16"): the backbone runs under ``torch.autocast`` in that dtype; the head and the
    classifier run outside it, from the features cast to float32, the GCP head's covariance and matrix function in its
    compute dtype (float64 by default). ``channels_last``: the input is converted to channels-last memory order (the
    factory converts the parameters).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, num_classes: int, *, amp: str | None = None,
                 channels_last: bool = False) -> None:
        super().__init__()
        if amp is not None and amp not in AMP_DTYPES:
            raise ValueError(f"FGVCNet: amp must be None or one of {tuple(AMP_DTYPES)}, got {amp!r}")
        self.backbone = backbone
        self.head = head
        self.classifier = nn.Linear(head.out_features, num_classes)
        self.amp, self.channels_last = amp, channels_last

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's output: its last feature map (B, C, h, w) or its tokens (B, N, C)."""
        return self.backbone(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Pooling and classifier: features -> logits (B, num_classes)."""
        return self.classifier(self.head(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.amp is None:
            return self.forward_head(self.forward_features(x))
        with torch.autocast(x.device.type, dtype=AMP_DTYPES[self.amp]):
            features = self.forward_features(x)
        with torch.autocast(x.device.type, enabled=False):  # also when the caller runs the model under autocast
            return self.forward_head(features.float())

    def extra_repr(self) -> str:
        return ", ".join([f"amp={self.amp!r}"] * (self.amp is not None) + ["channels_last=True"] * self.channels_last)


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
