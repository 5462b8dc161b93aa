"""The PyTorch adapter: one generic ``torch.autograd.Function`` for every eigpool primitive, in every mode PyTorch has.

``eigpool.sqrtm(tensor)`` (and every other eigpool function) dispatches here through ``eigpool._primitive.bind``: a
new primitive is differentiable in PyTorch as soon as it has its forward and VJP rules. Tensors keep their device and
dtype; the math runs in the compute dtype through array-api-compat's torch namespace, so CPU, CUDA, meta and fake
tensors take the same code path.

``_Apply`` is written in the ``setup_context`` form with ``generate_vmap_rule = True``, which is what ``torch.func``
needs: the forward is a pure function of its inputs (it returns its outputs, then the residual tensors, then the
residuals' structure), ``setup_context`` saves what the backward reads, and PyTorch derives the vmap rule by running
the trace-safe rules on batched tensors. So one definition serves autograd (``backward``, ``autograd.grad``,
``gradcheck`` with batched gradients), ``torch.func.grad/vjp/jvp/jacrev/jacfwd/hessian/vmap``, meta and fake tensors,
``torch.compile(fullgraph=True)`` and ``torch.export``.

[Note: torch forward mode]
Forward-mode AD (``torch.autograd.forward_ad``, ``torch.func.jvp``, ``jacfwd``) needs no rule of its own: every VJP
rule is linear in its cotangent w, so the JVP is its transpose, J t = (w -> vjp(w))^T t, computed by
``torch.func.vjp`` of the VJP rule at w = 0 (``_transpose``). It is exact at repeated eigenvalues wherever the VJP is
(and, for an approximate ``grad=`` kernel, the transpose of that approximation). Under ``torch.compile`` the
function without a ``jvp`` is used (Dynamo does not trace custom JVPs; compiled code runs reverse mode).

[Note: torch double backward]
A backward that runs with grad mode on (``create_graph=True``, ``torch.func.grad`` of ``grad``, ``hessian``) returns
``_ApplyVJP``: the VJP as a differentiable function of (inputs, cotangents), evaluated from the saved residuals, so
first-order use pays nothing extra. Its own backward, the second derivative, is the primitive's ``second_order``
rule where it has one (second divided differences for spectral functions, exact at repeated eigenvalues), else the
VJP of the recomputed forward and VJP by ``torch.func.vjp`` (exact where PyTorch's own derivatives are: for the
eigendecomposition, distinct eigenvalues). Its forward mode is again the transpose of its backward, so
forward-over-reverse (Hessian-vector products) works in both routes.
"""

from __future__ import annotations

from typing import Any

import array_api_compat.torch as compat_torch
import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake
from torch.autograd import forward_ad
from torch.fx.experimental.proxy_tensor import get_proxy_mode

from eigpool._primitive import Backend, Primitive, compute_dtypes_of, register_backend, run_vjp

__all__ = ["bind", "concrete", "xp_torch"]


class _Linalg:
    """array_api_compat.torch.linalg, with ``diagonal`` as ``torch.diagonal``."""

    def __getattr__(self, name: str) -> Any:
        return getattr(compat_torch.linalg, name)

    @staticmethod
    def diagonal(x: Tensor, /, *, offset: int = 0) -> Tensor:
        return torch.diagonal(x, offset, -2, -1)


class _Namespace:
    """The array API namespace the rules run in: array_api_compat's torch namespace, with the two functions whose
    aten operators have no batching rule in PyTorch's legacy vmap (``gradcheck(check_batched_grad=True)``) bound to
    the equivalent ones that have (``concat`` -> torch.cat, ``linalg.diagonal``); ``maximum``/``minimum`` with a
    Python scalar bound to ``torch.clamp`` (array_api_compat promotes the scalar with ``torch.result_type``, which
    Dynamo cannot trace); and ``conj`` materialised (``torch.conj_physical``)."""

    linalg = _Linalg()

    def __getattr__(self, name: str) -> Any:
        return getattr(compat_torch, name)

    @staticmethod
    def maximum(x1: Tensor, x2: Any, /) -> Tensor:
        return torch.clamp(x1, min=x2) if isinstance(x2, (int, float)) else compat_torch.maximum(x1, x2)

    @staticmethod
    def minimum(x1: Tensor, x2: Any, /) -> Tensor:
        return torch.clamp(x1, max=x2) if isinstance(x2, (int, float)) else compat_torch.minimum(x1, x2)

    @staticmethod
    def conj(x: Tensor, /) -> Tensor:
        # A materialised conjugate: torch.conj is a lazy view, whose tangent layout forward-mode AD under vmap
        # (gradcheck's batched forward gradients) rejects.
        return torch.conj_physical(x)

    @staticmethod
    def concat(arrays: Any, /, *, axis: int | None = 0) -> Tensor:
        return torch.cat(list(arrays), dim=axis) if axis is not None else torch.cat([a.reshape(-1) for a in arrays])


xp_torch = _Namespace()


def _cast(x: Any, dtype: torch.dtype | None) -> Any:
    return x if not isinstance(x, Tensor) or dtype is None or x.dtype == dtype else x.to(dtype)


def _cast_all(xs: Any, dtypes: tuple) -> tuple:
    """Each of ``xs`` in its own compute dtype (a primitive's inputs keep their kind: real or complex)."""
    return tuple(_cast(x, d) for x, d in zip(xs, dtypes, strict=True))


def _needs_autodiff(p: Primitive, inputs: tuple) -> bool:
    """Whether a derivative may be asked of this call: autograd on a differentiable input that requires grad, a dual
    tensor of forward mode, a torch.func transform, or compilation (Dynamo decides later what it needs)."""
    if torch.compiler.is_compiling() or torch._C._functorch.peek_interpreter_stack() is not None:
        return True
    if torch.is_grad_enabled() and any(isinstance(inputs[i], Tensor) and inputs[i].requires_grad
                                       for i in p.differentiable):
        return True
    return any(isinstance(x, Tensor) and forward_ad.unpack_dual(x).tangent is not None for x in inputs)


def bind(p: Primitive, inputs: tuple, spec: Any) -> tuple[Tensor, ...]:
    """Apply primitive ``p`` to torch tensors (called by ``eigpool._primitive.bind``); returns its outputs, the
    differentiable ones in ``inputs[0]``'s dtype, all on its device. Without any derivative to record (``no_grad``,
    inputs that do not require grad) the forward rule runs directly and saves nothing."""
    dtype = inputs[0].dtype
    cdtypes = compute_dtypes_of(xp_torch, inputs, spec.compute_dtype)
    n = p.n_outputs + p.aux_outputs
    if not _needs_autodiff(p, inputs):
        outputs, _ = p.forward(xp_torch, *_cast_all(inputs, cdtypes), spec=spec)
        return (*[_cast(y, dtype) for y in outputs[:p.n_outputs]], *outputs[p.n_outputs:])
    function = _ApplyCompiled if torch.compiler.is_compiling() else _Apply
    return tuple(function.apply(p, spec, _Opaque(cdtypes), *inputs)[:n])


def concrete(x: Tensor) -> bool:
    """Whether ``x`` holds values eigpool may read (value checks): not while compiling, tracing or exporting, not for
    meta or fake tensors, not inside a torch.func transform."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or get_proxy_mode() is not None:
        return False
    return not (x.device.type == "meta" or is_fake(x) or torch._C._functorch.is_functorch_wrapped_tensor(x))


# ---------------------------------------------------------------------------------------------------------------------
# Residuals: any nesting of tuples, lists, named tuples and dicts. Their tensors travel as outputs of the forward (so
# that setup_context can save them); a tensor that is one of the inputs or outputs is referred to, not returned again.

class _Opaque:
    """A value that torch.func's pytrees must not open (a residual structure holds tuples and named tuples)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class _Ref:
    """Where ``_flatten`` took a tensor out of a residual structure: the k-th residual tensor, input or output."""

    __slots__ = ("kind", "k")

    def __init__(self, kind: str, k: int) -> None:
        self.kind, self.k = kind, k


def _flatten(tree: Any, tensors: list[Tensor], inputs: tuple, outputs: tuple) -> Any:
    """The structure of ``tree`` with every tensor replaced by a ``_Ref`` (new tensors are appended to ``tensors``)."""
    if isinstance(tree, Tensor):
        # A tensor appears once: the same tensor twice among a Function's outputs breaks Dynamo's wiring of saved
        # tensors (Newton-Schulz keeps T_1 as Z_1).
        for kind, known in (("input", inputs), ("output", outputs), ("residual", tensors)):
            for k, t in enumerate(known):
                if t is tree:
                    return _Ref(kind, k)
        tensors.append(tree)
        return _Ref("residual", len(tensors) - 1)
    if isinstance(tree, dict):
        return {k: _flatten(v, tensors, inputs, outputs) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        items = [_flatten(v, tensors, inputs, outputs) for v in tree]
        return type(tree)(*items) if hasattr(tree, "_fields") else type(tree)(items)
    return tree


def _unflatten(spec: Any, found: dict[str, tuple]) -> Any:
    """Inverse of ``_flatten``: ``found`` maps "residual", "input" and "output" to their tensors."""
    if isinstance(spec, _Ref):
        return found[spec.kind][spec.k]
    if isinstance(spec, dict):
        return {k: _unflatten(v, found) for k, v in spec.items()}
    if isinstance(spec, (tuple, list)):
        items = [_unflatten(v, found) for v in spec]
        return type(spec)(*items) if hasattr(spec, "_fields") else type(spec)(items)
    return spec


def _transpose(linear: Any, shapes: list[tuple], dtypes: list[torch.dtype], device: torch.device,
               tangents: tuple) -> tuple:
    """(w -> linear(w))^T applied to ``tangents``: the JVP of a map whose VJP is ``linear`` ([Note: torch forward
    mode]). ``shapes`` and ``dtypes``: those of the w arguments; ``tangents``: one per output of ``linear`` (which
    are tensors). For complex tensors the transpose is the adjoint for the real inner product Re <a, b>, which
    ``torch.func.vjp`` computes, so the JVP is the real-linear differential (PyTorch's complex convention)."""
    zeros = [torch.zeros(shape, dtype=dtype, device=device) for shape, dtype in zip(shapes, dtypes, strict=True)]
    _, pullback = torch.func.vjp(linear, *zeros)
    return pullback(tangents)


# ---------------------------------------------------------------------------------------------------------------------
# The first-order function.

class _Apply(torch.autograd.Function):
    """forward = ``p.forward`` in the compute dtype, backward = ``p.vjp``, jvp = the VJP transposed."""

    generate_vmap_rule = True

    @staticmethod
    def forward(p: Primitive, spec: Any, cdtypes: _Opaque, *inputs: Any) -> tuple:
        dtype = inputs[0].dtype
        cast = _cast_all(inputs, cdtypes.value)
        outputs, residuals = p.forward(xp_torch, *cast, spec=spec)
        n = p.n_outputs
        # Outputs are returned detached (the same memory): an output that is a view of a tensor made inside the rule
        # (a reshape) must not reach autograd as a view, since forward-mode AD requires a view's tangent to be a view.
        outputs = tuple(y.detach() for y in (*[_cast(y, dtype) for y in outputs[:n]], *outputs[n:]))
        tensors: list[Tensor] = []
        tree = _flatten(residuals, tensors, cast, outputs)
        return (*outputs, *tensors, _Opaque(tree))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        p, spec, cdtypes, *xs = inputs
        n = p.n_outputs + p.aux_outputs
        outputs, residuals, tree = output[:n], output[n:-1], output[-1].value
        ctx.mark_non_differentiable(*outputs[p.n_outputs:], *residuals)
        # No zero-filled gradients for the auxiliary outputs and residuals (each as large as they are).
        ctx.set_materialize_grads(False)
        ctx.p, ctx.spec, ctx.cdtypes, ctx.tree = p, spec, cdtypes.value, tree
        ctx.tensor_at = [i for i, x in enumerate(xs) if isinstance(x, Tensor)]
        ctx.n_inputs, ctx.n_residuals = len(xs), len(residuals)
        ctx.input_dtypes = tuple(x.dtype if isinstance(x, Tensor) else None for x in xs)
        ctx.output_meta = [(y.shape, y.dtype) for y in outputs[:p.n_outputs]]
        saved = (*[xs[i] for i in ctx.tensor_at], *outputs, *residuals)
        ctx.save_for_backward(*saved)
        ctx.save_for_forward(*saved)

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> tuple:
        p = ctx.p
        inputs, residuals = _saved(ctx)
        cotangents = tuple(torch.zeros(shape, dtype=dtype, device=ctx.saved_tensors[0].device) if g is None else g
                           for g, (shape, dtype) in zip(grads[:p.n_outputs], ctx.output_meta, strict=True))
        wanted = [i in p.differentiable and ctx.needs_input_grad[3 + i] for i in range(ctx.n_inputs)]
        if torch.is_grad_enabled():
            # [Note: torch double backward]: the VJP as a differentiable function of inputs and cotangents.
            flat: list[Tensor] = []
            tree = _flatten(residuals, flat, (), ())
            cts = _ApplyVJP.apply(p, ctx.spec, _Opaque(ctx.cdtypes), _Opaque((tree, ctx.n_inputs, ctx.input_dtypes)),
                                  *inputs, *cotangents, *flat)
        else:
            cts = run_vjp(xp_torch, p, residuals, cotangents, ctx.spec, ctx.cdtypes[0], ctx.input_dtypes)
        return (None, None, None, *[c if w else None for c, w in zip(cts, wanted, strict=True)])

    @staticmethod
    def jvp(ctx: Any, *tangents: Any) -> tuple:
        # [Note: torch forward mode]: J t = (w -> vjp(w))^T t.
        p, cdtypes = ctx.p, ctx.cdtypes
        tangents = tangents[3:]
        for i, t in enumerate(tangents):
            if t is not None and i not in p.differentiable:
                raise NotImplementedError(f"{p.name}: forward-mode AD through input {i}, which has no derivative rule")
        _, residuals = _saved(ctx)
        at = [i for i, t in enumerate(tangents) if t is not None]
        device = ctx.saved_tensors[0].device

        def linear(*ws: Tensor) -> tuple:
            cts = run_vjp(xp_torch, p, residuals, ws, ctx.spec, cdtypes[0], cdtypes)
            return tuple(cts[i] for i in at)

        shapes = [shape for shape, _ in ctx.output_meta]
        jt = _transpose(linear, shapes, [cdtypes[0]] * len(shapes), device,
                        tuple(tangents[i].to(cdtypes[i]) for i in at)) if at else [None] * p.n_outputs
        outs = [torch.zeros(shape, dtype=dtype, device=device) if j is None else j.to(dtype)
                for j, (shape, dtype) in zip(jt, ctx.output_meta, strict=True)]
        return (*outs, *[None] * (p.aux_outputs + ctx.n_residuals + 1))


class _ApplyCompiled(_Apply):
    """``_Apply`` without the forward-mode rule, for ``torch.compile`` (Dynamo does not trace custom JVPs)."""

    jvp = torch.autograd.Function.jvp


def _saved(ctx: Any) -> tuple[list, Any]:
    """(inputs with None where not a tensor, residuals) from what ``setup_context`` saved."""
    saved = ctx.saved_tensors
    k = len(ctx.tensor_at)
    n = ctx.p.n_outputs + ctx.p.aux_outputs
    inputs: list[Any] = [None] * ctx.n_inputs
    for i, x in zip(ctx.tensor_at, saved[:k], strict=True):
        inputs[i] = x
    cast = _cast_all(inputs, ctx.cdtypes)
    found = {"input": cast, "output": saved[k:k + n], "residual": saved[k + n:]}
    return inputs, _unflatten(ctx.tree, found)


# ---------------------------------------------------------------------------------------------------------------------
# The VJP as a differentiable function ([Note: torch double backward]).

class _ApplyVJP(torch.autograd.Function):
    """forward = ``p.vjp`` from the saved residuals, backward = the second derivative, jvp = its transpose.

    Arguments after ``(p, spec, cdtypes, meta)``: the primal inputs, the output cotangents, the residual tensors;
    ``meta`` = (residual structure, number of inputs, input dtypes)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(p: Primitive, spec: Any, cdtypes: _Opaque, meta: _Opaque, *args: Any) -> tuple:
        tree, n_in, dtypes = meta.value
        cotangents, flat = args[n_in:n_in + p.n_outputs], args[n_in + p.n_outputs:]
        residuals = _unflatten(tree, {"residual": flat})
        return run_vjp(xp_torch, p, residuals, cotangents, spec, cdtypes.value[0], dtypes)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        p, spec, cdtypes, meta, *args = inputs
        ctx.p, ctx.spec, ctx.cdtypes, ctx.meta = p, spec, cdtypes.value, meta.value
        ctx.n_args = len(args)
        ctx.tensor_at = [i for i, x in enumerate(args) if isinstance(x, Tensor)]
        ctx.save_for_backward(*[args[i] for i in ctx.tensor_at])
        ctx.save_for_forward(*[args[i] for i in ctx.tensor_at])

    @staticmethod
    def backward(ctx: Any, *ws: Any) -> tuple:
        grads = _second_order(ctx, ws)
        return (None, None, None, None, *grads)

    @staticmethod
    def jvp(ctx: Any, *tangents: Any) -> tuple:
        # [Note: torch forward mode] for the VJP: the transpose of its backward (linear in ws).
        p, (_, n_in, dtypes) = ctx.p, ctx.meta
        tangents = tangents[4:]
        args = _saved_args(ctx)
        out_at = [i for i in p.differentiable if dtypes[i] is not None]
        at = [i for i in (*out_at, *range(n_in, n_in + p.n_outputs)) if tangents[i] is not None]
        device = args[ctx.tensor_at[0]].device

        def linear(*ws: Tensor) -> tuple:
            full = [None] * n_in
            for i, w in zip(out_at, ws, strict=True):
                full[i] = w
            grads = _second_order(ctx, tuple(full))
            return tuple(grads[i] for i in at)

        shapes, dtypes_w = [args[i].shape for i in out_at], [ctx.cdtypes[i] for i in out_at]
        jt = _transpose(linear, shapes, dtypes_w, device, tuple(tangents[i].to(_arg_dtype(ctx, i)) for i in at)) \
            if at else [None] * len(out_at)
        outs: list[Any] = [None] * n_in
        for i, j in zip(out_at, jt, strict=True):
            outs[i] = (torch.zeros(args[i].shape, dtype=dtypes[i], device=device) if j is None
                       else j.to(dtypes[i]))
        return tuple(outs)


def _arg_dtype(ctx: Any, i: int) -> torch.dtype:
    """The compute dtype of argument ``i`` of ``_ApplyVJP``: its input's for a primal, the output's for a cotangent."""
    return ctx.cdtypes[i] if i < len(ctx.cdtypes) else ctx.cdtypes[0]


def _saved_args(ctx: Any) -> list:
    args: list[Any] = [None] * ctx.n_args
    for i, x in zip(ctx.tensor_at, ctx.saved_tensors, strict=True):
        args[i] = x
    return args


def _second_order(ctx: Any, ws: tuple) -> list:
    """The VJP of (inputs, cotangents) -> input cotangents for the cotangents ``ws`` (one per input, None for none):
    one entry per argument of ``_ApplyVJP`` after ``meta`` (None for the residual tensors)."""
    p, spec, cdtypes, (tree, n_in, dtypes) = ctx.p, ctx.spec, ctx.cdtypes, ctx.meta
    cdtype = cdtypes[0]
    args = _saved_args(ctx)
    inputs, cotangents, flat = args[:n_in], args[n_in:n_in + p.n_outputs], args[n_in + p.n_outputs:]
    diff = [i for i in p.differentiable if i < n_in and inputs[i] is not None]
    w = tuple(torch.zeros(inputs[i].shape, dtype=cdtypes[i], device=inputs[i].device) if ws[i] is None
              else ws[i].to(cdtypes[i]) for i in diff)
    rule = p.second_order(spec) if p.second_order is not None else None
    if rule is not None:
        residuals = _unflatten(tree, {"residual": flat})
        d = rule(xp_torch, residuals, tuple(_cast(c, cdtype) for c in cotangents), *w, spec=spec)
    else:
        # No rule: the VJP of the recomputed forward and VJP, by PyTorch's own derivatives.
        def vjp_of(*xs_and_cts: Tensor) -> tuple:
            xs = list(_cast_all(inputs, cdtypes))
            for i, x in zip(diff, xs_and_cts[:len(diff)], strict=True):
                xs[i] = x
            _, res = p.forward(xp_torch, *xs, spec=spec)
            cts = run_vjp(xp_torch, p, res, xs_and_cts[len(diff):], spec, cdtype, cdtypes)
            return tuple(cts[i] for i in diff)

        primals = (*[_cast(inputs[i], cdtypes[i]) for i in diff], *[_cast(c, cdtype) for c in cotangents])
        _, pullback = torch.func.vjp(vjp_of, *primals)
        d = pullback(w)
    out: list[Any] = [None] * ctx.n_args
    for i, g in zip(diff, d[:len(diff)], strict=True):
        out[i] = g.to(dtypes[i])
    for k, g in enumerate(d[len(diff):]):
        out[n_in + k] = g.to(cotangents[k].dtype)
    return out


register_backend("torch", Backend(bind, concrete), examples=(torch.empty(0), torch.nn.Parameter(torch.empty(0))))
