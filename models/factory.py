"""Settings -> network, in one place: the GCP head's arguments and the network a validated ``Config`` describes.

``head_options`` maps the settings to ``GCPHead``'s keyword arguments for one matrix-function method;
``build_network`` builds the ``FGVCNet``; ``switch_method`` is the hybrid protocol's switch (Newton-Schulz, then the
eigen method for the last learning-rate stage); ``load_network`` rebuilds a saved network from its checkpoint. The
training loop, ``eigpool-evaluate`` and ``eigpool-attribute`` all go through these, so they build the same head from
the same settings.
"""

from __future__ import annotations

import os
from typing import Any

from .checkpoint import load_checkpoint
from .config import Config
from .errors import CheckpointError, SettingsError
from .heads import FGVCNet, build_head, build_model, replace_head

__all__ = ["build_network", "head_options", "load_network", "method_for_epoch", "switch_method"]


def method_for_epoch(config: Config, epoch: int) -> str:
    """The method of ``epoch`` (0-based): "avg" for the average-pooling head; the hybrid protocol trains with
    "newton_schulz" and switches to "eigen" at the last lr step; otherwise ``config.method``."""
    if config.head != "gcp":
        return "avg"
    if config.hybrid:
        return "eigen" if epoch >= config.lr_steps[-1] else "newton_schulz"
    return config.method


def head_options(config: Config, method: str) -> dict[str, Any]:
    """``GCPHead``'s keyword arguments (all but ``in_channels``) for the settings ``config`` and ``method``.

    grad, seb and truncate belong to the eigen method: the Newton-Schulz stage of a hybrid run has none of them.
    """
    eigen = method == "eigen"
    return {"reduction": config.reduction, "method": method, "grad": config.grad if eigen else "exact",
            "seb": config.seb and eigen, "truncate": config.truncate if eigen else 0, "iterations": config.iterations,
            "compute_dtype": config.compute_dtype}


def build_network(config: Config, num_classes: int, *, method: str | None = None, pretrained: bool = True) -> FGVCNet:
    """The ``FGVCNet`` of ``config`` with ``num_classes`` outputs, its GCP head using ``method`` (default: the
    method of the first epoch); ``pretrained=False`` skips the pretrained weights (a checkpoint's replace them)."""
    method = method or method_for_epoch(config, 0)
    options = head_options(config, method) if config.head == "gcp" else {}
    return build_model(config.backbone, config.head, num_classes,
                       pretrained=config.pretrained if pretrained else None, **options)


def switch_method(model: FGVCNet, config: Config, method: str) -> None:
    """Give ``model`` the GCP head of ``method`` (``build_network``'s head), keeping every learned weight and buffer
    as the same tensor (the matrix function has no parameters), so the optimizer state carries over."""
    replace_head(model, build_head("gcp", model.head.in_channels, **head_options(config, method)))


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
