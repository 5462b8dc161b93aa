"""eigpool.models: fine-grained (FGVC) networks with global covariance pooling, data sets, and the training entry point.

``build_model("resnet50", "gcp", 200, pretrained="resnet50.pth")`` gives an ``FGVCNet`` (ResNet with the iSQRT-COV
last-stage stride 1, GCP head with a 1x1 reduction to 256 channels, linear classifier); ``eigpool-train`` trains one
(``python -m eigpool.models.train``), ``eigpool-evaluate`` evaluates a checkpoint. Needs torch and torchvision
(``pip install eigpool[models]``).
"""

from .backbones import BACKBONES, Backbone, build_backbone, load_pretrained
from .config import PRESETS, Config
from .data import DatasetLayoutError, ImageReadError, build_datasets
from .heads import HEADS, AvgPoolHead, FGVCNet, build_head, build_model, set_gcp_method
from .synthetic import SyntheticFGVC, SyntheticSpec

__all__ = [
    "BACKBONES", "HEADS", "PRESETS", "AvgPoolHead", "Backbone", "Config", "DatasetLayoutError", "FGVCNet",
    "ImageReadError", "SyntheticFGVC", "SyntheticSpec", "build_backbone", "build_datasets", "build_head",
    "build_model", "load_pretrained", "set_gcp_method",
]
