"""Training configuration: one flat dataclass, presets as YAML files, a YAML config file, command-line overrides.

Resolution order (later wins): the dataclass defaults (the embedded synthetic run, the README's main job), the preset
named by ``--preset`` or by a ``preset:`` key in the config file, the config file (``--config PATH``), then every
``--key value`` flag. The resolved configuration is saved in the run folder as ``config.yaml`` and in every checkpoint.
Command-line values are parsed as YAML scalars or lists: ``--lr-steps 50 100``, ``--pretrained none``, ``--flip false``
(a switch alone is on: ``--compile``); mappings for ``--backbone-options "{output_stride: 16}"``;
text settings (names, paths) are taken as typed. Scientific notation without a dot (``1e-3``, which YAML 1.1 reads as
text) is a number, on the command line and in files.

``Config.validate`` checks every setting once, before any work, and raises ``SettingsError`` naming the setting, the
value and what is allowed; ``check_environment`` then checks what the settings name outside the process (the device,
the pretrained weights file).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from eigpool import GRADS

from .backbones import BACKBONE_CHANNELS, BACKBONES
from .errors import SettingsError
from .synthetic import SYNTHETIC_VARIANTS
from .timm_backbones import PREFIX, RESERVED_OPTIONS, check_timm_name, is_timm

__all__ = ["FUNCTIONS", "HELP", "LIMITS", "PRESETS", "RESUMABLE", "Config", "SettingsError", "add_config_arguments",
           "check_environment", "config_from_args", "flag_settings", "load_preset", "load_yaml", "parse_yaml"]

PRESETS = ("synthetic", "cub", "cars", "aircraft")
#: Values of ``function``: the GCP eigen method's scalar function (factory.head_options).
FUNCTIONS = ("sqrt", "shifted_sqrt", "ns_polynomial")
DATASETS = ("synthetic", "cub", "cars", "aircraft", "folder")
#: Settings a resumed run may change (``--resume RUN --epochs 30``); every other one is the run's own.
RESUMABLE = ("channels_last", "compile", "epochs", "lr_steps", "progress", "threads", "workers")


@dataclass
class Config:
    """Every setting of a training run: ``HELP`` says in one line what each does (and ``eigpool-train --help``)."""

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
    backbone_options: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None
    head: str = "gcp"
    class_token: str = "drop"
    method: str = "eigen"
    grad: str = "exact"
    # The default head (docs/head_study.md): the exact-gradient square root with a bounded slope at 0,
    # (S + e I)^(1/2) - sqrt(e) I with e the mean eigenvalue tr(S)/d.
    function: str = "shifted_sqrt"
    shift: float = 1.0
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
    clip_scope: str = "all"
    # Run. threads: torch CPU threads. 1 for the tiny synthetic network, which gains little from a second thread and
    # slows down about tenfold when the cores are shared with other processes (oversubscribed OpenMP threads);
    # the real-data presets set none (all cores).
    seed: int = 0
    out_dir: str = "runs"
    name: str | None = None
    device: str = "cpu"
    threads: int | None = 1
    progress: bool = True
    # Speed: mixed precision for the backbone (the head keeps its compute dtype), torch.compile, memory layout.
    amp: str | None = None
    compile: bool = False
    channels_last: bool = False

    def validate(self) -> Config:
        """Convert every setting to its type and check it; return self. Raises SettingsError naming the setting."""
        hints = _field_types()
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))
        for key, allowed in _choices().items():
            if getattr(self, key) not in allowed:
                raise SettingsError(f"config: {key} must be one of {allowed}, got {getattr(self, key)!r}")
        for key, (test, allowed) in LIMITS.items():
            value = getattr(self, key)
            for v in value if isinstance(value, list) else [value]:
                if v is not None and not test(v):
                    raise SettingsError(f"config: {key} must be {allowed}, got {v!r}")
        for check in (_check_data, _check_backbone, _check_head, _check_schedule):
            check(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain mapping (what config.yaml and the checkpoints hold)."""
        return dataclasses.asdict(self)


#: One line per setting: what it does, its unit and what is allowed (``eigpool-train --help``).
HELP = {
    "dataset": "data set: synthetic (embedded, generated in-process), cub, cars, aircraft or folder",
    "data_root": "folder that holds the data set in its official layout (not used by synthetic)",
    "variant": "synthetic data set: standard (class information in large eigenvalues) or small (in small ones)",
    "synthetic_classes": "synthetic data set: number of classes (>= 2)",
    "synthetic_train": "synthetic data set: training images per class (>= 1)",
    "synthetic_val": "synthetic data set: validation images per class (0: no validation split)",
    "synthetic_test": "synthetic data set: test images per class (>= 1)",
    "synthetic_seed": "synthetic data set: seed of the generated images (>= 0)",
    "val_fraction": "fraction of each training class held out for validation when the layout has no val split, "
                    "in [0, 1) (0: no validation, only last.pt)",
    "bad_images": "an unreadable image: stop (the run, naming the file) or skip (print its path and count it)",
    "workers": "data-loading worker processes (0: load in the main process)",
    "resize": "real images: resize to SIDE (short side) or HEIGHT WIDTH, in pixels",
    "crop": "real images: centre crop to this many pixels square (none: no crop)",
    "flip": "real images: random horizontal flip in training (true or false)",
    "backbone": f"backbone network, one of {', '.join(BACKBONES)}, or {PREFIX}NAME for any timm model with a feature "
                "map or tokens (timm:convnext_tiny, timm:vit_small_patch16_224, ...)",
    "backbone_options": "timm backbones: keyword arguments of timm.create_model, as a YAML mapping "
                        "('{drop_path_rate: 0.1}'; {} for none)",
    "pretrained": "local weights file for the backbone: a torchvision state dict, or a timm checkpoint (.pth, "
                  ".safetensors) for timm: backbones (none: random initialisation)",
    "head": "pooling head: gcp (global covariance pooling) or avg (global average pooling)",
    "class_token": "token backbones (ViT, ...): drop or keep the class token (and other prefix tokens) in the pooling",
    "method": "GCP matrix square root: eigen (eigendecomposition) or newton_schulz (iterative)",
    "grad": f"GCP eigen method: backward rule, one of {', '.join(GRADS)} (exact: Loewner formula)",
    "function": "GCP eigen method: the scalar function of the eigenvalues: sqrt (the matrix square root), "
                "shifted_sqrt ((S + e I)^(1/2) - sqrt(e) I, e = shift tr(S)/d) or ns_polynomial (the Newton-Schulz map "
                "of `iterations` steps as an exact spectral function: sqrt(tr S) p(S / tr S))",
    "shift": "GCP eigen method, function shifted_sqrt: the shift in units of the mean eigenvalue tr(S)/d (> 0)",
    "seb": "GCP eigen method: scaling eigen branch, output times 1 + ||R||_F of the matrix square root (true or "
           "false; with seb the function is sqrt)",
    "truncate": "GCP eigen method: number of smallest eigenvalues set to zero, 0 <= truncate < d",
    "iterations": "GCP newton_schulz method (and the hybrid's first stage): iterations (>= 1)",
    "reduction": "GCP: channels d after the 1x1 reduction convolution (none: all backbone channels)",
    "compute_dtype": "GCP: dtype of the covariance and matrix function, float64 or float32",
    "hybrid": "GCP: train with newton_schulz, then method eigen from the last lr step on (true or false)",
    "batch_size": "images per training step (per process under torchrun), and per evaluation batch",
    "epochs": "training epochs (>= 1; with --resume: the new total)",
    "lr": "base learning rate of SGD (> 0)",
    "lr_steps": "epochs after which the learning rate is multiplied by lr_gamma (increasing, >= 1)",
    "lr_gamma": "learning-rate factor at each lr step (> 0; 0.1: ten times smaller)",
    "momentum": "SGD momentum, in [0, 1)",
    "weight_decay": "SGD weight decay (L2 penalty), >= 0",
    "classifier_lr_factor": "the classifier's learning rate is lr times this factor (> 0)",
    "clip_grad_norm": "clip the L2 norm of the gradient to this value every step (> 0; none: no clipping)",
    "clip_scope": "what clip_grad_norm clips: all (the global norm of every parameter), groups (backbone, GCP head "
                  "and classifier each to its own norm) or features (backbone and head together, classifier not)",
    "seed": "seed of initialisation, shuffling and augmentation (>= 0)",
    "out_dir": "folder that holds the run folders",
    "name": "run folder name under out_dir, which must not exist yet (default: <data>-<backbone>-<method>-<time>)",
    "device": "cpu or cuda",
    "threads": "torch CPU threads per process (>= 1; none: all cores)",
    "progress": "progress bars when stderr is a terminal (true or false)",
    "amp": "mixed precision: bf16 or fp16 autocast for the backbone (fp16 with a gradient scaler); the GCP head keeps "
           "its compute dtype (none: float32)",
    "compile": "torch.compile the network (true or false)",
    "channels_last": "channels-last memory order for the network and its input images (true or false)",
}

#: Numeric limits: setting -> (test of one value, what is allowed). Lists are tested element by element, None passes.
LIMITS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "synthetic_classes": (lambda v: v >= 2, ">= 2"),
    "synthetic_train": (lambda v: v >= 1, ">= 1"),
    "synthetic_val": (lambda v: v >= 0, ">= 0"),
    "synthetic_test": (lambda v: v >= 1, ">= 1"),
    "synthetic_seed": (lambda v: v >= 0, ">= 0"),
    "val_fraction": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "workers": (lambda v: v >= 0, ">= 0"),
    "resize": (lambda v: v >= 1, ">= 1 pixel"),
    "crop": (lambda v: v >= 1, ">= 1 pixel (none: no crop)"),
    "truncate": (lambda v: v >= 0, ">= 0"),
    "iterations": (lambda v: v >= 1, ">= 1"),
    "reduction": (lambda v: v >= 1, ">= 1 (none: all backbone channels)"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "epochs": (lambda v: v >= 1, ">= 1"),
    "lr": (lambda v: v > 0, "> 0"),
    "lr_steps": (lambda v: v >= 1, "epochs >= 1"),
    "lr_gamma": (lambda v: v > 0, "> 0"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "classifier_lr_factor": (lambda v: v > 0, "> 0"),
    "clip_grad_norm": (lambda v: v > 0, "> 0 (none: no clipping)"),
    "shift": (lambda v: 0 < v < math.inf, "a finite number > 0"),
    "seed": (lambda v: v >= 0, ">= 0"),
    "threads": (lambda v: v >= 1, ">= 1 (none: all cores)"),
}


def _choices() -> dict[str, tuple]:
    return {"dataset": DATASETS, "variant": tuple(SYNTHETIC_VARIANTS), "bad_images": ("stop", "skip"),
            "head": ("gcp", "avg"), "class_token": ("drop", "keep"), "method": ("eigen", "newton_schulz"),
            "grad": GRADS, "function": FUNCTIONS, "clip_scope": ("all", "groups", "features"),
            "compute_dtype": ("float64", "float32"), "device": ("cpu", "cuda"),
            "amp": (None, "bf16", "fp16")}


def _check_data(config: Config) -> None:
    if config.dataset != "synthetic" and not config.data_root:
        raise SettingsError(f"config: dataset {config.dataset!r} needs data_root (the folder that holds it)")
    if len(config.resize) not in (1, 2):
        raise SettingsError(f"config: resize must be [short side] or [height, width], got {config.resize}")


def _check_backbone(config: Config) -> None:
    """A built-in backbone, or a timm model that builds offline; timm options only for timm backbones."""
    if not is_timm(config.backbone):
        if config.backbone not in BACKBONES:
            raise SettingsError(f"config: backbone must be one of {BACKBONES} or {PREFIX}NAME (a timm model), got "
                                f"{config.backbone!r}")
        if config.backbone_options:
            raise SettingsError(f"config: backbone_options {config.backbone_options} are timm.create_model arguments;"
                                f" backbone {config.backbone!r} is not a timm model")
        return
    check_timm_name(config.backbone)
    reserved = sorted(set(config.backbone_options) & set(RESERVED_OPTIONS))
    if reserved:
        raise SettingsError(f"config: backbone_options may not set {reserved}: eigpool builds timm models with "
                            "pretrained=False and no classifier, and loads weights from the local file pretrained")


def _check_head(config: Config) -> None:
    """The GCP options apply to the head and method they belong to; none is silently ignored."""
    defaults = (("grad", "exact"), ("truncate", 0), ("seb", False), ("function", Config.function))
    eigen_only = {k: getattr(config, k) for k, default in defaults if getattr(config, k) != default}
    if config.shift != Config.shift and config.function != "shifted_sqrt":
        raise SettingsError(f"config: shift applies to function 'shifted_sqrt', got function {config.function!r}")
    if config.seb and config.function not in ("sqrt", Config.function):
        raise SettingsError(f"config: seb scales the matrix square root; it takes function 'sqrt' (the default "
                            f"{Config.function!r} gives way to it), got {config.function!r}")
    gcp_only = eigen_only | ({"method": config.method} if config.method != "eigen" else {}) | (
        {"hybrid": True} if config.hybrid else {})
    if config.head == "avg" and gcp_only:
        raise SettingsError(f"config: {gcp_only} set the GCP head's matrix function; head 'avg' has none")
    if config.head == "gcp" and config.method == "newton_schulz" and eigen_only:
        raise SettingsError(f"config: {eigen_only} apply to method 'eigen' only; method 'newton_schulz' has its own "
                            "backward and no spectrum to truncate or amplify")
    if config.hybrid and (config.method != "eigen" or not config.lr_steps):
        raise SettingsError("config: hybrid trains with Newton-Schulz and switches to method 'eigen' at the last "
                            "lr step; it needs method 'eigen' (the final method) and lr_steps")
    # A timm backbone's channels are known once it is built (the factory checks truncate then).
    d = config.reduction or BACKBONE_CHANNELS.get(config.backbone)
    if config.head == "gcp" and d is not None and config.truncate >= d:
        raise SettingsError(f"config: truncate must be smaller than the covariance size d = {d} (reduction "
                            f"{config.reduction}, backbone {config.backbone!r}), got {config.truncate}")


def _check_schedule(config: Config) -> None:
    if any(b <= a for a, b in zip(config.lr_steps, config.lr_steps[1:], strict=False)):
        raise SettingsError(f"config: lr_steps must be increasing epochs, got {config.lr_steps}")


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(Config)


def _is_text(hint: Any) -> bool:
    return hint is str or (isinstance(hint, types.UnionType) and str in typing.get_args(hint))


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Convert a YAML/CLI value to the field's declared type (int, float, bool, str, list[int], a mapping, or
    X | None)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise SettingsError(f"config: {key} must be a mapping of names to values (YAML: '{{depth: 2}}'), got "
                                f"{value!r}")
        return dict(value)
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
        raise SettingsError(f"config: {key} must be true or false, got {value!r}")
    if hint is str:
        if not isinstance(value, str):
            raise SettingsError(f"config: {key} must be text, got {value!r} (quote it in a YAML file)")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SettingsError(f"config: {key} must be a number ({hint.__name__}), got {value!r}")
    if not math.isfinite(value):
        raise SettingsError(f"config: {key} must be a finite number, got {value!r}")
    if hint is int and float(value) != int(value):
        raise SettingsError(f"config: {key} must be an integer, got {value!r}")
    return hint(value)


class _Loader(yaml.SafeLoader):
    """YAML 1.1 safe loading, with YAML 1.2's floats: ``1e-3`` and ``5E4`` (no dot) are numbers, not text."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
                              list("-+0123456789."))


def parse_yaml(text: str, where: str) -> Any:
    """The value of YAML ``text`` (scientific notation as numbers); a syntax error is a SettingsError naming
    ``where``."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        raise SettingsError(f"config: {where} is not valid YAML: {err}") from None


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A config mapping from a YAML file; an unreadable file, a syntax error or unknown keys raise SettingsError."""
    where = f"config file {os.fspath(path)!r}"
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as err:
        raise SettingsError(f"config: cannot read {where}: {err}") from None
    data = parse_yaml(text, where) or {}
    if not isinstance(data, dict):
        raise SettingsError(f"config: {where} must hold a mapping of settings, got {type(data).__name__}")
    _check_keys(data, where)
    return data


def load_preset(name: str) -> dict[str, Any]:
    """The settings of a preset (``models/presets/<name>.yaml``, installed as package data)."""
    if name not in PRESETS:
        raise SettingsError(f"config: preset must be one of {PRESETS}, got {name!r}")
    text = resources.files("eigpool.models").joinpath("presets", f"{name}.yaml").read_text(encoding="utf-8")
    data = parse_yaml(text, f"preset {name!r}") or {}
    _check_keys(data, f"preset {name!r}")
    return data


def _check_keys(data: dict[str, Any], where: str) -> None:
    known = {f.name for f in dataclasses.fields(Config)} | {"preset"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SettingsError(f"config: unknown settings {unknown} in {where}; known: {sorted(known)}")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--preset``, ``--config`` and one ``--key`` flag per Config field, with its ``HELP`` line."""
    parser.add_argument("--preset", choices=PRESETS, help="start from a published recipe (default: synthetic)")
    parser.add_argument("--config", help="YAML file of settings (may name a preset: 'preset: cub')")
    group = parser.add_argument_group("settings (override the preset and the config file)")
    for f in dataclasses.fields(Config):
        hint = _field_types()[f.name]
        # A switch given alone is on (--compile); with a value it takes it (--compile false).
        nargs, const = {list: ("+", None), bool: ("?", "true")}.get(typing.get_origin(hint) or hint, (None, None))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, nargs=nargs, const=const, metavar="VALUE",
                           default=argparse.SUPPRESS, help=f"{HELP[f.name]} (default: {default})")


def _parse_flag(key: str, raw: str, hint: Any) -> Any:
    return raw if _is_text(hint) else parse_yaml(raw, f"--{key.replace('_', '-')}")


def flag_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags, parsed (YAML values; text settings as typed)."""
    hints = _field_types()
    settings = {}
    for f in dataclasses.fields(Config):
        if hasattr(args, f.name):
            raw = getattr(args, f.name)
            settings[f.name] = ([_parse_flag(f.name, v, hints[f.name]) for v in raw] if isinstance(raw, list)
                                else _parse_flag(f.name, raw, hints[f.name]))
    return settings


def config_from_args(args: argparse.Namespace) -> Config:
    """Resolve defaults < preset < config file < flags into a validated Config."""
    settings: dict[str, Any] = {}
    file_settings = load_yaml(args.config) if args.config else {}
    preset = args.preset or file_settings.pop("preset", None)
    file_settings.pop("preset", None)
    if preset:
        settings.update(load_preset(preset))
    settings.update(file_settings)
    settings.update(flag_settings(args))
    return Config(**settings).validate()


def check_environment(config: Config) -> None:
    """Check what the settings name outside the process: a CUDA device exists for ``device: cuda``, the
    ``pretrained`` weights file exists. Raises SettingsError."""
    import torch

    if config.device == "cuda" and not torch.cuda.is_available():
        raise SettingsError("config: device 'cuda' is not available here (torch.cuda.is_available() is False); "
                            "use device 'cpu'")
    if config.pretrained and not os.path.isfile(config.pretrained):
        raise SettingsError(f"config: pretrained weights file {config.pretrained!r} does not exist (nothing is "
                            "downloaded: pass a local file, or none)")
