"""Heads and FGVCNet: every GCP method builds, runs forward and backward, and composes as forward_head o
forward_features; replacing the head (the hybrid swap) keeps the weights as the same tensors."""

import pytest

torch = pytest.importorskip("torch")

from eigpool.backends.torch import GCPHead  # noqa: E402
from eigpool.models.heads import AvgPoolHead, build_head, build_model, replace_head  # noqa: E402

METHODS = {
    "exact": {"method": "eigen"},
    "taylor": {"method": "eigen", "grad": "taylor"},
    "pade": {"method": "eigen", "grad": "pade"},
    "newton_schulz": {"method": "newton_schulz"},
    "truncation": {"method": "eigen", "truncate": 2},
    "seb": {"method": "eigen", "seb": True},
}


@pytest.mark.parametrize("options", METHODS.values(), ids=METHODS.keys())
def test_gcp_model_trains_one_step(options):
    torch.manual_seed(0)
    model = build_model("tiny", "gcp", 3, reduction=6, **options)
    x = torch.randn(4, 3, 16, 16)
    logits = model(x)
    assert logits.shape == (4, 3) and logits.dtype == torch.float32
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0])).backward()
    grads = [p.grad for p in model.backbone.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_gcp_head_sizes():
    head = build_head("gcp", 64, reduction=8)
    assert isinstance(head, GCPHead) and head.out_features == 36
    model = build_model("tiny", "gcp", 5, reduction=8)
    assert model.classifier.in_features == 36 and model.classifier.out_features == 5


def test_avg_head_is_the_spatial_mean():
    x = torch.randn(2, 7, 3, 5, dtype=torch.float64)
    head = build_head("avg", 7)
    assert isinstance(head, AvgPoolHead) and head.out_features == 7
    torch.testing.assert_close(head(x), x.flatten(2).sum(-1) / 15)


def test_forward_is_head_of_features():
    model = build_model("tiny", "gcp", 3, reduction=4).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_head(model.forward_features(x)))


def test_replace_head_keeps_the_tensors_and_changes_the_function():
    torch.manual_seed(0)
    model = build_model("tiny", "gcp", 3, reduction=6, method="newton_schulz", iterations=2).eval()
    x = torch.randn(2, 3, 16, 16)
    tensors = {k: id(v) for k, v in [*model.named_parameters(), *model.named_buffers()]}
    with torch.no_grad():
        before = model(x)
        replace_head(model, build_head("gcp", 64, reduction=6, method="eigen"))
        after = model(x)
    assert {k: id(v) for k, v in [*model.named_parameters(), *model.named_buffers()]} == tensors
    assert not model.head.training and model.head.normalise.method == "eigen"
    assert not torch.allclose(before, after)  # two Newton-Schulz steps are far from the exact square root


def test_bad_head_arguments():
    with pytest.raises(ValueError, match="kind must be one of"):
        build_head("max", 8)
    with pytest.raises(ValueError, match="takes no options"):
        build_head("avg", 8, reduction=4)
    with pytest.raises(ValueError, match="differ in names or shapes"):
        replace_head(build_model("tiny", "gcp", 3, reduction=4), build_head("gcp", 64, reduction=5))
