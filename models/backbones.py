"""ResNet backbones with the iSQRT-COV modification: the last stage runs at stride 1.

The standard backbones are torchvision's ResNet-18/34/50/101 definitions (``torchvision.models.resnetXX(weights=None)``)
without their average pooling and classifier, with the first block of the last stage changed to stride 1 (its 3x3
convolution and its downsampling 1x1 convolution): the output stride goes from 32 to 16, so a 448 px input gives a
28 x 28 map (METHODS.md section 7) and the covariance has N = 784 samples. The module keeps torchvision's attribute
names (conv1, bn1, layer1, ...), so a torchvision ImageNet state dict loads into it key for key.

``tiny`` is a small network of the same family for the embedded synthetic data set on a CPU: a 2x2 stem convolution at
stride 2 (aligned with the data set's 2x2 patch grid, like a patch embedding), no max pooling, and torchvision's
BasicBlock in three stages of widths 32/32/64 at stride 1 (output stride 2: a 32 x 32 image gives a 16 x 16 map).

Nothing here downloads: pretrained weights come only from a local file (``load_pretrained``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from .errors import SettingsError

__all__ = ["BACKBONES", "BACKBONE_CHANNELS", "Backbone", "build_backbone", "load_pretrained"]

#: Channels of each backbone's last feature map (the GCP head's input C), known before any network is built.
BACKBONE_CHANNELS = {"tiny": 64, "resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048}
BACKBONES = tuple(BACKBONE_CHANNELS)


class Backbone(nn.Module):
    """A ResNet trunk: stem (conv1, bn1, relu, maxpool) and stages layer1..layerK, returning the last feature map.

    forward: (B, 3, H, W) -> (B, out_channels, H / stride, W / stride), in the input's dtype.
    """

    def __init__(self, name: str, stem: Sequence[nn.Module], stages: Sequence[nn.Module], out_channels: int,
                 stride: int) -> None:
        super().__init__()
        self.name = name
        self.conv1, self.bn1, self.relu, self.maxpool = stem
        self.stage_names = [f"layer{i + 1}" for i in range(len(stages))]
        for stage_name, stage in zip(self.stage_names, stages, strict=True):
            self.add_module(stage_name, stage)
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage_name in self.stage_names:
            x = getattr(self, stage_name)(x)
        return x

    def extra_repr(self) -> str:
        return f"name={self.name!r}, out_channels={self.out_channels}, stride={self.stride}"


def _last_stage_stride_one(stage: nn.Sequential) -> None:
    """Set the stride of the first block of ``stage`` to 1: every strided convolution in it (the 3x3 one and the
    downsampling 1x1 one), which is where torchvision's BasicBlock and Bottleneck (v1.5) put the stride."""
    for module in stage[0].modules():
        if isinstance(module, nn.Conv2d) and module.stride != (1, 1):
            module.stride = (1, 1)
    stage[0].stride = 1


def _torchvision_backbone(name: str) -> Backbone:
    net = getattr(tv_resnet, name)(weights=None)
    _last_stage_stride_one(net.layer4)
    stages = [net.layer1, net.layer2, net.layer3, net.layer4]
    return Backbone(name, [net.conv1, net.bn1, net.relu, net.maxpool], stages, net.fc.in_features, stride=16)


def _tiny_stage(in_planes: int, planes: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or in_planes != planes:
        downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))
    return nn.Sequential(tv_resnet.BasicBlock(in_planes, planes, stride=stride, downsample=downsample))


def _tiny_backbone(widths: Sequence[int] = (32, 32, 64), patch: int = 2) -> Backbone:
    stem = [nn.Conv2d(3, widths[0], patch, stride=patch, bias=False), nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True), nn.Identity()]
    # All stages at stride 1: the 16 x 16 map keeps N = 256 positions for a covariance of the d = 32 reduced channels.
    stages = [_tiny_stage(widths[0], widths[0], 1), _tiny_stage(widths[0], widths[1], 1),
              _tiny_stage(widths[1], widths[2], 1)]
    backbone = Backbone("tiny", stem, stages, widths[-1], stride=patch)
    # torchvision's initialisation: He (fan-out) for convolutions, BN as the identity.
    for module in backbone.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return backbone


def build_backbone(name: str, pretrained: str | os.PathLike | None = None) -> Backbone:
    """The backbone ``name`` (one of BACKBONES), with weights from the local file ``pretrained`` if given."""
    if name not in BACKBONES:
        raise ValueError(f"build_backbone: name must be one of {BACKBONES}, got {name!r}")
    backbone = _tiny_backbone() if name == "tiny" else _torchvision_backbone(name)
    if pretrained:
        load_pretrained(backbone, pretrained)
    return backbone


def load_pretrained(backbone: Backbone, path: str | os.PathLike) -> None:
    """Load a torchvision ResNet state dict from the local file ``path`` into ``backbone``, in place.

    Strict for the backbone's keys (every one must be present with the right shape); the classifier (``fc.*``) and
    nothing else may be extra. Accepts a bare state dict or a checkpoint dict with a ``state_dict``/``model`` entry.
    A missing, unreadable or mismatched file raises SettingsError naming it.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SettingsError(f"load_pretrained: weights file {path!r} does not exist (nothing is downloaded: save "
                            f"torchvision's ImageNet {backbone.name} weights to a local file and pass its path)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises pickle, zip and runtime errors of several kinds on a bad file
        raise SettingsError(f"load_pretrained: cannot read weights file {path!r}: {err}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise SettingsError(f"load_pretrained: {path!r} holds a {type(state).__name__}, not a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise SettingsError(f"load_pretrained: {path!r} is not a torchvision {backbone.name} state dict: "
                            f"{err}") from None
