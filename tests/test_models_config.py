"""Configuration: defaults < preset < YAML file < command line, with checked names and types."""

import pytest

pytest.importorskip("torch")
yaml = pytest.importorskip("yaml")

from eigpool.models.config import PRESETS, Config, load_preset  # noqa: E402
from eigpool.models.train import build_parser  # noqa: E402


def _resolve(argv):
    from eigpool.models.config import config_from_args

    return config_from_args(build_parser().parse_args(argv))


def test_defaults_are_the_synthetic_preset():
    config = _resolve([])
    preset = load_preset("synthetic")
    assert all(getattr(config, k) == v for k, v in preset.items())
    assert config.dataset == "synthetic" and config.head == "gcp"


@pytest.mark.parametrize("name", PRESETS)
def test_presets_are_valid(name):
    config = Config(**load_preset(name), data_root="/data").validate()
    assert config.clip_grad_norm == 5.0 and config.lr_steps


def test_published_recipes():
    cub, cars, aircraft = (load_preset(n) for n in ("cub", "cars", "aircraft"))
    assert (cub["batch_size"], cub["epochs"], cub["lr"], cub["lr_steps"], cub["weight_decay"],
            cub["classifier_lr_factor"]) == (10, 200, 3e-3, [50, 100], 1e-4, 20.0)
    assert cars["classifier_lr_factor"] == 10.0 and cars["resize"] == [448, 448] and cars["crop"] is None
    assert (aircraft["batch_size"], aircraft["epochs"], aircraft["lr_steps"], aircraft["weight_decay"],
            aircraft["classifier_lr_factor"], aircraft["resize"]) == (8, 50, [21, 40], 1e-3, 5.0, [512, 512])


def test_precedence(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("preset: cub\ndata_root: /data/cub\nlr: 0.01\nepochs: 7\n")
    config = _resolve(["--config", str(path), "--epochs", "3", "--lr-steps", "1", "2", "--pretrained", "none"])
    assert config.backbone == "resnet50" and config.batch_size == 10  # preset
    assert config.lr == 0.01 and config.data_root == "/data/cub"  # file
    assert config.epochs == 3 and config.lr_steps == [1, 2] and config.pretrained is None  # command line


@pytest.mark.parametrize(("argv", "match"), [
    (["--epochs", "two"], "epochs must be a number"),
    (["--epochs", "2.5"], "epochs must be an integer"),
    (["--flip", "maybe"], "flip must be true or false"),
    (["--head", "max"], "head must be one of"),
    (["--dataset", "cub"], "needs data_root"),
    (["--hybrid", "true", "--head", "avg"], "hybrid"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_settings(argv, match):
    with pytest.raises(ValueError, match=match):
        _resolve(argv)


def test_scientific_notation_is_a_number(tmp_path):
    # YAML 1.1 reads 1e-3 (no dot) as text; the settings read it as YAML 1.2 does, on the command line and in files.
    config = _resolve(["--lr", "1e-3", "--weight-decay", "5E-4", "--epochs", "1e1"])
    assert (config.lr, config.weight_decay, config.epochs) == (1e-3, 5e-4, 10)
    path = tmp_path / "run.yaml"
    path.write_text("lr: 1e-3\nclip_grad_norm: 2e+1\n")
    config = _resolve(["--config", str(path)])
    assert config.lr == 1e-3 and config.clip_grad_norm == 20.0 and isinstance(config.lr, float)


def test_text_settings_are_taken_as_typed():
    config = _resolve(["--name", "2024", "--out-dir", "yes", "--pretrained", "none"])
    assert (config.name, config.out_dir, config.pretrained) == ("2024", "yes", None)


def test_unknown_key_in_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("learning_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"unknown settings \['learning_rate'\]"):
        _resolve(["--config", str(path)])
