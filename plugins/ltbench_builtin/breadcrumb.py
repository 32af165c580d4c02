"""Breadcrumbs (Liu, Li, Kang, Hua, Vasconcelos): EMANATE feature
back-tracking with class alignment, and weak / strong Breadcrumb sampling.

**EMANATE** (paper Sec. 3). Stage 1 trains backbone + classifier with
image-balanced sampling. The pooled features that the training forward
passes already compute are kept per class and epoch (snapshots Z_j^e; no
extra backbone pass ever). With n_B = ceil(mean class count) and
K_j = ceil(n_B / n_j), the EMANATE set of class j at epoch e is its current
snapshot plus the snapshots of its K_j - 1 previous epochs, each aligned by
Eq. 5 (z - mean_j^{e'} + mean_j^e), the oldest randomly subsampled so that
the class contributes exactly n_B features. Classes with n_j >= n_B keep only
a random n_B of the current epoch, and only classes with K_j > 1 keep history.

**breadcrumb-weak** (Sec. 4.1): stage 2 re-initialises the classifier and
retrains it on the frozen backbone with class-balanced batches drawn from the
EMANATE set of the final epoch only.

**breadcrumb** (strong, Sec. 4.2, the paper's default): the class-balanced
classifier is trained on the EMANATE set of every epoch. As in the official
code, it runs concurrently with stage 1: a second linear head h_c trains on
the detached EMANATE features (so it never sends gradient into the backbone),
one bank batch per image-balanced batch; its lr schedule is stage 1's.
During the first epochs, before every class has K_j snapshots, h_c is
trained with plain class-balanced sampling of the latest snapshot. The model
is evaluated with h_c.

Short budgets: CIFAR-100-LT IF100 has n_B = 109 and K_max = 22; the ``cpu``
budget's 30 epochs reach the full history at epoch 22, a shorter run never
does. Until the history is full, by default (``warmup=partial-history``) a
class with fewer than K_j snapshots so far back-tracks through all it has and
is resampled up to n_B; ``warmup=class-balanced`` is the paper's rule (plain
class-balanced sampling of the latest snapshot until every class has K_j
snapshots), the same as the default once the history is full.

Ablations (Table 1): ``backtrack=fixed`` uses the last ``fixed_epochs`` (10)
epochs for every class instead of class-specific lengths; ``alignment`` is
``mean`` (default), ``var`` (mean and per-dimension std), ``agnostic`` (one
mean over all classes) or ``none``.

Under torchrun (``--nproc K``): each rank collects the features of its rows of every batch; at the end of an
epoch :func:`ltbench.training.distributed.gather_rows` joins them in single-process order, so the snapshot bank, and
the EMANATE set drawn from it with the plugin's own generator, are the same on every rank and hold every
image. During the next epoch each rank trains h_c on its rows of each bank batch.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ltbench.api import (ConfigError, Method, MethodMetadata, SecondStage, gather_rows, hookimpl, is_distributed,
                         shard_rows)

ALIGNMENTS = ("mean", "var", "agnostic", "none")
BACKTRACKS = ("class-specific", "fixed")
WARMUPS = ("partial-history", "class-balanced")

# --------------------------------------------------------------------------
# EMANATE arithmetic (pure functions, pinned by tests)
# --------------------------------------------------------------------------


def default_n_b(counts: np.ndarray) -> int:
    """n_B = ceil(mean class count)."""
    counts = np.asarray(counts)
    return int(math.ceil(counts.sum() / len(counts)))


def snapshot_lengths(counts: np.ndarray, n_b: int) -> np.ndarray:
    """K_j = ceil(n_B / n_j): how many epochs of snapshots class j needs."""
    return np.ceil(n_b / np.asarray(counts, dtype=np.float64)).astype(int)


def align(block: torch.Tensor, old: torch.Tensor, new: torch.Tensor, mode: str,
          old_std: torch.Tensor | None = None, new_std: torch.Tensor | None = None) -> torch.Tensor:
    """Move a snapshot block from its epoch's statistics onto the current ones (Eq. 5)."""
    if mode == "none":
        return block
    if mode == "var":
        return (block - old) / old_std.clamp_min(1e-6) * new_std + new
    return block - old + new  # "mean" (class means) and "agnostic" (all-class means)


def align_snapshot(block: torch.Tensor, age: int, new_mean: torch.Tensor, new_std: torch.Tensor, mode: str,
                   agnostic_means: list[torch.Tensor] | None = None) -> torch.Tensor:
    """A class's snapshot ``age`` epochs old, aligned onto its newest block's statistics (``new_mean``,
    ``new_std``), or for ``agnostic`` by the all-class means of the two epochs; the newest (age 0) as it is."""
    if age == 0:
        return block
    if mode == "agnostic":
        return align(block, agnostic_means[age], agnostic_means[0], "mean")
    return align(block, block.mean(0), new_mean, mode, block.std(0, unbiased=False), new_std)


def emanate_class(snapshots: list[torch.Tensor], n_b: int, mode: str, generator: torch.Generator,
                  agnostic_means: list[torch.Tensor] | None = None) -> torch.Tensor:
    """The EMANATE set of one class: ``snapshots`` newest first, each (n_j, D); returns (n_B, D).

    Blocks are taken newest first until n_B rows; the last block used is a
    random subsample. A class whose newest snapshot alone has >= n_B rows
    contributes a random n_B of it. With fewer than K_j snapshots (a stage 1
    shorter than K_j epochs) the rows it has are resampled with replacement
    up to n_B.
    """
    out, need = [], n_b
    new_mean = snapshots[0].mean(0)
    new_std = snapshots[0].std(0, unbiased=False)
    for k, block in enumerate(snapshots):
        if need == 0:
            break
        block = align_snapshot(block, k, new_mean, new_std, mode, agnostic_means)
        if len(block) > need:
            block = block[torch.randperm(len(block), generator=generator)[:need]]
        out.append(block)
        need -= len(block)
    rows = torch.cat(out)
    if need:  # fewer epochs of history than K_j so far: resample the back-tracked rows up to n_B
        rows = torch.cat([rows, rows[torch.randint(len(rows), (need,), generator=generator)]])
    return rows


# --------------------------------------------------------------------------
# The snapshot bank
# --------------------------------------------------------------------------


class SnapshotBank:
    """Per-class queues of feature snapshots, kept only as long as they are needed."""

    def __init__(self, counts: np.ndarray, n_b: int, backtrack: str, fixed_epochs: int, alignment: str):
        self.counts, self.n_b = np.asarray(counts), n_b
        self.alignment, self.backtrack = alignment, backtrack
        self.lengths = (np.full(len(counts), fixed_epochs) if backtrack == "fixed"
                        else snapshot_lengths(counts, n_b))
        self.queues: list[deque] = [deque(maxlen=int(k)) for k in self.lengths]
        self.all_means: deque = deque(maxlen=int(self.lengths.max()))  # for class-agnostic alignment
        self.epochs_pushed = 0
        self.peak_rows = 0

    @property
    def ready(self) -> bool:
        """Every class has all the snapshots it back-tracks through."""
        return all(len(q) == q.maxlen for q in self.queues)

    def push(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Add one epoch's features (each training image once)."""
        for c, q in enumerate(self.queues):
            q.appendleft(features[labels == c].clone())  # newest first
        self.all_means.appendleft(features.mean(0))
        self.epochs_pushed += 1
        self.peak_rows = max(self.peak_rows, self.rows_held())

    def rows_held(self) -> int:
        return sum(len(block) for q in self.queues for block in q)

    def assemble(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The EMANATE set of the newest epoch: n_B features per class."""
        feats, labels = [], []
        for c, q in enumerate(self.queues):
            snaps = list(q)
            if self.backtrack == "fixed":  # '+ back-tracking' ablation: pool the epochs, sample class-balanced
                pooled = torch.cat(snaps)
                rows = pooled[torch.randint(len(pooled), (self.n_b,), generator=generator)]
            else:
                rows = emanate_class(snaps, self.n_b, self.alignment, generator, list(self.all_means))
            feats.append(rows)
            labels.append(torch.full((len(rows),), c, dtype=torch.long))
        return torch.cat(feats), torch.cat(labels)

    def class_balanced(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Plain class-balanced sampling of the newest snapshot: n_B draws per class with replacement."""
        feats, labels = [], []
        for c, q in enumerate(self.queues):
            newest = q[0]
            feats.append(newest[torch.randint(len(newest), (self.n_b,), generator=generator)])
            labels.append(torch.full((self.n_b,), c, dtype=torch.long))
        return torch.cat(feats), torch.cat(labels)

    def state(self) -> dict[str, Any]:
        return {"args": (self.counts, self.n_b, self.backtrack, int(self.lengths.max()), self.alignment),
                "queues": [list(q) for q in self.queues], "all_means": list(self.all_means),
                "epochs_pushed": self.epochs_pushed, "peak_rows": self.peak_rows}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SnapshotBank:
        bank = cls(*state["args"])
        for q, blocks in zip(bank.queues, state["queues"]):
            q.extend(blocks)
        bank.all_means.extend(state["all_means"])
        bank.epochs_pushed, bank.peak_rows = state["epochs_pushed"], state["peak_rows"]
        return bank


def history_by_age(bank: SnapshotBank) -> list[dict[str, Any]]:
    """What back-tracking feeds the classifier, by snapshot age (0 = the newest epoch), at the end of stage 1.

    Breadcrumb's premise is a converging embedding: an older snapshot, moved onto the newest class statistics
    by the alignment, stands in for features of the current network. Per age: ``spread_ratio``, the mean
    distance of a class's rows to their block mean, over the same class's newest block's (averaged over the
    classes that back-track that far; below 1: old blocks are tighter than the current features), and
    ``nearest_mean_accuracy``, the share of aligned rows whose nearest newest class mean is their own class
    (against the newest block's own share at age 0)."""
    if bank is None or not bank.queues or not bank.queues[0]:
        return []
    newest = torch.stack([q[0].mean(0) for q in bank.queues])  # (C, D)
    new_std = [q[0].std(0, unbiased=False) for q in bank.queues]
    new_spread = [(q[0] - newest[c]).norm(dim=1).mean() for c, q in enumerate(bank.queues)]
    agnostic_means = list(bank.all_means)
    ages = []
    for k in range(max(len(q) for q in bank.queues)):
        ratios, hits, rows = [], 0, 0
        for c, q in enumerate(bank.queues):
            if len(q) <= k or len(q[k]) == 0:
                continue
            block = align_snapshot(q[k], k, newest[c], new_std[c], bank.alignment, agnostic_means)
            ratios.append(float((block - block.mean(0)).norm(dim=1).mean() / new_spread[c].clamp_min(1e-12)))
            hits += int((torch.cdist(block, newest).argmin(1) == c).sum())
            rows += len(block)
        if ratios:
            ages.append({"age": k, "classes": len(ratios), "spread_ratio": round(float(np.mean(ratios)), 3),
                         "nearest_mean_accuracy": round(hits / rows, 3)})
    return ages


class BreadcrumbHead(nn.Module):
    """h_r (``instance``, trained image-balanced with the backbone) and h_c
    (``balanced``, trained on EMANATE features). Training mode answers with
    h_r, evaluation with h_c."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.instance = nn.Linear(in_features, num_classes)  # created first: same init as a plain run's head
        self.balanced = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.instance(x) if self.training else self.balanced(x)


# --------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------

PAPER = "Liu et al., Breadcrumbs: Adversarial Class-Balanced Sampling for Long-tailed Recognition"
CODE = "https://github.com/BoLiu-SVCL/Breadcrumbs"
TABLE1 = "Table 1 (ImageNet-LT, ResNet-10; not comparable to CIFAR)"


def _ref(overall, many, medium, few, source):
    return {"overall": overall, "many": many, "medium": medium, "few": few, "source": source}


REFERENCE = {
    "imagenet-lt-resnet10": _ref(44.0, 53.7, 41.0, 26.4, "Tables 1-2, ImageNet-LT, ResNet-10"),
    "places-lt-resnet152": _ref(39.3, 40.6, 41.0, 33.4, "Table 2, Places-LT, ResNet-152"),
    "imagenet-lt-resnext50": _ref(51.0, 62.9, 47.2, 30.9, "Table 3, ImageNet-LT, ResNeXt-50"),
    "inat2018-resnet50": {"overall": 70.3, "source": "Table 4, iNaturalist 2018, ResNet-50"},
}
INTERPRETATIONS = (
    "Budgets shorter than K_max epochs (CIFAR-100-LT K_max is 22; the cpu budget's 30 epochs reach it at epoch 22, "
    "before the last quarter): until then a class back-tracks through the snapshots there are and is resampled "
    "with replacement up to n_B.",
    "Snapshots are the pooled features of the image-balanced training forward passes (train mode, augmented), "
    "as the official code keeps them; the paper's Eq. 2 speaks of the embedding at the end of the epoch.",
    "K_j = ceil(n_B/n_j) and the oldest block is subsampled to n_B - (K_j-1) n_j rows (the paper's Eq. 14 writes "
    "n_B - K_j n_j, a typo); classes with n_j >= n_B contribute a random n_B of the current epoch.",
    "No CIFAR recipe exists in the paper or code; ltbench runs Breadcrumb on its budgets' stage-1 schedule.",
)


class _BreadcrumbBase(Method):
    options = {"n_b": 0, "alignment": "mean", "backtrack": "class-specific", "fixed_epochs": 10,
               "warmup": "partial-history"}

    def check_options(self) -> None:
        if self.opts["alignment"] not in ALIGNMENTS:
            raise ConfigError(f"{self.name}.alignment must be one of {', '.join(ALIGNMENTS)}, "
                              f"got {self.opts['alignment']!r}")
        if self.opts["backtrack"] not in BACKTRACKS:
            raise ConfigError(f"{self.name}.backtrack must be one of {', '.join(BACKTRACKS)}, "
                              f"got {self.opts['backtrack']!r}")
        if self.opts["warmup"] not in WARMUPS:
            raise ConfigError(f"{self.name}.warmup must be one of {', '.join(WARMUPS)}, got {self.opts['warmup']!r}")
        if self.opts["n_b"] < 0 or self.opts["fixed_epochs"] < 1:
            raise ConfigError(f"{self.name}: n_b must be >= 0 (0 = ceil(mean count)) and fixed_epochs >= 1")

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.bank: SnapshotBank | None = None
        self.generator = torch.Generator()
        self.epoch_features: list[torch.Tensor] = []
        self.epoch_labels: list[torch.Tensor] = []
        self.seconds = 0.0  # time spent in this plugin's hooks

    def setup(self, run) -> None:
        if self.bank is None:  # not restored from a checkpoint
            counts = run.train_counts
            n_b = self.opts["n_b"] or default_n_b(counts)
            self.bank = SnapshotBank(counts, n_b, self.opts["backtrack"], self.opts["fixed_epochs"],
                                     self.opts["alignment"])
            self.generator.manual_seed(10_000 + run.seed)  # own stream: the backbone's training is untouched

    @hookimpl
    def ltbench_epoch_start(self, run, stage):
        if stage == 1:
            self.setup(run)
            self.epoch_features, self.epoch_labels = [], []

    def collect(self, batch, output) -> None:
        """Keep the features training already computed (detached; no extra backbone pass)."""
        self.epoch_features.append(output.features.detach().float())
        self.epoch_labels.append(batch.labels.detach())

    @hookimpl
    def ltbench_epoch_end(self, run, stage):
        if stage != 1:
            return
        t0 = time.perf_counter()
        # under torchrun: every rank's features, in the order a single process would have them
        self.bank.push(gather_rows(self.epoch_features), gather_rows(self.epoch_labels))
        self.epoch_features, self.epoch_labels = [], []
        self.after_push(run)
        self.seconds += time.perf_counter() - t0

    def after_push(self, run) -> None:
        pass

    def record_fields(self, run) -> dict[str, Any]:
        bank = self.bank
        stage1 = sum(e["seconds"] for e in run.history if e["stage"] == 1)
        return {
            "history_by_age": history_by_age(bank),
            "n_b": bank.n_b, "k_max": int(bank.lengths.max()),
            "classes_backtracking": int((bank.lengths > 1).sum()),
            "bank_peak_rows": bank.peak_rows,
            "bank_peak_mb": round(bank.peak_rows * run.model.num_features * 4 / 2**20, 3),
            "plugin_seconds": round(self.seconds, 3),
            "overhead_fraction_of_stage1": round(self.seconds / max(stage1 - self.seconds, 1e-9), 4),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"bank": self.bank.state() if self.bank else None, "generator": self.generator.get_state(),
                "seconds": self.seconds, **self.extra_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.bank = SnapshotBank.from_state(state["bank"]) if state["bank"] is not None else None
        self.generator.set_state(state["generator"])
        self.seconds = state["seconds"]
        self.load_extra_state(state)

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass


class Breadcrumb(_BreadcrumbBase):
    name = "breadcrumb"
    metadata = MethodMetadata(
        family="seed paper",
        title="Breadcrumb (strong): EMANATE sets of every epoch train the class-balanced classifier",
        paper=PAPER, venue="ECCV", year=2022, code_url=CODE,
        summary="EMANATE feature back-tracking with class alignment; the classifier trains on the EMANATE set of "
        "each epoch, concurrently with stage 1, on detached features.",
        reference_results={**REFERENCE,
                           "ablation-var": _ref(43.9, 53.8, 40.8, 26.0, TABLE1 + ", Breadcrumb(var.)"),
                           "ablation-agn": _ref(38.5, 47.3, 35.6, 24.0, TABLE1 + ", Breadcrumb(agn.)")},
        interpretations=INTERPRETATIONS + (
            "Concurrent with stage 1 as the official code: during epoch e+1 the class-balanced head trains on the "
            "EMANATE set assembled at the end of epoch e; the set of the final epoch is used only by "
            "breadcrumb-weak.",
            "Warm-up (before every class has K_j snapshots): by default EMANATE over the history there is, "
            "resampled up to n_B (ours, so that budgets shorter than K_max epochs still back-track); "
            "warmup=class-balanced gives the paper's plain class-balanced sampling, done on the latest snapshot's "
            "features rather than with the official code's extra backbone pass on class-aware image batches.",
            "h_c shares stage 1's optimizer settings and lr schedule (the official code: a second SGD optimizer with "
            "the same settings).",
        ),
    )

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.bank_features: torch.Tensor | None = None
        self.bank_labels: torch.Tensor | None = None
        self.step = 0
        self.ready_epoch: int | None = None

    @hookimpl
    def ltbench_build_classifier(self, in_features, num_classes, stage):
        return BreadcrumbHead(in_features, num_classes) if stage == 1 else None

    @hookimpl
    def ltbench_epoch_start(self, run, stage):
        super().ltbench_epoch_start(run, stage)
        self.step = 0  # bank batch i goes with image batch i

    @hookimpl
    def ltbench_extra_losses(self, run, model, batch, output):
        if run.stage != 1:
            return None
        t0 = time.perf_counter()
        # a step owner's re-evaluation of the batch (sam): the same bank rows, nothing collected or counted again
        again = getattr(run, "reevaluating", False)
        step = self.step - 1 if again else self.step
        if not again:
            self.collect(batch, output)
        loss = None
        bs = run.config["batch_size"]
        if self.bank_features is not None and 0 <= step and step * bs < len(self.bank_features):
            rows = slice(step * bs, (step + 1) * bs)
            feats, labels = self.bank_features[rows], self.bank_labels[rows]
            if is_distributed():  # under torchrun, this rank's rows of the global bank batch
                mine = shard_rows(len(labels))
                feats, labels = feats[mine], labels[mine]
            feats, labels = feats.to(output.features.device), labels.to(output.features.device)
            loss = F.cross_entropy(model.classifier.balanced(feats), labels)
        if not again:
            self.step += 1
        self.seconds += time.perf_counter() - t0
        return {"breadcrumb": loss} if loss is not None else None

    def after_push(self, run) -> None:
        if self.bank.ready and self.ready_epoch is None:
            self.ready_epoch = run.epoch + 1
        if self.bank.ready or self.opts["warmup"] == "partial-history":
            feats, labels = self.bank.assemble(self.generator)
        else:
            feats, labels = self.bank.class_balanced(self.generator)
        order = torch.randperm(len(labels), generator=self.generator)
        self.bank_features, self.bank_labels = feats[order], labels[order]

    @hookimpl
    def ltbench_record(self, run):
        return {**self.record_fields(run), "full_history_after_epoch": self.ready_epoch,
                "set_size": None if self.bank_labels is None else int(len(self.bank_labels))}

    def extra_state(self) -> dict[str, Any]:
        return {"bank_features": self.bank_features, "bank_labels": self.bank_labels, "ready_epoch": self.ready_epoch}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.bank_features, self.bank_labels = state.get("bank_features"), state.get("bank_labels")
        self.ready_epoch = state.get("ready_epoch")


class BreadcrumbWeak(_BreadcrumbBase):
    name = "breadcrumb-weak"
    metadata = MethodMetadata(
        family="seed paper",
        title="Breadcrumb (weak): the final epoch's EMANATE set retrains the classifier",
        paper=PAPER, venue="ECCV", year=2022, code_url=CODE,
        summary="Stage 2 re-initialises the classifier and retrains it on the frozen backbone over the EMANATE set "
        "of the final stage-1 epoch (class-balanced by construction).",
        reference_results={"imagenet-lt-resnet10": _ref(43.2, 53.6, 39.8, 25.1, TABLE1 + ", Weak Breadcrumb")},
        interpretations=INTERPRETATIONS + (
            "Stage 2 uses the budget's stage2_epochs/stage2_lr (cosine), like crt; each epoch is one shuffled pass "
            "over the EMANATE set (n_B per class).",),
    )

    @hookimpl
    def ltbench_extra_losses(self, run, batch, output):
        if run.stage == 1:
            t0 = time.perf_counter()
            self.collect(batch, output)
            self.seconds += time.perf_counter() - t0

    @hookimpl
    def ltbench_second_stage(self, run):
        t0 = time.perf_counter()
        feats, labels = self.bank.assemble(self.generator)
        self.seconds += time.perf_counter() - t0
        self.set_size = len(labels)
        return SecondStage(features=feats, labels=labels.numpy(), note="EMANATE set of the final stage-1 epoch")

    @hookimpl
    def ltbench_build_classifier(self, in_features, num_classes, stage):
        return nn.Linear(in_features, num_classes) if stage == 2 else None

    @hookimpl
    def ltbench_record(self, run):
        return self.record_fields(run)


@hookimpl
def ltbench_register_methods(register):
    register(Breadcrumb)
    register(BreadcrumbWeak)
