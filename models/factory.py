"""Settings -> network, in one place: the GCP head's arguments and the network a validated ``Config`` describes.

``head_options`` maps the settings to ``GCPHead``'s keyword arguments for one matrix-function method;
``build_network`` builds the ``FGVCNet``; ``switch_method`` is the hybrid protocol's switch (Newton-Schulz, then the
eigen method for the last learning-rate stage); ``load_network`` rebuilds a saved network from its checkpoint. The
training loop, ``eigpool-evaluate`` and ``eigpool-attribute`` all go through these, so they build the same head from
the same settings.

Backbones: the built-in ones by name (backbones.py), any timm model as ``timm:NAME`` (timm_backbones.py). A backbone
that gives a feature map (NCHW, or NHWC passed on as NCHW) gets ``GCPHead`` or ``AvgPoolHead``; one that gives tokens
(ViT-style) gets ``TokenGCPHead`` or ``TokenAvgPoolHead``, with the ``class_token`` setting. ``amp`` and
``channels_last`` go into the network (``FGVCNet``), so that every caller runs it in the same precision.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

import eigpool

from .backbones import build_backbone
from .checkpoint import load_checkpoint
from .config import Config
from .errors import CheckpointError, SettingsError
from .heads import FGVCNet, build_head, build_token_head, replace_head
from .synthetic import SyntheticSpec
from .timm_backbones import TimmBackbone, build_timm_backbone, check_timm_name, is_timm

__all__ = ["build_backbone_of", "build_network", "head_options", "input_size", "load_network", "method_for_epoch",
           "switch_method"]


def method_for_epoch(config: Config, epoch: int) -> str:
    """The method of ``epoch`` (0-based): "avg" for the average-pooling head; the hybrid protocol trains with
    "newton_schulz" and switches to "eigen" at the last lr step; otherwise ``config.method``."""
    if config.head != "gcp":
        return "avg"
    if config.hybrid:
        return "eigen" if epoch >= config.lr_steps[-1] else "newton_schulz"
    return config.method


def head_options(config: Config, method: str, channels: int | None = None) -> dict[str, Any]:
    """``GCPHead``'s keyword arguments (all but ``in_channels``) for the settings ``config`` and ``method``; the
    backbone's ``channels`` give d where ``reduction`` is none (for function "shifted_sqrt").

    grad, function, seb and truncate belong to the eigen method: the Newton-Schulz stage of a hybrid run has none of
    them. function "shifted_sqrt" is ``eigpool.shifted_sqrt(shift / d)`` with trace scaling,
    (S + e I)^(1/2) - sqrt(e) I with e = shift tr(S)/d; "ns_polynomial" is ``eigpool.ns_polynomial(iterations)``
    with trace scaling, the Newton-Schulz square root as an exact spectral function.
    """
    eigen = method == "eigen"
    # SEB is the scaled square root: with seb the function is sqrt (the check refuses any other function but the
    # default).
    function = "sqrt" if not eigen or config.seb else config.function
    fn: Any = "sqrt"
    if function == "shifted_sqrt":
        d = config.reduction or channels
        if d is None:
            raise SettingsError("config: function 'shifted_sqrt' needs the covariance size d (reduction or the "
                                "backbone's channels)")
        fn = eigpool.shifted_sqrt(config.shift / d)
    elif function == "ns_polynomial":
        fn = eigpool.ns_polynomial(config.iterations)
    return {"reduction": config.reduction, "method": method, "fn": fn, "trace_scale": function != "sqrt",
            "grad": config.grad if eigen else "exact", "seb": config.seb and eigen,
            "truncate": config.truncate if eigen else 0, "iterations": config.iterations,
            "compute_dtype": config.compute_dtype}


def input_size(config: Config) -> tuple[int, int] | None:
    """(height, width) of the images the network receives, or None when it varies (a short-side resize, no crop)."""
    if config.dataset == "synthetic":
        side = SyntheticSpec().image_size
        return side, side
    if config.crop:
        return config.crop, config.crop
    return (config.resize[0], config.resize[1]) if len(config.resize) == 2 else None


def build_backbone_of(config: Config, pretrained: bool = True) -> nn.Module:
    """The backbone ``config`` names, with its pretrained weights unless ``pretrained=False``."""
    weights = config.pretrained if pretrained else None
    if is_timm(config.backbone):
        return build_timm_backbone(check_timm_name(config.backbone), config.backbone_options, input_size(config),
                                   weights)
    return build_backbone(config.backbone, weights)


def _head(config: Config, backbone: nn.Module, method: str) -> nn.Module:
    """The pooling head of ``config`` for ``backbone``'s output; raises SettingsError where they do not fit."""
    channels = backbone.out_channels
    options = head_options(config, method, channels) if config.head == "gcp" else {}
    tokens = isinstance(backbone, TimmBackbone) and backbone.tokens
    if isinstance(backbone, TimmBackbone) and config.head == "gcp":
        if backbone.positions < 2:
            raise SettingsError(f"config: backbone {config.backbone!r} gives {backbone.positions} position(s) at the "
                                f"input size {input_size(config)}; covariance pooling needs at least 2 (a larger "
                                "input, a smaller patch or, for CNNs, backbone_options '{output_stride: 8}')")
        if config.truncate >= (config.reduction or channels):
            raise SettingsError(f"config: truncate must be smaller than the covariance size d = "
                                f"{config.reduction or channels} (backbone {config.backbone!r}), got {config.truncate}")
    if tokens:
        return build_token_head(config.head, channels, config.class_token, backbone.prefix_tokens, **options)
    if config.class_token != "drop":
        raise SettingsError(f"config: class_token {config.class_token!r} applies to token backbones; backbone "
                            f"{config.backbone!r} gives a feature map")
    return build_head(config.head, channels, **options)


def build_network(config: Config, num_classes: int, *, method: str | None = None, pretrained: bool = True) -> FGVCNet:
    """The ``FGVCNet`` of ``config`` with ``num_classes`` outputs, its GCP head using ``method`` (default: the
    method of the first epoch); ``pretrained=False`` skips the pretrained weights (a checkpoint's replace them).
    Raises SettingsError for a backbone, its options or its weights file that do not fit the settings."""
    backbone = build_backbone_of(config, pretrained)
    head = _head(config, backbone, method or method_for_epoch(config, 0))
    model = FGVCNet(backbone, head, num_classes, amp=config.amp, channels_last=config.channels_last)
    return model.to(memory_format=torch.channels_last) if config.channels_last else model


def switch_method(model: FGVCNet, config: Config, method: str) -> None:
    """Give ``model`` the GCP head of ``method`` (``build_network``'s head), keeping every learned weight and buffer
    as the same tensor (the matrix function has no parameters), so the optimizer state carries over."""
    replace_head(model, _head(config, model.backbone, method))


def load_network(path: str | os.PathLike) -> tuple[FGVCNet, Config, list[str]]:
    """(network with its weights, in eval mode; its Config; class names) of an ``eigpool-train`` checkpoint (a .pt
    file, or a run folder: its last.pt). The head uses the method of the last trained epoch (the hybrid switch).
    Raises CheckpointError when the file is not a checkpoint of a network these settings describe."""
    ckpt = load_checkpoint(path)
    try:
        config = Config(**ckpt["config"]).validate()
        model = build_network(config, len(ckpt["classes"]), method=ckpt["method"], pretrained=False)
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, SettingsError, RuntimeError) as err:
        raise CheckpointError(f"load_network: {os.fspath(path)!r} is not a checkpoint of the network its settings "
                              f"describe: {type(err).__name__}: {err}") from None
    return model.eval(), config, list(ckpt["classes"])
