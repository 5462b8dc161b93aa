"""timm backbones by name (``--backbone timm:NAME``): any timm model whose ``forward_features`` gives a feature map or
tokens, built with ``pretrained=False`` and given weights only from a local file.

The network is ``timm.create_model(NAME, pretrained=False, num_classes=0, **options)``: timm's definition without its
classifier, ``options`` being the model's own keyword arguments (``--backbone-options "{drop_path_rate: 0.1}"``, or a
tiny configuration such as ``{depth: 2, embed_dim: 32}``). Models whose pretrained configuration says
``fixed_input_size`` (ViT, DeiT, Swin, ...) are built for the run's input size (``img_size``), unless the options
name it. Nothing reaches the Hugging Face hub: a registered name with ``pretrained=False`` builds offline, a name that
would be fetched (``hf-hub:...``, ``org/name``, ``local-dir:...``) is refused when the settings are validated, and
weights come from ``load_timm_weights``.

Layouts of ``forward_features`` (``TimmBackbone.layout``), found by running it once on one blank image at the input
size when the backbone is built:

- "NCHW": convolutional networks (ResNet, ConvNeXt, EfficientNet, RegNet, ...): (B, C, h, w), passed on as is.
- "NHWC": Swin and the other models timm marks ``output_fmt = "NHWC"``: (B, h, w, C), passed on permuted to
  (B, C, h, w) (a view, in channels-last memory order), so the feature-map heads take both.
- "NLC": tokens (ViT, DeiT, EVA, BEiT, MLP-Mixer, ...): (B, N, C), whose first ``num_prefix_tokens`` (timm's
  attribute: class, distillation and register tokens; 0 where absent) are not patches; the token heads take them.

``forward_features`` rather than ``features_only``: it is the last stage as timm's own classifier receives it (with
the final norm of ViT and Swin), which is what the pooling head replaces; ``features_only`` builds a multi-scale
feature pyramid, of which a GCP head would use the last level only.
"""

from __future__ import annotations

import difflib
import os
import sys
from typing import Any

import torch
from torch import nn

from .errors import SettingsError

__all__ = ["LAYOUTS", "PREFIX", "RESERVED_OPTIONS", "TimmBackbone", "build_timm_backbone", "check_timm_name",
           "is_timm", "load_timm_weights"]

#: The backbone setting's prefix for timm models.
PREFIX = "timm:"
#: What ``TimmBackbone.layout`` can be: forward_features' layout (module docstring).
LAYOUTS = ("NCHW", "NHWC", "NLC")
#: create_model arguments that eigpool sets itself (weights come only from --pretrained PATH).
RESERVED_OPTIONS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "pretrained_strict", "checkpoint_path",
                    "cache_dir", "num_classes", "features_only")


def is_timm(backbone: str) -> bool:
    """Whether the backbone setting names a timm model (``timm:NAME``)."""
    return backbone.startswith(PREFIX)


def _import_timm() -> Any:
    try:
        import timm
    except ImportError:
        raise SettingsError("config: timm backbones need timm (pip install 'eigpool[models]')") from None
    return timm


def check_timm_name(backbone: str) -> str:
    """The timm model name of the setting ``timm:NAME``; raises SettingsError if timm is missing, if the name would
    be fetched from the hub or a folder, or if timm has no such model (with the closest names)."""
    name = backbone.removeprefix(PREFIX)
    if any(c in name for c in ":/\\"):
        raise SettingsError(f"config: backbone {backbone!r} would be fetched from the Hugging Face hub or a model "
                            "folder; eigpool builds timm models by registered name only (timm:resnet50, "
                            "timm:vit_small_patch16_224, ...) and reads weights from the local file --pretrained PATH")
    timm = _import_timm()
    if not name or not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise SettingsError(f"config: backbone {backbone!r}: timm has no model {name!r}{hint} "
                            "(timm.list_models('pattern*') lists them)")
    return name


class TimmBackbone(nn.Module):
    """A timm model's ``forward_features``, as a feature map (B, C, h, w) or tokens (B, N, C).

    Attributes: ``name`` (the timm name), ``model`` (the timm module), ``layout`` (one of LAYOUTS: what the timm
    model gives), ``out_channels`` (C), ``prefix_tokens`` (non-patch tokens, "NLC" only, else 0), ``positions``
    (h * w, or the number of patch tokens, at the input size it was built for).
    """

    def __init__(self, name: str, model: nn.Module, layout: str, out_channels: int, prefix_tokens: int,
                 positions: int) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"TimmBackbone: layout must be one of {LAYOUTS}, got {layout!r}")
        self.name, self.model, self.layout = name, model, layout
        self.out_channels, self.prefix_tokens, self.positions = out_channels, prefix_tokens, positions

    @property
    def tokens(self) -> bool:
        """Whether the output is tokens (B, N, C) rather than a feature map (B, C, h, w)."""
        return self.layout == "NLC"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.model.forward_features(x)
        return features.permute(0, 3, 1, 2) if self.layout == "NHWC" else features

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, layout={self.layout!r}, out_channels={self.out_channels}"
                + (f", prefix_tokens={self.prefix_tokens}" if self.tokens else ""))


def _create(name: str, options: dict[str, Any], input_size: tuple[int, int] | None) -> nn.Module:
    timm = _import_timm()
    kwargs = dict(options)
    if timm.models.get_pretrained_cfg_value(name, "fixed_input_size") and "img_size" not in kwargs:
        if input_size is None:
            raise SettingsError(f"config: timm model {name!r} is built for one input size; set crop (or resize "
                                "HEIGHT WIDTH), or img_size in backbone_options")
        kwargs["img_size"] = list(input_size)
    try:
        return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError, KeyError) as err:
        raise SettingsError(f"config: timm.create_model({name!r}, pretrained=False, num_classes=0, **{kwargs}) "
                            f"failed: {type(err).__name__}: {err}") from None


def _probe(name: str, model: nn.Module, size: tuple[int, int]) -> TimmBackbone:
    """Find the layout of ``model.forward_features`` from one blank image of ``size``."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.forward_features(torch.zeros(1, 3, *size))
    except Exception as err:  # any failure of a model at this input size is a setting to change
        raise SettingsError(f"config: timm model {name!r} fails on a {size[0]} x {size[1]} input: "
                            f"{type(err).__name__}: {err}") from None
    finally:
        model.train(was_training)
    if out.ndim == 3:
        prefix = int(getattr(model, "num_prefix_tokens", 0))
        return TimmBackbone(name, model, "NLC", out.shape[2], prefix, out.shape[1] - prefix)
    if out.ndim == 4:
        nhwc = getattr(model, "output_fmt", "NCHW") == "NHWC"
        channels, h, w = (out.shape[3], out.shape[1], out.shape[2]) if nhwc else out.shape[1:]
        return TimmBackbone(name, model, "NHWC" if nhwc else "NCHW", channels, 0, h * w)
    raise SettingsError(f"config: timm model {name!r} gives features of shape {tuple(out.shape)} from forward_features,"
                        " neither a feature map nor tokens")


def build_timm_backbone(name: str, options: dict[str, Any] | None = None, input_size: tuple[int, int] | None = None,
                        pretrained: str | os.PathLike | None = None) -> TimmBackbone:
    """The timm model ``name`` (registered name, no ``timm:`` prefix) without classifier, with its layout found at
    ``input_size`` ((height, width); None: a variable size, probed at the model's default), and the weights of the
    local file ``pretrained`` if given. Raises SettingsError for options, sizes or files that do not fit."""
    model = _create(name, options or {}, input_size)
    default = _import_timm().models.get_pretrained_cfg_value(name, "input_size") or (3, 224, 224)
    backbone = _probe(name, model, input_size or tuple(default[1:]))
    if pretrained:
        load_timm_weights(backbone, pretrained)
    return backbone


def _classifier_keys(model: nn.Module) -> tuple[str, ...]:
    names = model.pretrained_cfg.get("classifier") or ()
    return (names,) if isinstance(names, str) else tuple(names)


def load_timm_weights(backbone: TimmBackbone, path: str | os.PathLike) -> None:
    """Load a timm checkpoint from the local file ``path`` into ``backbone``, in place.

    Formats are timm's (``timm.models.load_state_dict``): a state dict saved with torch.save or as ``.safetensors``,
    or a training checkpoint holding ``state_dict_ema``/``model_ema`` (preferred), ``state_dict`` or ``model``,
    with ``module.`` and ``_orig_mod.`` prefixes removed. The model's own timm conversion (its module's
    ``checkpoint_filter_fn``, as timm applies it to pretrained weights) then adapts the checkpoint: for example the
    position embeddings of a ViT trained at 224 px to another input size. The classifier's weights are dropped; every
    other key must be present with the right shape. A missing, unreadable or mismatched file raises SettingsError.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SettingsError(f"load_timm_weights: weights file {path!r} does not exist (nothing is downloaded: save "
                            f"the timm {backbone.name} checkpoint to a local file and pass its path)")
    if path.lower().endswith((".npz", ".npy")):
        raise SettingsError(f"load_timm_weights: {path!r} is a NumPy checkpoint; eigpool reads PyTorch and "
                            "safetensors checkpoints (timm's own format)")
    timm = _import_timm()
    try:
        state = timm.models.load_state_dict(path, use_ema=True)
    except Exception as err:  # torch.load and safetensors raise errors of several kinds on a bad file
        raise SettingsError(f"load_timm_weights: cannot read weights file {path!r}: {type(err).__name__}: "
                            f"{err}") from None
    model = backbone.model
    convert = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    try:
        if convert is not None:
            state = convert(state, model)
        drop = _classifier_keys(model)
        state = {k: v for k, v in state.items() if not any(k == c or k.startswith(c + ".") for c in drop)}
        model.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError, ValueError, AssertionError) as err:
        raise SettingsError(f"load_timm_weights: {path!r} is not a checkpoint of timm {backbone.name} as configured: "
                            f"{type(err).__name__}: {err}") from None
