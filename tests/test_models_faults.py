"""eigpool-train under faults and bad settings (issue 14): every failure ends in a message and exit status 2, nothing is
lost, no run is silently wrong. Tiny synthetic runs through ``main``; the kill is a real process death."""

import csv
import os
import struct
import subprocess
import sys
import zlib

import pytest

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")

from eigpool.models import runs  # noqa: E402
from eigpool.models.checkpoint import load_checkpoint  # noqa: E402
from eigpool.models.config import Config  # noqa: E402
from eigpool.models.engine import Distributed  # noqa: E402
from eigpool.models.evaluate import main as evaluate_main  # noqa: E402
from eigpool.models.synthetic import SyntheticFGVC  # noqa: E402
from eigpool.models.train import main  # noqa: E402

pytestmark = pytest.mark.usefixtures("restore_torch_threads")

# 18 training images in 3 steps of 6 per epoch, 9 validation and 12 test images, d = 4.
TINY = ["--synthetic-classes", "3", "--synthetic-train", "6", "--synthetic-val", "3", "--synthetic-test", "4",
        "--batch-size", "6", "--epochs", "2", "--lr-steps", "1", "--reduction", "4", "--progress", "false",
        "--threads", "1"]
TIMING = ("images_per_s", "epoch_seconds")


def _main(tmp_path, *argv):
    return main([*TINY, "--out-dir", str(tmp_path), *argv])


def _rows(run_dir):
    with open(os.path.join(run_dir, "metrics.csv"), newline="") as fh:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(fh)]


def _error(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# --- 1. NaN in the data and a diverging learning rate, with every head --------------------------------------------

@pytest.mark.parametrize("head", [["--method", "eigen"], ["--method", "newton_schulz"], ["--head", "avg"]],
                         ids=["gcp-eigen", "gcp-newton_schulz", "avg"])
def test_nan_in_the_data_reaches_the_head_and_ends_in_the_diverged_message(tmp_path, monkeypatch, capsys, head):
    original = SyntheticFGVC.__getitem__
    fetched = [0]

    def poisoned(self, index):
        image, label = original(self, index)
        if self.split == "train":
            fetched[0] += 1
            # The first image of epoch 2: after the probe batch of the spectrum statistics (the first 6 training
            # images, read once before epoch 1) and the 18 training images of epoch 1.
            if fetched[0] == 6 + 19:
                image = image.clone()
                image[0, 0, 0] = float("nan")
        return image, label

    monkeypatch.setattr(SyntheticFGVC, "__getitem__", poisoned)
    assert _main(tmp_path, "--name", "nan", *head) == 2
    err = _error(capsys)
    assert "training diverged in epoch 2, step 1: the input batch contains NaN or inf" in err
    assert "the step was not applied" in err and "last good checkpoint" in err
    kept = load_checkpoint(tmp_path / "nan")
    assert kept["epoch"] == 1 and all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


def test_a_diverging_learning_rate_with_the_default_head(tmp_path, capsys):
    assert _main(tmp_path, "--name", "big", "--lr", "1e6") == 2
    err = _error(capsys)
    # The steps of epoch 1 stay finite; their last update makes the activations overflow in the evaluation.
    assert "training diverged in epoch 1" in err and "lr=1000000.0" in err


def test_overflowing_activations_are_a_divergence(tmp_path, monkeypatch, capsys):
    # Finite but huge weights: the features overflow to inf and the GCP head refuses them.
    from eigpool.models import heads

    original = heads.FGVCNet.forward_features

    def overflowing(self, x):
        return original(self, x) * 1e38 * 1e38

    monkeypatch.setattr(heads.FGVCNet, "forward_features", overflowing)
    assert _main(tmp_path, "--name", "inf", "--epochs", "1") == 2
    assert "training diverged in epoch 1, step 1: the activations overflowed to NaN or inf" in _error(capsys)


# --- 2 and 8. A kill while best.pt is written: resume repairs best.pt and removes the partial file -----------------

def test_kill_during_the_best_checkpoint_write_then_resume(tmp_path, capsys):
    argv = [*TINY, "--out-dir", str(tmp_path), "--name", "cut"]
    # The second torch.save of epoch 1 is best.pt (last.pt is written first): die half-way through it.
    script = ("import os, sys, torch\n"
              "save, calls = torch.save, [0]\n"
              "def dying_save(obj, fh):\n"
              "    calls[0] += 1\n"
              "    if calls[0] == 2:\n"
              "        fh.write(b'partial'); fh.flush(); os._exit(137)\n"
              "    save(obj, fh)\n"
              "torch.save = dying_save\n"
              "from eigpool.models.train import main\n"
              f"sys.exit(main({argv!r}))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 137, proc.stderr[-2000:]
    run_dir = tmp_path / "cut"
    assert [f for f in os.listdir(run_dir) if f.endswith(".tmp")] and not (run_dir / "best.pt").exists()
    assert load_checkpoint(run_dir)["best_epoch"] == 1

    assert main(["--resume", str(run_dir)]) == 0
    assert "removed best.pt." in capsys.readouterr().err
    assert not [f for f in os.listdir(run_dir) if f.endswith(".tmp")]
    assert _main(tmp_path, "--name", "full") == 0
    full = tmp_path / "full"
    assert _rows(run_dir) == _rows(full)
    for name in ("last.pt", "best.pt"):
        a, b = load_checkpoint(run_dir / name), load_checkpoint(full / name)
        assert a["epoch"] == b["epoch"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert load_checkpoint(run_dir / "best.pt")["epoch"] == load_checkpoint(run_dir)["best_epoch"]


def test_only_partial_files_are_removed(tmp_path):
    for name in ("last.pt", "last.pt.x1y2.tmp", "metrics.png.tmp", "config.yaml"):
        (tmp_path / name).write_bytes(b"")
    assert runs.remove_partial_files(str(tmp_path)) == ["last.pt.x1y2.tmp", "metrics.png.tmp"]
    assert sorted(os.listdir(tmp_path)) == ["config.yaml", "last.pt"]


# --- 3 and 5. Bad settings: a message naming the setting, exit status 2, nothing written ---------------------------

BAD_SETTINGS = [
    (["--lr", "-0.1"], "lr must be > 0"),
    (["--lr", "0"], "lr must be > 0"),
    (["--lr", ".inf"], "lr must be a finite number"),
    (["--lr", "fast"], "lr must be a number"),
    (["--momentum", "-0.5"], "momentum must be in [0, 1)"),
    (["--momentum", "1"], "momentum must be in [0, 1)"),
    (["--weight-decay=-1e-4"], "weight_decay must be >= 0"),
    (["--clip-grad-norm", "-5"], "clip_grad_norm must be > 0"),
    (["--clip-grad-norm", "0"], "clip_grad_norm must be > 0 (none: no clipping)"),
    (["--lr-gamma", "-0.1"], "lr_gamma must be > 0"),
    (["--lr-gamma", "0"], "lr_gamma must be > 0"),
    (["--classifier-lr-factor", "0"], "classifier_lr_factor must be > 0"),
    (["--threads", "0"], "threads must be >= 1"),
    (["--threads", "-2"], "threads must be >= 1"),
    (["--workers", "-1"], "workers must be >= 0"),
    (["--epochs", "0"], "epochs must be >= 1"),
    (["--epochs", "1e400"], "epochs must be a finite number"),
    (["--batch-size", "0"], "batch_size must be >= 1"),
    (["--batch-size", "100"], "fewer than batch_size 100"),
    (["--iterations", "0"], "iterations must be >= 1"),
    (["--seed", "-1"], "seed must be >= 0"),
    (["--lr-steps", "0"], "lr_steps must be epochs >= 1"),
    (["--lr-steps", "2", "1"], "lr_steps must be increasing"),
    (["--lr-steps", "[1,"], "--lr-steps is not valid YAML"),
    (["--truncate", "4"], "truncate must be smaller than the covariance size d = 4"),
    (["--truncate", "-1"], "truncate must be >= 0"),
    (["--reduction", "0"], "reduction must be >= 1"),
    (["--reduction", "none", "--truncate", "64"], "d = 64"),
    (["--grad", "nonsense"], "grad must be one of"),
    (["--method", "svd"], "method must be one of"),
    (["--method", "newton_schulz", "--grad", "taylor"], "apply to method 'eigen' only"),
    (["--method", "newton_schulz", "--truncate", "1"], "apply to method 'eigen' only"),
    (["--head", "avg", "--seb", "true"], "head 'avg' has none"),
    (["--head", "max"], "head must be one of"),
    (["--hybrid", "true", "--method", "newton_schulz"], "hybrid"),
    (["--backbone", "nonsense"], "backbone must be one of"),
    (["--compute-dtype", "float16"], "compute_dtype must be one of"),
    (["--device", "tpu"], "device must be one of"),
    (["--variant", "huge"], "variant must be one of"),
    (["--dataset", "imagenet"], "dataset must be one of"),
    (["--dataset", "cub"], "needs data_root"),
    (["--synthetic-train", "0"], "synthetic_train must be >= 1"),
    (["--synthetic-test", "0"], "synthetic_test must be >= 1"),
    (["--synthetic-val", "-1"], "synthetic_val must be >= 0"),
    (["--synthetic-classes", "1"], "synthetic_classes must be >= 2"),
    (["--val-fraction", "1"], "val_fraction must be in [0, 1)"),
    (["--resize", "0"], "resize must be >= 1 pixel"),
    (["--resize", "1", "2", "3"], "resize must be [short side] or [height, width]"),
    (["--crop", "0"], "crop must be >= 1 pixel"),
    (["--flip", "maybe"], "flip must be true or false"),
    (["--bad-images", "ignore"], "bad_images must be one of"),
    (["--pretrained", "/no/such/weights.pth"], "pretrained weights file '/no/such/weights.pth' does not exist"),
    (["--stop-after", "0"], "--stop-after must be >= 1"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_SETTINGS, ids=[" ".join(a) for a, _ in BAD_SETTINGS])
def test_bad_setting(tmp_path, capsys, argv, message):
    assert _main(tmp_path, *argv) == 2
    err = _error(capsys)
    assert message in err and err.startswith("eigpool-train: error:")
    assert not os.listdir(tmp_path)  # refused before any work


def test_cuda_without_a_gpu(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _main(tmp_path, "--device", "cuda") == 2
    assert "device 'cuda' is not available" in _error(capsys) and not os.listdir(tmp_path)


@pytest.mark.parametrize(("content", "message"), [
    ("lr: [0.1\n", "is not valid YAML"),
    (None, "cannot read config file"),
    ("- lr\n", "must hold a mapping"),
    ("lr: 1e-3\nepochs: 1e400\n", "epochs must be a finite number"),
], ids=["syntax error", "a folder", "a list", "infinite epochs"])
def test_bad_config_file(tmp_path, capsys, content, message):
    path = tmp_path / "settings.yaml"
    if content is None:
        path.mkdir()
    else:
        path.write_text(content)
    assert main(["--config", str(path), "--out-dir", str(tmp_path / "runs")]) == 2
    assert message in _error(capsys) and not (tmp_path / "runs").exists()


def test_unreadable_pretrained_weights(tmp_path, capsys):
    weights = tmp_path / "weights.pth"
    weights.write_bytes(os.urandom(300))
    assert _main(tmp_path / "runs", "--pretrained", str(weights)) == 2
    assert "cannot read weights file" in _error(capsys)


# --- 6. Unreadable images: announced and counted in every split; decompression bombs; folder classes --------------

def _picture(path, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(32, 32, 3, generator=rng) * 255).to(torch.uint8).numpy()
    Image.fromarray(pixels).save(path)


def _bomb(path):
    """A PNG whose header declares 30000 x 30000 pixels (beyond PIL's decompression-bomb limit) and holds none."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def _folder_data(root, bad):
    """train/ with 3 images per class, val/ and test/ with 2 good images per class; ``bad``: (split, class) pairs that
    get one unreadable image."""
    counts = {"train": 3, "val": 2, "test": 2}
    for split, n in counts.items():
        for c, cls in enumerate(("cat", "dog")):
            for i in range(n):
                _picture(root / split / cls / f"{i}.png", seed=100 * c + 10 * i + len(split))
    for split, cls in bad:
        (root / split / cls / "broken.jpg").write_bytes(b"not an image")
    return root


FOLDER = ["--dataset", "folder", "--resize", "32", "--crop", "none", "--flip", "false", "--batch-size", "2",
          "--epochs", "1", "--reduction", "4", "--progress", "false", "--threads", "1"]


def test_unreadable_validation_and_test_images_are_announced_and_counted(tmp_path, capsys):
    data = _folder_data(tmp_path / "data", bad=[("val", "cat"), ("test", "dog")])
    assert main([*FOLDER, "--data-root", str(data), "--bad-images", "skip", "--out-dir", str(tmp_path / "runs"),
                 "--name", "skip"]) == 0
    captured = capsys.readouterr()
    assert f"skipped unreadable val image {data / 'val' / 'cat' / 'broken.jpg'}" in captured.err
    assert f"skipped unreadable test image {data / 'test' / 'dog' / 'broken.jpg'}" in captured.err
    assert "unreadable images skipped in each evaluation: 1 val, 1 test" in captured.out
    row = _rows(tmp_path / "runs" / "skip")[0]
    assert (row["skipped_images"], row["val_skipped_images"], row["test_skipped_images"]) == ("0", "1", "1")


def test_unreadable_test_image_stops_the_run_by_default(tmp_path, capsys):
    data = _folder_data(tmp_path / "data", bad=[("test", "cat")])
    assert main([*FOLDER, "--data-root", str(data), "--out-dir", str(tmp_path / "runs")]) == 2
    assert f"cannot read image {str(data / 'test' / 'cat' / 'broken.jpg')!r}" in _error(capsys)


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_a_decompression_bomb_is_a_bad_image(tmp_path, capsys, policy):
    data = _folder_data(tmp_path / "data", bad=[])
    _bomb(data / "train" / "cat" / "bomb.png")
    code = main([*FOLDER, "--data-root", str(data), "--bad-images", policy, "--out-dir", str(tmp_path / "runs"),
                 "--name", "bomb", "--batch-size", "7"])
    err = _error(capsys)
    assert "DecompressionBombError" in err and "bomb.png" in err
    if policy == "stop":
        assert code == 2 and "cannot read image" in err
    else:
        assert code == 0 and _rows(tmp_path / "runs" / "bomb")[0]["skipped_images"] == "1"


def test_a_class_folder_only_under_test_is_an_error(tmp_path, capsys):
    data = _folder_data(tmp_path / "data", bad=[])
    _picture(data / "test" / "bird" / "0.png")
    assert main([*FOLDER, "--data-root", str(data), "--out-dir", str(tmp_path / "runs")]) == 2
    assert "class folders ['bird'] under" in _error(capsys)


def test_an_empty_training_class_folder_is_an_error(tmp_path, capsys):
    data = _folder_data(tmp_path / "data", bad=[])
    (data / "train" / "eel").mkdir()
    assert main([*FOLDER, "--data-root", str(data), "--out-dir", str(tmp_path / "runs")]) == 2
    err = _error(capsys)
    assert "training class folders ['eel']" in err and "hold no images" in err


# --- 7. Run folders belong to one run ------------------------------------------------------------------------------

def test_a_second_run_with_the_same_name_is_refused(tmp_path, capsys):
    assert _main(tmp_path, "--name", "mine", "--epochs", "1") == 0
    before = {f: os.path.getmtime(tmp_path / "mine" / f) for f in os.listdir(tmp_path / "mine")}
    capsys.readouterr()
    assert _main(tmp_path, "--name", "mine", "--epochs", "1") == 2
    assert "exists already" in _error(capsys)
    assert {f: os.path.getmtime(tmp_path / "mine" / f) for f in os.listdir(tmp_path / "mine")} == before


def test_default_names_are_unique_within_one_second(tmp_path, monkeypatch):
    monkeypatch.setattr(runs.time, "strftime", lambda fmt: "20250101-000000")
    config = Config(out_dir=str(tmp_path)).validate()
    first, second = runs.claim_run_dir(config, Distributed()), runs.claim_run_dir(config, Distributed())
    assert first != second and os.path.isdir(first) and os.path.isdir(second)
    assert second == first + "-2"


# --- 9 and 10. Resume applies what may change and refuses the rest; eigpool-evaluate reports bad checkpoints -------

@pytest.mark.parametrize("extension", [["--epochs", "3"], ["--epochs", "4", "--lr-steps", "1", "3"]],
                         ids=["epochs", "epochs and a new lr step"])
def test_resume_extends_a_finished_run(tmp_path, capsys, extension):
    assert _main(tmp_path, "--name", "short") == 0
    assert main(["--resume", str(tmp_path / "short"), *extension, "--progress", "false"]) == 0
    assert _main(tmp_path, "--name", "long", *extension) == 0
    assert _rows(tmp_path / "short") == _rows(tmp_path / "long")
    capsys.readouterr()
    assert main(["--resume", str(tmp_path / "short")]) == 0
    assert "nothing to train" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (["--lr", "0.5"], "['lr'] cannot change in a resumed run"),
    (["--epochs", "1"], "epochs must be >= 2"),
    (["--lr-steps", "2"], "change the schedule of the 2 completed epochs"),
    (["--preset", "cub"], "takes no --preset or --config"),
], ids=["lr", "fewer epochs", "a past lr step", "preset"])
def test_resume_refuses_a_setting_it_cannot_apply(tmp_path, capsys, argv, message):
    assert _main(tmp_path, "--name", "done") == 0
    capsys.readouterr()
    assert main(["--resume", str(tmp_path / "done"), *argv]) == 2
    assert message in _error(capsys)


@pytest.mark.parametrize("kind", ["missing", "random bytes", "another network"])
def test_bad_checkpoints_are_reported(tmp_path, capsys, kind):
    path = tmp_path / "x.pt"
    if kind == "random bytes":
        path.write_bytes(os.urandom(500))
    elif kind == "another network":
        assert _main(tmp_path, "--name", "r", "--epochs", "1") == 0
        ckpt = load_checkpoint(tmp_path / "r")
        ckpt["config"]["reduction"] = 5
        torch.save(ckpt, path)
    capsys.readouterr()
    assert evaluate_main([str(path)]) == 2
    assert "eigpool-evaluate: error:" in _error(capsys)
    assert main(["--resume", str(path)]) == 2
    assert "eigpool-train: error:" in _error(capsys)


# --- 11. --help says what each setting does ------------------------------------------------------------------------

def test_help_describes_every_setting():
    import dataclasses

    from eigpool.models.config import HELP
    from eigpool.models.train import build_parser

    assert set(HELP) == {f.name for f in dataclasses.fields(Config)}
    text = "".join(build_parser().format_help().split())  # argparse wraps lines anywhere
    for line in HELP.values():
        assert "".join(line.split()) in text
