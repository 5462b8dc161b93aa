"""JAX binding: every eigpool function on ``jax.Array``s, differentiable in every mode JAX has, exact at ties.

``eigpool.sqrtm(jax_array)`` (and every other eigpool function) dispatches here: importing this module registers
its binder. Each eigpool primitive becomes three JAX primitives, built once from its forward and VJP rules, which run on
``jax.numpy`` (an array API namespace):

- ``fwd``: the forward rule. Its JVP rule is ``lin``; it is lowered for ``jit`` from the same rule, and batched for
  ``vmap`` by moving the mapped axis to the front (every rule is batched over leading axes).
- ``lin`` (x, t) -> J(x) t: linear in t, evaluated as the transpose of the VJP rule (``jax.linear_transpose``: the VJP
  rule is linear in its cotangent). Its transpose is ``vjp``.
- ``vjp`` (x, c) -> J(x)^T c: the VJP rule. Its transpose is ``lin``.

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


def _split(args: tuple, n_inputs: int) -> tuple[tuple, tuple]:
    return args[:n_inputs], args[n_inputs:]


def _diff_vjp(p: Primitive, spec: Any, xs: tuple, cts: tuple, residuals: Any = None) -> tuple:
    """J(x)^T c for the differentiable inputs (the VJP rule, residuals recomputed if not given)."""
    if residuals is None:
        _, residuals = p.forward(xp, *xs, spec=spec)
    out = p.vjp(xp, residuals, *cts, spec=spec)
    return tuple(out[i] for i in p.differentiable)


def _examples(tree: Any) -> Any:
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)


def _arrays(args: tuple) -> tuple:
    # Instantiated symbolic zeros arrive as NumPy-like literals (whose device is the string "cpu"): JAX arrays here.
    return tuple(jnp.asarray(a) for a in args)


def _fwd_impl(p: Primitive, *xs: Any, spec: Any) -> list:
    return list(p.forward(xp, *_arrays(xs), spec=spec)[0])


def _lin_impl(p: Primitive, *args: Any, spec: Any, n_inputs: int) -> list:
    xs, ts = _split(_arrays(args), n_inputs)
    outs, residuals = p.forward(xp, *xs, spec=spec)
    transpose = jax.linear_transpose(lambda *cts: _diff_vjp(p, spec, xs, cts, residuals),
                                     *_examples(outs[:p.n_outputs]))
    return list(transpose(tuple(ts)))


def _vjp_impl(p: Primitive, *args: Any, spec: Any, n_inputs: int) -> list:
    xs, cts = _split(_arrays(args), n_inputs)
    return list(_diff_vjp(p, spec, xs, cts))


def _second(p: Primitive, spec: Any, xs: tuple, cts: tuple, ws: tuple) -> tuple:
    """R(c, w) = d/dx <w, J(x)^T c> for the differentiable inputs ([Note: JAX second order])."""
    xs, cts, ws = _arrays(xs), _arrays(cts), _arrays(ws)
    rule = p.second_order(spec) if p.second_order is not None else None
    if rule is not None:
        _, residuals = p.forward(xp, *xs, spec=spec)
        return tuple(rule(xp, residuals, cts, *ws, spec=spec)[:len(p.differentiable)])

    def at(*diff: Any) -> tuple:
        full = list(xs)
        for i, x in zip(p.differentiable, diff, strict=True):
            full[i] = x
        return _diff_vjp(p, spec, tuple(full), cts)

    _, pullback = jax.vjp(at, *[xs[i] for i in p.differentiable])
    return pullback(tuple(ws))


def _zeros(tangents: Any) -> list:
    """Symbolic zero tangents or cotangents as arrays of zeros."""
    return [ad.instantiate_zeros(t) for t in tangents]


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

    def fwd_jvp(primals: tuple, tangents: tuple, *, spec: Any) -> tuple:
        outs = prims.fwd.bind(*primals, spec=spec)
        for i, t in enumerate(tangents):
            if i not in diff and not isinstance(t, ad.Zero):
                raise NotImplementedError(f"{p.name}: a derivative through input {i}, which has no derivative rule")
        ts = _zeros([tangents[i] for i in diff])
        out_t = prims.lin.bind(*primals, *ts, spec=spec, n_inputs=len(primals))
        return outs, [*out_t, *[jnp.zeros_like(y) for y in outs[p.n_outputs:]]]

    def lin_transpose(cts: list, *args: Any, spec: Any, n_inputs: int) -> list:
        xs = args[:n_inputs]
        return [None] * n_inputs + list(prims.vjp.bind(*xs, *_zeros(cts), spec=spec, n_inputs=n_inputs))

    def vjp_transpose(cts: list, *args: Any, spec: Any, n_inputs: int) -> list:
        xs = args[:n_inputs]
        return [None] * n_inputs + list(prims.lin.bind(*xs, *_zeros(cts), spec=spec, n_inputs=n_inputs))

    def lin_jvp(primals: tuple, tangents: tuple, *, spec: Any, n_inputs: int) -> tuple:
        xs, ts = primals[:n_inputs], primals[n_inputs:]
        dxs, dts = _zeros([tangents[i] for i in diff]), _zeros(tangents[n_inputs:])
        out = prims.lin.bind(*primals, spec=spec, n_inputs=n_inputs)
        # D^2 F(x)[t, dx] = (c -> R(c, dx))^T t
        transpose = jax.linear_transpose(lambda *c: _second(p, spec, xs, c, tuple(dxs)),
                                         *_examples(_output_avals(p, xs, spec)))
        second = transpose(tuple(ts))
        first = prims.lin.bind(*xs, *dts, spec=spec, n_inputs=n_inputs)
        return out, [a + b for a, b in zip(second, first, strict=True)]

    def vjp_jvp(primals: tuple, tangents: tuple, *, spec: Any, n_inputs: int) -> tuple:
        xs, cts = primals[:n_inputs], primals[n_inputs:]
        dxs, dcts = _zeros([tangents[i] for i in diff]), _zeros(tangents[n_inputs:])
        out = prims.vjp.bind(*primals, spec=spec, n_inputs=n_inputs)
        # d/dx [J(x)^T c] dx = (w -> R(c, w))^T dx
        transpose = jax.linear_transpose(lambda *w: _second(p, spec, xs, tuple(cts), w),
                                         *_examples(tuple(xs[i] for i in diff)))
        second = transpose(tuple(dxs))
        first = prims.vjp.bind(*xs, *dcts, spec=spec, n_inputs=n_inputs)
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
        # Every rule is batched over leading axes: the mapped axis goes first; unmapped arguments are broadcast.
        size = next(a.shape[d] for a, d in zip(args, dims, strict=True) if d is not None)
        args = [jnp.moveaxis(a, d, 0) if d is not None else jnp.broadcast_to(a, (size, *a.shape))
                for a, d in zip(args, dims, strict=True)]
        outs = prim.bind(*args, **params)
        return outs, [0] * len(outs)

    return rule


_WARNED: list[bool] = []


def _compute_dtype(dtype: Any, compute_dtype: str | None) -> Any:
    if compute_dtype is None:
        return jnp.float32 if jnp.finfo(dtype).bits < 32 else dtype
    if compute_dtype == "float64" and not jax.config.jax_enable_x64:
        if not _WARNED:
            _WARNED.append(True)
            warnings.warn("eigpool: compute_dtype='float64' needs JAX's 64-bit mode, which is off; eigpool computes in "
                          "float32 instead. Turn it on before creating arrays: jax.config.update('jax_enable_x64', "
                          "True) (or JAX_ENABLE_X64=1), or pass compute_dtype='float32' to say so. This warning is "
                          "given once.", UserWarning, stacklevel=4)
        return jnp.float32
    return getattr(jnp, compute_dtype)


def bind(p: Primitive, inputs: tuple, spec: Any) -> tuple:
    """Apply primitive ``p`` to JAX arrays (called by ``eigpool._primitive.bind``): the differentiable outputs in
    ``inputs[0]``'s dtype, under every JAX transformation."""
    dtype = inputs[0].dtype
    cdtype = _compute_dtype(dtype, spec.compute_dtype)
    outs = _primitives(p).fwd.bind(*[x.astype(cdtype) for x in inputs], spec=spec)
    return (*[y.astype(dtype) for y in outs[:p.n_outputs]], *outs[p.n_outputs:])


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


register_backend("jax", Backend(bind, concrete))
