"""The gradient checkers (NumPy, PyTorch, CuPy), the assertion helpers, and the accuracy report (--quick)."""

from __future__ import annotations

import json
import math
import re
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

import eigpool
from eigpool.validation import (
    check_batch_independence,
    check_grads,
    check_jvp,
    check_symmetric_gradient,
    check_vjp,
)
from eigpool.validation._adapters import ADAPTERS, NumpyAdapter
from eigpool.validation.strategies import spd_matrix
from eigpool.validation.testing import (
    assert_batch_independent,
    assert_grads_close,
    assert_jvp_close,
    assert_symmetric_gradient,
    assert_vjp_close,
)

torch = pytest.importorskip("torch")


def _square_vjp(bad_entry=None, factor=1.5):
    """vjp rule of f(X) = X * X (elementwise): 2 X w, wrong by ``factor`` at ``bad_entry`` if given."""
    def vjp(fn, X):
        def pullback(w):
            g = 2 * X * w
            if bad_entry is not None:
                g = g.copy()
                g[bad_entry] *= factor
            return (g,)
        return fn(X), pullback
    return vjp


def _square(X):
    return X * X


# ---------------------------------------------------------------------------------------------------------------------
# check_vjp, NumPy.

@pytest.mark.parametrize("kind", ["distinct", "clustered", "repeated", "ill_conditioned"])
def test_eigpool_sqrtm_passes(kind):
    S = spd_matrix(1, 5, kind, **({"condition": 1e3} if kind == "ill_conditioned" else {}))
    step = 0.1 * np.linalg.eigvalsh(S)[0]
    result = check_vjp(eigpool.sqrtm, S, step=step)
    assert result.passed, str(result)
    assert result.error < 1e-8 and result.framework == "numpy" and len(result.directions) == 3


def test_the_lead_signature_still_works():
    S = spd_matrix(0, 4, "distinct")
    result = check_vjp(eigpool.sqrtm, S, directions=2, step=None, seed=0, symmetric=None, vjp=None)
    assert isinstance(result.error, float) and result.error < 1e-8
    assert len(result.finite_difference) == len(result.vjp) == 2


def test_a_wrong_entry_is_found_and_named():
    X = np.random.default_rng(0).standard_normal((3, 4))
    assert check_vjp(_square, X, vjp=_square_vjp()).passed
    result = check_vjp(_square, X, vjp=_square_vjp(bad_entry=(1, 2)))
    assert not result.passed and not result
    assert result.entries[0].argument == 0 and result.entries[0].index == (1, 2)
    # The entry's finite difference is the true derivative 2 x w there; the analytic one is 1.5 times it.
    top = result.entries[0]
    assert top.analytic == pytest.approx(1.5 * top.fd, rel=1e-8)
    text = str(result)
    assert "FAILED" in text and "input 0 (1, 2)" in text and "direction 2" in text and "h=" in text


def test_symmetric_inputs_get_symmetric_directions_and_paired_entries():
    S = spd_matrix(2, 4, "distinct")
    result = check_vjp(eigpool.sqrtm, S, entries=True)
    assert result.passed and all(e.index[0] <= e.index[1] for e in result.entries)
    assert all(e.difference < 1e-8 * max(abs(e.fd), 1) for e in result.entries)


def test_richardson_extrapolation_beats_the_plain_central_difference():
    x = np.array([0.3, -1.2, 2.0])
    result = check_vjp(np.sin, x, step=0.2, rtol=1e-9, vjp=lambda fn, x: (fn(x), lambda w: (np.cos(x) * w,)))
    assert result.passed, str(result)
    d = result.directions[0]
    # The central difference at the first step is off by about h^2/6 |f'''|; the extrapolated value is not.
    assert abs(d.estimates[0] - d.analytic) > 1e3 * abs(d.fd - d.analytic)


def test_user_pullback_with_several_inputs_and_outputs():
    rng = np.random.default_rng(1)
    A, B = rng.standard_normal((3, 3)), rng.standard_normal((3, 2))

    def fn(A, B):
        return A @ B, np.sum(A * A)

    def vjp(fn, A, B):
        def pullback(ws):
            G, g = ws
            return G @ B.T + 2 * g * A, A.T @ G
        return fn(A, B), pullback

    assert check_vjp(fn, A, B, vjp=vjp).passed
    assert check_jvp(fn, A, B, vjp=vjp).passed


def test_numpy_second_order_explains_what_is_needed():
    with pytest.raises(ValueError, match="PyTorch"):
        check_grads(eigpool.sqrtm, [spd_matrix(0, 3, "distinct")], order=2)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="order must be 1 or 2"):
        check_grads(np.sin, [np.ones(2)], order=3)
    with pytest.raises(ValueError, match="modes"):
        check_grads(np.sin, [np.ones(2)], modes=("sideways",))
    with pytest.raises(ValueError, match="one flag per input"):
        check_vjp(_square, np.ones(2), symmetric=[True, False], vjp=_square_vjp())


# ---------------------------------------------------------------------------------------------------------------------
# check_jvp.

def test_jvp_from_pullbacks_for_eigpool():
    result = check_jvp(eigpool.sqrtm, spd_matrix(3, 4, "clustered"))
    assert result.passed, str(result)
    assert "pullbacks" in result.note


def test_a_wrong_user_jvp_names_the_output_entry():
    X = np.random.default_rng(2).standard_normal((2, 3))

    def jvp(fn, primals, tangents):
        (x,), (e,) = primals, tangents
        t = 2 * x * e
        t[0, 1] += 0.5
        return fn(x), t

    assert check_jvp(_square, X, jvp=lambda fn, p, t: (fn(*p), 2 * p[0] * t[0])).passed
    result = check_jvp(_square, X, jvp=jvp)
    assert not result.passed and result.entries[0].index == (0, 1)
    assert result.entries[0].analytic - result.entries[0].fd == pytest.approx(0.5, rel=1e-6)


def test_torch_forward_mode():
    X = torch.tensor(spd_matrix(0, 4, "distinct") * 0.3)
    result = check_jvp(torch.linalg.matrix_exp, X)
    assert result.passed and result.framework == "torch" and result.note == ""
    # eigpool's functions have forward mode too (the VJP rule transposed), at repeated eigenvalues as well, and the
    # second-order forward check is forward over reverse, not J e assembled from pullbacks (the note says which).
    result = check_jvp(eigpool.logm, torch.tensor(spd_matrix(0, 5, "repeated")))
    assert result.passed and result.note == ""
    report = check_grads(eigpool.sqrtm, [torch.tensor(spd_matrix(1, 5, "repeated"))], order=2)
    assert report.passed and [(order, mode, check.note) for order, mode, check in report.checks if mode == "fwd"] == [
        (1, "fwd", ""), (2, "fwd", "")]


# ---------------------------------------------------------------------------------------------------------------------
# PyTorch: any torch function, and eigpool on tensors.

class _CubeDetached(torch.autograd.Function):
    """x^3 with a backward that is right to first order and detaches x, so its own derivative is wrong."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * g * x.detach() ** 2


class _WrongScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, g):
        return 2.1 * g


def test_plain_torch_functions():
    X = torch.tensor(spd_matrix(1, 4, "clustered") * 0.5)
    assert check_vjp(torch.linalg.matrix_exp, X).passed
    assert check_grads(torch.linalg.matrix_exp, [X], order=2).passed
    result = check_vjp(_WrongScale.apply, torch.ones(3, dtype=torch.float32))
    assert not result.passed and result.error == pytest.approx(0.1 / 2.1, rel=1e-6)


def test_second_order_catches_a_detached_backward():
    x = torch.tensor([0.5, -1.0, 2.0])
    report = check_grads(_CubeDetached.apply, [x], order=2, modes=("rev",))
    (o1, _, first), (o2, _, second) = report.checks
    assert (o1, o2) == (1, 2) and first.passed and not second.passed
    assert not report and "order 2 rev" in str(report)


def test_eigpool_sqrtm_on_tensors_to_second_order():
    S = torch.tensor(spd_matrix(4, 4, "clustered", gap=1e-3))
    step = 0.1 * float(np.linalg.eigvalsh(S.numpy())[0])
    result = check_grads(eigpool.sqrtm, [S], order=2, modes=("rev",), step=step, rtol=1e-6)
    assert result.passed, str(result)


# ---------------------------------------------------------------------------------------------------------------------
# Batch independence and symmetry.

def test_batch_independence_of_eigpool():
    B = np.stack([spd_matrix(i, 4, kind) for i, kind in enumerate(["distinct", "repeated", "clustered"])])
    result = check_batch_independence(eigpool.sqrtm, B)
    assert result.passed, str(result)
    assert result.cross_talk == 0
    assert_batch_independent(eigpool.sqrtm, torch.tensor(B), rtol=1e-12)


def test_coupled_samples_are_detected():
    B = torch.tensor(np.stack([spd_matrix(i, 3, "distinct") for i in range(3)]))
    result = check_batch_independence(lambda b: b - b.mean(dim=0, keepdim=True), B)
    assert not result.passed and result.cross_talk > 0.1 and result.output_difference > 0.1
    with pytest.raises(AssertionError, match="cross-talk"):
        assert_batch_independent(lambda b: b - b.mean(dim=0, keepdim=True), B)


def test_gradient_symmetry():
    S = spd_matrix(5, 4, "distinct")
    assert check_symmetric_gradient(eigpool.sqrtm, S).passed
    A = torch.tensor(np.triu(np.ones((4, 4))))
    result = check_symmetric_gradient(lambda X: (A * X).sum(), torch.tensor(S))
    assert not result.passed and result.error == pytest.approx(1.0)
    with pytest.raises(AssertionError, match="not symmetric"):
        assert_symmetric_gradient(lambda X: (A * X).sum(), torch.tensor(S))
    # matrix_exp has a symmetric gradient for symmetric cotangents only.
    assert check_symmetric_gradient(torch.linalg.matrix_exp, torch.tensor(S), symmetric_cotangent=True).passed


# ---------------------------------------------------------------------------------------------------------------------
# Assertion helpers.

def test_assert_vjp_close_raises_with_the_explanation():
    X = np.random.default_rng(3).standard_normal((2, 2))
    assert assert_vjp_close(_square, X, vjp=_square_vjp()).passed
    with pytest.raises(AssertionError) as info:
        assert_vjp_close(_square, X, rtol=1e-6, vjp=_square_vjp(bad_entry=(0, 0)))
    message = str(info.value)
    assert "VJP does not match" in message and "input 0 (0, 0)" in message and "fd=" in message


def test_assert_jvp_and_grads_helpers():
    X = torch.tensor(spd_matrix(6, 3, "distinct"))
    assert_jvp_close(torch.linalg.matrix_exp, X)
    assert_grads_close(torch.linalg.matrix_exp, [X], order=2)
    with pytest.raises(AssertionError, match="order 2"):
        assert_grads_close(_CubeDetached.apply, [torch.tensor([1.0, 2.0])], order=2, modes=("rev",))


# ---------------------------------------------------------------------------------------------------------------------
# The adapter registry: chosen by the module of the input's type (or a base class), one entry per framework.

class _Boxed:
    """An array type of a made-up framework: a float64 NumPy array in a box."""

    __module__ = "boxlib.arrays"

    def __init__(self, value):
        self.value = np.asarray(value, dtype=np.float64)


class _BoxedAdapter(NumpyAdapter):
    name = "boxlib"

    def __init__(self, like, vjp, jvp):
        def boxed_vjp(fn, *xs):
            out, pullback = (vjp or eigpool.vjp)(lambda *a: fn(*map(_Boxed, a)).value, *[x.value for x in xs])
            return _Boxed(out), lambda w: tuple(map(_Boxed, pullback(w.value)))

        super().__init__(like, boxed_vjp, jvp)

    def to_framework(self, a):
        return _Boxed(a)

    def to_numpy(self, x):
        return np.asarray(x.value, dtype=np.float64)


def test_a_new_framework_is_one_registry_entry(monkeypatch):
    S = spd_matrix(3, 4, "distinct")
    monkeypatch.setitem(ADAPTERS, "boxlib", _BoxedAdapter)
    result = check_vjp(lambda B: _Boxed(eigpool.sqrtm(B.value)), _Boxed(S))
    assert result.passed and result.framework == "boxlib"
    assert check_vjp(eigpool.sqrtm, S).error == result.error  # the same figures as the NumPy check


def test_adapters_follow_the_type_and_its_base_classes():
    class MyTensor(torch.Tensor):
        pass

    X = torch.tensor(spd_matrix(2, 3, "distinct"))
    assert check_vjp(eigpool.sqrtm, X.as_subclass(MyTensor)).framework == "torch"
    assert check_vjp(eigpool.sqrtm, torch.nn.Parameter(X)).framework == "torch"
    assert check_vjp(_square, [[1.0, 2.0]], vjp=_square_vjp()).framework == "numpy"  # a list: NumPy
    assert set(ADAPTERS) == {"numpy", "torch", "cupy", "jaxlib", "jax"}


# ---------------------------------------------------------------------------------------------------------------------
# CuPy: the NumPy path on the GPU.

def _cupy_with_gpu():
    try:
        import cupy
        cupy.cuda.runtime.getDeviceCount()
        return cupy
    except Exception:  # no cupy, no driver or no device: nothing to run on
        return None


@pytest.mark.skipif(_cupy_with_gpu() is None, reason="cupy with a GPU is not available")
def test_cupy_arrays():
    cupy = _cupy_with_gpu()
    S = cupy.asarray(spd_matrix(0, 4, "clustered"))
    result = check_vjp(eigpool.sqrtm, S)
    assert result.passed and result.framework == "cupy"


# ---------------------------------------------------------------------------------------------------------------------
# The report.

@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    """The folder ``eigpool-validate --quick`` wrote (run once for the report tests)."""
    from eigpool.validation.__main__ import main

    out = tmp_path_factory.mktemp("report")
    assert main(["--quick", "--out", str(out), "--no-progress"]) == 0
    return out


def test_quick_report(quick_report):
    tmp_path = quick_report
    for name in ["accuracy.md", "accuracy.json", "figures/gradient_error_vs_gap.png",
                 "figures/gradient_error_vs_condition.png", "figures/kernel_approximation.png",
                 "figures/method_heatmap.png"]:
        assert (tmp_path / name).stat().st_size > 0, name
    data = json.loads((tmp_path / "accuracy.json").read_text())
    assert set(data) >= {"meta", "families", "reference", "methods", "kernel_table", "bounds", "fd_checks"}

    # The reference (exact float64) agrees with mpmath on the benign families.
    ref = {r["family"]: r for r in data["reference"]}
    assert ref["distinct"]["gradient"] < 1e-12 and ref["repeated"]["gradient"] < 1e-12
    assert ref["clustered_1e-08"]["gradient"] < 1e-12 and ref["clustered_1e-08"]["seb_gradient"] < 1e-12

    # Every method and precision measured on every family.
    methods = data["methods"]
    fams = [f["key"] for f in data["families"]]
    assert {"exact (float64)", "taylor K=100 (float32)", "Newton-Schulz T=5 (float64)", "SEB (float32)"} <= set(methods)
    assert all(set(v) == set(fams) for v in methods.values())
    assert methods["exact (float64)"]["distinct"]["gradient"] == 0
    assert 0 < methods["exact (float32)"]["distinct"]["gradient"] < 1e-5
    assert methods["clip (float64)"]["distinct"]["gradient"] < 1e-12
    assert methods["taylor K=100 (float64)"]["repeated"]["gradient"] > 1e-2

    # The ICCV kernel table: Taylor-100 reproduces the paper, the [50/50] Pade is 1/(1-x) with a pole at 1.
    rows = {r["x"]: r for r in data["kernel_table"]["rows"]}
    assert rows[0.99]["taylor100_error"] == pytest.approx(0.99**101 / 0.01, rel=1e-10)
    assert rows[0.999]["taylor100_error"] == pytest.approx(904, rel=0.01)
    assert rows[0.99]["pade50_f64_error"] < 1e-10 and rows[0.999]["pade50_mp_error"] < 1e-12
    assert data["kernel_table"]["tie"]["Q(1) in float64"] == 0
    assert all("ZeroDivisionError" in v for v in data["kernel_table"]["lower_degrees"].values())
    # Its error is below its bound (delta/gap)^4 / gap, up to the float64 rounding of the kernel itself.
    assert all(r["eigpool_pade_error"] <= r["eigpool_pade_bound"] + 8 * np.finfo(float).eps * r["exact"]
               for r in rows.values())

    bounds = {b["method"]: b for b in data["bounds"]}
    assert bounds["Taylor K=100"]["eigpool_kernel"] == pytest.approx(101 / np.finfo(float).eps, rel=1e-9)
    assert bounds["Trunc (clip)"]["eigpool_kernel"] == pytest.approx(1e10)
    assert bounds["Original (exact K, no tie rule)"]["eigpool_kernel"] == math.inf
    assert all(r["passed"] for r in data["fd_checks"] if "skipped" not in r)
    assert "## 6. Where eigpool's numbers differ" in (tmp_path / "accuracy.md").read_text()


def test_report_markdown_is_the_template_filled_in(quick_report):
    from eigpool.validation.report.text import markdown

    text = (quick_report / "accuracy.md").read_text()
    data = json.loads((quick_report / "accuracy.json").read_text())
    assert text.startswith("# eigpool accuracy report\n\nGenerated by `python -m eigpool.validation --quick` in ")
    assert not re.search(r"\{[a-z_]+[\[:}]", text), "a template field was left unfilled"
    assert "delta in {0} U [1e-16, 1]" in text  # a literal brace of the prose
    rows = {r["x"]: r for r in data["kernel_table"]["rows"]}
    assert f"- Taylor-100 kernel: {rows[0.9]['taylor100_error']:.1e}, {rows[0.99]['taylor100_error']:.3g} and " in text
    taylor = next(b for b in data["bounds"] if b["method"] == "Taylor K=100")
    assert f"eigpool's kernel gives {taylor['eigpool_kernel']:.3g} at l_i = l_j = eps" in text
    assert text.endswith("# explains any mismatch entry by entry\n")
    # A refused input is listed after the forward-error table, before the families.
    assert "Refused inputs" not in text
    data["methods"]["pade (float32)"]["singular"]["failures"] = ["sqrtm: argument S is not positive semi-definite"]
    refused = markdown(data)
    block = ("\n\nRefused inputs (an exception, counted as n/a when every sample failed):\n\n"
             "- pade (float32), singular: sqrtm: argument S is not positive semi-definite\n\nFamilies: ")
    assert block in refused and refused.replace(block, "\n\nFamilies: ") == text


def test_the_report_template_and_subpackages_are_packaged():
    # pyproject lists every package under validation/ and ships the non-Python files they read.
    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).resolve().parent.parent
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    for init in (root / "validation").rglob("__init__.py"):
        package = ".".join(("eigpool", "validation", *init.parent.relative_to(root / "validation").parts))
        assert package in setuptools["packages"], package
        data = [f for f in init.parent.iterdir() if f.is_file() and f.suffix not in (".py", ".pyc")]
        assert all(any(f.match(g) for g in setuptools["package-data"].get(package, [])) for f in data), package
    assert resources.files("eigpool.validation.report").joinpath("accuracy_template.md").is_file()


def test_checks_accept_jax_functions_and_catch_a_wrong_derivative():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    from eigpool.validation import check_batch_independence, check_grads, check_jvp, check_vjp

    S = jnp.asarray(spd_matrix(seed=3, d=4, kind="repeated"))
    assert check_vjp(eigpool.sqrtm, S).passed and check_jvp(eigpool.logm, S).passed
    assert check_grads(eigpool.sqrtm, (S,), order=2, modes=("fwd", "rev")).passed
    assert check_batch_independence(eigpool.sqrtm, jnp.stack([S, 2 * S, 3 * S])).passed

    @jax.custom_jvp
    def wrong(x):
        return jnp.sin(x)

    wrong.defjvp(lambda primals, tangents: (jnp.sin(primals[0]), 1.1 * jnp.cos(primals[0]) * tangents[0]))
    x = jnp.linspace(0.1, 1.0, 5)
    assert not check_vjp(wrong, x).passed and not check_jvp(wrong, x).passed
