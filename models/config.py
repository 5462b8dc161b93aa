"""Training configuration: one flat dataclass, presets as YAML files, a YAML config file, command-line overrides.

Resolution order (later wins): the dataclass defaults (the embedded synthetic run, the README's main job), the preset
named by ``--preset`` or by a ``preset:`` key in the config file, the config file (``--config PATH``), then every
``--key value`` flag. The resolved configuration is saved in the run folder as ``config.yaml`` and in every checkpoint.
Command-line values are parsed as YAML scalars or lists: ``--lr-steps 50 100``, ``--pretrained none``, ``--flip false``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

__all__ = ["Config", "PRESETS", "add_config_arguments", "config_from_args", "load_preset", "load_yaml"]

PRESETS = ("synthetic", "cub", "cars", "aircraft")
DATASETS = ("synthetic", "cub", "cars", "aircraft", "folder")


@dataclass
class Config:
    """Every setting of a training run (see docs/models.md for the meaning of each, and the presets for the recipes)."""

    # Data
    dataset: str = "synthetic"
    data_root: str | None = None
    variant: str = "standard"
    synthetic_classes: int = 10
    synthetic_train: int = 200
    synthetic_val: int = 30
    synthetic_test: int = 60
    synthetic_seed: int = 0
    val_fraction: float = 0.1
    bad_images: str = "stop"
    workers: int = 0
    # Input pipeline (real images): resize to ``resize`` ([short side] or [height, width]), centre crop to ``crop``
    # (none: no crop), random horizontal flip in training, ImageNet normalisation.
    resize: list[int] = field(default_factory=lambda: [448])
    crop: int | None = 448
    flip: bool = True
    # Model
    backbone: str = "tiny"
    pretrained: str | None = None
    head: str = "gcp"
    method: str = "eigen"
    grad: str = "exact"
    seb: bool = False
    truncate: int = 0
    iterations: int = 5
    reduction: int | None = 32
    compute_dtype: str = "float64"
    hybrid: bool = False
    # Optimisation: SGD with momentum, learning rate x lr_gamma at each epoch of lr_steps.
    batch_size: int = 32
    epochs: int = 12
    lr: float = 0.05
    lr_steps: list[int] = field(default_factory=lambda: [8])
    lr_gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    classifier_lr_factor: float = 10.0
    clip_grad_norm: float | None = 5.0
    # Run. threads: torch CPU threads. 1 for the tiny synthetic network, which gains little from a second thread and
    # slows down about tenfold when the cores are shared with other processes (oversubscribed OpenMP threads);
    # the real-data presets set none (all cores).
    seed: int = 0
    out_dir: str = "runs"
    name: str | None = None
    device: str = "cpu"
    threads: int | None = 1
    progress: bool = True

    def validate(self) -> Config:
        """Check types and choices; return self. Raises ValueError naming the setting."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), _field_types()[f.name]))
        choices = {"dataset": DATASETS, "bad_images": ("stop", "skip"), "head": ("gcp", "avg"),
                   "method": ("eigen", "newton_schulz"), "compute_dtype": ("float64", "float32")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"config: {key} must be one of {allowed}, got {getattr(self, key)!r}")
        if self.dataset != "synthetic" and not self.data_root:
            raise ValueError(f"config: dataset {self.dataset!r} needs data_root (the folder that holds it)")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"config: val_fraction must be in [0, 1), got {self.val_fraction}")
        if len(self.resize) not in (1, 2):
            raise ValueError(f"config: resize must be [short side] or [height, width], got {self.resize}")
        if self.hybrid and (self.head != "gcp" or self.method != "eigen" or not self.lr_steps):
            raise ValueError("config: hybrid trains with Newton-Schulz and switches to method 'eigen' at the last "
                             "lr step; it needs head 'gcp', method 'eigen' (the final method) and lr_steps")
        for key in ("batch_size", "epochs", "iterations"):
            if getattr(self, key) < 1:
                raise ValueError(f"config: {key} must be >= 1, got {getattr(self, key)}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(Config)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Convert a YAML/CLI value to the field's declared type (int, float, bool, str, list[int], or X | None)."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(key, value, next(a for a in args if a is not type(None)))
    if typing.get_origin(hint) is list:
        values = value if isinstance(value, (list, tuple)) else [value]
        return [_coerce(key, v, args[0]) for v in values]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"config: {key} must be true or false, got {value!r}")
    if hint in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ValueError(f"config: {key} must be a number ({hint.__name__}), got {value!r}")
    if hint is int and float(value) != int(value):
        raise ValueError(f"config: {key} must be an integer, got {value!r}")
    return hint(value)


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A config mapping from a YAML file; unknown keys raise ValueError naming them."""
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config: {os.fspath(path)!r} must hold a mapping of settings, got {type(data).__name__}")
    _check_keys(data, f"config file {os.fspath(path)!r}")
    return data


def load_preset(name: str) -> dict[str, Any]:
    """The settings of a preset (``models/presets/<name>.yaml``, installed as package data)."""
    if name not in PRESETS:
        raise ValueError(f"config: preset must be one of {PRESETS}, got {name!r}")
    text = resources.files("eigpool.models").joinpath("presets", f"{name}.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    _check_keys(data, f"preset {name!r}")
    return data


def _check_keys(data: dict[str, Any], where: str) -> None:
    known = {f.name for f in dataclasses.fields(Config)} | {"preset"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"config: unknown settings {unknown} in {where}; known: {sorted(known)}")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--preset``, ``--config`` and one ``--key`` flag per Config field (values parsed as YAML)."""
    parser.add_argument("--preset", choices=PRESETS, help="start from a published recipe (default: synthetic)")
    parser.add_argument("--config", help="YAML file of settings (may name a preset: 'preset: cub')")
    group = parser.add_argument_group("settings (override the preset and the config file)")
    for f in dataclasses.fields(Config):
        nargs = "+" if typing.get_origin(_field_types()[f.name]) is list else None
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, nargs=nargs, metavar="VALUE",
                           default=argparse.SUPPRESS, help=f"(default: {default})")


def config_from_args(args: argparse.Namespace) -> Config:
    """Resolve defaults < preset < config file < flags into a validated Config."""
    settings: dict[str, Any] = {}
    file_settings = load_yaml(args.config) if args.config else {}
    preset = args.preset or file_settings.pop("preset", None)
    file_settings.pop("preset", None)
    if preset:
        settings.update(load_preset(preset))
    settings.update(file_settings)
    for f in dataclasses.fields(Config):
        if hasattr(args, f.name):
            raw = getattr(args, f.name)
            settings[f.name] = [yaml.safe_load(v) for v in raw] if isinstance(raw, list) else yaml.safe_load(raw)
    return Config(**settings).validate()
