"""``paco``: Parametric Contrastive Learning (Cui et al., ICCV 2021).

A supervised contrastive loss (MoCo-style: a query encoder, a momentum key encoder and a queue of keys) to
which PaCo adds *parametric class centres*: the classifier's logits of the query join its contrast logits, so
that every anchor is pulled toward its class's centre (weight ``beta``) and toward the same-class keys and
queue entries (weight ``alpha``), against every centre and every other sample (weight ``gamma``). The
classifier's logits carry the log class prior while training (official ``LT/losses.py``: ``sup_logits +
log(prior)``), so the centres are rebalanced like a balanced softmax; prediction uses the classifier alone.

Official code: ``LT/paco_cifar.py``, ``LT/moco/builder.py`` (``MoCo``), ``LT/losses.py`` (``PaCoLoss``), and
the released CIFAR-100-LT script ``LT/sh/CIFAR100_train_imb0.01.sh`` (commit 3976961, "configuration for
cifar", and the same in the repository's ``PaCo/LT/sh`` since; ResNet-32; alpha 0.01, beta 1, gamma 1, temperature
0.05, queue 1024, 32-d keys, lr 0.05, weight decay 5e-4, 400 epochs). An earlier commit of the script (alpha 0.02,
64-d keys, lr 0.02) was a pre-release; ltbench 0.2 used it.

How it maps onto ltbench's hooks: ``ltbench_train_views`` asks for two views of each row; the core's forward
pass gives the query (view 0's pooled features, projected by ``paco_projection``, and the classifier's logits);
the extra-loss hook first moves the key encoder (``paco_key_backbone``, ``paco_key_projection``: copies made at
build time, never trained by gradients) toward the query encoder, ``k <- m k + (1 - m) q``, then encodes view 1
with it, computes the PaCo loss over ``[queries, keys, queue]``, and enqueues the keys (``paco_queue``'s
buffers). All of it is model state: checkpoints carry it, so an interrupted run resumes exactly. PaCo trains
with this one loss, so its task term is zero.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ltbench.api import (ConfigError, Method, MethodMetadata, ParamGroup, gather_batch, hookimpl, is_distributed,
                         projection_head)


def paco_loss(queries: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor, queue: torch.Tensor,
              queue_labels: torch.Tensor, sup_logits: torch.Tensor, alpha: float, beta: float, gamma: float,
              temperature: float) -> torch.Tensor:
    """PaCoLoss of the official code, per anchor: ``queries`` and ``keys`` (B, d) normalised, ``labels`` (B,),
    ``queue`` (K, d) and ``queue_labels`` (K,), ``sup_logits`` (B, C) the classifier's logits (with the log
    prior already added).

    Anchor i's logits are ``[sup_logits_i, q_i . f_j / T for f_j in (queries, keys, queue)]``. Its positives:
    its class's centre with weight ``beta`` and every other sample of its class with weight ``alpha``. Its
    denominator: every centre (weight 1) and every other sample (weight ``gamma``). The loss is minus the
    positives' weighted mean log-probability. Returns the (B,) per-anchor losses."""
    batch, num_classes = len(labels), sup_logits.shape[1]
    device = queries.device
    samples = torch.cat([queries, keys, queue])
    targets = torch.cat([labels, labels, queue_labels])
    logits = torch.cat([sup_logits, queries @ samples.T / temperature], dim=1)
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()  # for stability (cancels)
    own = torch.arange(batch, device=device)[:, None]  # anchor i is sample i: not its own contrast
    not_self = torch.ones(batch, len(samples), device=device).scatter_(1, own, 0)
    same = (labels[:, None] == targets[None, :]).to(logits.dtype) * not_self
    positives = torch.cat([F.one_hot(labels, num_classes).to(logits.dtype) * beta, same * alpha], dim=1)
    in_denominator = torch.cat([torch.ones(batch, num_classes, device=device), gamma * not_self], dim=1)
    log_prob = logits - torch.log((logits.exp() * in_denominator).sum(1, keepdim=True) + 1e-12)
    return -(positives * log_prob).sum(1) / positives.sum(1)


class KeyQueue(nn.Module):
    """The queue of the key encoder's last ``size`` keys and their labels (buffers: checkpointed with the
    model). It starts with random unit keys labelled -1 (no class), which are negatives until replaced."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, keys: torch.Tensor, labels: torch.Tensor) -> None:
        """Replace the oldest entries with ``keys`` (wrapping around the end)."""
        size, n = len(self.labels), len(labels)
        where = (int(self.pointer) + torch.arange(n, device=labels.device)) % size
        self.keys[where] = keys.to(self.keys.dtype)
        self.labels[where] = labels
        self.pointer.fill_((int(self.pointer) + n) % size)


class ParametricContrastiveLearning(Method):
    name = "paco"
    options = {"alpha": 0.01, "beta": 1.0, "gamma": 1.0, "temperature": 0.05, "queue": 1024, "dim": 32,
               "key_momentum": 0.999, "peak_lr": 0.05}
    metadata = MethodMetadata(
        family="contrastive",
        title="Parametric Contrastive Learning (PaCo)",
        paper="Cui et al., Parametric Contrastive Learning",
        venue="ICCV", year=2021,
        code_url="https://github.com/dvlab-research/Parametric-Contrastive-Learning",
        summary="A MoCo-style supervised contrastive loss (momentum key encoder, queue of 1024 keys) whose "
                "softmax also holds the classifier's logits as parametric class centres, rebalanced with the "
                "log class prior: the centre weighs beta = 1, same-class samples alpha = 0.01, every other "
                "sample gamma = 1 in the denominator; temperature 0.05, 32-d keys; stage 1 at lr 0.05 (the "
                "released CIFAR-100 script's values).",
        reference_results={
            "cifar100-lt-if100": {"overall": 52.0, "backbone": "resnet32", "epochs": 400,
                                  "source": "PaCo, CIFAR-100-LT imbalance 100, ResNet-32 (paper, Table 3): 400 "
                                  "epochs, AutoAugment and Cutout on the query, SimCLR augmentation on the key"},
        },
        interpretations=(
            "Both views are the core pad-crop-flip augmentation: the official CIFAR script's AutoAugment + "
            "Cutout (query) and SimCLR colour jitter, grayscale and blur (key) are not applied.",
            "The core's forward pass runs the query encoder over both views (that is how ltbench serves views); "
            "only view 0's outputs enter the loss, but the query encoder's batch-norm statistics are those of "
            "both views (drawn from the same augmentation) rather than of the query view alone.",
            "The queue starts with random unit keys labelled -1 (negatives of every class); the official builder "
            "labels them at random in 0..C-1 and normalises the random keys column-wise.",
            "The peak learning rate is the released script's 0.05 (option peak_lr: the budget's schedule shape is "
            "scaled so that it peaks there, through ltbench_param_groups; the record's optimizer states it); the "
            "budget's warm-up, decay epochs and weight decay apply (the official script: 10 warm-up epochs, x0.1 "
            "at 320 and x0.01 at 360 of 400 epochs, weight decay 5e-4).",
            "Under torchrun the contrast is over the global batch and every rank enqueues the global batch's "
            "keys (gathered), as one process does and as the official code gathers every GPU's keys into one "
            "queue.",
        ),
    )

    def check_options(self) -> None:
        super().check_options()
        for key in ("alpha", "beta", "gamma"):
            if self.opts[key] < 0:
                raise ConfigError(f"paco.{key} is a weight, >= 0; got {self.opts[key]}")
        if self.opts["beta"] == 0 and self.opts["alpha"] == 0:
            raise ConfigError("paco.alpha and paco.beta are both 0: an anchor would have no positive")
        if not self.opts["temperature"] > 0:
            raise ConfigError(f"paco.temperature must be > 0, got {self.opts['temperature']}")
        if self.opts["queue"] < 1 or self.opts["dim"] < 1:
            raise ConfigError(f"paco.queue and paco.dim must be >= 1; got {self.opts['queue']}, {self.opts['dim']}")
        if not self.opts["peak_lr"] > 0:
            raise ConfigError(f"paco.peak_lr is stage 1's peak learning rate, > 0; got {self.opts['peak_lr']}")
        if not 0 <= self.opts["key_momentum"] < 1:
            raise ConfigError(f"paco.key_momentum must be in [0, 1), got {self.opts['key_momentum']}")

    @hookimpl
    def ltbench_configure_model(self, run, model):
        self._this_step = None  # the step's keys and queue, for a step owner's re-evaluation (sam)
        counts = np.asarray(run.train_counts, dtype=np.float64)  # the log prior rebalances the centres' logits
        self._log_prior = torch.tensor(np.log(counts / counts.sum() + 1e-9), dtype=torch.float32, device=run.device)
        d, dim = model.num_features, self.opts["dim"]
        model.heads["paco_projection"] = projection_head(d, dim)
        model.heads["paco_key_backbone"] = copy.deepcopy(model.backbone)  # the key encoder starts as the query's
        model.heads["paco_key_projection"] = copy.deepcopy(model.heads["paco_projection"])
        for name in ("paco_key_backbone", "paco_key_projection"):
            model.heads[name].requires_grad_(False)  # moved by momentum only
        model.heads["paco_queue"] = KeyQueue(self.opts["queue"], dim)

    @hookimpl
    def ltbench_param_groups(self, run, stage):
        """Stage 1 peaks at the released script's lr (0.05), whatever the budget's peak: every parameter's lr is the
        budget's schedule times ``peak_lr / budget lr``."""
        if stage != 1:
            return None
        factor = self.opts["peak_lr"] / run.config["lr"]
        return [ParamGroup(("",), lr_factor=factor, label=f"paco peak lr {self.opts['peak_lr']:g}")]

    @hookimpl
    def ltbench_train_views(self, stage):
        return 2 if stage == 1 else None

    @hookimpl
    def ltbench_build_loss(self, run, stage):
        if stage != 1:
            return None

        def no_task_term(logits: torch.Tensor, targets: torch.Tensor, row_weights: torch.Tensor | None = None):
            """PaCo's one loss is the extra term ``paco``, in which these logits are the class centres."""
            return logits.new_zeros(())
        return no_task_term

    @torch.no_grad()
    def _momentum_update(self, model) -> None:
        m = self.opts["key_momentum"]
        for query, key in (("backbone", "paco_key_backbone"), ("paco_projection", "paco_key_projection")):
            source = model.backbone if query == "backbone" else model.heads[query]
            for p_q, p_k in zip(source.parameters(), model.heads[key].parameters()):
                p_k.mul_(m).add_(p_q.detach(), alpha=1 - m)

    @hookimpl
    def ltbench_extra_losses(self, run, model, batch, output) -> dict[str, Any] | None:
        if run.stage != 1 or batch.views < 2:
            return None
        heads = model.heads
        rows = batch.view_rows(0)
        queries = F.normalize(heads["paco_projection"](output.features[rows]), dim=1)
        labels = batch.labels[: len(batch.images)]
        sup_logits = output.logits[rows].float() + self._log_prior
        weights = batch.row_weights
        queue = heads["paco_queue"]
        if is_distributed():  # the contrast is over the global batch, as in one process: every rank's rows
            queries, labels, sup_logits = (gather_batch(run, t) for t in (queries, labels, sup_logits))
            weights = None if weights is None else gather_batch(run, weights)
        if getattr(run, "reevaluating", False) and self._this_step is not None:
            # a step owner (sam) evaluates the batch again: the same keys and queue, nothing advanced
            keys, queue_keys, queue_labels = self._this_step
        else:
            self._momentum_update(model)  # then the keys, with the moved encoder (official MoCo._train)
            with torch.no_grad():
                key_backbone = heads["paco_key_backbone"]
                pooled = key_backbone.forward_pool(key_backbone.forward_features(batch.extra_views[0]))
                keys = F.normalize(heads["paco_key_projection"](pooled), dim=1)
                if is_distributed():  # every rank's keys, so that every rank's queue holds the global batch's
                    keys = gather_batch(run, keys)
            queue_keys, queue_labels = queue.keys.clone(), queue.labels.clone()
            self._this_step = (keys, queue_keys, queue_labels)
        per_anchor = paco_loss(queries.float(), keys.float(), labels, queue_keys, queue_labels, sup_logits,
                               self.opts["alpha"], self.opts["beta"], self.opts["gamma"], self.opts["temperature"])
        if not getattr(run, "reevaluating", False):
            queue.push(keys, labels)
        loss = per_anchor.mean() if weights is None else (per_anchor * weights.to(per_anchor.dtype)).mean()
        return {"paco": loss}


@hookimpl
def ltbench_register_methods(register):
    register(ParametricContrastiveLearning)
