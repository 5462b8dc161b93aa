"""Primitives: a forward rule and a VJP rule, and how they are applied to arrays of any framework.

The contract, written once (in the notation of JAX's ``custom_vjp``)::

    forward :: (xp, *inputs, spec) -> (outputs: tuple, residuals)
    vjp     :: (xp, residuals, *output_cotangents, spec) -> input_cotangents: tuple

Both rules are pure, trace-safe functions of arrays of the namespace ``xp`` (the Python array API): no Python
branching on array values, no writes into arrays, no host-device synchronisation; they branch only on shapes, dtypes
and the frozen specification ``spec`` (eigpool._spec). ``forward`` returns every output in a tuple, even a single one:
first the ``n_outputs`` differentiable ones, then ``aux_outputs`` values that carry no derivative (the eigenvalues a
spectral function computed, for the value checks). ``vjp`` receives one cotangent per differentiable output (zeros
where the caller gave none) and returns one cotangent per input (``None`` for an input that is not differentiable).
Optionally, ``second_order(spec)`` returns a rule for the VJP of the VJP, ``(xp, residuals, cotangents, *ws, spec)
-> (input cotangents..., cotangent cotangents...)``, or None where it has none (frameworks then differentiate the
recomputed forward and VJP with their own autodiff).

``bind(p, *inputs, spec=spec)`` applies a primitive. The binder is chosen by the framework of the first input, from a
registry the backends fill when they are imported (``register_backend``): a framework with automatic differentiation
(eigpool.backends.torch) wraps the two rules into its own autodiff. The core names no framework: the registry is
keyed by the name of the array's namespace ("torch" for array_api_compat.torch), and the module
``eigpool.backends.<name>`` is imported, if it exists, the first time such an array arrives. Arrays of every other
library (NumPy, CuPy, array-api-strict) take the eager binder below, which records a tape for ``vjp``.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from array_api_compat import array_namespace, is_array_api_obj

from ._xp import cast

__all__ = ["Backend", "Primitive", "backend_of", "bind", "compute_dtype_of", "compute_dtypes_of", "namespace_of",
           "register_backend", "run_vjp", "vjp"]


@dataclass(frozen=True)
class Primitive:
    """An operation defined by a forward rule and a VJP rule (see the module docstring for the contract).

    ``n_outputs``: the differentiable outputs ``forward`` returns first; ``aux_outputs``: the values after them that
    carry no derivative. ``differentiable``: the positions of the inputs that receive cotangents.
    ``second_order``: optional, ``spec -> rule | None`` (the VJP of the VJP, module docstring).
    ``cast_cotangents``: False hands ``vjp`` the output cotangents in their own dtype, for a rule that casts what it
    reads piece by piece (a whole-array cast of a large cotangent costs a fresh copy twice its size).
    """

    name: str
    forward: Callable[..., tuple[tuple[Any, ...], Any]]
    vjp: Callable[..., tuple[Any, ...]]
    n_outputs: int = 1
    aux_outputs: int = 0
    differentiable: tuple[int, ...] = (0,)
    second_order: Callable[[Any], Callable[..., tuple] | None] | None = None
    cast_cotangents: bool = True

    def __repr__(self) -> str:
        return f"Primitive({self.name!r})"


class Backend(NamedTuple):
    """How eigpool applies primitives to one framework's arrays: ``bind(p, inputs, spec) -> outputs`` and
    ``concrete(x) -> bool``, whether ``x`` holds values that may be inspected (False while tracing: meta or fake
    tensors, vmap, compile, jit), which decides whether value checks run."""

    bind: Callable[[Primitive, tuple, Any], tuple]
    concrete: Callable[[Any], bool]


_BACKENDS: dict[str, Backend] = {}
_BY_TYPE: dict[type, Backend] = {}
_NAMESPACES: dict[type, Any] = {}


def register_backend(name: str, backend: Backend, examples: tuple = ()) -> None:
    """Register the binder of the framework named ``name``: the top-level module of its array type or the name of
    its array API namespace (e.g. "torch"). ``examples``: arrays of the framework's common types (a tensor, a
    parameter), whose type and namespace are cached now, so that a first call under a tracing compiler finds them
    (a cache filled while Dynamo traces makes it recompile)."""
    _BACKENDS[name] = backend
    for kind in [k for k, b in _BY_TYPE.items() if b is EAGER]:
        del _BY_TYPE[kind]  # types looked up before this registration may be this framework's
    for x in examples:
        _BY_TYPE[type(x)] = backend
        namespace_of(x)


def namespace_of(x: Any) -> Any:
    """The array API namespace of ``x`` (array_api_compat's), or None if ``x`` is not an array; cached by type, so
    that a traced call (torch.compile) reads a dictionary instead of tracing array_api_compat's type tests."""
    kind = type(x)
    if kind not in _NAMESPACES:
        _NAMESPACES[kind] = array_namespace(x) if is_array_api_obj(x) else None
    return _NAMESPACES[kind]


def backend_of(x: Any) -> Backend:
    """The backend for arrays of ``x``'s type: the one registered under the top-level module of the type or under
    the name of its namespace, registering it first by importing ``eigpool.backends.<name>`` where that module exists;
    else the eager binder."""
    backend = _BY_TYPE.get(type(x))
    if backend is None:
        backend = _BY_TYPE[type(x)] = _find_backend(x)
    return backend


def _find_backend(x: Any) -> Backend:
    names = (type(x).__module__.split(".")[0],
             namespace_of(x).__name__.removeprefix("array_api_compat.").split(".")[0])
    for name in names:
        if name not in _BACKENDS and importlib.util.find_spec(f"eigpool.backends.{name}") is not None:
            importlib.import_module(f"eigpool.backends.{name}")
        if name in _BACKENDS:
            return _BACKENDS[name]
    return EAGER


def load_backends_of_imported_frameworks() -> None:
    """Import ``eigpool.backends.<name>`` for every framework already imported (so that a first call under a tracing
    compiler finds its binder registered, with nothing to import). A backend that cannot load here (CuPy without a
    GPU) is left to the first array that needs it, which raises its error."""
    import pkgutil
    import sys

    import eigpool.backends

    for module in pkgutil.iter_modules(eigpool.backends.__path__):
        if module.name in sys.modules and f"eigpool.backends.{module.name}" not in sys.modules:
            try:
                importlib.import_module(f"eigpool.backends.{module.name}")
            except (ImportError, RuntimeError):
                continue


#: The complex dtype whose real and imaginary parts have the named real precision.
_COMPLEX_OF = {"float32": "complex64", "float64": "complex128"}


def compute_dtype_of(xp: Any, dtype: Any, compute_dtype: str | None) -> Any:
    """The dtype a primitive computes in: ``compute_dtype`` (a name such as ``"float64"``) unless it is ``None``,
    in which case the input's own dtype, promoted to at least float32 (half precision is never used for the math).
    A complex input computes in the complex dtype of that precision ("float64": complex128)."""
    if xp.isdtype(dtype, "complex floating"):
        name = compute_dtype or ("float32" if dtype == xp.complex64 else "float64")
        return getattr(xp, _COMPLEX_OF[name])
    if compute_dtype is not None:
        return getattr(xp, compute_dtype)
    if xp.finfo(dtype).bits < 32:
        return xp.float32
    return dtype


def compute_dtypes_of(xp: Any, inputs: tuple, compute_dtype: str | None) -> tuple:
    """The compute dtype of each input (None for an input that is not an array): a primitive's inputs keep their
    own kind, so a real exponent beside a complex matrix stays real."""
    return tuple(None if getattr(x, "dtype", None) is None else compute_dtype_of(xp, x.dtype, compute_dtype)
                 for x in inputs)


def bind(p: Primitive, *inputs: Any, spec: Any) -> tuple[Any, ...]:
    """Apply primitive ``p`` with the specification ``spec`` to ``inputs``; returns the tuple of outputs, the
    differentiable ones in the first input's dtype.

    Inputs are cast to ``spec.compute_dtype`` (``None``: the input dtype, half precision promoted to float32) for the
    computation. Arrays of a framework with autodiff go through that framework's binder so that gradients flow;
    other arrays (NumPy, CuPy, any array-API library) are computed directly and recorded on the active ``vjp`` tape.
    """
    return backend_of(inputs[0]).bind(p, inputs, spec)


def _eager_bind(p: Primitive, inputs: tuple, spec: Any) -> tuple[Any, ...]:
    xp = namespace_of(inputs[0])
    dtype = inputs[0].dtype
    cdtypes = compute_dtypes_of(xp, inputs, spec.compute_dtype)
    outputs, residuals = p.forward(xp, *[cast(xp, x, c) for x, c in zip(inputs, cdtypes, strict=True)], spec=spec)
    n = p.n_outputs
    outputs = (*[cast(xp, y, dtype) for y in outputs[:n]], *outputs[n:])
    if _TAPES:
        _TAPES[-1].append(_Record(p, inputs, outputs[:n], residuals, spec, cdtypes[0]))
    return outputs


EAGER = Backend(_eager_bind, lambda x: True)


def run_vjp(xp: Any, p: Primitive, residuals: Any, cotangents: tuple, spec: Any, cdtype: Any,
            input_dtypes: tuple) -> tuple[Any, ...]:
    """Run ``p.vjp`` in the compute dtype and cast each input cotangent back to its input's dtype."""
    if p.cast_cotangents:
        cotangents = tuple(cast(xp, c, cdtype) for c in cotangents)
    cts = p.vjp(xp, residuals, *cotangents, spec=spec)
    return tuple(cast(xp, c, d) for c, d in zip(cts, input_dtypes, strict=True))


@dataclass
class _Record:
    primitive: Primitive
    inputs: tuple
    outputs: tuple
    residuals: Any
    spec: Any
    cdtype: Any


_TAPES: list[list[_Record]] = []


def vjp(fn: Callable[..., Any], /, *args: Any, **params: Any) -> tuple[Any, Callable[..., tuple[Any, ...]]]:
    """Evaluate ``fn(*args, **params)`` and return ``(out, pullback)``, JAX style.

    ``fn`` is any composition of eigpool functions on arrays without their own autodiff (NumPy, CuPy, array-API
    arrays); ``out`` is an array or a tuple of arrays. ``pullback(cotangent)`` takes a cotangent of the same structure
    as ``out`` (``None`` for an output that receives none) and returns one cotangent per positional argument, each with
    the argument's shape and dtype (``None`` for an argument that is not an array, such as a power ``p``).

    Only eigpool operations are traced. An intermediate array computed outside eigpool (for example ``S + 1e-3 * I``
    in NumPy) would cut the chain of derivatives, so as the first input of an eigpool function (the matrix or the
    features) it raises ``ValueError`` instead of giving a wrong gradient; later inputs that are neither arguments of
    ``fn`` nor eigpool results (an exponent array, a direction E of ``frechet``) are constants. A single output's
    cotangent may be given bare or as a 1-tuple.

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
        for x in rec.inputs[:1]:
            if x is not None and id(x) not in arg_ids and id(x) not in produced:
                raise ValueError(
                    f"vjp: an input of {rec.primitive.name} was computed outside eigpool; vjp traces only eigpool "
                    "functions, so that input would cut the chain of derivatives. Compute it with eigpool functions, "
                    "pass it as an argument of fn, or use a framework with autodiff (eigpool.backends.torch).")
    for y in outs:
        if id(y) not in produced and id(y) not in arg_ids:
            raise ValueError("vjp: fn returned an array that no eigpool function produced")

    def pullback(cotangent: Any) -> tuple[Any, ...]:
        single = not isinstance(out, tuple)
        cts = (cotangent,) if single and not (isinstance(cotangent, tuple) and len(cotangent) == 1) else cotangent
        if not isinstance(cts, tuple):
            raise TypeError(f"pullback: expected a tuple of {len(outs)} cotangents, got {type(cts).__name__}")
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
            xp = array_namespace(*rec.outputs)
            cts_out = tuple(xp.zeros_like(y) if c is None else c for y, c in zip(rec.outputs, cts_out, strict=True))
            dtypes = tuple(None if x is None else x.dtype for x in rec.inputs)
            cts_in = run_vjp(xp, rec.primitive, rec.residuals, cts_out, rec.spec, rec.cdtype, dtypes)
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
