"""Framework adapters: evaluate a function at float64 NumPy points and differentiate it with the framework's tools.

The checks work on float64 NumPy copies of the inputs; an adapter converts them to the framework's arrays (on the
input's device), calls the function, and returns its outputs and derivatives as float64 NumPy arrays. Every adapter
has the interface of ``Adapter``.

``ADAPTERS`` maps the top-level module of an array type to its adapter class: ``adapter_for`` looks the first input's
type (and its base classes) up there by module name, so no framework is imported here, and an adapter's own
framework import happens only when an array of that framework arrives. Types of unknown modules (lists, scalars,
NumPy subclasses) go to the NumPy adapter. A new framework is one class and one entry (JAX arrays are ``jaxlib``
types: ``"jaxlib": JaxAdapter``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

__all__ = ["ADAPTERS", "Adapter", "CupyAdapter", "JaxAdapter", "NumpyAdapter", "TorchAdapter", "adapter_for"]


class Adapter(Protocol):
    """What the checks need from a framework; built as ``cls(like, vjp, jvp)`` with ``like`` the first input and the
    user's ``vjp``/``jvp`` rules (or None)."""

    name: str

    def to_numpy(self, x: Any) -> np.ndarray:
        """A framework array as a float64 NumPy array."""

    def call(self, fn: Callable[..., Any], arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
        """fn at float64 points, its outputs as float64 arrays (no derivative recorded)."""

    def linearize(self, fn: Callable[..., Any], arrays: Sequence[np.ndarray]) -> tuple[tuple, Callable]:
        """(outputs, pullback): pullback takes one float64 cotangent per output, returns one per input."""

    def jvp(self, fn: Callable[..., Any], arrays: Sequence[np.ndarray],
            tangents: Sequence[np.ndarray]) -> tuple[np.ndarray, ...] | None:
        """J e as float64 arrays, or None where the framework has no forward mode for fn."""

    def vjp_function(self, fn: Callable[..., Any], ws: Sequence[np.ndarray]) -> Callable[..., tuple]:
        """x -> pullback_x(ws), a function of framework arrays, for the second-order checks."""


def _as_tuple(out: Any) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


class NumpyAdapter:
    """NumPy arrays; gradients from ``vjp`` (default ``eigpool.vjp``)."""

    name = "numpy"

    def __init__(self, like: Any, vjp: Callable[..., Any] | None, jvp: Callable[..., Any] | None) -> None:
        if vjp is None:
            from eigpool import vjp
        self._vjp, self._jvp = vjp, jvp

    def to_framework(self, a: np.ndarray) -> Any:
        return a

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x, dtype=np.float64)

    def call(self, fn: Callable[..., Any], arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
        out = fn(*[self.to_framework(a) for a in arrays])
        return tuple(self.to_numpy(y) for y in _as_tuple(out))

    def linearize(self, fn: Callable[..., Any], arrays: Sequence[np.ndarray]) -> tuple[tuple, Callable]:
        """(outputs, pullback): pullback takes one float64 cotangent per output, returns one per input."""
        out, pb = self._vjp(fn, *[self.to_framework(a) for a in arrays])
        is_tuple = isinstance(out, (tuple, list))

        def pullback(ws: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
            cts = [self.to_framework(w) for w in ws]
            return tuple(self.to_numpy(g) for g in pb(tuple(cts) if is_tuple else cts[0]))

        return tuple(self.to_numpy(y) for y in _as_tuple(out)), pullback

    def jvp(self, fn: Callable[..., Any], arrays: Sequence[np.ndarray],
            tangents: Sequence[np.ndarray]) -> tuple[np.ndarray, ...] | None:
        if self._jvp is None:
            return None
        _, t = self._jvp(fn, [self.to_framework(a) for a in arrays], [self.to_framework(e) for e in tangents])
        return tuple(self.to_numpy(y) for y in _as_tuple(t))

    def vjp_function(self, fn: Callable[..., Any], ws: Sequence[np.ndarray]) -> Callable[..., tuple]:
        """x -> pullback_x(ws), a function of framework arrays (differentiable if the ``vjp`` rule is)."""
        def g(*xs: Any) -> tuple:
            out, pb = self._vjp(fn, *xs)
            cts = [self.to_framework(w) for w in ws]
            return tuple(pb(tuple(cts) if isinstance(out, (tuple, list)) else cts[0]))

        return g


class CupyAdapter(NumpyAdapter):
    """CuPy arrays: the NumPy path with the function evaluated on the GPU."""

    name = "cupy"

    def __init__(self, like: Any, vjp: Callable[..., Any] | None, jvp: Callable[..., Any] | None) -> None:
        super().__init__(like, vjp, jvp)
        import cupy
        self._cp = cupy

    def to_framework(self, a: np.ndarray) -> Any:
        return self._cp.asarray(a, dtype=self._cp.float64)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(self._cp.asnumpy(x), dtype=np.float64)


class TorchAdapter:
    """PyTorch tensors, on the device of the first input; gradients from ``torch.autograd`` (any torch function)."""

    name = "torch"

    def __init__(self, like: Any, vjp: Callable[..., Any] | None, jvp: Callable[..., Any] | None) -> None:
        import torch
        self._torch, self._device = torch, like.device

    def to_framework(self, a: np.ndarray) -> Any:
        # np.array keeps 0-d shapes (np.ascontiguousarray would make them 1-d).
        return self._torch.as_tensor(np.array(a, dtype=np.float64, order="C"), device=self._device)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x.detach().cpu().numpy(), dtype=np.float64)

    def call(self, fn: Callable[..., Any], arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
        with self._torch.no_grad():
            out = fn(*[self.to_framework(a) for a in arrays])
        return tuple(self.to_numpy(y) for y in _as_tuple(out))

    def _grad(self, outs: tuple, xs: list, ws: Sequence[Any], create_graph: bool) -> tuple:
        torch = self._torch
        pairs = [(y, w) for y, w in zip(outs, ws, strict=True) if y.requires_grad]
        if not pairs:
            return tuple(torch.zeros_like(x) for x in xs)
        grads = torch.autograd.grad([y for y, _ in pairs], xs, [w for _, w in pairs], retain_graph=True,
                                    create_graph=create_graph, allow_unused=True)
        return tuple(torch.zeros_like(x) if g is None else g for x, g in zip(xs, grads, strict=True))

    def linearize(self, fn: Callable[..., Any], arrays: Sequence[np.ndarray]) -> tuple[tuple, Callable]:
        xs = [self.to_framework(a).requires_grad_(True) for a in arrays]
        with self._torch.enable_grad():
            outs = _as_tuple(fn(*xs))

        def pullback(ws: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
            grads = self._grad(outs, xs, [self.to_framework(w) for w in ws], create_graph=False)
            return tuple(self.to_numpy(g) for g in grads)

        return tuple(self.to_numpy(y) for y in outs), pullback

    def jvp(self, fn: Callable[..., Any], arrays: Sequence[np.ndarray],
            tangents: Sequence[np.ndarray]) -> tuple[np.ndarray, ...] | None:
        # Forward mode (dual tensors) where the function supports it; otherwise the caller builds J e from pullbacks.
        fw = self._torch.autograd.forward_ad
        try:
            with fw.dual_level():
                outs = _as_tuple(fn(*[fw.make_dual(self.to_framework(a), self.to_framework(e))
                                      for a, e in zip(arrays, tangents, strict=True)]))
                ts = [fw.unpack_dual(y).tangent for y in outs]
        except (RuntimeError, NotImplementedError, TypeError):
            return None
        # An output without a tangent: independent of the inputs, or computed where forward mode does not reach (a
        # detach, autograd.grad inside fn): the pullbacks tell which.
        if any(t is None for t in ts):
            return None
        return tuple(self.to_numpy(t) for t in ts)

    def vjp_function(self, fn: Callable[..., Any], ws: Sequence[np.ndarray]) -> Callable[..., tuple]:
        """x -> pullback_x(ws) with ``create_graph``, so that it can be differentiated again (in reverse mode, or in
        forward mode: a dual x, made by ``jvp``, keeps its tangent, so forward over reverse is what gets checked)."""
        fw = self._torch.autograd.forward_ad

        def g(*xs: Any) -> tuple:
            with self._torch.enable_grad():
                xs = [x if x.requires_grad else x.requires_grad_(True) if fw.unpack_dual(x).tangent is not None
                      else x.detach().requires_grad_(True) for x in xs]
                outs = _as_tuple(fn(*xs))
                return self._grad(outs, xs, [self.to_framework(w) for w in ws], create_graph=True)

        return g


class JaxAdapter:
    """JAX arrays, on the device of the first input; derivatives from ``jax.vjp`` and ``jax.jvp`` (any JAX function),
    in float64 (the checks turn JAX's 64-bit mode on: finite differences in float32 cannot reach their tolerances)."""

    name = "jax"

    def __init__(self, like: Any, vjp: Callable[..., Any] | None, jvp: Callable[..., Any] | None) -> None:
        import jax

        jax.config.update("jax_enable_x64", True)
        self._jax = jax
        self._device = next(iter(like.devices())) if hasattr(like, "devices") else None

    def to_framework(self, a: np.ndarray) -> Any:
        return self._jax.device_put(np.array(a, dtype=np.float64), self._device)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x, dtype=np.float64)

    def call(self, fn: Callable[..., Any], arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
        return tuple(self.to_numpy(y) for y in _as_tuple(fn(*[self.to_framework(a) for a in arrays])))

    def linearize(self, fn: Callable[..., Any], arrays: Sequence[np.ndarray]) -> tuple[tuple, Callable]:
        outs, pb = self._jax.vjp(lambda *xs: _as_tuple(fn(*xs)), *[self.to_framework(a) for a in arrays])

        def pullback(ws: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
            return tuple(self.to_numpy(g) for g in pb(tuple(self.to_framework(w) for w in ws)))

        return tuple(self.to_numpy(y) for y in outs), pullback

    def jvp(self, fn: Callable[..., Any], arrays: Sequence[np.ndarray],
            tangents: Sequence[np.ndarray]) -> tuple[np.ndarray, ...] | None:
        _, ts = self._jax.jvp(lambda *xs: _as_tuple(fn(*xs)), tuple(self.to_framework(a) for a in arrays),
                              tuple(self.to_framework(e) for e in tangents))
        return tuple(self.to_numpy(t) for t in ts)

    def vjp_function(self, fn: Callable[..., Any], ws: Sequence[np.ndarray]) -> Callable[..., tuple]:
        """x -> pullback_x(ws), itself differentiable by JAX in both modes (second-order checks)."""
        def g(*xs: Any) -> tuple:
            _, pb = self._jax.vjp(lambda *a: _as_tuple(fn(*a)), *xs)
            return tuple(pb(tuple(self.to_framework(w) for w in ws)))

        return g


#: Adapter class by the top-level module name of an array type (JAX arrays are jaxlib types, tracers jax types).
ADAPTERS: dict[str, type] = {"numpy": NumpyAdapter, "torch": TorchAdapter, "cupy": CupyAdapter, "jaxlib": JaxAdapter,
                             "jax": JaxAdapter}


def adapter_for(like: Any, vjp: Callable[..., Any] | None, jvp: Callable[..., Any] | None) -> Adapter:
    """The adapter for the array type of ``like`` (the first registered module along its type's MRO; NumPy else)."""
    for cls in type(like).__mro__:
        adapter = ADAPTERS.get(cls.__module__.split(".", 1)[0])
        if adapter is not None:
            return adapter(like, vjp, jvp)
    return NumpyAdapter(like, vjp, jvp)
