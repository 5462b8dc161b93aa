"""JAX binding: every eigpool function on ``jax.Array``s, differentiable in every mode JAX has, exact at ties.

``eigpool.sqrtm(jax_array)`` (and every other eigpool function) dispatches here: importing this module registers
its binder. Each eigpool primitive becomes three JAX primitives, built once from its forward and VJP rules, which run on
``jax.numpy`` (an array API namespace):

- ``fwd``: the forward rule; it returns its outputs, then its residuals' arrays (which carry no tangent). Its JVP rule
  is ``lin``; it is lowered for ``jit`` from the same rule, and batched for ``vmap`` by moving the mapped axis to the
  front (every rule is batched over leading axes).
- ``lin`` (x, residuals, t) -> J(x) t: linear in t, evaluated as the transpose of the VJP rule
  (``jax.linear_transpose``: the VJP rule is linear in its cotangent). Its transpose is ``vjp``.
- ``vjp`` (x, residuals, c) -> J(x)^T c: the VJP rule. Its transpose is ``lin``.
The residuals are passed on, not recomputed: eager ``jax.grad`` decomposes once (under ``jit`` XLA would merge the two
decompositions, eagerly nothing does).

So ``jax.grad``, ``vjp``, ``jacrev`` (reverse) and ``jvp``, ``jacfwd`` (forward) all reach the primitive's own rules,
and nothing is differentiated through ``jnp.linalg.eigh`` (whose JVP is NaN at repeated eigenvalues, jax-ml/jax#669).

[Note: JAX second order]
Second derivatives (``hessian``, ``jacfwd(jacrev)``, ``grad(grad)``) are the JVPs of ``lin`` and ``vjp``. Both come
from one rule, the derivative of the VJP: R(c, w) = d/dx <w, J(x)^T c>, the primitive's ``second_order`` rule where it
has one (second divided differences for spectral functions, exact at ties and across the eigenvalue floor), else
``jax.vjp`` of the recomputed rules (exact where JAX's own derivatives are: distinct eigenvalues). With R linear in c
and in w:

    d/dx [J(x)^T c] dx = (w -> R(c, w))^T dx,        d/dx [J(x) t] dx = D^2 F(x)[t, dx] = (c -> R(c, dx))^T t.

Why primitives and not ``jax.custom_jvp``: a custom JVP rule's tangent map is transposed by JAX for reverse mode, and a
second reverse pass then differentiates the transposed map's coefficients (the eigenvectors) with JAX's own eigh rule.
Primitives with transpose and JVP rules of their own keep every order on eigpool's rules.

dtype: JAX computes in float32 unless ``jax_enable_x64`` is set. With it off, ``compute_dtype="float64"`` (the default)
cannot be honoured; eigpool then computes in float32 and says so once, in a warning, instead of truncating silently.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cache
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive as JaxPrimitive
from jax.interpreters import ad, batching, mlir

import eigpool
from eigpool._primitive import Backend, Primitive, register_backend
from eigpool.gram import pooled_from_spec, pooled_spec

__all__ = [*eigpool.ARRAY_FUNCTIONS, "bind", "concrete", "gcp_head"]

globals().update({name: getattr(eigpool, name) for name in eigpool.ARRAY_FUNCTIONS})

xp = jnp


def _shaped(tree: Any) -> Any:
    return jax.tree.map(lambda s: jax.core.ShapedArray(s.shape, s.dtype), tree)


@dataclass(frozen=True)
class _Primitives:
    """The JAX primitives of one eigpool primitive (module docstring)."""

    fwd: JaxPrimitive
    lin: JaxPrimitive
    vjp: JaxPrimitive


@dataclass(frozen=True)
class _Layout:
    """How a primitive's residuals travel between the JAX primitives: ``fwd`` returns their array leaves after its
    outputs, ``lin`` and ``vjp`` take them after the inputs. ``tree``: the residuals' structure; ``static``: the leaves
    that are not arrays (an int, a None), in place, with None where an array goes; ``n_arrays``: how many arrays."""

    tree: Any
    static: tuple
    n_arrays: int

    def unflatten(self, arrays: tuple) -> Any:
        it = iter(arrays)
        return jax.tree.unflatten(self.tree, [next(it) if leaf is None else leaf for leaf in self.static])


def _is_array(leaf: Any) -> bool:
    return isinstance(leaf, (jax.Array, jax.core.Tracer)) or hasattr(leaf, "shape") and hasattr(leaf, "dtype")


def _residual_arrays(residuals: Any) -> list:
    return [leaf for leaf in jax.tree.leaves(residuals) if _is_array(leaf)]


_LAYOUTS: dict[tuple, _Layout] = {}


def _layout(p: Primitive, spec: Any, xs: tuple) -> _Layout:
    """The residual layout of ``p`` for inputs of these shapes and dtypes (found by an abstract evaluation, cached)."""
    key = (p, spec, tuple((tuple(x.shape), str(x.dtype)) for x in xs))
    if key not in _LAYOUTS:
        found: dict[str, Any] = {}

        def forward(*a: Any) -> list:
            _, residuals = p.forward(xp, *a, spec=spec)
            leaves, found["tree"] = jax.tree.flatten(residuals)
            found["static"] = tuple(None if _is_array(leaf) else leaf for leaf in leaves)
            return _residual_arrays(residuals)

        arrays = jax.eval_shape(forward, *[jax.ShapeDtypeStruct(x.shape, x.dtype) for x in xs])
        _LAYOUTS[key] = _Layout(found["tree"], found["static"], len(arrays))
    return _LAYOUTS[key]


def _conj(arrays: tuple) -> tuple:
    """Complex arrays conjugated, real ones as they are."""
    return tuple(jnp.conj(a) if a is not None and jnp.iscomplexobj(a) else a for a in arrays)


def _diff_vjp(p: Primitive, spec: Any, residuals: Any, cts: tuple) -> tuple:
    """J(x)^T c for the differentiable inputs (the VJP rule on the forward's residuals), in JAX's convention.

    The rules follow PyTorch's for complex arrays (cotangents are conjugate Wirtinger derivatives, paired by
    Re <a, b> with conjugation); JAX pairs without conjugation, so its VJP is conj(rule(conj(c)))."""
    out = _conj(p.vjp(xp, residuals, *_conj(cts), spec=spec))
    return tuple(out[i] for i in p.differentiable)


def _examples(tree: Any) -> Any:
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)


def _arrays(args: tuple) -> tuple:
    # Instantiated symbolic zeros arrive as NumPy-like literals (whose device is the string "cpu"): JAX arrays here.
    return tuple(jnp.asarray(a) for a in args)


def _fwd_impl(p: Primitive, *xs: Any, spec: Any) -> list:
    outs, residuals = p.forward(xp, *_arrays(xs), spec=spec)
    return [*outs, *_residual_arrays(residuals)]


def _parts(p: Primitive, spec: Any, args: tuple, n_inputs: int, layout: _Layout) -> tuple[tuple, Any, tuple]:
    """(inputs, residuals, linear arguments) of a ``lin`` or ``vjp`` call. The residuals' non-array leaves are those of
    these inputs' shapes (under vmap the rule runs on the batched shapes: a saved input shape is the batched one)."""
    args = _arrays(args)
    n = n_inputs + layout.n_arrays
    xs = args[:n_inputs]
    return xs, _layout(p, spec, xs).unflatten(args[n_inputs:n]), args[n:]


def _lin_impl(p: Primitive, *args: Any, spec: Any, n_inputs: int, layout: _Layout) -> list:
    xs, residuals, ts = _parts(p, spec, args, n_inputs, layout)
    transpose = jax.linear_transpose(lambda *cts: _diff_vjp(p, spec, residuals, cts),
                                     *_examples(_output_avals(p, xs, spec)))
    return list(transpose(tuple(ts)))


def _vjp_impl(p: Primitive, *args: Any, spec: Any, n_inputs: int, layout: _Layout) -> list:
    _, residuals, cts = _parts(p, spec, args, n_inputs, layout)
    return list(_diff_vjp(p, spec, residuals, cts))


def _second(p: Primitive, spec: Any, xs: tuple, residuals: Any, cts: tuple, ws: tuple) -> tuple:
    """R(c, w) = d/dx <w, J(x)^T c> for the differentiable inputs ([Note: JAX second order])."""
    cts, ws = _arrays(cts), _arrays(ws)
    rule = p.second_order(spec) if p.second_order is not None else None
    if rule is not None:
        # JAX's convention for complex arrays: x -> V(x, c) is conj(x -> rule's V(x, conj c)), whose JAX VJP at w is
        # conj(rule's R(conj c, w)) (as in _diff_vjp, the outer conj cancels the one on w).
        return _conj(tuple(rule(xp, residuals, _conj(cts), *ws, spec=spec)[:len(p.differentiable)]))

    def at(*diff: Any) -> tuple:
        full = list(xs)
        for i, x in zip(p.differentiable, diff, strict=True):
            full[i] = x
        return _diff_vjp(p, spec, p.forward(xp, *full, spec=spec)[1], cts)

    _, pullback = jax.vjp(at, *[xs[i] for i in p.differentiable])
    return pullback(tuple(ws))


def _zeros(tangents: Any) -> list:
    """Symbolic zero tangents or cotangents as arrays of zeros."""
    return [ad.instantiate_zeros(t) for t in tangents]


def _no_tangent(x: Any) -> Any:
    return ad.Zero(jax.typeof(x).to_tangent_aval())


@cache
def _primitives(p: Primitive) -> _Primitives:
    prims = _Primitives(JaxPrimitive(f"eigpool_{p.name}"), JaxPrimitive(f"eigpool_{p.name}_jvp"),
                        JaxPrimitive(f"eigpool_{p.name}_vjp"))
    impls = {prims.fwd: lambda *a, **k: _fwd_impl(p, *a, **k), prims.lin: lambda *a, **k: _lin_impl(p, *a, **k),
             prims.vjp: lambda *a, **k: _vjp_impl(p, *a, **k)}
    for prim, impl in impls.items():
        prim.multiple_results = True
        prim.def_impl(impl)
        prim.def_abstract_eval(lambda *avals, impl=impl, **params: _shaped(jax.eval_shape(
            lambda *a: impl(*a, **params), *avals)))
        mlir.register_lowering(prim, mlir.lower_fun(impl, multiple_results=True))
        batching.primitive_batchers[prim] = _batcher(prim)
    diff = p.differentiable
    n_out = p.n_outputs + p.aux_outputs

    def fwd_jvp(primals: tuple, tangents: tuple, *, spec: Any) -> tuple:
        for i, t in enumerate(tangents):
            if i not in diff and not isinstance(t, ad.Zero):
                raise NotImplementedError(f"{p.name}: a derivative through input {i}, which has no derivative rule")
        out = prims.fwd.bind(*primals, spec=spec)
        residuals = out[n_out:]
        ts = _zeros([tangents[i] for i in diff])
        params = dict(spec=spec, n_inputs=len(primals), layout=_layout(p, spec, primals))
        out_t = prims.lin.bind(*primals, *residuals, *ts, **params)
        # The residuals carry no tangent: the rules of lin and vjp differentiate through the inputs themselves.
        return out, [*out_t, *[_no_tangent(y) for y in out[p.n_outputs:]]]

    def lin_transpose(cts: list, *args: Any, spec: Any, n_inputs: int, layout: _Layout) -> list:
        fixed = args[:n_inputs + layout.n_arrays]
        grads = prims.vjp.bind(*fixed, *_zeros(cts), spec=spec, n_inputs=n_inputs, layout=layout)
        return [None] * len(fixed) + list(grads)

    def vjp_transpose(cts: list, *args: Any, spec: Any, n_inputs: int, layout: _Layout) -> list:
        fixed = args[:n_inputs + layout.n_arrays]
        return [None] * len(fixed) + list(prims.lin.bind(*fixed, *_zeros(cts), spec=spec, n_inputs=n_inputs,
                                                           layout=layout))

    def lin_jvp(primals: tuple, tangents: tuple, *, spec: Any, n_inputs: int, layout: _Layout) -> tuple:
        xs, residuals, ts = _parts(p, spec, primals, n_inputs, layout)
        n = n_inputs + layout.n_arrays
        dxs, dts = _zeros([tangents[i] for i in diff]), _zeros(tangents[n:])
        out = prims.lin.bind(*primals, spec=spec, n_inputs=n_inputs, layout=layout)
        # D^2 F(x)[t, dx] = (c -> R(c, dx))^T t
        transpose = jax.linear_transpose(lambda *c: _second(p, spec, xs, residuals, c, tuple(dxs)),
                                         *_examples(_output_avals(p, xs, spec)))
        second = transpose(tuple(ts))
        first = prims.lin.bind(*primals[:n], *dts, spec=spec, n_inputs=n_inputs, layout=layout)
        return out, [a + b for a, b in zip(second, first, strict=True)]

    def vjp_jvp(primals: tuple, tangents: tuple, *, spec: Any, n_inputs: int, layout: _Layout) -> tuple:
        xs, residuals, cts = _parts(p, spec, primals, n_inputs, layout)
        n = n_inputs + layout.n_arrays
        dxs, dcts = _zeros([tangents[i] for i in diff]), _zeros(tangents[n:])
        out = prims.vjp.bind(*primals, spec=spec, n_inputs=n_inputs, layout=layout)
        # d/dx [J(x)^T c] dx = (w -> R(c, w))^T dx
        transpose = jax.linear_transpose(lambda *w: _second(p, spec, xs, residuals, tuple(cts), w),
                                         *_examples(tuple(xs[i] for i in diff)))
        second = transpose(tuple(dxs))
        first = prims.vjp.bind(*primals[:n], *dcts, spec=spec, n_inputs=n_inputs, layout=layout)
        return out, [a + b for a, b in zip(second, first, strict=True)]

    ad.primitive_jvps[prims.fwd] = fwd_jvp
    ad.primitive_jvps[prims.lin] = lin_jvp
    ad.primitive_jvps[prims.vjp] = vjp_jvp
    ad.primitive_transposes[prims.lin] = lin_transpose
    ad.primitive_transposes[prims.vjp] = vjp_transpose
    return prims


def _output_avals(p: Primitive, xs: tuple, spec: Any) -> tuple:
    """Shapes and dtypes of the differentiable outputs for inputs ``xs``."""
    outs = jax.eval_shape(lambda *a: tuple(p.forward(xp, *a, spec=spec)[0][:p.n_outputs]), *xs)
    return tuple(outs)


def _batcher(prim: JaxPrimitive) -> Any:
    def rule(args: tuple, dims: tuple, **params: Any) -> tuple:
        # Every rule is batched over leading axes: the mapped axis goes first; unmapped arguments are broadcast. An
        # output that does not depend on the batch (a truncation mask, Newton-Schulz's identity) has no batch axis:
        # the per-example evaluation tells which.
        size = next(a.shape[d] for a, d in zip(args, dims, strict=True) if d is not None)
        single = [jax.ShapeDtypeStruct(a.shape if d is None else a.shape[:d] + a.shape[d + 1:], a.dtype)
                  for a, d in zip(args, dims, strict=True)]
        args = [jnp.moveaxis(a, d, 0) if d is not None else jnp.broadcast_to(a, (size, *a.shape))
                for a, d in zip(args, dims, strict=True)]
        outs = prim.bind(*args, **params)
        expected = jax.eval_shape(lambda *a: prim.bind(*a, **params), *single)
        return outs, [0 if y.ndim > e.ndim else None for y, e in zip(outs, expected, strict=True)]

    return rule


_WARNED: list[bool] = []


def _compute_dtype(dtype: Any, compute_dtype: str | None) -> Any:
    """The dtype an input computes in: ``compute_dtype`` (complex input: the complex dtype of that precision), or the
    input's own (half precision promoted to float32); float64 falls back to float32, with one warning, when JAX's
    64-bit mode is off."""
    complex_input = jnp.issubdtype(dtype, jnp.complexfloating)
    if compute_dtype is None:
        if complex_input:
            return dtype
        return jnp.float32 if jnp.finfo(dtype).bits < 32 else dtype
    if compute_dtype == "float64" and not jax.config.jax_enable_x64:
        if not _WARNED:
            _WARNED.append(True)
            warnings.warn("eigpool: compute_dtype='float64' needs JAX's 64-bit mode, which is off; eigpool computes in "
                          "float32 instead. Turn it on before creating arrays: jax.config.update('jax_enable_x64', "
                          "True) (or JAX_ENABLE_X64=1), or pass compute_dtype='float32' to say so. This warning is "
                          "given once.", UserWarning, stacklevel=5)
        compute_dtype = "float32"
    if complex_input:
        return jnp.complex128 if compute_dtype == "float64" else jnp.complex64
    return getattr(jnp, compute_dtype)


def bind(p: Primitive, inputs: tuple, spec: Any) -> tuple:
    """Apply primitive ``p`` to JAX arrays (called by ``eigpool._primitive.bind``): the differentiable outputs in
    ``inputs[0]``'s dtype, under every JAX transformation. Each input computes in its own kind's compute dtype (a real
    exponent beside a complex matrix stays real)."""
    dtype = inputs[0].dtype
    cast = [x.astype(_compute_dtype(x.dtype, spec.compute_dtype)) for x in inputs]
    outs = _primitives(p).fwd.bind(*cast, spec=spec)
    return (*[y.astype(dtype) for y in outs[:p.n_outputs]], *outs[p.n_outputs:p.n_outputs + p.aux_outputs])


def concrete(x: Any) -> bool:
    """Whether ``x`` holds values (value checks run): not under jit, vmap or a derivative transformation."""
    return not isinstance(x, jax.core.Tracer)


def gcp_head(features: Any, weight: Any = None, *, tokens: bool = False, fn: str = "sqrt", path: str = "auto",
             **options: Any) -> Any:
    """Global covariance pooling for JAX, functional: features -> the upper-triangular vector (B, d(d+1)/2).

    features: (B, C, H, W) feature maps, or (B, N, C) tokens with ``tokens=True``. weight: optional (d, C) projection
    (a 1x1 convolution) followed by ReLU, the iSQRT-COV reduction; d = C without it. Then the covariance of the d
    channels over the N = H W positions (or tokens), the spectral function ``fn`` ("sqrt", "invsqrt", "log", "power"
    with ``p``; the options of ``eigpool.pooled``: floor, truncate, seb, grad, compute_dtype) and the upper triangle.
    Differentiable in features and weight under jit, vmap, grad and jvp; the Gram route is taken when N < d.
    """
    X = jnp.swapaxes(features, -1, -2) if tokens else features.reshape(*features.shape[:2], -1)
    if weight is not None:
        X = jax.nn.relu(weight @ X)
    return pooled_from_spec(X, pooled_spec("gcp_head", fn, **_spec_options(options)), path=path, triu=True,
                            op="gcp_head")


def _spec_options(options: dict) -> dict:
    known = ("p", "grad", "floor", "truncate", "seb", "compute_dtype")
    spec = {k: options.pop(k) for k in known if k in options}
    return {**spec, "kernel_options": options}


register_backend("jax", Backend(bind, concrete), examples=(jnp.zeros(0),))
