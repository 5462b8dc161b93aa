"""``torch.nn`` layers of global covariance pooling, thin over eigpool's resolved specifications.

Each layer validates its options once, when it is built, into the frozen specification its forward binds
(``SpectralSpec`` or ``NewtonSchulzSpec``, eigpool._spec); the forward reads no option string. The layers run under
autograd, ``torch.func`` transforms, ``torch.compile(fullgraph=True)`` and ``torch.export`` like the functions.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from eigpool._divided import SpectralFunction
from eigpool._spec import NewtonSchulzSpec, SpectralSpec, compute_spec, newton_schulz_spec, resolve_spectral
from eigpool.covariance import covariance
from eigpool.gram import PATHS, pooled_from_spec, prepare
from eigpool.newton_schulz import newton_schulz
from eigpool.spectral import matrix_function

__all__ = ["CovariancePooling", "GCPHead", "MatrixFunction", "TokenGCPHead"]

_METHODS = ("eigen", "newton_schulz")
_NS_FUNCTIONS = ("sqrt", "invsqrt")
_CLASS_TOKEN = ("drop", "keep")


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
        self.spec = compute_spec("CovariancePooling", compute_dtype)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim not in (3, 4):
            raise ValueError(f"CovariancePooling: input must be (B, C, H, W) or (B, C, N), got shape {tuple(x.shape)}")
        return covariance(x.flatten(2), compute_dtype=self.spec.compute_dtype)

    def extra_repr(self) -> str:
        return f"compute_dtype={self.spec.compute_dtype!r}"


class MatrixFunction(nn.Module):
    """A matrix function of symmetric PSD matrices (..., d, d) -> (..., d, d): the normalisation step of GCP.

    method: "eigen" (F = U f(L) U^T by eigendecomposition) or "newton_schulz" (``iterations`` coupled steps with trace
      normalisation; fn "sqrt" or "invsqrt" only).
    fn: "sqrt", "invsqrt", "log" or "power" (with exponent ``p``), or (eigen only) a ``SpectralFunction`` such as
      ``eigpool.shifted_sqrt(c)`` or ``eigpool.ns_polynomial(n)``.
    trace_scale (eigen only): F(S) = sqrt(tr S) U fn(L / tr S) U^T ([Note: trace scaling] in eigpool.spectral): with
      ``fn=eigpool.ns_polynomial(n)`` the Newton-Schulz square root as an exact spectral function, with
      ``fn=eigpool.shifted_sqrt(c)`` the root of S + c tr(S) I less sqrt(c tr S) I.
    grad (eigen only): "exact" (Loewner, finite at repeated eigenvalues) or an approximate eigenvector kernel
      "taylor", "pade", "clip", "power_iteration" (or "eigh"), whose options go in ``kernel_options``
      (e.g. ``{"degree": 100}``).
    floor (eigen only): eigenvalue floor relative to max|l| ("auto": d * eps of the compute dtype; a float; or None).
    truncate (eigen only): set the ``truncate`` smallest eigenvalues to zero before f (fn "sqrt", "power" with p > 0).
    seb (eigen, fn "sqrt" only): the scaling eigen branch, output (1 + ||R||_F) S^(1/2).
    compute_dtype: "float64" (default), "float32" or None (the input dtype).

    ``spec``: the resolved specification (``SpectralSpec`` for "eigen", ``NewtonSchulzSpec`` for "newton_schulz").
    """

    def __init__(self, method: str = "eigen", fn: str | SpectralFunction = "sqrt", p: float | None = None,
                 grad: str = "exact",
                 iterations: int = 5, floor: float | str | None = "auto", truncate: int = 0, seb: bool = False,
                 compute_dtype: str | None = "float64", kernel_options: dict | None = None,
                 trace_scale: bool = False) -> None:
        super().__init__()
        name = type(self).__name__
        _check_choice(name, "method", method, _METHODS)
        if method == "newton_schulz":
            _check_choice(name, "fn", fn, _NS_FUNCTIONS)
            if grad != "exact" or truncate or seb or kernel_options or trace_scale:
                raise ValueError(f"{name}: method='newton_schulz' has its own backward and no spectrum; grad, "
                                 "truncate, seb, kernel_options and trace_scale apply to method='eigen' only")
            self.spec: SpectralSpec | NewtonSchulzSpec = newton_schulz_spec(
                name, iterations=iterations, inverse=fn == "invsqrt", compute_dtype=compute_dtype)
            return
        newton_schulz_spec(name, iterations=iterations)  # a bad iterations fails here too (the hybrid switch uses it)
        spec = resolve_spectral(name, fn, p=p, grad=grad, floor=floor, truncate=truncate, seb=seb,
                                compute_dtype=compute_dtype, kernel_options=kernel_options, trace_scale=trace_scale)
        if truncate and (fn in ("invsqrt", "log") or (fn == "power" and p <= 0)):
            raise ValueError(f"{name}: truncate sets eigenvalues to zero, where fn={fn!r} (p={p!r}) is undefined; use "
                             "fn='sqrt' or 'power' with p > 0")
        self.spec = spec

    @property
    def method(self) -> str:
        """"eigen" or "newton_schulz"."""
        return "newton_schulz" if isinstance(self.spec, NewtonSchulzSpec) else "eigen"

    def forward(self, S: Tensor) -> Tensor:
        if isinstance(self.spec, NewtonSchulzSpec):
            return newton_schulz(S, self.spec, op=type(self).__name__)
        return matrix_function(S, self.spec, op=type(self).__name__)

    def extra_repr(self) -> str:
        spec = self.spec
        if isinstance(spec, NewtonSchulzSpec):
            fn = "invsqrt" if spec.inverse else "sqrt"
            return (f"method='newton_schulz', fn={fn!r}, iterations={spec.iterations}, "
                    f"compute_dtype={spec.compute_dtype!r}")
        parts = ["method='eigen'", f"fn={spec.fn.name!r}", f"grad={spec.grad!r}", f"floor={spec.floor!r}"]
        parts += [f"truncate={spec.truncate}"] if spec.truncate else []
        parts += ["seb=True"] if spec.seb else []
        parts += ["trace_scale=True"] if spec.trace_scale else []
        if spec.kernel is not None and spec.kernel.options:
            parts.append(f"kernel_options={dict(spec.kernel.options)!r}")
        parts.append(f"compute_dtype={spec.compute_dtype!r}")
        return ", ".join(parts)


class GCPHead(nn.Module):
    """Global covariance pooling head: feature map (B, C, H, W) -> vector (B, d(d+1)/2), d = reduction or C.

    Steps: optional 1x1 convolution C -> ``reduction`` + BatchNorm + ReLU (iSQRT-COV; ``reduction=None`` skips it);
    covariance of the d channels over the H*W positions; normalisation by ``MatrixFunction(method, fn, ...)``
    (optionally SEB, ``seb=True``, or truncation of the ``truncate`` smallest eigenvalues); the upper triangle
    including the diagonal, row by row. Covariance, normalisation and vectorisation all run in ``compute_dtype``
    (default float64, as the reference method requires); the vector is cast back to the input dtype once, at the end.
    The features are value-checked once (finite); the matrices the head builds from them are not checked again.

    path: "auto" (default) computes the eigen normalisation of S through the N x N Gram matrix when there are fewer
    positions than channels, N = H*W < d (eigpool.gram: the same function and gradient, O(d^2 N) instead of a d x d
    eigendecomposition); "dense" always decomposes S; "gram" always takes the Gram route (method "eigen", grad "exact").

    Attributes: ``out_features`` = d(d+1)/2 (32,896 for d = 256), ``reduce`` (the reduction block or None),
    ``normalise`` (the MatrixFunction, whose ``spec`` the head binds).
    """

    def __init__(self, in_channels: int, reduction: int | None = 256, method: str = "eigen",
                 fn: str | SpectralFunction = "sqrt", grad: str = "exact", seb: bool = False, truncate: int = 0,
                 iterations: int = 5, compute_dtype: str | None = "float64", p: float | None = None,
                 floor: float | str | None = "auto", kernel_options: dict | None = None, path: str = "auto",
                 trace_scale: bool = False) -> None:
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
                                        kernel_options=kernel_options, trace_scale=trace_scale)
        self.out_features = self.dim * (self.dim + 1) // 2
        prepare(self.dim)

    @property
    def compute_dtype(self) -> str | None:
        """The compute dtype of the whole head (the normalisation's specification owns it)."""
        return self.normalise.spec.compute_dtype

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"GCPHead: input must be (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        if self.reduce is not None:
            x = self.reduce(x)
        # On the Gram route the vector is written in x's dtype block by block: casting the d(d+1)/2 vector afterwards,
        # and its gradient back, would cost two fresh copies.
        return pooled_from_spec(x.flatten(2), self.normalise.spec, path=self.path, triu=True, op="GCPHead")

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, reduction={self.reduction}, out_features={self.out_features}"
                + (f", path={self.path!r}" if self.path != "auto" else ""))


class TokenGCPHead(GCPHead):
    """Global covariance pooling over tokens: (B, N, C) -> vector (B, d(d+1)/2), for ViT-style backbones (SoT, So-ViT).

    The first ``prefix_tokens`` tokens are not patches (the class token; DeiT's distillation token and register tokens
    count too): ``class_token="drop"`` (default) pools the N - prefix_tokens patch tokens, ``"keep"`` pools all N.
    Then every step of ``GCPHead`` with the same options (``**options``: reduction, method, fn, grad, seb, truncate,
    iterations, compute_dtype, p, floor, kernel_options, path): the reduction block maps each token C -> d (its 1x1
    convolution is a linear map of one token, BatchNorm's statistics run over all B * N tokens), the covariance of
    the d channels over the tokens, the normalisation, the upper triangle; the Gram route when fewer tokens than
    channels (N < d, path "auto"). The parameters are GCPHead's, with the same names and shapes.
    """

    def __init__(self, in_channels: int, reduction: int | None = 256, class_token: str = "drop",
                 prefix_tokens: int = 1, **options: Any) -> None:
        super().__init__(in_channels, reduction, **options)
        _check_choice("TokenGCPHead", "class_token", class_token, _CLASS_TOKEN)
        if isinstance(prefix_tokens, bool) or not isinstance(prefix_tokens, int) or prefix_tokens < 0:
            raise ValueError(f"TokenGCPHead: prefix_tokens must be an integer >= 0, got {prefix_tokens!r}")
        self.class_token, self.prefix_tokens = class_token, prefix_tokens

    def forward(self, tokens: Tensor) -> Tensor:
        skip = self.prefix_tokens if self.class_token == "drop" else 0
        if tokens.ndim != 3 or tokens.shape[2] != self.in_channels or tokens.shape[1] <= skip:
            raise ValueError(f"TokenGCPHead: input must be (B, N, {self.in_channels}) tokens with N > {skip} "
                             f"(prefix tokens dropped: {skip}), got shape {tuple(tokens.shape)}")
        # (B, N, C) -> (B, C, N, 1): the layout of GCPHead's reduction block, one position per token.
        x = tokens[:, skip:].transpose(1, 2).unsqueeze(-1)
        if self.reduce is not None:
            x = self.reduce(x)
        return pooled_from_spec(x.flatten(2), self.normalise.spec, path=self.path, triu=True, op="TokenGCPHead")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, class_token={self.class_token!r}, prefix_tokens={self.prefix_tokens}"
