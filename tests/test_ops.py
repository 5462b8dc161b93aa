"""Generic tests driven by the table of operations (ops.py): every operation on every array namespace present, against
its independent reference, with its bad inputs, finite differences, and every PyTorch mode and transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ops import BAD_CALLS, BAD_IDS, OPS, SPECTRA, Op, example_input

import eigpool
from eigpool.validation import check_vjp

F64 = torch.float64


# ---------------------------------------------------------------------------------------------------------------------
# Namespaces: (asarray from float64 NumPy, keeping the dtype; back to NumPy).

def _readonly(x):
    a = np.array(x)
    a.flags.writeable = False
    return a


def _cupy():
    try:
        import eigpool.backends.cupy  # noqa: F401  (raises without a GPU)
    except (ImportError, RuntimeError) as error:
        pytest.skip(f"CuPy cannot run here: {error}")
    import cupy

    return cupy.asarray, cupy.asnumpy


def _strict():
    strict = pytest.importorskip("array_api_strict")
    return strict.asarray, np.asarray


def _jax():
    jnp = pytest.importorskip("jax.numpy")
    return jnp.asarray, np.asarray


NAMESPACES = {
    "numpy": lambda: (np.asarray, np.asarray),
    "numpy_readonly": lambda: (_readonly, np.asarray),  # fails if eigpool writes into an input
    "array_api_strict": _strict,
    "torch": lambda: (lambda x: torch.from_numpy(np.array(x)), lambda t: t.detach().numpy()),
    "cupy": _cupy,
    "jax": _jax,
}


@pytest.fixture(params=list(NAMESPACES))
def namespace(request):
    return request.param, *NAMESPACES[request.param]()


# ---------------------------------------------------------------------------------------------------------------------
# Forward, types and bad inputs on every namespace.

@pytest.mark.parametrize("op", [op for op in OPS if op.reference is not None], ids=lambda op: op.name)
def test_forward_matches_the_reference_and_keeps_the_array_type(op: Op, namespace):
    name, asarray, to_numpy = namespace
    x = example_input(op, seed=1)
    x_ns = asarray(x)
    out = op.fn(x_ns)
    # NumPy reductions return NumPy scalars for 0-d results (the trace of a function of the eigenvalues).
    assert type(out) is type(x_ns) or name.startswith("numpy") and isinstance(out, np.generic)
    assert out.dtype == x_ns.dtype
    ref = np.asarray(op.reference(x))
    assert tuple(out.shape) == ref.shape
    np.testing.assert_allclose(to_numpy(out), ref, rtol=1e-9, atol=1e-11 * np.abs(ref).max())


@pytest.mark.parametrize("op", [op for op in OPS if op.tape], ids=lambda op: op.name)
def test_pullback_on_every_namespace_is_the_numpy_one(op: Op, namespace):
    # eigpool.vjp records the same rules on any array library (torch has its own autodiff: tested below).
    name, asarray, to_numpy = namespace
    if name in ("torch", "jax"):
        pytest.skip(f"{name} differentiates its arrays itself (the gradcheck, transform and check_grads tests)")
    x = example_input(op, seed=8, spectrum="triple")
    out, pullback = eigpool.vjp(op.fn, x)
    w = np.random.default_rng(9).standard_normal(np.shape(out))
    out_ns, pullback_ns = eigpool.vjp(op.fn, asarray(x))
    np.testing.assert_allclose(to_numpy(out_ns), out, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(to_numpy(pullback_ns(asarray(w))[0]), pullback(w)[0], rtol=1e-10, atol=1e-12)


@pytest.mark.filterwarnings("error")  # the error alone: no warning (e.g. NumPy's on inf - inf) before it
@pytest.mark.parametrize(("op", "call"), BAD_CALLS, ids=BAD_IDS)
def test_bad_input_raises_a_clear_error(op: Op, call, namespace):
    name, asarray, _ = namespace
    bad = call.make(example_input(op))
    if isinstance(bad, np.ndarray):
        if name in ("torch", "cupy") and bad.dtype == np.complex128:
            pytest.skip("complex input is refused by dtype, the same check as for NumPy")
        bad = asarray(bad)
    with pytest.raises(call.error, match=call.match):
        op.fn(bad)


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_empty_batches_and_empty_matrices(op: Op):
    x = example_input(op)
    assert op.fn(np.zeros((0, *x.shape))).shape[0] == 0
    assert op.fn(torch.zeros((0, *x.shape), dtype=F64)).shape[0] == 0
    if op.kind == "matrix" and "truncate" not in op.name:  # a 0 x 0 matrix has no eigenvalue to truncate
        for empty in (np.zeros((2, 0, 0)), torch.zeros((2, 0, 0), dtype=F64)):
            out = op.fn(empty)
            assert out.shape[0] == 2


# ---------------------------------------------------------------------------------------------------------------------
# Derivatives: finite differences (NumPy), gradcheck and every torch.func transform (PyTorch).

DIFFERENTIABLE = [(op, spectrum) for op in OPS for spectrum in (op.spectra if op.kind == "matrix" else ("distinct",))
                  if (op.ties or spectrum == "distinct") and not (spectrum == "singular" and op.positive)]
DIFF_IDS = [f"{op.name}-{spectrum}" for op, spectrum in DIFFERENTIABLE]


@pytest.mark.parametrize(("op", "spectrum"), [c for c in DIFFERENTIABLE if c[0].tape],
                         ids=[i for c, i in zip(DIFFERENTIABLE, DIFF_IDS, strict=True) if c[0].tape])
def test_vjp_matches_finite_differences(op: Op, spectrum: str):
    result = check_vjp(op.fn, example_input(op, seed=2, spectrum=spectrum), step=1e-3)
    assert result.error <= 1e-7, str(result)


def _torch_fn(op: Op):
    """The op as a function of an unconstrained tensor: symmetric inputs go through sym(A) = (A + A^H) / 2 (with a
    materialised conjugate: PyTorch's batched forward gradients reject the tangent of a lazy conjugate view)."""
    if op.kind == "matrix" and op.symmetric:
        return lambda A: op.fn((A + (torch.conj_physical(A) if A.is_complex() else A).mT) / 2)
    return op.fn


def _tensor(op: Op, spectrum: str = "distinct", seed: int = 3) -> torch.Tensor:
    return torch.tensor(example_input(op, seed=seed, spectrum=spectrum), dtype=F64)


@pytest.mark.parametrize(("op", "spectrum"), DIFFERENTIABLE, ids=DIFF_IDS)
def test_gradcheck_with_batched_gradients_and_forward_mode(op: Op, spectrum: str):
    x = _tensor(op, spectrum).requires_grad_(True)
    assert torch.autograd.gradcheck(_torch_fn(op), (x,), check_batched_grad=True, check_forward_ad=True,
                                    check_batched_forward_grad=True)


SECOND = [(op, spectrum) for op, spectrum in DIFFERENTIABLE if op.second_order or spectrum == "distinct"]


@pytest.mark.parametrize(("op", "spectrum"), SECOND, ids=[f"{op.name}-{s}" for op, s in SECOND])
def test_gradgradcheck(op: Op, spectrum: str):
    x = _tensor(op, spectrum).requires_grad_(True)
    assert torch.autograd.gradgradcheck(_torch_fn(op), (x,), check_fwd_over_rev=True)


def _fd_jacobian(f, x: torch.Tensor, h: float = 1e-5) -> torch.Tensor:
    """Central-difference Jacobian, output shape + input shape (the independent reference of the transforms)."""
    columns = []
    for k in range(x.numel()):
        e = torch.zeros_like(x).view(-1)
        e[k] = h
        e = e.view_as(x)
        columns.append((f(x + e) - f(x - e)) / (2 * h))
    return torch.stack(columns, dim=-1).reshape(*f(x).shape, *x.shape)


TRANSFORMS = [(op, spectrum) for op, spectrum in DIFFERENTIABLE if spectrum in ("distinct", "scalar")]


@pytest.mark.parametrize(("op", "spectrum"), TRANSFORMS, ids=[f"{op.name}-{s}" for op, s in TRANSFORMS])
def test_torch_func_transforms_are_exact(op: Op, spectrum: str):
    # jacrev (vmap over vjp) and jacfwd (vmap over jvp) against central differences, at a scalar matrix too (where
    # autodiff through eigh divides 0 by 0); grad and vjp against jacrev; vmap against a loop over the batch.
    f, x = _torch_fn(op), _tensor(op, spectrum)
    jac = _fd_jacobian(f, x)
    tol = dict(rtol=1e-6, atol=1e-8 * max(1.0, jac.abs().max().item()))
    torch.testing.assert_close(torch.func.jacrev(f)(x), jac, **tol)
    torch.testing.assert_close(torch.func.jacfwd(f)(x), jac, **tol)
    w = torch.randn(f(x).shape, dtype=F64, generator=torch.Generator().manual_seed(4))
    grad = torch.func.grad(lambda x: (f(x) * w).sum())(x)
    torch.testing.assert_close(grad, torch.einsum("...,...ij->ij" if x.ndim == 2 else "...,...i->i", w, jac), **tol)
    out, pullback = torch.func.vjp(f, x)
    torch.testing.assert_close(pullback(w)[0], grad)
    t = torch.randn(x.shape, dtype=F64, generator=torch.Generator().manual_seed(5))
    _, tangent = torch.func.jvp(f, (x,), (t,))
    torch.testing.assert_close(tangent, (jac * t).sum(dim=tuple(range(-x.ndim, 0))), **tol)
    batch = torch.stack([x, _tensor(op, spectrum, seed=6)])
    torch.testing.assert_close(torch.func.vmap(f)(batch), torch.stack([f(b) for b in batch]))


HESSIAN = [(op, spectrum) for op, spectrum in TRANSFORMS if op.second_order or spectrum == "distinct"]


@pytest.mark.parametrize(("op", "spectrum"), HESSIAN, ids=[f"{op.name}-{s}" for op, s in HESSIAN])
def test_torch_func_hessian_matches_differences_of_the_gradient(op: Op, spectrum: str):
    f, x = _torch_fn(op), _tensor(op, spectrum)
    w = torch.randn(f(x).shape, dtype=F64, generator=torch.Generator().manual_seed(7))
    scalar = lambda x: (f(x) * w).sum()  # noqa: E731
    hessian = torch.func.hessian(scalar)(x)
    reference = _fd_jacobian(torch.func.grad(scalar), x)
    torch.testing.assert_close(hessian, reference, rtol=1e-5, atol=1e-7 * max(1.0, reference.abs().max().item()))


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_meta_and_fake_tensors_propagate_shapes_and_dtypes(op: Op):
    from torch._subclasses.fake_tensor import FakeTensorMode

    x = _tensor(op)
    expected = op.fn(x)
    for dtype in (F64, torch.float32):
        meta = op.fn(torch.empty(2, *x.shape, dtype=dtype, device="meta"))
        assert meta.device.type == "meta" and meta.dtype == dtype and meta.shape == (2, *expected.shape)
    with FakeTensorMode() as mode:
        fake = op.fn(mode.from_tensor(x))
        assert fake.shape == expected.shape and fake.dtype == F64


@pytest.mark.parametrize("op", [op for op in OPS if op.ties], ids=lambda op: op.name)
def test_per_sample_gradients_with_vmap_of_grad(op: Op):
    # torch.func's per-sample-gradient recipe: vmap(grad(loss)) over a batch, against a loop of autograd.
    f = _torch_fn(op)
    batch = torch.stack([_tensor(op, seed=s) for s in range(3)])
    loss = lambda x: f(x).pow(2).sum()  # noqa: E731
    per_sample = torch.func.vmap(torch.func.grad(loss))(batch)
    for x, g in zip(batch, per_sample, strict=True):
        x = x.clone().requires_grad_(True)
        loss(x).backward()
        torch.testing.assert_close(g, x.grad)


# ---------------------------------------------------------------------------------------------------------------------
# Complex Hermitian input: the ops marked ``complex`` on HPD matrices, against SciPy, finite differences (NumPy, the
# dot-product test for the real inner product Re tr(W^H Y)) and torch's complex gradcheck (conjugate Wirtinger
# convention), first and second order.

COMPLEX = [op for op in OPS if op.complex]
COMPLEX_DIFF = [(op, spectrum) for op in COMPLEX for spectrum in ("distinct", "repeated")
                if spectrum in op.spectra and (op.ties or spectrum == "distinct")]
COMPLEX_IDS = [f"{op.name}-{spectrum}" for op, spectrum in COMPLEX_DIFF]


@pytest.mark.parametrize("op", [op for op in COMPLEX if op.reference is not None], ids=lambda op: op.name)
def test_hermitian_input_matches_the_reference(op: Op, namespace):
    name, asarray, to_numpy = namespace
    x = example_input(op, seed=1, hermitian=True)
    x_ns = asarray(x)
    out = op.fn(x_ns)
    assert type(out) is type(x_ns) and out.dtype == x_ns.dtype
    ref = op.reference(x)
    np.testing.assert_allclose(to_numpy(out), ref, rtol=1e-9, atol=1e-11 * np.abs(ref).max())
    np.testing.assert_array_equal(to_numpy(out), to_numpy(out).conj().T)  # exactly Hermitian


@pytest.mark.parametrize(("op", "spectrum"), [c for c in COMPLEX_DIFF if c[0].tape],
                         ids=[i for c, i in zip(COMPLEX_DIFF, COMPLEX_IDS, strict=True) if c[0].tape])
def test_hermitian_vjp_matches_finite_differences(op: Op, spectrum: str):
    from eigpool.validation._finite_differences import central_difference, richardson

    rng = np.random.default_rng(11)
    x = example_input(op, seed=2, spectrum=spectrum, hermitian=True)
    out, pullback = eigpool.vjp(op.fn, x)
    w = rng.standard_normal(out.shape) + 1j * rng.standard_normal(out.shape)
    (grad,) = pullback(w)
    for _ in range(3):
        e = rng.standard_normal(x.shape) + 1j * rng.standard_normal(x.shape)
        e = (e + e.conj().T) / np.linalg.norm(e + e.conj().T)
        fd, *_ = richardson(central_difference(lambda xs: np.vdot(w, op.fn(xs[0])).real, [x], [e]), 1e-3, 4)
        assert abs(float(fd) - np.vdot(grad, e).real) <= 1e-7 * max(1.0, abs(float(fd)))


@pytest.mark.parametrize(("op", "spectrum"), COMPLEX_DIFF, ids=COMPLEX_IDS)
def test_hermitian_gradcheck_with_batched_gradients_and_forward_mode(op: Op, spectrum: str):
    x = torch.tensor(example_input(op, seed=3, spectrum=spectrum, hermitian=True)).requires_grad_(True)
    assert torch.autograd.gradcheck(_torch_fn(op), (x,), check_batched_grad=True, check_forward_ad=True,
                                    check_batched_forward_grad=True)


COMPLEX_SECOND = [(op, s) for op, s in COMPLEX_DIFF if op.second_order or s == "distinct"]


@pytest.mark.parametrize(("op", "spectrum"), COMPLEX_SECOND, ids=[f"{op.name}-{s}" for op, s in COMPLEX_SECOND])
def test_hermitian_gradgradcheck(op: Op, spectrum: str):
    # Forward over reverse where the op has a second-order rule: without one, the VJP is differentiated through
    # torch.linalg.eigh, whose complex backward fails under forward mode inside PyTorch (DiagonalScatterBackward0
    # returns a real gradient for a complex input; docs/spd.md, limits).
    x = torch.tensor(example_input(op, seed=3, spectrum=spectrum, hermitian=True)).requires_grad_(True)
    assert torch.autograd.gradgradcheck(_torch_fn(op), (x,), check_fwd_over_rev=op.second_order)


def test_spectra_table_is_what_the_tests_say():
    # The repeated spectra really are repeated (the ties tests test ties).
    assert len(set(SPECTRA["scalar"])) == 1 and len(set(SPECTRA["repeated"])) == 2
    assert {op.name for op in OPS} >= {"sqrtm", "covariance", "triu_vec", "pooled(gram)", "ns_sqrtm(5)"}
    names = {name for name in eigpool.ARRAY_FUNCTIONS}
    covered = {op.name.split("(")[0] for op in OPS}
    assert names <= covered, f"functions missing from the table: {sorted(names - covered)}"


# ---------------------------------------------------------------------------------------------------------------------
# JAX: check_grads to second order in both modes, jit and vmap.

@pytest.mark.parametrize(("op", "spectrum"), DIFFERENTIABLE, ids=DIFF_IDS)
def test_jax_check_grads_forward_and_reverse(op: Op, spectrum: str):
    # Second order where it is exact (the op's second-order rule, or distinct eigenvalues, where JAX's own eigh
    # derivative is); first order at every spectrum of the table. Nothing goes through jnp.linalg.eigh's JVP.
    jax = pytest.importorskip("jax")
    from jax.test_util import check_grads

    f = jax.jit(_jax_fn(op))  # compiled once: the finite differences evaluate it many times
    x = jax.numpy.asarray(example_input(op, seed=10, spectrum=spectrum))
    check_grads(f, (x,), order=2 if op.second_order or spectrum == "distinct" else 1, modes=("fwd", "rev"),
                eps=1e-5, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_jax_jit_and_vmap_agree_with_eager(op: Op):
    jax = pytest.importorskip("jax")
    f = _jax_fn(op)
    batch = jax.numpy.asarray(np.stack([example_input(op, seed=s) for s in range(3)]))
    eager = np.stack([np.asarray(f(x)) for x in batch])
    np.testing.assert_allclose(np.asarray(jax.jit(jax.vmap(f))(batch)), eager, rtol=1e-12, atol=1e-13)
    grad = jax.jit(jax.vmap(jax.grad(lambda x: f(x).sum())))(batch)
    loop = np.stack([np.asarray(jax.grad(lambda x: f(x).sum())(x)) for x in batch])
    np.testing.assert_allclose(np.asarray(grad), loop, rtol=1e-10, atol=1e-12)


def _jax_fn(op: Op):
    if op.kind == "matrix" and op.symmetric:
        return lambda A: op.fn((A + A.mT) / 2)
    return op.fn


@pytest.mark.parametrize(("op", "spectrum"), COMPLEX_DIFF, ids=COMPLEX_IDS)
def test_jax_hermitian_check_grads(op: Op, spectrum: str):
    # JAX pairs complex cotangents without conjugation, the rules with it (PyTorch's convention): the JAX binder
    # converts (backends/jax.py, _diff_vjp and _second); both orders where the op's second derivative is exact.
    jax = pytest.importorskip("jax")
    from jax.test_util import check_grads

    f = jax.jit(lambda A: op.fn((A + A.conj().mT) / 2) if op.symmetric else op.fn(A))
    x = jax.numpy.asarray(example_input(op, seed=11, spectrum=spectrum, hermitian=True))
    check_grads(f, (x,), order=2 if op.second_order or spectrum == "distinct" else 1, modes=("fwd", "rev"),
                eps=1e-5, atol=1e-6, rtol=1e-6)
