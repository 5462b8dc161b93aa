"""What the head study (docs/models.md) rests on: the training loop's gradient, clipping and spectrum records, the
clipping scopes, the heads of the functions "ns_polynomial" and "shifted_sqrt", and the seeded comparison."""

import csv
import math
import os

import pytest

torch = pytest.importorskip("torch")

import eigpool  # noqa: E402
from eigpool.backends.torch import GCPHead  # noqa: E402
from eigpool.models import compare, engine, factory  # noqa: E402
from eigpool.models.config import Config  # noqa: E402
from eigpool.models.errors import SettingsError  # noqa: E402
from eigpool.models.heads import build_model  # noqa: E402
from eigpool.models.train import train  # noqa: E402

pytestmark = pytest.mark.usefixtures("restore_torch_threads")

TINY = dict(synthetic_classes=3, synthetic_train=6, synthetic_val=3, synthetic_test=4, batch_size=6, epochs=2,
            lr_steps=[1], reduction=4, progress=False, threads=1)


def _groups_with_gradients(norms):
    """Parameter groups whose gradients have the given L2 norms."""
    groups = {}
    for name, norm in norms.items():
        p = torch.nn.Parameter(torch.zeros(3))
        p.grad = torch.tensor([norm, 0.0, 0.0])
        groups[name] = [p]
    return groups


@pytest.mark.parametrize("scope, expected", [
    ("all", {name: n * 5 / math.sqrt(125) for name, n in (("backbone", 6), ("head", 8), ("classifier", 5))}),
    ("groups", {"backbone": 5.0, "head": 5.0, "classifier": 5.0}),
    ("features", {"backbone": 6 * 0.5, "head": 8 * 0.5, "classifier": 5.0}),  # norm 10 of the two -> 5
])
def test_clip_scopes(scope, expected):
    groups = _groups_with_gradients({"backbone": 6.0, "head": 8.0, "classifier": 5.0})
    config = Config(clip_scope=scope).validate()
    total, norms, scale = engine._clip(groups, config)
    assert float(total) == pytest.approx(math.sqrt(36 + 64 + 25))
    assert {name: float(n) for name, n in norms.items()} == pytest.approx({"backbone": 6.0, "head": 8.0,
                                                                           "classifier": 5.0})
    for name, value in expected.items():
        assert float(groups[name][0].grad[0]) == pytest.approx(value, rel=1e-6)
    assert float(scale) == pytest.approx(min(value / float(norms[name]) for name, value in expected.items()),
                                         rel=1e-6)


def test_clip_all_is_torch_clip_grad_norm():
    groups = _groups_with_gradients({"backbone": 6.0, "head": 8.0, "classifier": 5.0})
    reference = _groups_with_gradients({"backbone": 6.0, "head": 8.0, "classifier": 5.0})
    engine._clip(groups, Config().validate())
    torch.nn.utils.clip_grad_norm_([p for ps in reference.values() for p in ps], 5.0)
    for name in groups:
        assert torch.allclose(groups[name][0].grad, reference[name][0].grad, rtol=1e-6, atol=0)


def test_no_clipping_leaves_gradients_alone():
    groups = _groups_with_gradients({"backbone": 60.0, "head": 80.0, "classifier": 50.0})
    _, _, scale = engine._clip(groups, Config(clip_grad_norm=None).validate())
    assert float(scale) == 1.0 and float(groups["head"][0].grad[0]) == 80.0


def test_spectrum_statistics_against_a_direct_computation():
    torch.manual_seed(0)
    model = build_model("tiny", "gcp", 3, reduction=6).eval()
    images = torch.randn(5, 3, 32, 32)
    stats = engine.spectrum_statistics(model, images)
    with torch.no_grad():
        x = model.head.reduce(model.backbone(images)).flatten(2).double()
        xc = x - x.mean(-1, keepdim=True)
        l = torch.linalg.eigvalsh(xc @ xc.mT / x.shape[-1]).clamp_min(0)
    rel = l / l.mean(-1, keepdim=True)
    p = l / l.sum(-1, keepdim=True)
    assert stats["spectrum_min"] == pytest.approx(float(rel[:, 0].median()), rel=1e-9, abs=1e-12)
    assert stats["spectrum_max"] == pytest.approx(float(rel[:, -1].median()), rel=1e-9)
    assert stats["spectrum_small"] == pytest.approx(float((rel < 1e-2).sum(-1).double().mean()))
    entropy = -(p * torch.log(p.clamp_min(1e-300))).sum(-1)
    assert stats["spectrum_eff_rank"] == pytest.approx(float(entropy.exp().mean()), rel=1e-9)
    assert model.training is False
    assert engine.spectrum_statistics(build_model("tiny", "avg", 3), images) == dict.fromkeys(engine.SPECTRUM_COLUMNS)


def test_training_records_gradients_clipping_and_spectrum(tmp_path):
    result = train(Config(**TINY, out_dir=str(tmp_path), name="run").validate())
    with open(os.path.join(result.run_dir, "metrics.csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        for key in ("grad_norm_backbone", "grad_norm_head", "grad_norm_classifier", "clip_fraction", "clip_scale",
                    *engine.SPECTRUM_COLUMNS):
            assert math.isfinite(float(row[key])), key
        assert 0 <= float(row["clip_fraction"]) <= 1 and 0 < float(row["clip_scale"]) <= 1
        assert float(row["grad_norm_head"]) > 0 and 1 <= float(row["spectrum_eff_rank"]) <= 4


def test_the_study_functions_map_to_trace_scaled_heads():
    config = Config(function="shifted_sqrt", shift=0.2, reduction=8).validate()
    options = factory.head_options(config, "eigen")
    assert options["fn"] is eigpool.shifted_sqrt(0.2 / 8) and options["trace_scale"] is True
    config = Config(function="ns_polynomial", iterations=3).validate()
    options = factory.head_options(config, "eigen")
    assert options["fn"] is eigpool.ns_polynomial(3) and options["trace_scale"] is True
    assert factory.head_options(config, "newton_schulz")["trace_scale"] is False  # a hybrid's first stage
    head = factory.build_network(config, 3).head
    assert isinstance(head, GCPHead) and head.normalise.spec.trace_scale
    default = factory.head_options(Config().validate(), "eigen")  # the default head: e = tr(S)/d, d = 32
    assert default["fn"] is eigpool.shifted_sqrt(1 / 32) and default["trace_scale"] is True
    plain = factory.head_options(Config(function="sqrt").validate(), "eigen")
    assert plain["fn"] == "sqrt" and plain["trace_scale"] is False
    seb = factory.head_options(Config(seb=True).validate(), "eigen")
    assert (seb["fn"], seb["seb"], seb["trace_scale"]) == ("sqrt", True, False)


@pytest.mark.parametrize("settings, message", [
    ({"function": "sqrt", "shift": 0.5}, "shift applies to function 'shifted_sqrt'"),
    ({"function": "cbrt"}, "function must be one of"),
    ({"function": "shifted_sqrt", "shift": 0}, "shift must be a finite number > 0"),
    ({"function": "ns_polynomial", "method": "newton_schulz"}, "apply to method 'eigen' only"),
    ({"function": "ns_polynomial", "seb": True}, "seb scales the matrix square root"),
    ({"function": "sqrt", "head": "avg", "clip_scope": "layers"}, "clip_scope must be one of"),
])
def test_bad_study_settings_raise(settings, message):
    with pytest.raises(SettingsError, match=message):
        Config(**settings).validate()


def test_ns_polynomial_head_trains_as_newton_schulz(tmp_path):
    """The same function and the same derivative, by eigendecomposition and by the iteration: the same training run
    to round-off (one epoch; the trajectories of longer runs drift apart at the float32 round-off of the backbone)."""
    runs = {}
    for name, settings in (("ns", {"method": "newton_schulz"}), ("spectral", {"function": "ns_polynomial"})):
        config = Config(**(TINY | settings | {"epochs": 1}), out_dir=str(tmp_path), name=name).validate()
        runs[name] = train(config).history[0]
    for key in ("train_loss", "val_loss", "test_loss", "grad_norm_head", "spectrum_eff_rank"):
        assert runs["spectral"][key] == pytest.approx(runs["ns"][key], rel=1e-5), key


def test_aggregate_mean_and_spread():
    rows = [{"setting": "s", "head": "h", "final_test_acc": a, "grad_norm_backbone": 1.0, "grad_norm_head": 2.0,
             "clip_fraction": 0.0, "spectrum_eff_rank": 3.0, "spectrum_small": 1.0} for a in (0.5, 0.7, 0.9)]
    rows.append({"setting": "s", "head": "h", "final_test_acc": None})
    (cell,) = compare.aggregate(rows)
    assert (cell["n"], cell["diverged"], cell["min"], cell["max"]) == (3, 1, 0.5, 0.9)
    assert cell["mean"] == pytest.approx(0.7) and cell["std"] == pytest.approx(0.2)
    assert "| s | h | 3 (+1 diverged) | 0.700 | 0.200 | 0.500 - 0.900 |" in compare.markdown_table([cell])


def test_compare_over_seeds(tmp_path, capsys):
    settings = ["synthetic_classes=2", "synthetic_train=4", "synthetic_val=2", "synthetic_test=2", "batch_size=4",
                "epochs=1", "lr_steps=[1]", "reduction=3"]
    argv = ["--settings", "small-50", "--heads", "avg", "gcp-ns-spectral", "--seeds", "0", "1", "--out-dir",
            str(tmp_path), "--figures", str(tmp_path / "figures"), "--set", *settings]
    assert compare.main(argv) == 0
    table = capsys.readouterr().out
    assert "| small-50 | avg | 2 |" in table and "| small-50 | gcp-ns-spectral | 2 |" in table
    with open(tmp_path / "runs.csv", newline="") as fh:
        assert [(r["head"], r["seed"]) for r in csv.DictReader(fh)] == [("avg", "0"), ("avg", "1"),
                                                                       ("gcp-ns-spectral", "0"),
                                                                       ("gcp-ns-spectral", "1")]
    assert os.path.isfile(tmp_path / "figures" / "compare_small-50_training.png")
    assert compare.main(argv) == 0  # finished runs are reused
    # A bad setting, and a finished run whose settings differ from the ones asked for, are errors (exit status 2).
    assert compare.main(["--settings", "small-50", "--heads", "avg", "--seeds", "0", "--out-dir", str(tmp_path),
                         "--set", "function=sqrt", "shift=0.3"]) == 2
    assert compare.main([*argv[:-len(settings)], *settings[:-1], "reduction=4"]) == 2
    assert "holds a run with other settings" in capsys.readouterr().err
