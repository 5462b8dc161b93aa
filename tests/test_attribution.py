"""Eigenvalue attribution (eigpool.models.attribution): the definitions' mathematical properties, against independent
references (SciPy's sqrtm, a per-position loop, torch autograd through the unmodified model)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from eigpool.backends.torch import GCPHead  # noqa: E402
from eigpool.models import attribution as A  # noqa: E402

D = 6  # covariance size of the test head


def _model(seb: bool = False, truncate: int = 0, seed: int = 0) -> tuple[nn.Module, A.GCPParts]:
    """A small float64 GCP classifier: two convolutions, GCPHead (reduction to D), linear layer; eval mode."""
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 16, 3, stride=2, padding=1),
                             nn.BatchNorm2d(16), nn.ReLU())
    head = GCPHead(16, reduction=D, seb=seb, truncate=truncate)
    classifier = nn.Linear(head.out_features, 5)
    model = nn.Sequential(backbone, head, classifier).double().eval()
    return model, A.gcp_parts(backbone, head, classifier)


def _batch(seed: int = 1, n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 12, 12, generator=gen, dtype=torch.float64), torch.arange(n) % 5


HEADS = [pytest.param({}, id="sqrt"), pytest.param({"seb": True}, id="seb"), pytest.param({"truncate": 2}, id="trunc")]


# ---------------------------------------------------------------------------------------------------------------------
# Groups.

def test_groups_resolve_and_partition_covers_the_spectrum():
    assert A.smallest(2).indices(6) == range(0, 2)
    assert A.largest(2).indices(6) == range(4, 6)
    assert A.band(1, 4).indices(6) == range(1, 4)
    assert A.smallest(0).indices(6) == range(0, 0)
    bands = A.partition(7, 3)
    assert [i for g in bands for i in g.indices(7)] == list(range(7))
    mask = A.largest(2).mask(6, torch.zeros(1))
    assert mask.tolist() == [0, 0, 0, 0, 1, 1]


@pytest.mark.parametrize("make, message", [
    (lambda: A.smallest(7).indices(6), "does not fit"),
    (lambda: A.band(3, 2), "a=3, b=2"),
    (lambda: A.EigenGroup("middle", 1), "kind must be"),
    (lambda: A.partition(4, 5), "parts must be in"),
    (lambda: A.EigenGroup("band", 1), "required by kind 'band'"),
    (lambda: A.EigenGroup("largest", 1, 3), "required by kind 'band'"),
], ids=["smallest(7) of 6", "band(3, 2)", "kind='middle'", "partition(4, 5)", "EigenGroup('band', 1)",
        "EigenGroup('largest', 1, 3)"])
def test_bad_groups_raise(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# ---------------------------------------------------------------------------------------------------------------------
# Perturbation.

@pytest.mark.parametrize("options", HEADS)
def test_parts_reproduce_the_model_and_the_empty_group_changes_nothing(options):
    model, parts = _model(**options)
    x, _ = _batch()
    base, perturbed = A.perturbation_logits(parts, x, [A.smallest(0), A.band(2, 2), A.largest(D)], alpha=0.0)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(base, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(perturbed[0], expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(perturbed[1], expected, rtol=1e-10, atol=1e-12)
    # alpha = 1 leaves every group in place.
    _, same = A.perturbation_logits(parts, x, [A.largest(3)], alpha=1.0)
    torch.testing.assert_close(same[0], expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("options", HEADS)
def test_removing_every_eigenvalue_gives_the_logits_of_the_zero_covariance(options):
    _, parts = _model(**options)
    x, _ = _batch()
    _, perturbed = A.perturbation_logits(parts, x, [A.smallest(D), A.largest(D)])
    zero = A.logits_from_covariance(parts, torch.zeros(x.shape[0], D, D, dtype=torch.float64), torch.float64)
    torch.testing.assert_close(perturbed, zero.detach().expand(2, -1, -1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 2.0])
def test_perturbed_logits_match_a_scipy_reference(alpha):
    _, parts = _model()
    x, _ = _batch()
    group = A.band(1, 4)
    _, perturbed = A.perturbation_logits(parts, x, [group], alpha=alpha)
    state = A.eigen_state(parts, x)
    W = parts.classifier.weight.detach().numpy()
    b = parts.classifier.bias.detach().numpy()
    rows, cols = np.triu_indices(D)
    for s in range(x.shape[0]):
        l, U = np.linalg.eigh(state.S[s].detach().numpy())
        l = np.clip(l, 0, None)
        l[1:4] *= alpha
        F = scipy.linalg.sqrtm((U * l) @ U.T).real
        np.testing.assert_allclose(perturbed[0, s].numpy(), W @ F[rows, cols] + b, rtol=1e-7, atol=1e-9)


def test_group_drops_of_a_partition_add_up_for_the_linear_square_root_head():
    # F = sum_i sqrt(l_i) u_i u_i^T is linear in the eigen-components: the drops of disjoint groups add up to the drop
    # of removing all of them (up to the eigenvalue floor, sqrt(d eps max l)).
    _, parts = _model()
    x, _ = _batch()
    groups = A.partition(D, 3)
    base, perturbed = A.perturbation_logits(parts, x, [*groups, A.smallest(D)])
    drops = base - perturbed
    torch.testing.assert_close(drops[:3].sum(0), drops[3], rtol=1e-6, atol=1e-7)


def test_seb_drops_are_not_additive():
    # The SEB gain (1 + ||R||_F) depends on the whole spectrum: the additivity above is a property of the linear head,
    # not of the definition, and the test of it can fail.
    _, parts = _model(seb=True)
    x, _ = _batch()
    base, perturbed = A.perturbation_logits(parts, x, [*A.partition(D, 3), A.smallest(D)])
    drops = base - perturbed
    assert (drops[:3].sum(0) - drops[3]).abs().max() > 1e-4


def test_projecting_the_group_out_of_every_position_is_the_spectral_removal():
    # Definition 2 at all positions at once: (I - beta P_G) S (I - beta P_G) = S'(G, alpha) with beta = 1 - sqrt(alpha).
    _, parts = _model()
    x, _ = _batch()
    state = A.eigen_state(parts, x)
    group, alpha = A.band(2, 5), 0.25
    P = (state.U * group.mask(D, state.l)) @ state.U.transpose(-1, -2)
    Y = state.Xc - (1 - alpha**0.5) * P @ state.Xc
    projected = Y @ Y.transpose(-1, -2) / Y.shape[-1]
    torch.testing.assert_close(projected.detach(), A.perturbed_covariance(state.l, state.U, group, alpha),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("options, alpha", [({}, 0.0), ({"seb": True}, 0.0), ({}, 0.25)], ids=["sqrt", "seb", "alpha"])
def test_perturbation_map_matches_a_per_position_loop(options, alpha):
    _, parts = _model(**options)
    x, y = _batch(n=2)
    group = A.smallest(3)
    maps = A.perturbation_map(parts, x, y, group, alpha=alpha, chunk=7)
    state = A.eigen_state(parts, x)
    B, d, h, w = state.R.shape
    assert maps.shape == (B, h, w)
    P = (state.U * group.mask(d, state.l)) @ state.U.transpose(-1, -2)
    with torch.no_grad():
        base = A.logits_from_covariance(parts, state.S, torch.float64)
        for s in range(B):
            for n in (0, 5, h * w - 1):
                Xc = state.Xc[s].clone()
                Xc[:, n] = Xc[:, n] - (1 - alpha**0.5) * P[s] @ Xc[:, n]
                z = A.logits_from_covariance(parts, (Xc @ Xc.T / (h * w))[None], torch.float64)
                assert maps[s].flatten()[n].item() == pytest.approx((base[s, y[s]] - z[0, y[s]]).item(), abs=1e-12)


def test_accuracy_curves_endpoints():
    model, parts = _model()
    x, y = _batch(n=10)
    batches = [(x[:6], y[:6]), (x[6:], y[6:])]
    rows = A.accuracy_curves(parts, batches, ks=[0, 2, D])
    by = {(r["removed"], r["k"]): r for r in rows}
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).double().mean().item()
    assert by["smallest", 0]["accuracy"] == pytest.approx(accuracy)
    assert by["largest", 0]["score_drop"] == pytest.approx(0, abs=1e-12)
    # Removing all D eigenvalues from either end is the same perturbation.
    assert by["smallest", D]["accuracy"] == by["largest", D]["accuracy"]
    assert by["smallest", D]["score_drop"] == pytest.approx(by["largest", D]["score_drop"], abs=1e-10)
    assert all(r["n"] == 10 for r in rows)


# ---------------------------------------------------------------------------------------------------------------------
# Back-propagation.

@pytest.mark.parametrize("options", HEADS)
def test_backprop_groups_of_a_partition_add_up_to_the_full_gradient(options):
    model, parts = _model(**options)
    x, y = _batch()
    groups = [*A.partition(D, 3), A.smallest(D)]
    maps = A.backprop_attribution(parts, x, y, groups)
    assert all(p.grad is None for p in model.parameters())
    # The full group passes the whole gradient: autograd through the unmodified model.
    xx = x.clone().requires_grad_(True)
    model(xx).gather(1, y[:, None]).sum().backward()
    torch.testing.assert_close(maps.grad_input[3], xx.grad, rtol=1e-9, atol=1e-14)
    for field in ("grad_S", "grad_R", "grad_input", "feature", "input"):
        value = getattr(maps, field)
        torch.testing.assert_close(value[:3].sum(0), value[3], rtol=1e-9, atol=1e-14)
    assert maps.input.shape == (len(groups), 3, 12, 12)
    assert maps.feature.shape == (len(groups), 3, 6, 6)


def test_feature_map_sums_to_twice_the_first_order_eigenvalue_change():
    # sum_n map_G(n) = 2 sum_{i in G} l_i dz_y/dl_i, with dz_y/dl_i from autograd through U diag(l) U^T (U fixed).
    _, parts = _model(seb=True)
    x, y = _batch()
    group = A.band(2, 5)
    maps = A.backprop_attribution(parts, x, y, [group])
    state = A.eigen_state(parts, x)
    l = state.l.clone().requires_grad_(True)
    S = (state.U * l[:, None, :]) @ state.U.transpose(-1, -2)
    A.logits_from_covariance(parts, S, torch.float64).gather(1, y[:, None]).sum().backward()
    expected = 2 * (state.l * l.grad * group.mask(D, state.l)).sum(-1)
    torch.testing.assert_close(maps.feature[0].sum((-2, -1)), expected, rtol=1e-8, atol=1e-12)


def test_upsample_gives_the_image_shape():
    maps = torch.rand(2, 3, 4, 5)
    assert A.upsample(maps, (16, 20)).shape == (2, 3, 16, 20)
    torch.testing.assert_close(A.upsample(torch.ones(1, 4, 4), (8, 8)), torch.ones(1, 8, 8))


# ---------------------------------------------------------------------------------------------------------------------
# The command and the study driver, end to end on a tiny checkpoint.

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A one-epoch eigpool-train run on 8 synthetic images (d = 4), in a temporary folder."""
    from eigpool.models.config import Config
    from eigpool.models.train import train

    out = tmp_path_factory.mktemp("runs")
    config = Config(synthetic_classes=2, synthetic_train=4, synthetic_val=1, synthetic_test=3, epochs=1, lr_steps=[1],
                    batch_size=4, reduction=4, resize=[32], crop=None, progress=False, out_dir=str(out), name="tiny",
                    threads=1).validate()
    return train(config).run_dir


def test_command_writes_figures_and_csv(tiny_run, tmp_path):
    import csv

    from eigpool.models import attribute

    out = tmp_path / "attribution"
    assert attribute.main([tiny_run, "--out", str(out), "--images", "2", "--bands", "2", "--threads", "1"]) == 0
    for name in ("curves.png", "spectrum.png", "groups.png", "perturbation_maps.png", "backprop_maps.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "curves.csv") as fh:
        curves = list(csv.DictReader(fh))
    assert [(r["removed"], int(r["k"])) for r in curves] == [(s, k) for s in ("smallest", "largest") for k in range(5)]
    with open(out / "groups.csv") as fh:
        assert [r["group"] for r in csv.DictReader(fh)] == [g.name for g in A.partition(4, 2)]
    with open(out / "maps.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 3 * 2 * 2  # map kinds x bands x images
    # k = 0 is the model itself: its accuracy on the test split.
    model, config, _ = attribute.load_model(tiny_run)
    from eigpool.models.data import build_datasets

    test = build_datasets(config).test
    with torch.no_grad():
        accuracy = (model(test.images).argmax(1) == test.targets).double().mean().item()
    assert float(curves[0]["accuracy"]) == pytest.approx(accuracy)


def test_command_maps_one_image_file(tiny_run, tmp_path):
    from PIL import Image

    from eigpool.models import attribute

    picture = tmp_path / "picture.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(picture)
    out = tmp_path / "one"
    assert attribute.main([tiny_run, "--out", str(out), "--image", str(picture), "--bands", "2", "--target", "1"]) == 0
    assert (out / "backprop_maps.png").is_file() and (out / "perturbation_maps.png").is_file()
    assert not (out / "curves.csv").exists()


def test_study_models_differ_only_in_the_head():
    from eigpool.models.study import MODELS, study_config

    configs = {m: study_config(m, "small", None, {"epochs": 3}, "runs", seb_lr=0.01).to_dict() for m in MODELS}
    assert configs["truncate"]["truncate"] == configs["plain"]["reduction"] // 2
    assert configs["seb"]["seb"] and not configs["plain"]["seb"]
    expected = {"truncate": {"name", "truncate"}, "seb": {"name", "seb"}, "seb-lr": {"name", "seb", "lr"}}
    for model, keys in expected.items():
        assert {k for k in configs["plain"] if configs["plain"][k] != configs[model][k]} == keys
    assert configs["seb-lr"]["lr"] == 0.01
    with pytest.raises(ValueError, match="seb-lr"):
        study_config("seb-lr", "small", None, {}, "runs")


def test_spectrum_stats_match_the_eigenvalues():
    _, parts = _model()
    x, y = _batch(n=5)
    spectra = []
    A.group_effects(parts, [(x[:2], y[:2]), (x[2:], y[2:])], [A.smallest(1)], spectra=spectra)
    rows = A.spectrum_stats(torch.cat(spectra))
    l = np.clip(np.linalg.eigvalsh(A.eigen_state(parts, x).S.detach().numpy()), 0, None)
    assert [r["index"] for r in rows] == list(range(D))
    np.testing.assert_allclose([r["mean"] for r in rows], l.mean(0), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose([r["median"] for r in rows], np.median(l, 0), rtol=1e-10, atol=1e-14)
    assert all(r["n"] == 5 for r in rows)
    with pytest.raises(ValueError, match="must be \\(n, d\\)"):
        A.spectrum_stats(torch.zeros(0, D))
