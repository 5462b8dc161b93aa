"""Primitives: a forward rule and a VJP rule, and how they are applied to arrays.

The contract, written once (in the notation of JAX's ``custom_vjp``)::

    forward :: (xp, *inputs, **params) -> (outputs: tuple, residuals)
    vjp     :: (xp, residuals, *output_cotangents, **params) -> input_cotangents: tuple

Both rules are pure functions of arrays of the namespace ``xp`` (the Python array API). ``forward`` returns every
output in a tuple, even a single one; ``vjp`` receives one cotangent per output (zeros where the caller gave none) and
returns one cotangent per input (``None`` for an input that is not differentiable).

``bind(p, *inputs, **params)`` applies a primitive to arrays. It resolves the namespace, casts the inputs to the
primitive's compute dtype, and casts the outputs back to the input dtype. A framework with its own automatic
differentiation (PyTorch) registers a binder that wraps the same two rules into its autograd: that module is looked
up lazily by name, so the core never imports a framework.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from array_api_compat import array_namespace, is_array_api_obj

__all__ = ["Primitive", "bind", "vjp", "compute_dtype_of"]


@dataclass(frozen=True)
class Primitive:
    """An operation defined by a forward rule and a VJP rule (see the module docstring for the contract).

    ``n_outputs`` is the length of the tuple ``forward`` returns; ``differentiable`` lists the positions of the inputs
    that receive cotangents. ``vjp_primitive``, optional: ``vjp_primitive(params)`` returns a primitive that computes
    this one's VJP, (*inputs, *output_cotangents) -> input cotangents, with a VJP rule of its own (the second
    derivatives), or None for params it does not cover. Frameworks with autodiff use it for double backward.
    ``cast_cotangents``: False hands ``vjp`` the output cotangents in their own dtype, for a rule that casts what it
    reads piece by piece (a whole-array cast of a large cotangent costs a fresh copy twice its size).
    """

    name: str
    forward: Callable[..., tuple[tuple[Any, ...], Any]]
    vjp: Callable[..., tuple[Any, ...]]
    n_outputs: int = 1
    differentiable: tuple[int, ...] = (0,)
    vjp_primitive: Callable[[dict], Primitive | None] | None = None
    cast_cotangents: bool = True

    def __repr__(self) -> str:
        return f"Primitive({self.name!r})"


# Array types owned by a framework with its own autodiff: (module prefix of the array class, binder module).
# The binder module defines ``bind(p, inputs, params, compute_dtype)``; it is imported only when such an array arrives.
_AUTODIFF_BINDERS = {"torch": "eigpool.backends.torch"}


def compute_dtype_of(xp: Any, dtype: Any, compute_dtype: str | None) -> Any:
    """The dtype a primitive computes in: ``compute_dtype`` (a name such as ``"float64"``) unless it is ``None``,
    in which case the input's own dtype, promoted to at least float32 (half precision is never used for the math)."""
    if compute_dtype is not None:
        return getattr(xp, compute_dtype)
    if xp.finfo(dtype).bits < 32:
        return xp.float32
    return dtype


def _cast(xp: Any, x: Any, dtype: Any) -> Any:
    return x if x is None or x.dtype == dtype else xp.astype(x, dtype)


def _framework(x: Any) -> str | None:
    top = type(x).__module__.split(".", 1)[0]
    return top if top in _AUTODIFF_BINDERS and top in sys.modules else None


def bind(p: Primitive, *inputs: Any, compute_dtype: str | None = "float64", **params: Any) -> tuple[Any, ...]:
    """Apply primitive ``p`` to ``inputs``; returns the tuple of outputs, each in the first input's dtype.

    Inputs are cast to ``compute_dtype`` (``None``: the input dtype, half precision promoted to float32) for the
    computation. Arrays of a framework with autodiff go through that framework's binder so that gradients flow;
    other arrays (NumPy, CuPy, any array-API library) are computed directly and recorded on the active ``vjp`` tape.
    """
    framework = _framework(inputs[0])
    if framework is not None:
        binder = importlib.import_module(_AUTODIFF_BINDERS[framework])
        return binder.bind(p, inputs, params, compute_dtype)
    xp = array_namespace(*[x for x in inputs if x is not None])
    dtype = inputs[0].dtype
    cdtype = compute_dtype_of(xp, dtype, compute_dtype)
    outputs, residuals = p.forward(xp, *[_cast(xp, x, cdtype) for x in inputs], **params)
    outputs = tuple(_cast(xp, y, dtype) for y in outputs)
    if _TAPES:
        _TAPES[-1].append(_Record(p, inputs, outputs, residuals, params, cdtype))
    return outputs


def run_vjp(xp: Any, p: Primitive, residuals: Any, cotangents: tuple, params: dict, cdtype: Any,
            input_dtypes: tuple) -> tuple[Any, ...]:
    """Run ``p.vjp`` in the compute dtype and cast each input cotangent back to its input's dtype."""
    if p.cast_cotangents:
        cotangents = tuple(_cast(xp, c, cdtype) for c in cotangents)
    cts = p.vjp(xp, residuals, *cotangents, **params)
    return tuple(_cast(xp, c, d) for c, d in zip(cts, input_dtypes, strict=True))


@dataclass
class _Record:
    primitive: Primitive
    inputs: tuple
    outputs: tuple
    residuals: Any
    params: dict
    cdtype: Any


_TAPES: list[list[_Record]] = []


def vjp(fn: Callable[..., Any], *args: Any, **params: Any) -> tuple[Any, Callable[..., tuple[Any, ...]]]:
    """Evaluate ``fn(*args, **params)`` and return ``(out, pullback)``, JAX style.

    ``fn`` is any composition of eigpool functions on arrays without their own autodiff (NumPy, CuPy, array-API
    arrays); ``out`` is an array or a tuple of arrays. ``pullback(cotangent)`` takes a cotangent of the same structure
    as ``out`` (``None`` for an output that receives none) and returns one cotangent per positional argument, each with
    the argument's shape and dtype (``None`` for an argument that is not an array, such as a power ``p``).

    Only eigpool operations are traced. An intermediate array computed outside eigpool (for example ``S + 1e-3 * I``
    in NumPy) would cut the chain of derivatives, so it raises ``ValueError`` instead of giving a wrong gradient.

    Example::

        out, pullback = eigpool.vjp(eigpool.sqrtm, S)
        (dS,) = pullback(G)
    """
    tape: list[_Record] = []
    _TAPES.append(tape)
    try:
        out = fn(*args, **params)
    finally:
        _TAPES.pop()
    outs = out if isinstance(out, tuple) else (out,)
    arg_ids = {id(a): i for i, a in enumerate(args)}
    produced = {id(y) for rec in tape for y in rec.outputs}
    for rec in tape:
        for x in rec.inputs:
            if x is not None and id(x) not in arg_ids and id(x) not in produced:
                raise ValueError(
                    f"vjp: an input of {rec.primitive.name} was computed outside eigpool; vjp traces only eigpool "
                    "functions, so that input would cut the chain of derivatives. Compute it with eigpool functions, "
                    "pass it as an argument of fn, or use a framework with autodiff (eigpool.backends.torch).")
    for y in outs:
        if id(y) not in produced and id(y) not in arg_ids:
            raise ValueError("vjp: fn returned an array that no eigpool function produced")

    def pullback(cotangent: Any) -> tuple[Any, ...]:
        cts = cotangent if isinstance(out, tuple) else (cotangent,)
        if len(cts) != len(outs):
            raise ValueError(f"pullback: expected {len(outs)} cotangents, got {len(cts)}")
        acc: dict[int, Any] = {}
        for y, c in zip(outs, cts, strict=True):
            if c is not None:
                if tuple(c.shape) != tuple(y.shape):
                    raise ValueError(f"pullback: cotangent shape {tuple(c.shape)} != output shape {tuple(y.shape)}")
                _accumulate(acc, y, c)
        for rec in reversed(tape):
            cts_out = [acc.get(id(y)) for y in rec.outputs]
            if all(c is None for c in cts_out):
                continue
            xp = array_namespace(*[y for y in rec.outputs])
            cts_out = tuple(xp.zeros_like(y) if c is None else c for y, c in zip(rec.outputs, cts_out, strict=True))
            dtypes = tuple(None if x is None else x.dtype for x in rec.inputs)
            cts_in = run_vjp(xp, rec.primitive, rec.residuals, cts_out, rec.params, rec.cdtype, dtypes)
            for x, c in zip(rec.inputs, cts_in, strict=True):
                if x is not None and c is not None:
                    _accumulate(acc, x, c)
        result = []
        for a in args:
            c = acc.get(id(a))
            if c is None and is_array_api_obj(a):
                c = array_namespace(a).zeros_like(a)
            result.append(c)
        return tuple(result)

    return out, pullback


def _accumulate(acc: dict[int, Any], x: Any, c: Any) -> None:
    key = id(x)
    acc[key] = c if key not in acc else acc[key] + c
