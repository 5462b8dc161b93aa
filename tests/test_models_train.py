"""eigpool-train on tiny synthetic runs: run folder, exact resume, hybrid switch, NaN stop, atomic checkpoints,
eigpool-evaluate, and two-process torchrun (gloo on the CPU)."""

import csv
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from eigpool.models import checkpoint as ckpt_mod  # noqa: E402
from eigpool.models.config import Config  # noqa: E402
from eigpool.models.engine import TrainingDiverged, evaluate  # noqa: E402
from eigpool.models.errors import CheckpointError  # noqa: E402
from eigpool.models.evaluate import main as evaluate_main  # noqa: E402
from eigpool.models.factory import load_network  # noqa: E402
from eigpool.models.heads import FGVCNet  # noqa: E402
from eigpool.models.train import main, train  # noqa: E402

TIMING = ("images_per_s", "epoch_seconds")
pytestmark = pytest.mark.usefixtures("restore_torch_threads")


def _config(tmp_path, name, **overrides):
    settings = dict(synthetic_classes=3, synthetic_train=6, synthetic_val=3, synthetic_test=4, batch_size=6,
                    epochs=2, lr_steps=[1], reduction=4, out_dir=str(tmp_path), name=name, progress=False, threads=1)
    return Config(**(settings | overrides)).validate()


def _rows(run_dir):
    with open(os.path.join(run_dir, "metrics.csv"), newline="") as fh:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(fh)]


def test_run_folder_and_evaluate(tmp_path, capsys):
    result = train(_config(tmp_path, "run"))
    files = set(os.listdir(result.run_dir))
    assert {"config.yaml", "metrics.csv", "metrics.png", "last.pt", "best.pt"} <= files
    assert not [f for f in files if "tmp" in f]
    rows = _rows(result.run_dir)
    assert [r["epoch"] for r in rows] == ["1", "2"] and float(rows[1]["lr"]) == pytest.approx(0.005)
    last = ckpt_mod.load_checkpoint(result.run_dir)
    assert last["version"] == ckpt_mod.CHECKPOINT_VERSION and last["epoch"] == 2
    # best.pt is chosen on the validation split.
    best = ckpt_mod.load_checkpoint(os.path.join(result.run_dir, "best.pt"))
    assert best["epoch"] == result.best_epoch
    assert best["best_val_acc"] == max(float(r["val_acc"]) for r in rows)
    capsys.readouterr()
    assert evaluate_main([result.run_dir, "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert f"{float(rows[-1]['test_acc']):.4f}" in out and "test" in out


@pytest.mark.parametrize("kind", ["avg", "hybrid"])
def test_resume_reproduces_an_uninterrupted_run(tmp_path, kind):
    options = {"head": "avg"} if kind == "avg" else {"hybrid": True, "epochs": 3, "lr_steps": [2]}
    full = train(_config(tmp_path, "full", **options))
    interrupted = train(_config(tmp_path, "cut", **options), stop_after=1)
    assert len(interrupted.history) == 1
    resumed = train(_config(tmp_path, "cut", **options), resume=interrupted.run_dir)
    assert _rows(resumed.run_dir) == _rows(full.run_dir)
    if kind == "hybrid":
        assert [r["method"] for r in _rows(full.run_dir)] == ["newton_schulz", "newton_schulz", "eigen"]
    a = ckpt_mod.load_checkpoint(full.run_dir)["model"]
    b = ckpt_mod.load_checkpoint(resumed.run_dir)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_after_the_head_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    forward_head = FGVCNet.forward_head

    def poisoned(self, features):
        calls["n"] += 1
        out = forward_head(self, features)
        # The first training step of epoch 2 (one train batch + val + test batches per epoch).
        return out * float("nan") if self.training and calls["n"] > 3 else out

    monkeypatch.setattr(FGVCNet, "forward_head", poisoned)
    config = _config(tmp_path, "nan")
    with pytest.raises(TrainingDiverged, match=r"epoch 2, step 1: loss nan.*last good checkpoint"):
        train(config)
    kept = ckpt_mod.load_checkpoint(os.path.join(tmp_path, "nan"))
    assert kept["epoch"] == 1 and all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())
    assert len(_rows(os.path.join(tmp_path, "nan"))) == 1


def test_cli_prints_the_final_table(tmp_path, capsys):
    argv = ["--synthetic-classes", "2", "--synthetic-train", "4", "--synthetic-val", "2", "--synthetic-test", "2",
            "--batch-size", "4", "--epochs", "1", "--reduction", "3", "--out-dir", str(tmp_path), "--name", "cli",
            "--progress", "false", "--head", "gcp", "--method", "newton_schulz", "--threads", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "final test accuracy" in out and "images/s" in out and "newton_schulz" in out


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt_mod.save_atomic({"version": ckpt_mod.CHECKPOINT_VERSION, "epoch": 1}, path)

    def broken_save(obj, fh):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt_mod.save_atomic({"version": ckpt_mod.CHECKPOINT_VERSION, "epoch": 2}, path)
    assert ckpt_mod.load_checkpoint(path)["epoch"] == 1 and os.listdir(tmp_path) == ["last.pt"]


def test_checkpoint_version_is_checked(tmp_path):
    torch.save({"version": 999}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="format version 999"):
        ckpt_mod.load_checkpoint(tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        ckpt_mod.load_checkpoint(tmp_path / "missing")


def test_torchrun_two_gloo_processes(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "eigpool.models.train", "--synthetic-classes", "2", "--synthetic-train", "8", "--synthetic-val", "3",
           "--synthetic-test", "5", "--batch-size", "4", "--epochs", "1", "--reduction", "3", "--out-dir",
           str(tmp_path), "--name", "ddp", "--progress", "false", "--threads", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout and proc.stdout.count("final test accuracy") == 1
    rows = _rows(tmp_path / "ddp")
    # The sharded evaluation (5 + 3 images over 2 processes, unpadded) equals a single-process evaluation of the
    # saved model, which has rank 0's BatchNorm statistics.
    from eigpool.models.data import build_datasets

    model, config, _ = load_network(str(tmp_path / "ddp"))
    splits = build_datasets(config)
    for split in ("val", "test"):
        result = evaluate(model, getattr(splits, split), config, torch.device("cpu"))
        assert result.images == {"val": 6, "test": 10}[split]
        assert result.accuracy == pytest.approx(float(rows[0][f"{split}_acc"]))


def test_cli_reports_a_missing_data_set(tmp_path, capsys):
    assert main(["--dataset", "cub", "--data-root", str(tmp_path / "none"), "--out-dir", str(tmp_path)]) == 2
    assert "Expected layout" in capsys.readouterr().err and not os.listdir(tmp_path)
    assert main(["--dataset", "cub"]) == 2
    assert "needs data_root" in capsys.readouterr().err
