"""The training engine: processes, loaders, optimizer and schedule, one training epoch, one evaluation.

Divergence: a training step stops the run with ``TrainingDiverged`` (naming the epoch and step) before its update is
applied when its loss or gradient norm is NaN or infinite, or when its forward pass fails on non-finite values (NaN or
inf in the input batch or the parameters, or a GCP head that refuses non-finite features: eigpool's value checks
raise ValueError, ``torch.linalg.eigh`` fails to converge). An evaluation whose outputs are not finite raises
``NonFiniteOutputs``. Under torchrun every process takes the same decision at the same step. With ``amp: fp16`` the
gradient scaler (``build_scaler``) owns non-finite gradients: a step whose scaled gradients overflow is skipped and the
scale lowered, as mixed-precision training expects; a non-finite loss still stops the run.

Unreadable images: every batch's ``Skipped`` items go through ``data.handle_skipped`` (stop or skip), and a
``SkipLog`` announces each skipped path once per run and counts them per split and epoch.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset
from torch.utils.data.distributed import DistributedSampler

from eigpool import covariance
from eigpool.backends.torch import GCPHead, TokenGCPHead

from .config import Config
from .data import Skipped, collate_skipping, handle_skipped
from .heads import AMP_DTYPES, FGVCNet

__all__ = ["GRAD_GROUPS", "SPECTRUM_COLUMNS", "Distributed", "Evaluation", "NonFiniteOutputs", "SkipLog",
           "TrainingDiverged", "build_optimizer", "build_scaler", "build_scheduler", "epoch_seed", "evaluate",
           "make_loader", "parameter_groups", "setup_distributed", "spectrum_statistics", "sum_across", "train_epoch"]


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN or infinite; the run stopped and its last good checkpoint is kept."""


class NonFiniteOutputs(ArithmeticError):
    """A forward pass produced (or met) NaN or inf; the message says where."""


@dataclass
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Distributed:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1); otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size())


def epoch_seed(config: Config, epoch: int) -> int:
    """The seed of shuffling and augmentation in ``epoch``: a function of (seed, epoch) only, so a resumed run draws
    what an uninterrupted one does."""
    return (config.seed * 1_000_003 + epoch * 7_919 + 17) % (2**63)


def sum_across(ctx: Distributed, values: list[float]) -> list[float]:
    """``values`` summed over the processes (unchanged in a single process)."""
    if not ctx.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def build_optimizer(config: Config, model: FGVCNet) -> torch.optim.Optimizer:
    """SGD with momentum; the classifier's learning rate is ``classifier_lr_factor`` times the base rate."""
    classifier = list(model.classifier.parameters())
    ids = {id(p) for p in classifier}
    rest = [p for p in model.parameters() if id(p) not in ids]
    groups = [{"params": rest, "lr": config.lr},
              {"params": classifier, "lr": config.lr * config.classifier_lr_factor}]
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def build_scheduler(config: Config, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.MultiStepLR:
    """Step decay: the learning rates times ``lr_gamma`` after each epoch of ``lr_steps``."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=config.lr_steps, gamma=config.lr_gamma)


def build_scaler(config: Config, device: torch.device) -> torch.amp.GradScaler:
    """The gradient scaler of fp16 mixed precision; disabled (a no-op, empty state) for every other ``amp``."""
    return torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")


def make_loader(dataset: Dataset, config: Config, ctx: Distributed, *, epoch: int | None) -> DataLoader:
    """Training loader (``epoch`` given: shuffled by a generator seeded from (seed, epoch), sharded across processes)
    or evaluation loader (in order, each process taking every world-th item, without padding)."""
    if epoch is None:
        if ctx.enabled:
            dataset = Subset(dataset, range(ctx.rank, len(dataset), ctx.world))
        return DataLoader(dataset, batch_size=config.batch_size, shuffle=False, num_workers=config.workers,
                          collate_fn=collate_skipping)
    generator = torch.Generator().manual_seed(epoch_seed(config, epoch))
    if ctx.enabled:
        sampler = DistributedSampler(dataset, num_replicas=ctx.world, rank=ctx.rank, shuffle=True,
                                     seed=config.seed, drop_last=True)
        sampler.set_epoch(epoch)
    else:
        sampler = RandomSampler(dataset, generator=generator)
    # drop_last: a final batch of one image would break BatchNorm's training statistics.
    return DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, num_workers=config.workers,
                      collate_fn=collate_skipping, drop_last=True, generator=generator)


@dataclass
class SkipLog:
    """Unreadable images met in a run: each path is announced on stderr once, counts are kept per split."""

    bad_images: str = "stop"
    announced: set[str] = field(default_factory=set)

    def note(self, split: str, skipped: list[Skipped]) -> int:
        """Apply the policy to one batch's ``skipped`` items, announce new paths; returns their number."""
        handle_skipped(skipped, self.bad_images)
        for item in skipped:
            if item.path not in self.announced:
                self.announced.add(item.path)
                print(f"warning: skipped unreadable {split} image {item.path}: {item.reason}", file=sys.stderr)
        return len(skipped)


def _batches(loader: DataLoader, device: torch.device, split: str, skips: SkipLog, counter: list[int],
             bar: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for images, labels, skipped in loader:
        counter[0] += skips.note(split, skipped)
        if bar is not None:
            bar.update(1)
        if labels.numel():
            yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)


def _progress(total: int, desc: str, config: Config, ctx: Distributed) -> Any:
    if not config.progress or not ctx.main:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, disable=None)


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def _forward(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``net(images)``; a failure on non-finite values raises NonFiniteOutputs saying where they are."""
    try:
        return net(images)
    except (ValueError, torch.linalg.LinAlgError) as err:
        if not _finite(images):
            raise NonFiniteOutputs("the input batch contains NaN or inf") from None
        bad = [name for name, p in net.named_parameters() if not _finite(p.detach())]
        if bad:
            raise NonFiniteOutputs(f"the parameters {bad[:3]} contain NaN or inf") from None
        # eigpool's value checks word a non-finite input "contains NaN or inf"; eigh fails to converge on one.
        if isinstance(err, torch.linalg.LinAlgError) or "NaN or inf" in str(err):
            raise NonFiniteOutputs(f"the activations overflowed to NaN or inf ({err})") from None
        raise


def _agree(ctx: Distributed, failed: bool) -> bool:
    """True on every process when any process ``failed`` (so all stop at the same step); no collective in a single
    process."""
    return sum_across(ctx, [float(failed)])[0] > 0


#: The parameter groups whose gradient norms a training epoch reports (``grad_norm_<group>``).
GRAD_GROUPS = ("backbone", "head", "classifier")


def parameter_groups(model: nn.Module) -> dict[str, list[torch.Tensor]]:
    """The trainable parameters of an ``FGVCNet`` by part: backbone, head (the GCP head's reduction block; none for
    average pooling) and classifier."""
    return {name: [p for p in getattr(model, name).parameters() if p.requires_grad] for name in GRAD_GROUPS}


#: The groups each ``clip_scope`` clips together, each to its own norm.
CLIP_UNITS = {"all": [list(GRAD_GROUPS)], "groups": [[name] for name in GRAD_GROUPS],
              "features": [["backbone", "head"]]}


def _clip(groups: dict[str, list[torch.Tensor]],
          config: Config) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Measure the gradient norms and clip them as ``clip_scope`` says; returns (global norm before clipping, the
    groups' norms before clipping, the smallest scale applied, 1 when nothing was clipped), as tensors (no host
    synchronisation).

    clip_scope "all": the global norm of every parameter to ``clip_grad_norm`` (torch.nn.utils.clip_grad_norm_);
    "groups": each group's own norm to it; "features": backbone and head together, the classifier unclipped."""
    norms = {name: torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
             for name, params in groups.items()}
    total = torch.nn.utils.get_total_norm(list(norms.values()))
    smallest = torch.ones((), device=total.device)
    limit = config.clip_grad_norm
    if limit is not None:
        for unit in CLIP_UNITS[config.clip_scope]:
            norm = torch.nn.utils.get_total_norm([norms[name] for name in unit]).to(total.device)
            torch.nn.utils.clip_grads_with_norm_([p for name in unit for p in groups[name]], limit, norm)
            smallest = torch.minimum(smallest, (limit / (norm + 1e-6)).clamp(max=1.0))  # clip_grads_with_norm_'s
    return total, norms, smallest


def _step(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer,
          groups: dict[str, list[torch.Tensor]], config: Config, ctx: Distributed,
          scaler: torch.amp.GradScaler) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """One SGD step; returns (logits, loss, gradient norms by group, clipping scale). Raises NonFiniteOutputs, before
    the update, on a non-finite value (an enabled ``scaler`` skips the steps whose gradients overflow instead)."""
    failure = None
    try:
        logits = _forward(net, images)
    except NonFiniteOutputs as err:
        failure = str(err)
    if _agree(ctx, failure is not None):
        raise NonFiniteOutputs(failure or "another process met NaN or inf in its forward pass")
    loss = nn.functional.cross_entropy(logits, labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    grad_norm, norms, scale = _clip(groups, config)
    bad = not (torch.isfinite(loss.detach()) and (scaler.is_enabled() or torch.isfinite(grad_norm)))
    if _agree(ctx, bad):
        data = "the input batch contains NaN or inf: " if not _finite(images) else ""
        raise NonFiniteOutputs(f"{data}loss {loss.item():.6g}, gradient norm {grad_norm.item():.6g} (non-finite)")
    scaler.step(optimizer)  # with the scaler enabled: skipped when the gradients overflowed
    scaler.update()
    return logits, loss, norms, scale


def train_epoch(net: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, config: Config,
                ctx: Distributed, device: torch.device, epoch: int, skips: SkipLog,
                scaler: torch.amp.GradScaler | None = None,
                groups: dict[str, list[torch.Tensor]] | None = None) -> dict[str, float]:
    """Train ``net`` for one epoch (0-based ``epoch``); returns the metric row's training columns, summed over
    processes (the gradient statistics are this process's). Raises TrainingDiverged (epoch and step named) before a
    step with a non-finite value is applied. ``scaler``: the run's gradient scaler (``build_scaler``; default: a
    disabled one). ``groups``: ``parameter_groups`` of the model (default: all parameters as one "backbone" group).

    Gradient statistics (before clipping, after the fp16 unscale): ``grad_norm_<group>`` the mean over the steps of
    each group's L2 norm, ``clip_fraction`` the fraction of steps that clipping scaled, ``clip_scale`` the mean
    over the steps of the smallest factor it applied (1 for a step it left alone)."""
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
    net.train()
    loss_sum, correct, count, skipped = 0.0, 0.0, 0, [0]
    bar = _progress(len(loader), f"epoch {epoch + 1}/{config.epochs} train", config, ctx)
    if groups is None:
        groups = {"backbone": [p for p in net.parameters() if p.requires_grad], "head": [], "classifier": []}
    norm_sums: dict[str, Any] = dict.fromkeys(groups, 0.0)
    scales: list[torch.Tensor] = []
    start = time.perf_counter()
    try:
        for step, (images, labels) in enumerate(_batches(loader, device, "train", skips, skipped, bar)):
            try:
                logits, loss, norms, scale = _step(net, images, labels, optimizer, groups, config, ctx, scaler)
            except NonFiniteOutputs as err:
                raise TrainingDiverged(f"training diverged in epoch {epoch + 1}, step {step + 1}: {err}; the step "
                                       "was not applied") from None
            for name, value in norms.items():
                norm_sums[name] = norm_sums[name] + value  # tensors: read once, at the end of the epoch
            scales.append(scale)
            loss_sum += loss.item() * labels.numel()
            correct += (logits.argmax(1) == labels).sum().item()
            count += labels.numel()
            if bar is not None:
                bar.set_postfix(loss=f"{loss_sum / count:.3f}", acc=f"{correct / count:.3f}")
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    loss_sum, correct, count, n_skipped = sum_across(ctx, [loss_sum, correct, count, skipped[0]])
    steps = max(len(scales), 1)
    scale = torch.stack(scales).cpu() if scales else torch.ones(1)
    return {"train_loss": loss_sum / max(count, 1), "train_acc": correct / max(count, 1),
            "images_per_s": count / seconds, "epoch_seconds": seconds, "skipped_images": int(n_skipped),
            **{f"grad_norm_{name}": float(total) / steps for name, total in norm_sums.items()},
            "clip_fraction": float((scale < 1).sum()) / steps, "clip_scale": float(scale.sum()) / steps}


#: The spectrum columns of a metric row (``spectrum_statistics``).
SPECTRUM_COLUMNS = ("spectrum_min", "spectrum_small", "spectrum_max", "spectrum_eff_rank")


@torch.no_grad()
def spectrum_statistics(model: FGVCNet, images: torch.Tensor) -> dict[str, float | None]:
    """The spectrum of the covariances S that the GCP head of ``model`` (in eval mode) computes for ``images``, in
    units of each matrix's mean eigenvalue tr(S) / d: the median over the images of the smallest (``spectrum_min``)
    and of the largest eigenvalue (``spectrum_max``), the mean number of eigenvalues below 1e-2
    (``spectrum_small``: where the square root's slope 1 / (2 sqrt(l)) exceeds 5 / sqrt(tr(S) / d), ten times its
    value at the mean), and the mean effective rank exp(-sum_i p_i log p_i), p = l / tr(S). None for heads without
    a covariance of a feature map (average pooling, token heads) and for features that are not finite (a diverging
    run: the training step or the evaluation reports it)."""
    head = model.head
    if not isinstance(head, GCPHead) or isinstance(head, TokenGCPHead):
        return dict.fromkeys(SPECTRUM_COLUMNS)
    training = model.training
    model.eval()
    try:
        with torch.autocast(images.device.type, dtype=AMP_DTYPES.get(model.amp), enabled=model.amp is not None):
            features = model.forward_features(images)
        x = features.float() if head.reduce is None else head.reduce(features.float())
    finally:
        model.train(training)
    if not bool(torch.isfinite(x).all()):
        return dict.fromkeys(SPECTRUM_COLUMNS)
    l = torch.linalg.eigvalsh(covariance(x.flatten(2).double())).clamp_min(0)
    t = l.sum(-1, keepdim=True)
    a = l / t.clamp_min(torch.finfo(l.dtype).tiny) * l.shape[-1]
    p = l / t.clamp_min(torch.finfo(l.dtype).tiny)
    entropy = -(p * torch.log(p.clamp_min(torch.finfo(l.dtype).tiny))).sum(-1)
    return {"spectrum_min": float(a[:, 0].median()), "spectrum_small": float((a < 1e-2).sum(-1).double().mean()),
            "spectrum_max": float(a[:, -1].median()), "spectrum_eff_rank": float(entropy.exp().mean())}


class Evaluation(NamedTuple):
    """Mean cross-entropy loss, accuracy, number of images evaluated, and unreadable images skipped."""

    loss: float
    accuracy: float
    images: int
    skipped: int


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, config: Config, device: torch.device,
             ctx: Distributed | None = None, split: str = "eval", skips: SkipLog | None = None) -> Evaluation:
    """``model`` on ``dataset``, summed over processes. Unreadable images follow ``config.bad_images`` (``skips``
    announces them); non-finite outputs raise NonFiniteOutputs."""
    ctx = ctx or Distributed()
    skips = skips or SkipLog(config.bad_images)
    model.eval()
    loader = make_loader(dataset, config, ctx, epoch=None)
    loss_sum, correct, count, skipped = 0.0, 0.0, 0, [0]
    bar = _progress(len(loader), split, config, ctx)
    failure = None
    try:
        for images, labels in _batches(loader, device, split, skips, skipped, bar):
            logits = _forward(model, images)
            loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(1) == labels).sum().item()
            count += labels.numel()
    except NonFiniteOutputs as err:
        failure = str(err)
    finally:
        if bar is not None:
            bar.close()
    if _agree(ctx, failure is not None):
        failure = failure or "another process met NaN or inf"
    loss_sum, correct, count, n_skipped = sum_across(ctx, [loss_sum, correct, count, skipped[0]])
    if failure or not math.isfinite(loss_sum):
        raise NonFiniteOutputs(f"evaluating the {split} split: {failure or 'the loss is NaN or inf'}")
    return Evaluation(loss_sum / max(count, 1), correct / max(count, 1), int(count), int(n_skipped))
