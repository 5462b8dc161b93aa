"""An embedded synthetic fine-grained data set: generated in-process from a seed, no files, no download.

Every image is a stationary Gaussian texture. The image (3 x s x s) is cut into non-overlapping p x p patches; each
patch, flattened to a vector of D = 3 p^2 values, is an independent draw from N(0, Sigma_c) of its class c, and the
whole image is multiplied by a random gain g ~ U(1 - gain_jitter, 1 + gain_jitter) (an illumination nuisance).
All classes therefore share their first-order statistics (mean 0) and their expected total variance (trace): they
differ only in second-order structure, which is what global covariance pooling measures.

Class covariances. R^D is split once (from the seed) into a shared subspace of dimension D - k, spanned by the columns
of V, and its complement, spanned by C (k columns). Class c rotates the complement by its own random orthogonal R_c:

    Sigma_{c,i} = V diag(u_i) V^T + (C R_c) diag(s) (C R_c)^T,   u_i ~ U(1 - shared_jitter, 1 + shared_jitter)^(D-k),

u_i a per-image nuisance on the shared variances (mean 1; off by default, shared_jitter = 0), s = k class
eigenvalues, distinct (a rotation of an isotropic block would not change Sigma_c). The variants:
- "standard": s is larger than the mean shared variance (the class-specific directions are the top eigenvectors);
- "small": s is much smaller than the mean shared variance (the class-specific directions have small eigenvalues: the
  regime the TPAMI 2022 paper describes, in the input; a network's features need not keep that order).

Splits are drawn with one generator per split (seed, split), so ``train``, ``val`` and ``test`` are disjoint draws and
each split is reproducible on its own. The default size trains in about a minute per model on one CPU thread.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

__all__ = ["SYNTHETIC_VARIANTS", "SyntheticSpec", "SyntheticFGVC", "class_covariances"]

# Class-specific eigenvalues (relative to a shared variance of 1) for each variant.
SYNTHETIC_VARIANTS: dict[str, tuple[float, ...]] = {
    "standard": (4.0, 2.5, 1.6),
    "small": (0.3, 0.2, 0.1),
}
_SPLIT_OFFSET = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of the synthetic data set (all of them enter the generated values)."""

    variant: str = "standard"
    num_classes: int = 10
    image_size: int = 32
    patch: int = 2
    gain_jitter: float = 0.2
    shared_jitter: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.variant not in SYNTHETIC_VARIANTS:
            raise ValueError(f"SyntheticSpec: variant must be one of {sorted(SYNTHETIC_VARIANTS)}, "
                             f"got {self.variant!r}")
        if self.image_size % self.patch:
            raise ValueError(f"SyntheticSpec: image_size ({self.image_size}) must be a multiple of patch "
                             f"({self.patch})")
        if self.num_classes < 2:
            raise ValueError(f"SyntheticSpec: num_classes must be >= 2, got {self.num_classes}")
        for key in ("gain_jitter", "shared_jitter"):
            if not 0 <= getattr(self, key) < 1:
                raise ValueError(f"SyntheticSpec: {key} must be in [0, 1), got {getattr(self, key)}")

    @property
    def dim(self) -> int:
        """D = 3 p^2, the length of a patch vector."""
        return 3 * self.patch * self.patch


def _orthogonal(n: int, gen: torch.Generator) -> torch.Tensor:
    """A random orthogonal n x n matrix (QR of a Gaussian matrix with the sign of R's diagonal fixed: Haar measure)."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def _class_bases(spec: SyntheticSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(V, W, s): the shared basis V (D, D - k), the class bases W (classes, D, k) and the class eigenvalues s (k,)."""
    gen = torch.Generator().manual_seed(spec.seed)
    s = torch.tensor(SYNTHETIC_VARIANTS[spec.variant], dtype=torch.float64)
    k = s.numel()
    basis = _orthogonal(spec.dim, gen)
    shared, complement = basis[:, k:], basis[:, :k]
    return shared, torch.stack([complement @ _orthogonal(k, gen) for _ in range(spec.num_classes)]), s


def class_covariances(spec: SyntheticSpec) -> torch.Tensor:
    """The class covariances Sigma_c (the expectation over the per-image jitter), float64 (num_classes, D, D)."""
    shared, rotated, s = _class_bases(spec)
    return shared @ shared.T + rotated @ torch.diag_embed(s.expand(len(rotated), -1)) @ rotated.transpose(-1, -2)


class SyntheticFGVC(Dataset):
    """One split of the synthetic fine-grained data set, held in memory as float32 tensors.

    ``images``: (n, 3, image_size, image_size) float32, ``targets``: (n,) int64, with ``per_class`` images per class in
    class order. ``split`` is "train", "val" or "test". Items are (image, label) pairs; ``transform`` is not supported
    (the textures are defined on the patch grid: flips and shifts would change their covariance).
    """

    def __init__(self, split: str, per_class: int, spec: SyntheticSpec | None = None) -> None:
        if split not in _SPLIT_OFFSET:
            raise ValueError(f"SyntheticFGVC: split must be one of {sorted(_SPLIT_OFFSET)}, got {split!r}")
        if per_class < 1:
            raise ValueError(f"SyntheticFGVC: per_class must be >= 1, got {per_class}")
        self.spec = spec or SyntheticSpec()
        self.split = split
        self.classes = [f"texture_{c:02d}" for c in range(self.spec.num_classes)]
        self.images, self.targets = self._generate(per_class)

    def _generate(self, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        spec = self.spec
        gen = torch.Generator().manual_seed(1_000_003 * spec.seed + 7919 * _SPLIT_OFFSET[self.split] + 1)
        shared, rotated, s = _class_bases(spec)
        cells = spec.image_size // spec.patch
        n = per_class * spec.num_classes
        targets = torch.arange(spec.num_classes).repeat_interleave(per_class)
        z_shared = torch.randn(n, cells * cells, shared.shape[1], generator=gen, dtype=torch.float64)
        z_class = torch.randn(n, cells * cells, s.numel(), generator=gen, dtype=torch.float64)
        # Per-image variances of the shared directions, u ~ U(1 - jitter, 1 + jitter): a nuisance in the shared part.
        u = 1 + spec.shared_jitter * (2 * torch.rand(n, 1, shared.shape[1], generator=gen, dtype=torch.float64) - 1)
        patches = (z_shared * u.sqrt()) @ shared.T + (z_class * s.sqrt()) @ rotated[targets].transpose(-1, -2)
        gain = 1 + spec.gain_jitter * (2 * torch.rand(n, 1, 1, generator=gen, dtype=torch.float64) - 1)
        patches = patches * gain
        # (n, cells_y, cells_x, 3, p, p) -> (n, 3, cells_y, p, cells_x, p) -> (n, 3, s, s)
        p = spec.patch
        images = patches.reshape(n, cells, cells, 3, p, p).permute(0, 3, 1, 4, 2, 5)
        return images.reshape(n, 3, spec.image_size, spec.image_size).float().contiguous(), targets

    def __len__(self) -> int:
        return self.targets.numel()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.targets[index])

    def __repr__(self) -> str:
        s = self.spec
        return (f"SyntheticFGVC(split={self.split!r}, n={len(self)}, variant={s.variant!r}, classes={s.num_classes}, "
                f"size={s.image_size}, patch={s.patch}, seed={s.seed})")

