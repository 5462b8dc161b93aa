"""torch.nn layers (CovariancePooling, MatrixFunction, GCPHead)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import scipy.linalg as sl
import torch
from conftest import spd
from torch import nn

import eigpool
from eigpool.backends.torch import CovariancePooling, GCPHead, MatrixFunction

F64 = torch.float64


def batch_spd(seeds, spectrum) -> torch.Tensor:
    return torch.tensor(np.stack([spd(s, spectrum) for s in seeds]), dtype=F64)


def test_covariance_pooling_matches_numpy_cov():
    x = torch.randn(3, 5, 4, 6, dtype=torch.float32)
    S = CovariancePooling()(x)
    assert S.shape == (3, 5, 5) and S.dtype == torch.float32
    for b in range(3):
        ref = np.cov(x[b].double().reshape(5, -1).numpy(), bias=True)
        np.testing.assert_allclose(S[b].double().numpy(), ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(CovariancePooling()(x.flatten(2)), S, rtol=0, atol=0)


SCIPY = {
    "sqrt": lambda S: np.real(sl.sqrtm(S)),
    "invsqrt": lambda S: np.linalg.inv(np.real(sl.sqrtm(S))),
    "log": lambda S: np.real(sl.logm(S)),
    "power": lambda S: np.real(sl.fractional_matrix_power(S, 0.7)),
}


@pytest.mark.parametrize("fn", SCIPY)
def test_matrix_function_eigen_matches_scipy(fn):
    S = batch_spd([1, 2], [0.3, 0.9, 1.6, 4.0])
    out = MatrixFunction(fn=fn, p=0.7 if fn == "power" else None)(S)
    for b in range(2):
        np.testing.assert_allclose(out[b].numpy(), SCIPY[fn](S[b].numpy()), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("fn", ["sqrt", "invsqrt"])
def test_matrix_function_newton_schulz_is_the_core_iteration(fn):
    S = batch_spd([3], [0.3, 0.9, 1.6, 4.0])
    out = MatrixFunction(method="newton_schulz", fn=fn, iterations=7)(S)
    core = (eigpool.ns_sqrtm if fn == "sqrt" else eigpool.ns_invsqrtm)(S[0].numpy(), iterations=7)
    np.testing.assert_allclose(out[0].numpy(), core, rtol=1e-12, atol=1e-12)
    # Seven steps on this well-conditioned spectrum are close to the exact function (an independent check).
    np.testing.assert_allclose(out[0].numpy(), SCIPY[fn](S[0].numpy()), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("grad", ["taylor", "pade", "clip", "power_iteration", "eigh"])
def test_matrix_function_approximate_kernels_give_the_exact_gradient_on_well_separated_spectra(grad):
    # Ratios l_j / l_i <= 0.5: Taylor-100's error r^101 and the Pade kernel's (delta / x)^4 are far below 1e-8, and the
    # power iteration kernel with enough steps converges (its error is r^n).
    options = {"iterations": 80} if grad == "power_iteration" else None
    S = batch_spd([4], [0.5, 1.0, 2.0, 4.0]).requires_grad_(True)
    G = torch.randn(1, 4, 4, dtype=F64)
    (exact,) = torch.autograd.grad(MatrixFunction(fn="sqrt")(S), S, G)
    layer = MatrixFunction(fn="sqrt", grad=grad, kernel_options=options)
    (approx,) = torch.autograd.grad(layer(S), S, G)
    torch.testing.assert_close(approx, exact, rtol=1e-8, atol=1e-10)


def test_matrix_function_gradcheck_and_truncation_and_seb():
    S = batch_spd([5], [0.2, 0.8, 1.7, 3.0]).requires_grad_(True)
    for layer in (MatrixFunction(fn="power", p=0.5, truncate=1), MatrixFunction(seb=True)):
        assert torch.autograd.gradcheck(lambda A, layer=layer: layer((A + A.mT) / 2), (S,))
    l, U = np.linalg.eigh(S[0].detach().numpy())
    kept = np.sqrt(l) * (np.arange(4) >= 1)
    np.testing.assert_allclose(MatrixFunction(truncate=1)(S)[0].detach().numpy(), (U * kept) @ U.T, atol=1e-12)
    gain = 1 + np.sqrt(np.sum(l * np.exp(-2 * l)))
    np.testing.assert_allclose(MatrixFunction(seb=True)(S)[0].detach().numpy(), gain * (U * np.sqrt(l)) @ U.T,
                               rtol=1e-12)


def test_gcp_head_computes_in_float64_and_returns_the_input_dtype():
    torch.manual_seed(0)
    head = GCPHead(6, reduction=None)
    x = torch.rand(2, 6, 5, 5, dtype=torch.float32)
    v = head(x)
    assert v.shape == (2, head.out_features) and head.out_features == 21 and v.dtype == torch.float32
    for b in range(2):
        S = np.cov(x[b].double().reshape(6, -1).numpy(), bias=True)
        Q = np.real(sl.sqrtm(S))
        ref = Q[np.triu_indices(6)]
        # float64 inside: the only float32 rounding is the input's and the final cast.
        np.testing.assert_allclose(v[b].double().numpy(), ref, rtol=2e-7, atol=1e-7)


def test_gcp_head_with_reduction_shapes_state_dict_and_eval():
    torch.manual_seed(1)
    head = GCPHead(16, reduction=8)
    assert head.out_features == 36
    x = torch.randn(4, 16, 6, 6)
    head(x).sum().backward()  # one training step's statistics: running mean and variance change
    assert head.reduce[0].weight.grad is not None and torch.isfinite(head.reduce[0].weight.grad).all()
    twin = GCPHead(16, reduction=8)
    twin.load_state_dict(head.state_dict())
    head.eval()
    twin.eval()
    with torch.no_grad():
        out = head(x)
        torch.testing.assert_close(twin(x), out, rtol=0, atol=0)
        # In eval mode each sample is independent of the others in the batch.
        torch.testing.assert_close(head(x[1:2]), out[1:2], rtol=1e-6, atol=1e-7)
    assert not out.requires_grad


def test_gcp_head_on_singular_covariances_has_finite_gradients():
    # 3 x 3 map: N - 1 = 8 < d = 12, so the covariance has at least four zero eigenvalues (the floor applies).
    torch.manual_seed(2)
    head = GCPHead(12, reduction=None)
    x = torch.randn(2, 12, 3, 3, dtype=F64, requires_grad=True)
    head(x).square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().max() > 0


def test_gcp_head_gradcheck():
    head = GCPHead(4, reduction=None, fn="invsqrt")
    x = torch.randn(2, 4, 3, 4, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(head, (x,))


@pytest.mark.parametrize("kwargs", [
    dict(method="newton_schulz", truncate=2), dict(method="eigen", fn="sqrt", seb=True, truncate=1),
    dict(method="newton_schulz", fn="sqrt", iterations=3), dict(fn="log", grad="taylor", kernel_options={"degree": 50}),
])
def test_gcp_head_variants_run_forward_and_backward(kwargs):
    if kwargs.get("method") == "newton_schulz" and kwargs.get("truncate"):
        with pytest.raises(ValueError, match="newton_schulz"):
            GCPHead(8, reduction=None, **kwargs)
        return
    head = GCPHead(8, reduction=None, **kwargs)
    x = torch.rand(2, 8, 5, 5, requires_grad=True)
    head(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_repr_shows_the_configuration():
    text = repr(GCPHead(32, reduction=16, grad="taylor", kernel_options={"degree": 20}))
    for part in ("in_channels=32", "reduction=16", "out_features=136", "method='eigen'", "grad='taylor'",
                 "kernel_options={'degree': 20}", "compute_dtype='float64'"):
        assert part in text
    assert "iterations=5" in repr(MatrixFunction(method="newton_schulz"))


BAD_CONFIGURATIONS = [
    (MatrixFunction, dict(method="svd"), "method must be one of"),
    (MatrixFunction, dict(fn="cbrt"), "fn must be one of"),
    (MatrixFunction, dict(method="newton_schulz", fn="log"), "fn must be one of"),
    (MatrixFunction, dict(grad="magic"), "grad must be one of"),
    (MatrixFunction, dict(fn="power"), "p is the exponent"),
    (MatrixFunction, dict(fn="sqrt", p=2.0), "p is the exponent"),
    (MatrixFunction, dict(fn="power", p=float("nan")), "finite real number"),
    (MatrixFunction, dict(iterations=0), "iterations must be"),
    (MatrixFunction, dict(truncate=-1), "truncate must be"),
    (MatrixFunction, dict(method="newton_schulz", grad="taylor"), "newton_schulz"),
    (MatrixFunction, dict(fn="log", truncate=2), "undefined"),
    (MatrixFunction, dict(fn="invsqrt", seb=True), "seb=True"),
    (MatrixFunction, dict(grad="exact", kernel_options={"degree": 3}), "unexpected option"),
    (MatrixFunction, dict(grad="taylor", kernel_options={"order": 3}), "unexpected option"),
    (MatrixFunction, dict(compute_dtype="float16"), "compute_dtype"),
    (GCPHead, dict(in_channels=0), "in_channels must be"),
    (GCPHead, dict(in_channels=8, reduction=0), "reduction must be"),
    (GCPHead, dict(in_channels=8, reduction=None, truncate=8), "truncate must be smaller"),
]


BAD_IDS = [f"{layer.__name__}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
           for layer, kwargs, _ in BAD_CONFIGURATIONS]


@pytest.mark.parametrize(("layer", "kwargs", "match"), BAD_CONFIGURATIONS, ids=BAD_IDS)
def test_bad_configurations_fail_when_the_layer_is_built(layer, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        layer(**kwargs)


def test_bad_input_shape_names_the_layer():
    with pytest.raises(ValueError, match=r"GCPHead: input must be \(B, 8, H, W\)"):
        GCPHead(8, reduction=None)(torch.rand(2, 7, 3, 3))
    with pytest.raises(ValueError, match="CovariancePooling"):
        CovariancePooling()(torch.rand(7, 3))



# ---------------------------------------------------------------------------------------------------------------------
# The head under tracing: compile, export, fake tensors, torch.func; and one owner for every option.

def _model(**kwargs):
    torch.manual_seed(0)
    return nn.Sequential(GCPHead(8, reduction=4, **kwargs), nn.Linear(10, 3)).double()


@pytest.mark.parametrize(("kwargs", "backend"), [({}, "inductor"), ({"path": "gram"}, "aot_eager"),
                                                 ({"method": "newton_schulz"}, "aot_eager")],
                         ids=["dense-inductor", "gram-aot_eager", "newton_schulz-aot_eager"])
def test_compile_fullgraph_runs_forward_and_backward_like_eager(kwargs, backend):
    # fullgraph=True: any graph break (a data-dependent branch, a host read, a custom rule Dynamo cannot trace)
    # raises instead of falling back to eager.
    model = _model(**kwargs)
    compiled = torch.compile(copy.deepcopy(model), fullgraph=True, backend=backend)
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y_eager = model(x1)
    y_eager.square().sum().backward()
    y_compiled = compiled(x2)
    y_compiled.square().sum().backward()
    torch.testing.assert_close(y_compiled, y_eager, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kwargs", [{}, {"path": "gram"}, {"seb": True}], ids=["dense", "gram", "seb"])
def test_export_of_a_model_with_a_gcp_head_matches_eager(kwargs):
    model = _model(**kwargs).eval()
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    program = torch.export.export(model, (x,))
    other = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(program.module()(other), model(other), rtol=1e-12, atol=1e-13)


def test_head_on_fake_and_meta_tensors_and_under_vmap_of_grad():
    from torch._subclasses.fake_tensor import FakeTensorMode

    head = GCPHead(8, reduction=None).double()
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        out = head(mode.from_tensor(torch.randn(2, 8, 3, 3, dtype=torch.float64)))
        assert out.shape == (2, 36) and out.dtype == torch.float64
    assert head(torch.empty(2, 8, 3, 3, device="meta", dtype=torch.float32)).shape == (2, 36)
    # Per-sample gradients of a classifier on the head, against a loop.
    fc = nn.Linear(36, 3).double()
    params = {k: v.detach() for k, v in fc.named_parameters()}
    batch = torch.randn(4, 8, 3, 3, dtype=torch.float64)

    def loss(p, x):
        return torch.func.functional_call(fc, p, (head(x[None]),)).square().sum()

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, batch)
    for i in range(4):
        torch.testing.assert_close(per_sample["weight"][i], torch.func.grad(loss)(params, batch[i])["weight"])


def test_float32_head_is_the_float64_composition_on_both_paths():
    # One floor for every route: resolved against the compute dtype (float64), so the head on float32 features, the
    # Gram route and the composition of the public functions on the features in float64 agree (they differed by
    # 4e-4 when the floor was resolved against float32 in one place and float64 in another).
    torch.manual_seed(1)
    x = torch.rand(2, 16, 3, 3)  # N = 9 < d = 16: the automatic path is the Gram route
    head = GCPHead(16, reduction=None)
    composed = eigpool.triu_vec(head.normalise(eigpool.covariance(x.flatten(2).double(), compute_dtype=None)))
    for path in ("auto", "dense"):
        head.path = path
        torch.testing.assert_close(head(x).double(), composed, rtol=2e-6, atol=1e-7)


def test_layers_store_one_resolved_specification():
    head = GCPHead(16, reduction=8, fn="power", p=0.5, grad="taylor", kernel_options={"degree": 20},
                   compute_dtype="float32")
    spec = head.normalise.spec
    assert isinstance(spec, eigpool.SpectralSpec) and spec.grad == "taylor" and spec.compute_dtype == "float32"
    assert spec == eigpool.spectral_spec("power", p=0.5, grad="taylor", degree=20, compute_dtype="float32")
    assert head.compute_dtype == "float32"
