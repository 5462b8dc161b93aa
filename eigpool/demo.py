"""A short demonstration: the matrix square root's gradient at repeated eigenvalues.

Run ``eigpool-demo`` (or ``python -m eigpool.demo``). Plain autodiff through an eigendecomposition divides by
l_i - l_j and returns inf/NaN or garbage when two eigenvalues coincide (the identity matrix, a covariance with dead
channels); eigpool's Loewner backward is exact there. The reference is the Sylvester equation
Q X + X Q = G for Q = S^(1/2).
"""

from __future__ import annotations

import numpy as np

import eigpool


def _sylvester_reference(S: np.ndarray, G: np.ndarray) -> np.ndarray:
    """Solve Q X + X Q = sym(G) in the eigenbasis of S: X = U [(U^T sym(G) U) / (sqrt l_i + sqrt l_j)] U^T."""
    l, U = np.linalg.eigh(S)
    r = np.sqrt(l)
    Gs = (G + G.T) / 2
    return U @ ((U.T @ Gs @ U) / (r[:, None] + r[None, :])) @ U.T


def main() -> None:
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    S = (q * np.array([1.0, 1.0, 1.0, 2.0, 2.0, 3.0])) @ q.T
    S = (S + S.T) / 2
    G = rng.standard_normal((6, 6))
    _, pullback = eigpool.vjp(eigpool.sqrtm, S)
    (dS,) = pullback(G)
    ref = _sylvester_reference(S, G)
    print("S has eigenvalues 1, 1, 1, 2, 2, 3 (exact ties).")
    print(f"eigpool.sqrtm backward vs the Sylvester solution: max abs difference {np.abs(dS - ref).max():.2e}")
    try:
        import torch
    except ImportError:
        print("(install torch to compare with autodiff through torch.linalg.eigh)")
        return
    St = torch.tensor(S, requires_grad=True)
    l, U = torch.linalg.eigh(St)
    Q = U @ torch.diag(l.sqrt()) @ U.T
    Q.backward(torch.tensor(G))
    err = (St.grad - torch.tensor(ref)).abs()
    print(f"autodiff through torch.linalg.eigh: {int((~torch.isfinite(err)).sum())} of {err.numel()} gradient entries "
          f"are inf/NaN, the largest error of the others is {float(err.nan_to_num(0, 0, 0).max()):.2e}")


if __name__ == "__main__":
    main()
