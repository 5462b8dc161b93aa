"""The JAX backend beyond the table of operations: the dtype policy, devices, and the functional GCP head training a
linear classifier with plain JAX."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import eigpool  # noqa: E402
from eigpool.backends.jax import gcp_head  # noqa: E402


def _second_order_data(seed: int, n: int, classes: int = 3, channels: int = 6, positions: int = 16):
    """Feature maps (n, C, 4, 4) whose classes differ only in their channel covariance (equal means): a first-order
    (average-pooling) classifier cannot separate them, a second-order one can."""
    rng = np.random.default_rng(seed)
    bases = [np.linalg.qr(np.random.default_rng(100 + k).standard_normal((channels, channels)))[0]
             for k in range(classes)]  # the classes: the same for every split
    spectrum = np.geomspace(4.0, 0.25, channels)
    labels = rng.integers(0, classes, n)
    noise = rng.standard_normal((n, channels, positions))
    X = np.stack([bases[k] @ (np.sqrt(spectrum)[:, None] * z) for k, z in zip(labels, noise, strict=True)])
    return jnp.asarray(X.reshape(n, channels, 4, 4)), jnp.asarray(labels)


def _train(pool, x_train, y_train, x_test, y_test) -> float:
    """Plain JAX: a linear classifier on pool(features), softmax cross-entropy, 360 steps of gradient descent under
    jit; returns the test accuracy."""
    params = {"w": jnp.zeros((pool(x_train[:1]).shape[-1], 3)), "b": jnp.zeros(3)}

    def logits(p, x):
        return pool(x) @ p["w"] + p["b"]

    def loss(p, x, y):
        return -jnp.mean(jax.nn.log_softmax(logits(p, x))[jnp.arange(y.shape[0]), y])

    step = jax.jit(lambda p, x, y: jax.tree.map(lambda a, g: a - 0.5 * g, p, jax.grad(loss)(p, x, y)))
    for _ in range(60):
        for i in range(0, x_train.shape[0], 50):
            params = step(params, x_train[i:i + 50], y_train[i:i + 50])
    return float(jnp.mean(jnp.argmax(logits(params, x_test), -1) == y_test))


def test_functional_head_trains_a_linear_classifier_with_plain_jax():
    # Stated accuracy: >= 0.95 with the log-Euclidean head (measured: 1.0); average pooling, the control, stays near
    # chance (1/3), since the classes share their first-order statistics.
    data = (*_second_order_data(0, 300), *_second_order_data(1, 300))
    assert _train(lambda x: gcp_head(x, fn="log"), *data) >= 0.95
    assert _train(lambda x: jnp.mean(x, axis=(-2, -1)), *data) <= 0.5


def test_functional_head_on_tokens_with_a_reduction_matches_the_core():
    rng = np.random.default_rng(2)
    tokens = jnp.asarray(rng.standard_normal((2, 10, 6)))  # (B, N, C)
    w = jnp.asarray(rng.standard_normal((4, 6)))
    X = jax.nn.relu(w @ jnp.swapaxes(tokens, -1, -2))
    expected = eigpool.triu_vec(eigpool.sqrtm(eigpool.covariance(X)))
    np.testing.assert_allclose(gcp_head(tokens, w, tokens=True), expected, rtol=1e-10, atol=1e-12)
    g = jax.grad(lambda w: gcp_head(tokens, w, tokens=True).sum())(w)
    assert g.shape == (4, 6) and bool(jnp.all(jnp.isfinite(g)))


def test_float64_without_x64_warns_once_and_computes_in_float32(monkeypatch):
    import eigpool.backends.jax as backend

    monkeypatch.setattr(backend, "_WARNED", [])
    S = jnp.eye(3, dtype=jnp.float32) * 2
    jax.config.update("jax_enable_x64", False)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = eigpool.sqrtm(S)
            eigpool.sqrtm(S)
    finally:
        jax.config.update("jax_enable_x64", True)
    messages = [str(w.message) for w in caught if "jax_enable_x64" in str(w.message)]
    assert len(messages) == 1 and "float32" in messages[0]
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, np.sqrt(2) * np.eye(3), rtol=1e-6)


def test_arrays_stay_on_their_device_and_keep_their_dtype():
    S = jnp.eye(4, dtype=jnp.float32) * 3
    out = eigpool.sqrtm(S)
    assert out.dtype == jnp.float32 and out.devices() == S.devices()
    assert eigpool.sqrtm(S.astype(jnp.float64)).dtype == jnp.float64
