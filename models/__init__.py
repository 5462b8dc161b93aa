"""eigpool.models: fine-grained (FGVC) networks with global covariance pooling, data sets, and the training entry point.

``build_network(config, num_classes)`` gives the network a ``Config`` describes (factory.py: the one mapping from
settings to network); ``build_model("resnet50", "gcp", 200, pretrained="resnet50.pth", reduction=256)`` gives an
``FGVCNet`` by name (ResNet with the iSQRT-COV last-stage stride 1, GCP head with a 1x1 reduction to 256 channels,
linear classifier); ``--backbone timm:NAME`` takes any timm model with a feature map or tokens (timm_backbones.py, with
the token heads for ViT-style models). ``eigpool-train`` trains one (``python -m eigpool.models.train``),
``eigpool-evaluate`` evaluates a checkpoint. Needs torch, torchvision and, for timm backbones, timm
(``pip install eigpool[models]``).
"""

from .backbones import BACKBONES, Backbone, build_backbone, load_pretrained
from .config import PRESETS, Config
from .data import DatasetLayoutError, ImageReadError, build_datasets
from .errors import CheckpointError, SettingsError
from .factory import build_network, head_options, load_network, switch_method
from .heads import (
    HEADS,
    AvgPoolHead,
    FGVCNet,
    TokenAvgPoolHead,
    build_head,
    build_model,
    build_token_head,
    replace_head,
)
from .synthetic import SyntheticFGVC, SyntheticSpec
from .timm_backbones import TimmBackbone, build_timm_backbone, load_timm_weights

__all__ = [
    "BACKBONES", "HEADS", "PRESETS", "AvgPoolHead", "Backbone", "CheckpointError", "Config", "DatasetLayoutError",
    "FGVCNet", "ImageReadError", "SettingsError", "SyntheticFGVC", "SyntheticSpec", "TimmBackbone",
    "TokenAvgPoolHead", "build_backbone", "build_datasets", "build_head", "build_model", "build_network",
    "build_timm_backbone", "build_token_head", "head_options", "load_network", "load_pretrained",
    "load_timm_weights", "replace_head", "switch_method",
]
