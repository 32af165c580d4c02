"""BLT (Kozerawski et al., ACCV 2020): tail-class hard examples by gradient
ascent toward confusing classes, a gamma-balancer and a squashing-cosine
classifier.

Two stages, as in the paper: stage 1 is plain training (shared with ``ce``);
stage 2 starts from the stage-1 weights and turns the long-tail techniques
on: the whole network is fine-tuned with a freshly initialised
squashing-cosine classifier (Eq. 2), the gamma-balancer (Eq. 1), and, per
batch, Algorithm 1: of the batch's k tail-class samples (classes with at most
``tail_max`` training images), ceil(p k) are copied and pushed by gradient
ascent on the logit of a confusing class c' -- drawn in proportion to the
latest *validation* confusion of the true class -- with step 0.7, the model
in eval mode, until c''s softmax score reaches a threshold drawn from
U[0.15, 0.25] or 15 iterations pass. The results keep their tail labels and
are appended to the batch (lambda = 1).

All images of a batch ascend together in one tensor, each stopping on its
own, so the cost is at most 15 forward+backward passes per batch.

Under torchrun (``--nproc K``): the confusion matrix comes from the validation pass every rank runs over the
whole split, so it is the same everywhere. Every rank makes one process's draws (which tail samples of the
global batch, their target classes and thresholds: the same stream, seeded alike, over the gathered labels),
then ascends and appends those among its own rows; its rows are weighed (``batch.row_weights``) so that the task
loss is the mean over the global batch's rows, hallucinated ones included, as in one process. The counts in the
record are summed over ranks (``forward_passes``: every rank's ascent passes).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ltbench.api import (ConfigError, Method, MethodMetadata, SecondStage, all_reduce_sum, class_share_sampler,
                         gather_batch, hookimpl, is_distributed, rank, shard_rows)

# --------------------------------------------------------------------------
# Arithmetic (pinned by tests)
# --------------------------------------------------------------------------


def gamma_balancer_shares(counts: np.ndarray, gamma: float) -> np.ndarray:
    """Eq. 1: image weight w_i = sum(n) / n_{y_i}^gamma, so class c is drawn in proportion to n_c^(1-gamma)."""
    counts = np.asarray(counts, dtype=np.float64)
    weights = counts.sum() / np.power(np.maximum(counts, 1), gamma)
    shares = np.where(counts > 0, counts * weights, 0.0)
    return shares / shares.sum()


class SquashingCosine(nn.Module):
    """Eq. 2: logit_c = (alpha |x| / (beta + |x|)) cos(w_c, x)."""

    def __init__(self, in_features: int, num_classes: int, alpha: float = 20.0, beta: float = 0.5):
        super().__init__()
        self.alpha, self.beta = alpha, beta
        self.weight = nn.Parameter(torch.randn(num_classes, in_features) / math.sqrt(in_features))

    def squash(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.norm(dim=1, keepdim=True)
        return norm / (self.beta + norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).t()
        return self.alpha * self.squash(x) * cos


def pick_targets(labels: torch.Tensor, confusion: np.ndarray, generator: torch.Generator) -> torch.Tensor:
    """For each true label c, a confusing class c' != c drawn with probability proportional to
    confusion[c, c'] (validation confusion, rows = true class); -1 where c has no confusion."""
    out = torch.full((len(labels),), -1, dtype=torch.long)
    for i, c in enumerate(labels.tolist()):
        row = confusion[c].astype(np.float64).copy()
        row[c] = 0.0
        if row.sum() > 0:
            out[i] = int(torch.multinomial(torch.as_tensor(row), 1, generator=generator))
    return out


def hallucinate(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, thresholds: torch.Tensor,
                step: float = 0.7, max_iters: int = 15) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Batched gradient ascent on each image's target logit, in eval mode, every image stopping on its own
    once softmax[target] >= its threshold, or after ``max_iters`` iterations.

    Returns (images, iterations each image took, forward passes). Parameters, their gradients and
    batch-norm statistics are left as they were.
    """
    was_training = model.training
    model.eval()
    x = images.detach().clone()
    iters = torch.zeros(len(x), dtype=torch.long)
    active = torch.ones(len(x), dtype=torch.bool)
    forwards = 0
    try:
        for _ in range(max_iters):
            idx = active.nonzero().squeeze(1)
            if len(idx) == 0:
                break
            xa = x[idx.to(x.device)].requires_grad_(True)
            logits = model(xa).float()
            forwards += 1
            rows = torch.arange(len(idx), device=logits.device)
            tgt = targets[idx].to(logits.device)
            done = F.softmax(logits.detach(), dim=1)[rows, tgt] >= thresholds[idx].to(logits.device)
            (grad,) = torch.autograd.grad(logits[rows, tgt].sum(), xa)
            still = ~done.cpu()
            step_idx = idx[still]
            x[step_idx.to(x.device)] = (xa + step * grad)[still.to(x.device)].detach()
            iters[step_idx] += 1
            active[idx[done.cpu()]] = False
    finally:
        model.train(was_training)
    return x.detach(), iters, forwards


def weigh_appended_rows(run, batch, own: int, appended: int) -> None:
    """Under torchrun, where this rank appended ``appended`` rows (hallucinated images, SAFA's generated samples)
    to its ``own`` rows of the global batch: weigh its rows (``batch.row_weights``) so that the task loss is the
    mean over the global batch's rows, appended ones included, as in one process. Nothing in one process.

    The core scales rank r's loss by its share of the batch's own rows, ``n_r K / N``; a mean over its
    ``n_r + a_r`` rows then needs the factor ``N (n_r + a_r) / (n_r (N + A))`` to be its part of one process's
    mean over ``N + A`` rows (also for a class-weighted mean, whose normaliser ``ltbench.api.global_normaliser``
    takes over the ``n_r + a_r`` rows). Every rank calls it alike (a collective)."""
    if not (is_distributed() and getattr(run, "shard_batches", True)):
        return
    counts = all_reduce_sum(torch.tensor([float(own), float(appended)], dtype=torch.float64,
                                         device=batch.labels.device))
    total_own, total_appended = counts.tolist()
    if total_appended == 0 or own == 0:
        return
    factor = total_own * (own + appended) / (own * (total_own + total_appended))
    weights = torch.full((own + appended,), factor, dtype=torch.get_default_dtype(), device=batch.labels.device)
    batch.row_weights = weights if batch.row_weights is None else \
        torch.cat([batch.row_weights, batch.row_weights.new_ones(appended)]) * weights


# --------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------

PAPER = "Kozerawski et al., BLT: Balancing Long-Tailed Datasets with Adversarially-Perturbed Images"


def _ref(many, medium, few, overall, source):
    return {"overall": overall, "many": many, "medium": medium, "few": few, "source": source}


class BLT(Method):
    name = "blt"
    plain_stage1 = True
    options = {"p": 0.25, "gamma": 0.9, "alpha": 16.0, "beta": 0.5, "tail_max": 20, "step": 0.7, "max_iters": 15,
               "score_low": 0.15, "score_high": 0.25, "backbone_lr_ratio": 0.1, "finetune_epochs": 0,
               "hallucinate": True}
    renamed_options = {"epochs": "finetune_epochs"}  # `epochs` is a core key: `--set epochs=` never reached it
    metadata = MethodMetadata(
        family="seed paper",
        title="BLT: gradient-ascent tail-class hard examples, gamma-balancer, squashing-cosine classifier",
        paper=PAPER, venue="ACCV", year=2020, code_url="https://github.com/JKozerawski/BLT",
        summary="Stage 2 fine-tunes the stage-1 network with a squashing-cosine head and the gamma-balancer, "
        "appending to each batch tail-class images pushed by gradient ascent toward a confusing class drawn from "
        "the validation confusion matrix.",
        reference_results={
            "imagenet-lt-resnet10": _ref(44.4, 33.5, 25.5, 36.6, "Table 1, ImageNet-LT, ResNet-10"),
            "places-lt": _ref(31.0, 27.4, 14.1, 25.9, "Table 2 (Places-LT)"),
            "inat2018-resnet34": _ref(53.7, 52.5, 49.9, 51.0, "Table 2, iNaturalist 2018, ResNet-34"),
        },
        interpretations=(
            "The confusion matrix is rebuilt from the validation split after every stage-2 epoch, never from the "
            "test set (the official code overwrites it with test-set confusion); hallucination starts in the second "
            "stage-2 epoch, once a validation confusion exists, as the official code.",
            "The ascended image is the batch's own (augmented) copy of the tail sample; the official code reloads "
            "another image of the class with heavier augmentation.",
            "Ascent on the raw target logit with step 0.7 and no pixel budget, stopping per image when the target's "
            "softmax reaches its threshold (checked after each forward pass); rows are tracked per image (the "
            "official code's index mismatch after early stops is not copied).",
            "p 0.25, gamma 0.9, alpha 16, beta 0.5: the paper's main experiments do not state their values (its "
            "ablations hold p 0.5, gamma 1, alpha 20, beta 0.5 fixed, the extremes of their ranges), so these are "
            "the official code's.",
            "The ceil(p k) hallucinated samples are a random subset of the batch's k tail samples (the official "
            "code takes floor(p k)).",
            "Stage 2 length is the budget's stage2_epochs (option finetune_epochs overrides) with a cosine schedule; "
            "classifier lr = stage2_lr, backbone lr = backbone_lr_ratio x stage2_lr (the official code: 0.1 and "
            "0.01); cross-entropy on the squashing-cosine logits (the official code's logit margin is 0).",
        ),
    )

    def check_options(self) -> None:
        o = self.opts
        if not 0 <= o["p"] <= 1:
            raise ConfigError(f"blt.p must be in [0, 1], got {o['p']}")
        if not 0 < o["score_low"] <= o["score_high"] < 1:
            raise ConfigError(f"blt: need 0 < score_low <= score_high < 1, got {o['score_low']}, {o['score_high']}")
        if o["alpha"] <= 0 or o["beta"] <= 0 or o["step"] <= 0 or o["max_iters"] < 1:
            raise ConfigError(f"blt: alpha, beta and step must be > 0 and max_iters >= 1, got {o}")
        if o["gamma"] < 0 or o["tail_max"] < 0 or o["finetune_epochs"] < 0 or o["backbone_lr_ratio"] < 0:
            raise ConfigError(f"blt: gamma, tail_max, epochs and backbone_lr_ratio must be >= 0, got {o}")

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.generator = torch.Generator()
        self.confusion: np.ndarray | None = None
        self.stats = {"hallucinated": 0, "skipped_no_confusion": 0, "forward_passes": 0, "seconds": 0.0,
                      "batches_with_tail": 0}

    @hookimpl
    def ltbench_second_stage(self, run):
        self.generator.manual_seed(30_000 + run.seed)
        lr = run.config["stage2_lr"]
        return SecondStage(epochs=self.opts["finetune_epochs"] or None, lr=lr, train_backbone=True,
                           backbone_lr=lr * self.opts["backbone_lr_ratio"], cached_features=False,
                           note="whole network fine-tuned from stage 1 with BLT's techniques on")

    @hookimpl
    def ltbench_build_classifier(self, in_features, num_classes, stage):
        if stage != 2:
            return None
        return SquashingCosine(in_features, num_classes, self.opts["alpha"], self.opts["beta"])

    @hookimpl
    def ltbench_build_sampler(self, run, stage, labels):
        if stage != 2:
            return None
        counts = np.bincount(labels, minlength=run.num_classes)
        return class_share_sampler(labels, gamma_balancer_shares(counts, self.opts["gamma"]), run.generator)

    @hookimpl
    def ltbench_epoch_end(self, run, stage):
        if stage == 2 and self.opts["hallucinate"]:
            self.confusion = run.validation().confusion  # validation only; the test split is sealed

    @hookimpl
    def ltbench_augment_batch(self, run, model, batch):
        if run.stage != 2 or not self.opts["hallucinate"] or self.confusion is None:
            return
        t0 = time.perf_counter()
        # Under torchrun the draws are one process's: every rank draws, from the same stream, for the tail samples
        # of the global batch, then ascends and appends those among its own rows (``mine``: rows start..stop)
        own = len(batch.labels)
        sharded = is_distributed() and getattr(run, "shard_batches", True)
        labels_all = gather_batch(run, batch.labels) if sharded else batch.labels
        start = shard_rows(len(labels_all)).start if sharded else 0
        tail = torch.as_tensor(run.train_counts <= self.opts["tail_max"])[labels_all.cpu()]
        tail_pos = tail.nonzero().squeeze(1)
        if len(tail_pos) == 0:
            weigh_appended_rows(run, batch, own, 0)
            return
        if rank() == 0:  # (the record sums the counts over ranks)
            self.stats["batches_with_tail"] += 1
        n = math.ceil(self.opts["p"] * len(tail_pos))
        chosen = tail_pos[torch.randperm(len(tail_pos), generator=self.generator)[:n]]
        labels = labels_all[chosen.to(labels_all.device)].cpu()
        targets = pick_targets(labels, self.confusion, self.generator)
        keep = targets >= 0
        mine = (chosen >= start) & (chosen < start + own)
        self.stats["skipped_no_confusion"] += int((~keep & mine).sum())
        appended = 0
        if keep.any():
            chosen, labels, targets = chosen[keep], labels[keep], targets[keep]
            low, high = self.opts["score_low"], self.opts["score_high"]
            thresholds = low + (high - low) * torch.rand(len(chosen), generator=self.generator)
            mine = mine[keep]
            if mine.any():
                chosen, labels, targets, thresholds = (chosen[mine] - start, labels[mine], targets[mine],
                                                       thresholds[mine])
                images, _, forwards = hallucinate(model, batch.images[chosen.to(batch.images.device)], targets,
                                                  thresholds, self.opts["step"], self.opts["max_iters"])
                batch.images = torch.cat([batch.images, images])
                batch.labels = torch.cat([batch.labels, labels.to(batch.labels.device)])
                self.stats["hallucinated"] += len(chosen)
                self.stats["forward_passes"] += forwards
                appended = len(chosen)
        weigh_appended_rows(run, batch, own, appended)
        self.stats["seconds"] += time.perf_counter() - t0

    @hookimpl
    def ltbench_record(self, run):
        stage1 = sum(e["seconds"] for e in run.history if e["stage"] == 1)
        stage2 = sum(e["seconds"] for e in run.history if e["stage"] == 2)
        h = self.stats["seconds"]
        stats = dict(self.stats)
        if is_distributed():  # under torchrun each rank hallucinated for its own rows: the sums
            counts = [k for k in stats if k != "seconds"]
            total = all_reduce_sum(torch.tensor([float(stats[k]) for k in counts], device=run.device))
            stats.update({k: int(v) for k, v in zip(counts, total.tolist())})
        return {**{k: (round(v, 3) if isinstance(v, float) else v) for k, v in stats.items()},
                "stage2_time_ratio_vs_no_hallucination": round(stage2 / max(stage2 - h, 1e-9), 3),
                "time_ratio_vs_no_hallucination": round((stage1 + stage2) / max(stage1 + stage2 - h, 1e-9), 3)}

    def state_dict(self) -> dict[str, Any]:
        return {"confusion": self.confusion, "stats": self.stats, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.confusion, self.stats = state["confusion"], state["stats"]
            self.generator.set_state(state["generator"])


class BLTFinetune(BLT):
    """BLT's stage 2 with hallucination off: the compute-matched twin that tells what hallucination adds."""

    name = "blt-finetune"
    options = {**BLT.options, "hallucinate": False}
    metadata = MethodMetadata(
        family="decoupling",
        title="Class-balanced full fine-tune: BLT's stage 2 without hallucination (compute-matched twin)",
        paper=PAPER, venue="ACCV", year=2020, code_url="https://github.com/JKozerawski/BLT",
        summary="The stage-1 network fine-tuned for stage2_epochs with BLT's squashing-cosine head and "
        "gamma-balancer, exactly as blt, but no hallucinated images: the same backbone epochs as blt, so the "
        "two rows differ only by hallucination.",
        interpretations=("A board row of ltbench's, not a method of the paper: the paper's ablation (Table 4) "
                         "removes one technique at a time; this removes hallucination only.",)
        + BLT.metadata.interpretations,
    )


@hookimpl
def ltbench_register_methods(register):
    register(BLT)
    register(BLTFinetune)
