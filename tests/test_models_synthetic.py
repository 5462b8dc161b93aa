"""The embedded synthetic data set: deterministic, zero mean for every class, and the designed covariances."""

import pytest

torch = pytest.importorskip("torch")

from eigpool.models.synthetic import SYNTHETIC_VARIANTS, SyntheticFGVC, SyntheticSpec, class_covariances  # noqa: E402


def _patches(ds: SyntheticFGVC) -> torch.Tensor:
    """(n, cells, D) patch vectors, the inverse of the generator's patch-to-image layout."""
    p, s = ds.spec.patch, ds.spec.image_size
    x = ds.images.double().reshape(len(ds), 3, s // p, p, s // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(len(ds), (s // p) ** 2, ds.spec.dim)


def test_deterministic_and_splits_differ():
    spec = SyntheticSpec(num_classes=3)
    a, b = SyntheticFGVC("train", 4, spec), SyntheticFGVC("train", 4, spec)
    assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.images, SyntheticFGVC("test", 4, spec).images)
    assert not torch.equal(a.images, SyntheticFGVC("train", 4, SyntheticSpec(num_classes=3, seed=1)).images)
    assert a.images.shape == (12, 3, 32, 32) and a.images.dtype == torch.float32
    assert a.targets.tolist() == [0] * 4 + [1] * 4 + [2] * 4


@pytest.mark.parametrize("variant", sorted(SYNTHETIC_VARIANTS))
def test_class_covariance_spectra(variant):
    spec = SyntheticSpec(variant=variant, num_classes=4)
    cov = class_covariances(spec)
    s = torch.tensor(sorted(SYNTHETIC_VARIANTS[variant]), dtype=torch.float64)
    expected = torch.sort(torch.cat([s, torch.ones(spec.dim - len(s), dtype=torch.float64)])).values
    for c in range(4):
        torch.testing.assert_close(torch.linalg.eigvalsh(cov[c]), expected)
    # Same spectrum, different eigenvectors: the classes differ in second-order structure only.
    gaps = [float(torch.linalg.norm(cov[i] - cov[j])) for i in range(4) for j in range(i)]
    assert min(gaps) > 0.1 * float(s[-1] - s[0])


@pytest.mark.parametrize("variant", sorted(SYNTHETIC_VARIANTS))
def test_empirical_statistics_match_the_design(variant):
    # Without the nuisances each patch is an exact draw from N(0, Sigma_c).
    spec = SyntheticSpec(variant=variant, num_classes=2, gain_jitter=0.0, shared_jitter=0.0)
    ds = SyntheticFGVC("train", 40, spec)
    cov = class_covariances(spec)
    patches = _patches(ds)
    for c in range(2):
        x = patches[ds.targets == c].reshape(-1, spec.dim)  # 40 * 256 samples
        n = x.shape[0]
        # Mean 0 (first-order statistics shared): within 5 standard errors of each coordinate.
        assert (x.mean(0).abs() <= 5 * (torch.diagonal(cov[c]) / n).sqrt()).all()
        # Covariance: relative Frobenius error of order sqrt(D / n) ~ 0.03.
        emp = x.T @ x / n
        assert float(torch.linalg.norm(emp - cov[c]) / torch.linalg.norm(cov[c])) < 0.06


def test_nuisances_keep_the_mean_covariance():
    # E[g^2 Sigma_{c,i}] = E[g^2] Sigma_c with E[g^2] = 1 + j^2 / 3 for g ~ U(1 - j, 1 + j).
    spec = SyntheticSpec(num_classes=2, gain_jitter=0.3, shared_jitter=0.5)
    ds = SyntheticFGVC("val", 150, spec)
    x = _patches(ds)[ds.targets == 1].reshape(-1, spec.dim)
    expected = class_covariances(spec)[1] * (1 + 0.3**2 / 3)
    assert float(torch.linalg.norm(x.T @ x / len(x) - expected) / torch.linalg.norm(expected)) < 0.08


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"variant": "large"}, "variant must be one of"),
    ({"image_size": 31}, "multiple of patch"),
    ({"num_classes": 1}, "num_classes must be >= 2"),
    ({"gain_jitter": 1.0}, "gain_jitter must be in"),
], ids=["variant=large", "image_size=31", "num_classes=1", "gain_jitter=1"])
def test_bad_spec(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticSpec(**kwargs)


def test_bad_split():
    with pytest.raises(ValueError, match="split must be one of"):
        SyntheticFGVC("dev", 2)
