"""PyTorch binding: one generic autograd adapter for every eigpool primitive, and ``torch.nn`` layers.

``eigpool.sqrtm(tensor)`` (and every other eigpool function) dispatches here through ``eigpool._primitive.bind``:
``bind`` wraps the primitive's forward and VJP rules in one ``torch.autograd.Function`` (``_PrimitiveFunction``), so a
new primitive is differentiable in PyTorch as soon as it has the two rules. Tensors keep their device and dtype; the
math runs in the compute dtype (default float64; half and single precision are promoted) through array-api-compat's
torch namespace, so CPU and CUDA tensors take the same code path.

[Note: torch double backward]
A backward that runs with ``create_graph=True`` must itself be differentiable. Two routes, chosen per primitive:
- the primitive names a ``vjp_primitive``: a primitive whose inputs are (primal inputs, output cotangents) and whose
  output is the input cotangents, with its own VJP rule (second derivatives written by hand, e.g. second divided
  differences for spectral functions, exact at repeated eigenvalues). The backward binds it like any primitive.
- otherwise the forward is recomputed from the saved inputs with grad enabled (its residuals then carry a graph) and
  the core VJP rule is evaluated with torch operations: PyTorch differentiates both. This is exact where PyTorch's own
  derivatives are defined (for the eigendecomposition: distinct eigenvalues).

[Note: torch forward mode]
Forward-mode AD (``torch.autograd.forward_ad`` dual tensors, ``gradcheck(check_forward_ad=True)``) needs no rule of its
own: every VJP rule is linear in its cotangent w, so J t = d/dw <vjp(w), t>, one evaluation of the VJP rule on the
saved residuals and its backward with respect to w, both by PyTorch. It is the exact transpose of the VJP, so exact at
repeated eigenvalues wherever the VJP is (and, for an approximate ``grad=`` kernel, the transpose of that
approximation). Forward over reverse (Hessian-vector products: forward mode through ``autograd.grad(...,
create_graph=True)``) works too, the backward being bound like any primitive. ``torch.func`` transforms (vmap,
jacrev, torch.func.jvp) are not supported: they need a ``setup_context`` form and no data-dependent checks; a
NotImplementedError says so (under vmap PyTorch's own error may come first, from an input check).

Layers: ``CovariancePooling``, ``MatrixFunction`` and the complete head ``GCPHead`` (1x1 reduction, covariance,
normalisation, SEB or truncation, upper-triangular vector).
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat.torch as xp_torch
import torch
from torch import Tensor, nn
from torch.autograd import forward_ad

import eigpool
from eigpool import (
    covariance,
    eigh,
    expm_neg,
    invsqrtm,
    logm,
    ns_invsqrtm,
    ns_sqrtm,
    powm,
    seb,
    spectral,
    sqrtm,
    triu_unvec,
    triu_vec,
    truncate,
)
from eigpool._primitive import Primitive, compute_dtype_of, run_vjp
from eigpool.eigh import relative_floor
from eigpool.gram import PATHS, pooled, resolve_path

__all__ = ["CovariancePooling", "GCPHead", "MatrixFunction", "bind", "covariance", "eigh", "expm_neg", "invsqrtm",
           "logm", "ns_invsqrtm", "ns_sqrtm", "pooled", "powm", "seb", "spectral", "sqrtm", "triu_unvec", "triu_vec",
           "truncate"]


# ---------------------------------------------------------------------------------------------------------------------
# The autograd adapter.

def _cast(x: Any, dtype: torch.dtype) -> Any:
    return x if x is None or x.dtype == dtype else x.to(dtype)


def bind(p: Primitive, inputs: tuple, params: dict, compute_dtype: str | None) -> tuple[Tensor, ...]:
    """Apply primitive ``p`` to torch tensors (called by ``eigpool._primitive.bind``); returns the tuple of outputs.

    inputs: tensors (or None) on one device; outputs come back in ``inputs[0]``'s dtype and device. The computation
    runs in ``compute_dtype`` (``None``: the input dtype, half precision promoted to float32). When autograd is off
    (``torch.no_grad``) or no differentiable input requires grad, the forward rule runs directly and saves nothing.
    """
    dtype = inputs[0].dtype
    cdtype = compute_dtype_of(xp_torch, dtype, compute_dtype)
    if (torch.is_grad_enabled() and any(isinstance(inputs[i], Tensor) and inputs[i].requires_grad
                                        for i in p.differentiable)) or any(_has_tangent(x) for x in inputs):
        try:
            return _PrimitiveFunction.apply(p, params, cdtype, *inputs)
        except RuntimeError as error:
            if "setup_context" not in str(error):
                raise
            raise NotImplementedError(
                f"eigpool.{p.name}: torch.func transforms (grad, vjp, jvp, vmap, jacrev) are not supported; use "
                "torch.autograd (backward, autograd.grad, also with create_graph=True) or forward mode through "
                "torch.autograd.forward_ad ([Note: torch forward mode] in eigpool.backends.torch)") from error
    with torch.no_grad():
        outputs, _ = p.forward(xp_torch, *[_cast(x, cdtype) for x in inputs], **params)
    return tuple(_cast(y, dtype) for y in outputs)


def _has_tangent(x: Any) -> bool:
    """Whether ``x`` is a dual tensor of forward-mode AD (``torch.autograd.forward_ad``)."""
    return isinstance(x, Tensor) and forward_ad.unpack_dual(x).tangent is not None


class _PrimitiveFunction(torch.autograd.Function):
    """The generic autograd function: forward = ``p.forward`` in the compute dtype, backward = ``p.vjp``, forward-mode
    ``jvp`` = the VJP rule transposed ([Note: torch forward mode]).

    Residuals may be any nesting of tuples, lists, named tuples and dicts: their tensors go through
    ``save_for_backward`` and ``save_for_forward`` (so in-place changes to them are detected and no reference cycle is
    made), everything else is kept on ``ctx``.
    """

    @staticmethod
    def forward(ctx: Any, p: Primitive, params: dict, cdtype: torch.dtype, *inputs: Any) -> tuple[Tensor, ...]:
        dtype = inputs[0].dtype
        outputs, residuals = p.forward(xp_torch, *[_cast(x, cdtype) for x in inputs], **params)
        # An output that is a view of a tensor made inside the rule (a reshape) is returned as a plain tensor on the
        # same memory: forward-mode AD requires a view's tangent to be a view too.
        outputs = tuple(_cast(y, dtype).detach() if y._is_view() else _cast(y, dtype) for y in outputs)
        tensors: list[Tensor] = []
        ctx.spec = _flatten(residuals, tensors)
        ctx.p, ctx.params, ctx.cdtype = p, params, cdtype
        ctx.input_at = [i for i, x in enumerate(inputs) if isinstance(x, Tensor)]
        ctx.n_inputs = len(inputs)
        ctx.input_dtypes = tuple(None if x is None else x.dtype for x in inputs)
        ctx.outputs = tuple((y.shape, y.dtype) for y in outputs)
        ctx.save_for_backward(*[inputs[i] for i in ctx.input_at], *tensors)
        ctx.save_for_forward(*[inputs[i] for i in ctx.input_at], *tensors)
        return outputs

    @staticmethod
    def jvp(ctx: Any, *tangents: Any) -> tuple[Tensor, ...]:
        # [Note: torch forward mode]: J t = d/dw <vjp(w), t>, the VJP rule being linear in its cotangent w.
        p, params, cdtype = ctx.p, ctx.params, ctx.cdtype
        tangents = tangents[3:]
        for i, t in enumerate(tangents):
            if t is not None and i not in p.differentiable:
                raise NotImplementedError(f"{p.name}: forward-mode AD through input {i}, which has no derivative rule")
        saved = ctx.saved_tensors
        residuals = _unflatten(ctx.spec, iter(saved[len(ctx.input_at):]))
        device = saved[0].device
        with torch.enable_grad():
            ws = tuple(torch.zeros(shape, dtype=cdtype, device=device, requires_grad=True) for shape, _ in ctx.outputs)
            grads = p.vjp(xp_torch, residuals, *ws, **params)
            terms = [(g * t.to(g.dtype)).sum() for g, t in zip(grads, tangents, strict=True)
                     if g is not None and t is not None and g.requires_grad]
            jt = torch.autograd.grad(sum(terms), ws, allow_unused=True) if terms else (None,) * len(ws)
        return tuple(torch.zeros(shape, dtype=dtype, device=device) if j is None else j.detach().to(dtype)
                     for j, (shape, dtype) in zip(jt, ctx.outputs, strict=True))

    @staticmethod
    def backward(ctx: Any, *cotangents: Tensor) -> tuple[Any, ...]:
        p, params, cdtype = ctx.p, ctx.params, ctx.cdtype
        saved = ctx.saved_tensors
        n_in = len(ctx.input_at)
        inputs: list[Any] = [None] * ctx.n_inputs
        for i, x in zip(ctx.input_at, saved[:n_in], strict=True):
            inputs[i] = x
        wanted = [i in p.differentiable and ctx.needs_input_grad[3 + i] for i in range(ctx.n_inputs)]
        if torch.is_grad_enabled():
            grads = _differentiable_vjp(p, inputs, cotangents, params, cdtype, ctx.input_dtypes)
        else:
            residuals = _unflatten(ctx.spec, iter(saved[n_in:]))
            grads = run_vjp(xp_torch, p, residuals, cotangents, params, cdtype, ctx.input_dtypes)
        return (None, None, None, *[g if w else None for g, w in zip(grads, wanted, strict=True)])


def _differentiable_vjp(p: Primitive, inputs: list, cotangents: tuple, params: dict, cdtype: torch.dtype,
                        input_dtypes: tuple) -> tuple:
    """The input cotangents as a differentiable function of the inputs and the cotangents ([Note: torch double
    backward]): through ``p.vjp_primitive`` if the primitive has one, else by a differentiable recomputation."""
    second = p.vjp_primitive(params) if p.vjp_primitive is not None else None
    if second is not None:
        outs = bind(second, (*inputs, *cotangents), params, str(cdtype).removeprefix("torch."))
        return tuple(_cast(g, d) for g, d in zip(outs, input_dtypes, strict=True))
    _, residuals = p.forward(xp_torch, *[_cast(x, cdtype) for x in inputs], **params)
    return run_vjp(xp_torch, p, residuals, cotangents, params, cdtype, input_dtypes)


class _Slot:
    """Where ``_flatten`` took a tensor out of a residual structure."""


_SLOT = _Slot()


def _flatten(tree: Any, tensors: list[Tensor]) -> Any:
    """The structure of ``tree`` with every tensor replaced by ``_SLOT`` and appended to ``tensors``."""
    if isinstance(tree, Tensor):
        tensors.append(tree)
        return _SLOT
    if isinstance(tree, dict):
        return {k: _flatten(v, tensors) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        items = [_flatten(v, tensors) for v in tree]
        return type(tree)(*items) if hasattr(tree, "_fields") else type(tree)(items)
    return tree


def _unflatten(spec: Any, tensors: Any) -> Any:
    """Inverse of ``_flatten``: fill the slots of ``spec`` from the iterator ``tensors``, in order."""
    if spec is _SLOT:
        return next(tensors)
    if isinstance(spec, dict):
        return {k: _unflatten(v, tensors) for k, v in spec.items()}
    if isinstance(spec, (tuple, list)):
        items = [_unflatten(v, tensors) for v in spec]
        return type(spec)(*items) if hasattr(spec, "_fields") else type(spec)(items)
    return spec


# ---------------------------------------------------------------------------------------------------------------------
# Layers.

_EIGEN_FUNCTIONS = ("sqrt", "invsqrt", "log", "power")
_NS_FUNCTIONS = ("sqrt", "invsqrt")
_METHODS = ("eigen", "newton_schulz")
_DTYPES = ("float32", "float64", None)


def _check_choice(layer: str, name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{layer}: {name} must be one of {allowed}, got {value!r}")


class CovariancePooling(nn.Module):
    """Covariance pooling: features (B, C, H, W) or (B, C, N) -> (B, C, C), S = Xc Xc^T / N per sample.

    ``compute_dtype``: dtype of the computation ("float64" default, "float32", or None for the input's own); the
    result is in the input dtype. No parameters.
    """

    def __init__(self, compute_dtype: str | None = "float64") -> None:
        super().__init__()
        _check_choice("CovariancePooling", "compute_dtype", compute_dtype, _DTYPES)
        self.compute_dtype = compute_dtype

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim not in (3, 4):
            raise ValueError(f"CovariancePooling: input must be (B, C, H, W) or (B, C, N), got shape {tuple(x.shape)}")
        return covariance(x.flatten(2), compute_dtype=self.compute_dtype)

    def extra_repr(self) -> str:
        return f"compute_dtype={self.compute_dtype!r}"


class MatrixFunction(nn.Module):
    """A matrix function of symmetric PSD matrices (..., d, d) -> (..., d, d): the normalisation step of GCP.

    method: "eigen" (F = U f(L) U^T by eigendecomposition) or "newton_schulz" (``iterations`` coupled steps with trace
      normalisation; fn "sqrt" or "invsqrt" only).
    fn: "sqrt", "invsqrt", "log" or "power" (with exponent ``p``).
    grad (eigen only): "exact" (Loewner, finite at repeated eigenvalues) or an approximate eigenvector kernel
      "taylor", "pade", "clip", "power_iteration" (or "eigh"), whose options go in ``kernel_options``
      (e.g. ``{"degree": 100}``).
    floor (eigen only): eigenvalue floor relative to max|l| ("auto": d * eps of the compute dtype; a float; or None).
    truncate (eigen only): set the ``truncate`` smallest eigenvalues to zero before f (fn "sqrt", "power" with p > 0).
    seb (eigen, fn "sqrt" only): the scaling eigen branch, output (1 + ||R||_F) S^(1/2).
    compute_dtype: "float64" (default), "float32" or None (the input dtype).
    """

    def __init__(self, method: str = "eigen", fn: str = "sqrt", p: float | None = None, grad: str = "exact",
                 iterations: int = 5, floor: float | str | None = "auto", truncate: int = 0, seb: bool = False,
                 compute_dtype: str | None = "float64", kernel_options: dict | None = None) -> None:
        super().__init__()
        name = type(self).__name__
        _check_choice(name, "method", method, _METHODS)
        _check_choice(name, "fn", fn, _EIGEN_FUNCTIONS if method == "eigen" else _NS_FUNCTIONS)
        _check_choice(name, "grad", grad, eigpool.GRADS)
        _check_choice(name, "compute_dtype", compute_dtype, _DTYPES)
        if (fn == "power") != (p is not None):
            raise ValueError(f"{name}: p is the exponent of fn='power' and is required by it alone; got fn={fn!r}, "
                             f"p={p!r}")
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p)):
            raise ValueError(f"{name}: p must be a finite real number, got {p!r}")
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"{name}: iterations must be an integer >= 1, got {iterations!r}")
        if isinstance(truncate, bool) or not isinstance(truncate, int) or truncate < 0:
            raise ValueError(f"{name}: truncate must be a non-negative integer, got {truncate!r}")
        if method == "newton_schulz" and (grad != "exact" or truncate or seb or kernel_options):
            raise ValueError(f"{name}: method='newton_schulz' has its own backward and no spectrum; grad, truncate, "
                             "seb and kernel_options apply to method='eigen' only")
        if truncate and (fn in ("invsqrt", "log") or (fn == "power" and p <= 0)):
            raise ValueError(f"{name}: truncate sets eigenvalues to zero, where fn={fn!r} (p={p!r}) is undefined; use "
                             "fn='sqrt' or 'power' with p > 0")
        if seb and fn != "sqrt":
            raise ValueError(f"{name}: seb=True scales the matrix square root; it needs fn='sqrt', got fn={fn!r}")
        if kernel_options and grad in ("exact", "eigh"):
            raise ValueError(f"{name}: kernel_options configure an approximate kernel; grad={grad!r} takes none")
        self.method, self.fn, self.p, self.grad = method, fn, p, grad
        self.iterations, self.floor, self.truncate, self.seb = iterations, floor, truncate, seb
        self.compute_dtype = compute_dtype
        self.kernel_options = dict(kernel_options or {})
        if method == "eigen":
            # Fail now, not at the first batch, on a kernel option the kernel does not take.
            eigpool.eigh(torch.eye(2, dtype=torch.float64), grad="exact" if grad == "eigh" else grad,
                         **self.kernel_options)

    def forward(self, S: Tensor) -> Tensor:
        if self.method == "newton_schulz":
            fn = ns_sqrtm if self.fn == "sqrt" else ns_invsqrtm
            return fn(S, iterations=self.iterations, compute_dtype=self.compute_dtype)
        common = dict(grad=self.grad, truncate=self.truncate, compute_dtype=self.compute_dtype, **self.kernel_options)
        if self.seb:
            return seb(S, floor=self.floor, **common)
        if self.fn == "sqrt":
            return sqrtm(S, floor=self.floor, **common)
        if self.fn == "invsqrt":
            return invsqrtm(S, floor=self.floor, **common)
        if self.fn == "log":
            return logm(S, floor=self.floor, **common)
        return powm(S, self.p, floor=self.floor, **common)

    def extra_repr(self) -> str:
        parts = [f"method={self.method!r}", f"fn={self.fn!r}"]
        if self.p is not None:
            parts.append(f"p={self.p!r}")
        if self.method == "newton_schulz":
            parts.append(f"iterations={self.iterations}")
        else:
            parts += [f"grad={self.grad!r}", f"floor={self.floor!r}"]
            parts += [f"truncate={self.truncate}"] if self.truncate else []
            parts += ["seb=True"] if self.seb else []
            parts += [f"kernel_options={self.kernel_options!r}"] if self.kernel_options else []
        parts.append(f"compute_dtype={self.compute_dtype!r}")
        return ", ".join(parts)


class GCPHead(nn.Module):
    """Global covariance pooling head: feature map (B, C, H, W) -> vector (B, d(d+1)/2), d = reduction or C.

    Steps: optional 1x1 convolution C -> ``reduction`` + BatchNorm + ReLU (iSQRT-COV; ``reduction=None`` skips it);
    covariance of the d channels over the H*W positions; normalisation by ``MatrixFunction(method, fn, ...)``
    (optionally SEB, ``seb=True``, or truncation of the ``truncate`` smallest eigenvalues); the upper triangle
    including the diagonal, row by row. Covariance, normalisation and vectorisation all run in ``compute_dtype``
    (default float64, as the reference method requires); the vector is cast back to the input dtype once, at the end.

    path: "auto" (default) computes the eigen normalisation of S through the N x N Gram matrix when there are fewer
    positions than channels, N = H*W < d (eigpool.gram: the same function and gradient, O(d^2 N) instead of a d x d
    eigendecomposition); "dense" always decomposes S; "gram" always takes the Gram route (method "eigen", grad "exact").

    Attributes: ``out_features`` = d(d+1)/2 (32,896 for d = 256), ``reduce`` (the reduction block or None),
    ``normalise`` (the MatrixFunction).
    """

    def __init__(self, in_channels: int, reduction: int | None = 256, method: str = "eigen", fn: str = "sqrt",
                 grad: str = "exact", seb: bool = False, truncate: int = 0, iterations: int = 5,
                 compute_dtype: str | None = "float64", p: float | None = None, floor: float | str | None = "auto",
                 kernel_options: dict | None = None, path: str = "auto") -> None:
        super().__init__()
        _check_choice("GCPHead", "path", path, PATHS)
        if path == "gram" and (method, grad) != ("eigen", "exact"):
            raise ValueError(f"GCPHead: path='gram' is an exact eigen route; it needs method='eigen' and grad='exact', "
                             f"got method={method!r}, grad={grad!r}")
        self.path = path
        for key, value in (("in_channels", in_channels), ("reduction", reduction)):
            if not (value is None and key == "reduction") and (isinstance(value, bool) or not isinstance(value, int)
                                                              or value < 1):
                raise ValueError(f"GCPHead: {key} must be a positive integer{' or None' * (key == 'reduction')}, "
                                 f"got {value!r}")
        self.in_channels, self.reduction = in_channels, reduction
        self.dim = reduction if reduction is not None else in_channels
        if truncate >= self.dim:
            raise ValueError(f"GCPHead: truncate must be smaller than the covariance size d = {self.dim}, "
                             f"got {truncate!r}")
        self.reduce = None if reduction is None else nn.Sequential(
            nn.Conv2d(in_channels, reduction, kernel_size=1, bias=False), nn.BatchNorm2d(reduction),
            nn.ReLU(inplace=True))
        self.normalise = MatrixFunction(method=method, fn=fn, p=p, grad=grad, iterations=iterations, floor=floor,
                                        truncate=truncate, seb=seb, compute_dtype=compute_dtype,
                                        kernel_options=kernel_options)
        self.compute_dtype = compute_dtype
        self.out_features = self.dim * (self.dim + 1) // 2

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"GCPHead: input must be (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        if self.reduce is not None:
            x = self.reduce(x)
        dtype = x.dtype
        f, positions = self.normalise, x.shape[2] * x.shape[3]
        if f.method == "eigen" and resolve_path("GCPHead", self.path, self.dim, positions, f.grad) == "gram":
            # pooled computes in compute_dtype and writes the vector in x's dtype block by block: casting the
            # d(d+1)/2 vector afterwards, and its gradient back, would cost two fresh copies. The floor is the one the
            # dense branch below resolves on its compute-dtype S.
            eps = torch.finfo(x.dtype if self.compute_dtype is None else getattr(torch, self.compute_dtype)).eps
            return pooled(x.flatten(2), f.fn, p=f.p, floor=relative_floor(f.floor, self.dim, eps), truncate=f.truncate,
                          seb=f.seb, path="gram", triu=True, compute_dtype=f.compute_dtype)
        if self.compute_dtype is not None:
            x = x.to(getattr(torch, self.compute_dtype))
        S = covariance(x.flatten(2), compute_dtype=None)
        return triu_vec(self.normalise(S)).to(dtype)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, reduction={self.reduction}, out_features={self.out_features}"
                + (f", path={self.path!r}" if self.path != "auto" else ""))
