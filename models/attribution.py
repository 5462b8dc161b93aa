"""Eigenvalue attribution for global covariance pooling (GCP) models: which eigenvalues of the pooled covariance carry
the class score, and where in the image that score comes from.

The TPAMI 2022 paper (METHODS.md section 6) shows with one perturbation-based and one back-propagation-based method that
the small eigenvalues carry the class-specific information; it released neither code nor definitions. These are ours.

Notation. A model is split into parts (``GCPParts``): the backbone maps an image x (3, H, W) to a feature map; the
head's optional reduction (1x1 conv + BN + ReLU) gives R (d, h, w); X = R reshaped to (d, N), N = h w, centred over
positions: Xc = X - mean, columns xc_n; S = Xc Xc^T / N = U diag(l) U^T with l ascending (index 0 = smallest);
F = phi(S) the head's normalisation (square root, SEB, truncation, ... exactly as the model computes it);
v = triu_vec(F); logits z = classifier(v). z_y is the score of class y (the true class unless said otherwise).

A group G is a set of positions in the ascending spectrum (``smallest(k)``, ``largest(k)``, ``band(a, b)``,
``partition(d, parts)``), 1_G its indicator vector of length d. Where two eigenvalues are tied across the boundary of a
group, the group depends on the basis eigh picks in the tied eigenspace; the partition identities below hold anyway.

1. Perturbation (``perturbation_logits``, ``accuracy_curves``). Attenuate the group by alpha (alpha = 0 removes it):

       l'_i = alpha l_i for i in G, l_i otherwise;  S'(G, alpha) = U diag(l') U^T;  z' = classifier(triu_vec(phi(S'))).

   l is clamped at 0 first (the covariance is PSD; eigh may return round-off negatives). The score drop is
   z_y - z'_y and the accuracy is that of argmax z'. Properties: the empty group (or alpha = 1) reproduces the model's
   logits up to the round-off of U diag(l) U^T; removing every eigenvalue gives the logits of S = 0. For a head whose
   representation is linear in the eigen-components (F = sum_i f(l_i) u_i u_i^T, e.g. the plain square root with
   f(0) = 0), the drops of the groups of a partition add up to the drop of removing everything.

2. Perturbation maps (``perturbation_map``): where in the image the group's score comes from, by an occlusion scan in
   the group's eigen-subspace. With P_G = U_G U_G^T and beta = 1 - sqrt(alpha), position n alone loses its component in
   the group's directions, xc_n -> y_n = xc_n - beta P_G xc_n (the mean is held fixed), so

       S_n = S - (xc_n xc_n^T - y_n y_n^T) / N,    map_G(n) = z_y(S) - z_y(S_n).

   Applied at every position at once, the same projection gives exactly S'(G, alpha) of definition 1 (P_G commutes
   with S): the map resolves the perturbation of definition 1 position by position. Each value is the exact score drop
   of a one-position occlusion; they add up to the drop of definition 1 to first order only (both are <gS, S - S'>
   to first order, gS of definition 3). Cost: N evaluations of phi per image and group.

3. Back-propagation (``backprop_attribution``). Let gS = dz_y/dS (through phi, triu_vec and the classifier) and
   A = U^T gS U its matrix in the eigenbasis (for an eigendecomposition head, A = Loewner matrix o (U^T dz/dF U), plus
   the SEB gain's diagonal term). The group passes the gradient of its rows and columns of A:

       M_G = (1_G 1^T + 1 1_G^T) / 2,    gS_G = U (M_G o A) U^T,

   i.e. pairs inside G pass fully, pairs with one index in G pass half, pairs outside G are blocked. gS_G is sent
   down to R and to the image through the covariance's and the network's backward (torch autograd). Every map is
   linear in gS_G and the masks of a partition sum to the all-ones matrix, so the gradients of the groups of a
   partition add up exactly to the full gradient dz_y/dx. Two renderings:
   - feature map (Grad-CAM-style): map_G(n) = sum_c (dz/dR_G)[c, n] Xc[c, n], the gradient times the centred feature.
     Grad-CAM's channel weights (the spatial mean of the gradient) are identically 0 for covariance pooling (the
     covariance backward (2/N) gS Xc has zero mean over positions), so the gradient is used per position. Since
     dz/dX_G = (2/N) gS_G Xc, map_G(n) = (2/N) xc_n^T gS_G xc_n and sum_n map_G(n) = 2 <gS_G, S> =
     2 sum_{i in G} l_i A_ii = 2 sum_{i in G} l_i dz_y/dl_i: twice d z_y / dt at t = 0 when the group's eigenvalues
     are scaled by (1 + t), the back-propagation counterpart of definition 1.
   - image: gradient x input, summed over the colour channels.

Maps are at the feature map's resolution (h, w); ``upsample`` brings them to the image's (bilinear). Everything is
batched over images; the parts must be in eval mode (BatchNorm with running statistics), so no image's attribution
depends on another's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import eigpool
from eigpool.backends.torch import TokenGCPHead

__all__ = ["BackpropMaps", "EigenGroup", "EigenState", "GCPParts", "accuracy_curves", "backprop_attribution", "band",
           "curve_groups", "curve_rows", "eigen_state", "from_model", "gcp_parts", "group_effects",
           "group_mask_matrix", "largest", "logits_from_covariance", "partition", "perturbation_logits",
           "perturbation_map", "perturbed_covariance", "smallest", "spectrum_stats", "upsample"]


# ---------------------------------------------------------------------------------------------------------------------
# Groups of eigenvalues.

@dataclass(frozen=True)
class EigenGroup:
    """A group of eigenvalues by position in the ascending spectrum: ``kind`` "smallest" (the first ``a``), "largest"
    (the last ``a``) or "band" (positions ``a`` to ``b - 1``). ``name`` labels figures and CSV rows."""

    kind: str
    a: int
    b: int | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("smallest", "largest", "band"):
            raise ValueError(f"EigenGroup: kind must be 'smallest', 'largest' or 'band', got {self.kind!r}")
        if (self.kind == "band") != (self.b is not None):
            raise ValueError(f"EigenGroup: b is the end of a band and is required by kind 'band' alone; got "
                             f"kind={self.kind!r}, b={self.b!r}")
        stop = self.a if self.b is None else self.b
        if isinstance(self.a, bool) or not isinstance(self.a, int) or self.a < 0 or stop < self.a:
            raise ValueError(f"EigenGroup: need integers 0 <= a (<= b for a band), got a={self.a!r}, b={self.b!r}")
        if not self.name:
            label = f"{self.kind} {self.a}" if self.kind != "band" else f"band [{self.a}, {self.b})"
            object.__setattr__(self, "name", label)

    def indices(self, d: int) -> range:
        """The positions of the group in an ascending spectrum of length d (ValueError if it does not fit)."""
        start, stop = {"smallest": (0, self.a), "largest": (d - self.a, d), "band": (self.a, self.b)}[self.kind]
        if start < 0 or stop > d:
            raise ValueError(f"EigenGroup {self.name!r}: does not fit a spectrum of d = {d} eigenvalues")
        return range(start, stop)

    def mask(self, d: int, like: Tensor) -> Tensor:
        """The indicator 1_G: (d,) in ``like``'s dtype and device."""
        idx = torch.arange(d, device=like.device)
        r = self.indices(d)
        return ((idx >= r.start) & (idx < r.stop)).to(like.dtype)


def smallest(k: int) -> EigenGroup:
    """The k smallest eigenvalues."""
    return EigenGroup("smallest", k)


def largest(k: int) -> EigenGroup:
    """The k largest eigenvalues."""
    return EigenGroup("largest", k)


def band(start: int, stop: int, name: str = "") -> EigenGroup:
    """Positions start .. stop - 1 of the ascending spectrum."""
    return EigenGroup("band", start, stop, name)


def partition(d: int, parts: int) -> list[EigenGroup]:
    """The ascending spectrum of length d cut into ``parts`` contiguous bands of (nearly) equal size, smallest first."""
    if not 1 <= parts <= d:
        raise ValueError(f"partition: parts must be in [1, d] = [1, {d}], got {parts!r}")
    cuts = [round(i * d / parts) for i in range(parts + 1)]
    return [band(cuts[i], cuts[i + 1], f"band {i + 1}/{parts} [{cuts[i]}, {cuts[i + 1]})") for i in range(parts)]


# ---------------------------------------------------------------------------------------------------------------------
# The model split into parts, and the eigendecomposition of its covariance.

@dataclass
class GCPParts:
    """A GCP classifier in the pieces attribution needs (the module docstring's notation).

    backbone: image batch (B, 3, H, W) -> feature map (B, C, h, w).
    reduce: (B, C, h, w) -> R (B, d, h, w), or None (R is the feature map).
    normalise: phi, S (B, d, d) -> F (B, d, d), differentiable (torch autograd).
    classifier: (B, d(d+1)/2) -> logits (B, K); it receives triu_vec(F) cast to R's dtype.
    compute_dtype: dtype of S and phi (the head's compute dtype; None: R's own dtype).
    """

    backbone: Callable[[Tensor], Tensor]
    reduce: Callable[[Tensor], Tensor] | None
    normalise: Callable[[Tensor], Tensor]
    classifier: Callable[[Tensor], Tensor]
    compute_dtype: torch.dtype | None = torch.float64


def gcp_parts(backbone: Callable[[Tensor], Tensor], head: nn.Module, classifier: Callable[[Tensor], Tensor]
              ) -> GCPParts:
    """Parts of ``classifier(head(backbone(x)))`` for a head built like ``eigpool.backends.torch.GCPHead``: optional
    ``reduce`` block, covariance, ``normalise`` (S -> F), triu_vec, all in ``compute_dtype`` (a name or None)."""
    if isinstance(head, TokenGCPHead):
        raise TypeError("gcp_parts: the head pools tokens (TokenGCPHead); eigenvalue attribution and its maps need a "
                        "feature-map head (GCPHead on a CNN or Swin backbone)")
    for attr in ("reduce", "normalise", "compute_dtype"):
        if not hasattr(head, attr):
            raise TypeError(f"gcp_parts: head must have the attributes reduce, normalise and compute_dtype of "
                            f"eigpool.backends.torch.GCPHead; {type(head).__name__} has no {attr!r}")
    dtype = None if head.compute_dtype is None else getattr(torch, head.compute_dtype)
    return GCPParts(backbone, head.reduce, head.normalise, classifier, dtype)


def from_model(model: nn.Module) -> GCPParts:
    """Parts of an ``eigpool.models.heads.FGVCNet`` (or any module with ``forward_features``, a GCPHead-like ``head``
    and a ``classifier``): ``model(x) == classifier(head(forward_features(x)))``."""
    missing = [a for a in ("forward_features", "head", "classifier") if not hasattr(model, a)]
    if missing:
        raise TypeError(f"from_model: model must have forward_features, head and classifier (as FGVCNet); "
                        f"{type(model).__name__} has no {missing}")
    return gcp_parts(model.forward_features, model.head, model.classifier)


class EigenState(NamedTuple):
    """The head's covariance of a batch and its eigendecomposition.

    R: (B, d, h, w) reduced feature map (R's dtype, attached to the graph if the input was); Xc: (B, d, N) centred
    features and S: (B, d, d) covariance, both in the compute dtype; l: (B, d) ascending eigenvalues, clamped at 0;
    U: (B, d, d) eigenvectors (columns), both detached.
    """

    R: Tensor
    Xc: Tensor
    S: Tensor
    l: Tensor
    U: Tensor


def eigen_state(parts: GCPParts, images: Tensor) -> EigenState:
    """The EigenState of a batch of images (B, 3, H, W), computed as the head computes it."""
    features = parts.backbone(images)
    R = parts.reduce(features) if parts.reduce is not None else features
    X = R.flatten(2)
    if parts.compute_dtype is not None:
        X = X.to(parts.compute_dtype)
    S = eigpool.covariance(X, compute_dtype=None)
    l, U = torch.linalg.eigh(S.detach())
    return EigenState(R, X - X.mean(dim=-1, keepdim=True), S, l.clamp(min=0), U)


def logits_from_covariance(parts: GCPParts, S: Tensor, dtype: torch.dtype) -> Tensor:
    """classifier(triu_vec(phi(S)) cast to ``dtype``): (..., d, d) -> (..., K), the model's logits given its S."""
    return parts.classifier(eigpool.triu_vec(parts.normalise(S)).to(dtype))


def perturbed_covariance(l: Tensor, U: Tensor, group: EigenGroup, alpha: float = 0.0) -> Tensor:
    """S'(G, alpha) = U diag(l') U^T with l'_G = alpha l_G (definition 1). l: (..., d) ascending, U: (..., d, d)."""
    m = group.mask(l.shape[-1], l)
    scaled = l * (1 - m * (1 - alpha))
    return (U * scaled[..., None, :]) @ U.transpose(-1, -2)


# ---------------------------------------------------------------------------------------------------------------------
# Perturbation-based attribution.

@torch.no_grad()
def perturbation_logits(parts: GCPParts, images: Tensor, groups: Sequence[EigenGroup], alpha: float = 0.0
                        ) -> tuple[Tensor, Tensor]:
    """Logits of the model and of the model with each group attenuated by ``alpha`` (definition 1).

    images: (B, 3, H, W). Returns (base (B, K), perturbed (len(groups), B, K)), in the logits' dtype.
    """
    return _perturbation_logits(parts, eigen_state(parts, images), groups, alpha)


def _perturbation_logits(parts: GCPParts, state: EigenState, groups: Sequence[EigenGroup], alpha: float
                         ) -> tuple[Tensor, Tensor]:
    base = logits_from_covariance(parts, state.S, state.R.dtype)
    perturbed = [logits_from_covariance(parts, perturbed_covariance(state.l, state.U, g, alpha), state.R.dtype)
                 for g in groups]
    return base, torch.stack(perturbed) if perturbed else base.new_zeros((0, *base.shape))


@torch.no_grad()
def group_effects(parts: GCPParts, batches: Iterable[tuple[Tensor, Tensor]], groups: Sequence[EigenGroup],
                  alpha: float = 0.0, spectra: list[Tensor] | None = None) -> list[dict[str, Any]]:
    """Accuracy and mean true-class score drop over a data set with each group attenuated by ``alpha`` (definition 1).

    batches: (images (B, 3, H, W), targets (B,)) pairs. Returns one row per group:
    {"group": name, "alpha", "accuracy", "score_drop", "n"}. ``spectra``: a list to which each batch's ascending
    eigenvalues (B, d) are appended (for ``spectrum_stats`` without a second pass over the data).
    """
    correct = torch.zeros(len(groups), dtype=torch.float64)
    drop = torch.zeros(len(groups), dtype=torch.float64)
    n = 0
    for images, targets in batches:
        state = eigen_state(parts, images)
        if spectra is not None:
            spectra.append(state.l)
        base, perturbed = _perturbation_logits(parts, state, groups, alpha)
        idx = targets[None, :, None].expand(len(groups), -1, 1)
        correct += (perturbed.argmax(-1) == targets).sum(-1).double()
        drop += (base.gather(1, targets[:, None])[None, :, 0] - perturbed.gather(2, idx)[..., 0]).sum(-1).double()
        n += targets.numel()
    if n == 0:
        raise ValueError("group_effects: batches yielded no images")
    return [{"group": g.name, "alpha": alpha, "accuracy": float(c) / n, "score_drop": float(s) / n, "n": n}
            for g, c, s in zip(groups, correct, drop, strict=True)]


def spectrum_stats(l: Tensor) -> list[dict[str, Any]]:
    """Statistics of ascending spectra l (n, d) (e.g. ``torch.cat`` of ``group_effects``' ``spectra``): for each
    position i, the mean, the 10 %, 50 % and 90 % quantiles of l_i over the n images, and the fraction of images with
    l_i <= d eps max(l) (numerically 0). Returns d rows {"index", "mean", "q10", "median", "q90", "zero_fraction", "n"}
    (index 0 = smallest)."""
    if l.ndim != 2 or l.shape[0] == 0:
        raise ValueError(f"spectrum_stats: l must be (n, d) with n >= 1, got shape {tuple(l.shape)}")
    d = l.shape[-1]
    zero = l <= d * torch.finfo(l.dtype).eps * l.amax(-1, keepdim=True)
    q = torch.quantile(l, torch.tensor([0.1, 0.5, 0.9], dtype=l.dtype), dim=0)
    return [{"index": i, "mean": float(l[:, i].mean()), "q10": float(q[0, i]), "median": float(q[1, i]),
             "q90": float(q[2, i]), "zero_fraction": float(zero[:, i].double().mean()), "n": l.shape[0]}
            for i in range(d)]


def curve_groups(ks: Sequence[int]) -> list[EigenGroup]:
    """The groups of ``accuracy_curves``: smallest(k) for each k in ``ks``, then largest(k) for each k."""
    return [EigenGroup(side, k) for side in ("smallest", "largest") for k in ks]


def curve_rows(rows: Sequence[dict[str, Any]], ks: Sequence[int]) -> list[dict[str, Any]]:
    """``group_effects`` rows of ``curve_groups(ks)`` as curve rows {"removed", "k", "alpha", "accuracy",
    "score_drop", "n"}."""
    keys = [(side, k) for side in ("smallest", "largest") for k in ks]
    return [{"removed": side, "k": k, **{key: row[key] for key in ("alpha", "accuracy", "score_drop", "n")}}
            for (side, k), row in zip(keys, rows, strict=True)]


def accuracy_curves(parts: GCPParts, batches: Iterable[tuple[Tensor, Tensor]], ks: Sequence[int],
                    alpha: float = 0.0) -> list[dict[str, Any]]:
    """``group_effects`` of the k smallest and the k largest eigenvalues for each k in ``ks``.

    Returns one row per (removed, k), removed in ("smallest", "largest"): {"removed", "k", "alpha", "accuracy",
    "score_drop", "n"}; k = 0 is the unperturbed model.
    """
    return curve_rows(group_effects(parts, batches, curve_groups(ks), alpha), ks)


@torch.no_grad()
def perturbation_map(parts: GCPParts, images: Tensor, targets: Tensor, group: EigenGroup, alpha: float = 0.0,
                     chunk: int = 128) -> Tensor:
    """The occlusion scan of definition 2: (B, h, w), the true-class score drop when position n alone loses its
    component in the group's eigen-directions (scaled by sqrt(alpha)). ``chunk`` positions are evaluated at once."""
    state = eigen_state(parts, images)
    B, d, h, w = state.R.shape
    base = logits_from_covariance(parts, state.S, state.R.dtype).gather(1, targets[:, None])
    m = group.mask(d, state.l)
    P = (state.U * m[None, None, :]) @ state.U.transpose(-1, -2)
    beta = 1 - alpha**0.5
    Y = state.Xc - beta * (P @ state.Xc)
    N = h * w
    out = []
    for start in range(0, N, chunk):
        xc, y = state.Xc[..., start:start + chunk], Y[..., start:start + chunk]
        # S_n = S - (xc xc^T - y y^T) / N for each position n of the chunk: (B, n, d, d).
        delta = (xc.transpose(1, 2)[..., :, None] * xc.transpose(1, 2)[..., None, :]
                 - y.transpose(1, 2)[..., :, None] * y.transpose(1, 2)[..., None, :]) / N
        z = logits_from_covariance(parts, state.S[:, None] - delta, state.R.dtype)
        out.append(base - z.gather(2, targets[:, None, None].expand(-1, z.shape[1], 1))[..., 0])
    return torch.cat(out, dim=1).reshape(B, h, w)


# ---------------------------------------------------------------------------------------------------------------------
# Back-propagation-based attribution.

class BackpropMaps(NamedTuple):
    """Back-propagated attribution of each group (definition 3); G = number of groups.

    feature: (G, B, h, w) gradient x centred feature on R; input: (G, B, H, W) gradient x input, summed over colour;
    grad_S: (G, B, d, d) the masked gradient gS_G; grad_R: (G, B, d, h, w); grad_input: (G, B, 3, H, W).
    """

    feature: Tensor
    input: Tensor
    grad_S: Tensor
    grad_R: Tensor
    grad_input: Tensor


def group_mask_matrix(d: int, group: EigenGroup, like: Tensor) -> Tensor:
    """M_G = (1_G 1^T + 1 1_G^T) / 2, (d, d): the fraction of each eigen-pair's gradient the group passes."""
    m = group.mask(d, like)
    return (m[:, None] + m[None, :]) / 2


def backprop_attribution(parts: GCPParts, images: Tensor, targets: Tensor, groups: Sequence[EigenGroup]
                         ) -> BackpropMaps:
    """The true-class score's gradient passed through each group's eigen-components only (definition 3).

    images: (B, 3, H, W), targets: (B,) class indices. The parameters of the parts are not touched (no .grad).
    """
    if not groups:
        raise ValueError("backprop_attribution: groups is empty")
    x = images.detach().requires_grad_(True)
    with torch.enable_grad():
        state = eigen_state(parts, x)
        S_leaf = state.S.detach().requires_grad_(True)
        score = logits_from_covariance(parts, S_leaf, state.R.dtype).gather(1, targets[:, None]).sum()
        (gS,) = torch.autograd.grad(score, S_leaf)
        U, Ut = state.U, state.U.transpose(-1, -2)
        A = Ut @ gS @ U
        d = A.shape[-1]
        grads_S, grads_R, grads_x = [], [], []
        for i, group in enumerate(groups):
            gS_G = U @ (group_mask_matrix(d, group, A) * A) @ Ut
            gR, gx = torch.autograd.grad(state.S, (state.R, x), grad_outputs=gS_G, retain_graph=i < len(groups) - 1,
                                         allow_unused=True)
            grads_S.append(gS_G)
            grads_R.append(gR)
            grads_x.append(torch.zeros_like(x) if gx is None else gx)
    grad_S, grad_R, grad_x = torch.stack(grads_S), torch.stack(grads_R), torch.stack(grads_x)
    B, _, h, w = state.R.shape
    Xc = state.Xc.reshape(B, d, h, w)
    feature = (grad_R.to(Xc.dtype) * Xc).sum(2)
    return BackpropMaps(feature.detach(), (grad_x * images.detach()).sum(2).detach(), grad_S.detach(), grad_R.detach(),
                        grad_x.detach())


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling of maps (..., h, w) to (..., *size), align_corners=False."""
    lead = maps.shape[:-2]
    out = F.interpolate(maps.reshape(-1, 1, *maps.shape[-2:]), size=size, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size)
