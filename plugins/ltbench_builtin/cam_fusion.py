"""CAM-based feature space augmentation (Chu, Bian, Liu, Ling, ECCV 2020).

**Phase I** is plain training of backbone + one linear classifier on globally
pooled features (cross-entropy; ``cam-fusion+focal`` trains both phases with
focal loss). With plain CE it is the same computation as ``ce``'s stage 1, so
it is shared.

**Between the phases**: head classes = the smallest prefix of classes sorted
by count holding at least ``h_r`` of the samples, the rest are tail. Each
tail class's ``n_f`` confusing classes = the highest mean Phase-I softmax
scores over the class's training images, itself excluded.

**CAMs** (Eq. 1-3): M_c = sum_k w^c_k F_k over the last block's feature map,
with a frozen copy of the Phase-I classifier weights, min-max normalised per
map to [0, 1]; class-specific mask M >= tau_s, class-generic mask M <= tau_g.

**Phase II** (Algorithm 1): each batch holds N_t real tail samples, N_a = n_f
augmented samples per tail sample (one per confusing class), and
N_t (1 + N_a) head samples. An augmented sample draws gamma ~ U(0, 1), takes
round(gamma L) vectors (with replacement, all-zero vectors excluded) from the
tail sample's class-specific locations and the rest of the L = H W from a
confusing-class sample's class-generic locations, and carries the tail label.
Only the classifier is fine-tuned (fixed lr 0.001), on the frozen backbone.

Under torchrun (``--nproc K``): Phase II batches are Algorithm-1 structures (tail items, their confusing
items, head items) that rows would cut, so the stage declares ``data_parallel=False``: every rank trains the
classifier on the whole batch, with the same draws, and the averaged gradient is that batch's. The
class-specific and class-generic features are therefore the same on every rank.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Sampler

from ltbench.api import (ConfigError, Method, MethodMetadata, PluginContractError, SecondStage, extract_features,
                         hookimpl)

# --------------------------------------------------------------------------
# Arithmetic (pinned by tests)
# --------------------------------------------------------------------------


def head_classes(counts: np.ndarray, h_r: float) -> np.ndarray:
    """The smallest prefix of classes sorted by count (descending) holding >= h_r of the samples."""
    counts = np.asarray(counts)
    order = np.argsort(-counts, kind="stable")
    share = np.cumsum(counts[order]) / counts.sum()
    h = int(np.searchsorted(share, h_r - 1e-12) + 1)
    return np.sort(order[:h])


def confusing_classes(mean_scores: np.ndarray, tail: np.ndarray, n_f: int,
                      candidates: np.ndarray | None = None) -> dict[int, list[int]]:
    """For each tail class c: the n_f classes with the highest mean softmax score over c's images, c excluded.

    ``mean_scores[c]`` is the mean Phase-I softmax vector of class c's training images;
    ``candidates`` restricts the choice (e.g. to head classes).
    """
    out = {}
    for c in tail:
        scores = mean_scores[c].astype(np.float64).copy()
        scores[c] = -np.inf
        if candidates is not None:
            mask = np.full(len(scores), True)
            mask[candidates] = False
            scores[mask] = -np.inf
        ranked = np.argsort(-scores, kind="stable")
        out[int(c)] = [int(u) for u in ranked[:n_f] if np.isfinite(scores[u])]
    return out


def class_activation_maps(fmap: torch.Tensor, weight: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """M_c(x, y) = sum_k w^c_k F_k(x, y) for each map's own class, min-max normalised to [0, 1]."""
    cam = torch.einsum("bkhw,bk->bhw", fmap, weight[classes])
    flat = cam.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - low) / (high - low).clamp_min(1e-12)).view_as(cam)


def fuse(specific: torch.Tensor, generic: torch.Tensor, gamma: float, length: int,
         generator: torch.Generator) -> tuple[torch.Tensor, int]:
    """An augmented map of ``length`` vectors: round(gamma L) drawn with replacement from ``specific``
    (n_s, K), the rest from ``generic`` (n_g, K). Returns (map (L, K), number of specific vectors)."""
    n_spec = int(round(gamma * length))
    if len(generic) == 0:
        n_spec = length
    if len(specific) == 0:
        n_spec = 0
    idx_s = torch.randint(len(specific), (n_spec,), generator=generator) if n_spec else torch.zeros(0, dtype=torch.long)
    idx_g = (torch.randint(len(generic), (length - n_spec,), generator=generator) if length - n_spec
             else torch.zeros(0, dtype=torch.long))
    return torch.cat([specific[idx_s.to(specific.device)], generic[idx_g.to(generic.device)]]), n_spec


def masked_vectors(fmap: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The feature vectors (n, K) of one map (K, H, W) at the masked locations, all-zero vectors excluded
    (unless every masked vector is zero)."""
    vectors = fmap.flatten(1).t()[mask.flatten()]
    nonzero = vectors.abs().sum(1) > 0
    return vectors[nonzero] if nonzero.any() else vectors


# --------------------------------------------------------------------------
# Phase II batches
# --------------------------------------------------------------------------


class FusionBatchSampler(Sampler):
    """Yields one Algorithm-1 batch after another, laid out as
    [N_t tail | N_t x N_a confusing (tail-major) | N_t (1 + N_a) head]."""

    def __init__(self, labels: np.ndarray, tail: np.ndarray, head: np.ndarray, confusing: dict[int, list[int]],
                 n_t: int, n_a: int, iterations: int, generator: torch.Generator, head_draw: str = "classes"):
        self.labels = np.asarray(labels)
        self.by_class = {c: np.where(self.labels == c)[0] for c in np.unique(self.labels)}
        self.tail = np.array([c for c in tail if confusing.get(int(c))])
        self.head = np.asarray(head)
        self.head_idx = np.where(np.isin(self.labels, head))[0]
        self.head_draw = head_draw
        self.confusing, self.n_t, self.n_a = confusing, n_t, n_a
        self.iterations, self.generator = iterations, generator

    @property
    def batch_size(self) -> int:
        return 2 * self.n_t * (1 + self.n_a)

    def __len__(self) -> int:
        return self.iterations * self.batch_size

    def _pick(self, pool: np.ndarray, n: int) -> np.ndarray:
        return pool[torch.randint(len(pool), (n,), generator=self.generator).numpy()]

    def __iter__(self):
        for _ in range(self.iterations):
            tail_classes = self._pick(self.tail, self.n_t)  # tail classes uniformly, then an image of each
            tail_idx = np.array([self._pick(self.by_class[c], 1)[0] for c in tail_classes])
            conf_idx = []
            for c in tail_classes:
                us = self.confusing[int(c)]
                for j in range(self.n_a):
                    conf_idx.append(self._pick(self.by_class[us[j % len(us)]], 1)[0])
            n_head = self.n_t * (1 + self.n_a)
            if self.head_draw == "classes":  # a head class uniformly, then one of its images, as the tail draws
                head_idx = np.array([self._pick(self.by_class[c], 1)[0] for c in self._pick(self.head, n_head)])
            else:  # uniformly over head-class images
                head_idx = self._pick(self.head_idx, n_head)
            yield from np.concatenate([tail_idx, np.array(conf_idx, dtype=np.int64), head_idx]).tolist()


# --------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------

PAPER = "Chu, Bian, Liu, Ling, Feature Space Augmentation for Long-Tailed Data"
RESNET18 = "Table 2, ResNet-18 (not ResNet-32/8: different backbone and 300-epoch Phase I)"
RESNET34 = "Table 2, ResNet-34 (not comparable to ResNet-32/8)"
#: the setting of the paper's CIFAR numbers (Sec. 5.1): ResNet-18 built for 32x32 images (ltbench's
#: cifar-resnet18, not the ImageNet resnet18), Phase I 300 epochs (lr 0.1, /10 every 150)
CIFAR_SETTING = {"backbone": "cifar-resnet18", "epochs": 300}


class CAMFusion(Method):
    name = "cam-fusion"
    plain_stage1 = True
    options = {"h_r": 0.9, "n_f": 3, "n_t": 16, "tau_s": 0.8, "tau_g": 0.2, "phase2_lr": 0.001, "iterations": 6400,
               "head_draw": "classes", "confusing_from_head_only": False}
    renamed_options = {"lr": "phase2_lr"}  # `lr` is a core key: `--set lr=` never reached it
    #: the Phase-II batch sampler (an ablation may lay out its batches differently)
    sampler_class: type[FusionBatchSampler] = FusionBatchSampler
    metadata = MethodMetadata(
        family="seed paper",
        title="CAM-based feature space augmentation (fusing tail class-specific with confusing classes' "
        "class-generic features)",
        paper=PAPER, venue="ECCV", year=2020,
        code_url="https://github.com/SSRSGJYD/Feature-Space-Augmentation-for-Long-Tailed-Data",
        summary="Phase II fine-tunes the linear classifier on batches of real tail samples, feature maps fusing "
        "their CAM class-specific vectors with confusing classes' class-generic vectors, and head samples. "
        "The linked code is unofficial (not the authors').",
        reference_results={
            "cifar100-lt-if100": {"overall": 46.57, **CIFAR_SETTING, "source": RESNET18 + "; ResNet-34: 48.51"},
            "cifar100-lt-if50": {"overall": 51.90, **CIFAR_SETTING, "source": RESNET18},
            "cifar100-lt-if10": {"overall": 65.08, **CIFAR_SETTING, "source": RESNET18},
            "cifar10-lt-if100": {"overall": 80.57, **CIFAR_SETTING, "source": "Table 1, ResNet-18; ResNet-34: 82.06"},
            "cifar10-lt-if50": {"overall": 84.51, **CIFAR_SETTING, "source": "Table 1, ResNet-18"},
            "cifar10-lt-if10": {"overall": 91.75, **CIFAR_SETTING, "source": "Table 1, ResNet-18"},
            "imagenet-lt-resnet10": {"overall": 35.2, "many": 47.3, "medium": 31.6, "few": 14.7,
                                     "source": "Table 3, ImageNet-LT, ResNet-10"},
            "places-lt-resnet152": {"overall": 36.4, "many": 42.8, "medium": 37.5, "few": 22.7,
                                    "source": "Table 3, Places-LT, ResNet-152"},
            "inat2018-resnet50": {"overall": 65.91, "source": "Table 4, iNaturalist 2018, ResNet-50"},
        },
        interpretations=(
            "tau_s 0.8 and tau_g 0.2 (the paper gives no values; the unofficial code's), SGD momentum 0.9, "
            "weight decay 5e-4 in Phase II (the paper states only the fixed lr 0.001).",
            "CAMs use a frozen copy of the Phase-I classifier weights (the unofficial code uses the head being "
            "fine-tuned) and plain CAM with min-max normalisation (not Grad-CAM).",
            "Phase II fine-tunes the Phase-I classifier (not re-initialised) for the paper's 6,400 CIFAR iterations "
            "of 128 items, whatever the length of Phase I (Chu et al. train Phase I for 300 epochs); "
            "iterations=0 scales 6,400 by the budget's Phase-I epochs over 300.",
            "Tail samples: a tail class uniformly, then one of its images. Head samples (head_draw=classes, the "
            "default): a head class uniformly, then one of its images. The paper draws them 'from the head "
            "classes to balance the distribution', as it draws the tail samples 'from the tail classes'; "
            "head_draw=images (uniform over head-class images, the earlier rule) starves the medium classes "
            "that h_r 0.9 puts in the head set (3.7 % test accuracy on CIFAR-100-LT against 19.7 %).",
            "Every fused feature carries its own tail sample's label (the unofficial code's bug of labelling all "
            "with the first tail label is not copied).",
            "Phase-II images get the standard training augmentation (crop + flip) before the frozen backbone; "
            "confusing classes are ranked on un-augmented training images.",
            "Fusion happens after the last block only; the Block2/Block3 depth ablation is not implemented.",
        ),
    )

    def check_options(self) -> None:
        o = self.opts
        if not 0 < o["h_r"] < 1:
            raise ConfigError(f"cam-fusion.h_r must be in (0, 1), got {o['h_r']}")
        if not 0 <= o["tau_g"] < o["tau_s"] <= 1:
            raise ConfigError(f"cam-fusion: need 0 <= tau_g < tau_s <= 1, got tau_g {o['tau_g']}, tau_s {o['tau_s']}")
        for key in ("n_f", "n_t"):
            if o[key] < 1:
                raise ConfigError(f"cam-fusion.{key} must be >= 1, got {o[key]}")
        if o["iterations"] < 0 or not o["phase2_lr"] > 0:
            raise ConfigError(f"cam-fusion: iterations must be >= 0 (0 = scaled to the budget) and phase2_lr > 0, got {o}")
        if o["head_draw"] not in ("classes", "images"):
            raise ConfigError(f"cam-fusion.head_draw must be one of classes, images, got {o['head_draw']!r}")

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.generator = torch.Generator()
        self.split: dict[str, Any] = {}
        self.cam_weight: torch.Tensor | None = None
        self.fused = 0

    @property
    def n_a(self) -> int:
        return self.opts["n_f"]

    def iterations(self, run) -> int:
        iterations = self.opts["iterations"] or max(1, round(6400 * run.config["epochs"] / 300))
        return min(iterations, 20) if run.config.get("smoke") else iterations  # a smoke budget only shows it works

    @hookimpl
    def ltbench_second_stage(self, run):
        classifier = run.model.classifier
        if not isinstance(classifier, nn.Linear):
            raise PluginContractError(f"cam-fusion needs a linear Phase-I classifier for its CAMs, got "
                                      f"{type(classifier).__name__}")
        self.generator.manual_seed(20_000 + run.seed)
        self.cam_weight = classifier.weight.detach().clone()  # frozen Phase-I weights for the CAMs
        counts = run.train_counts
        head = head_classes(counts, self.opts["h_r"])
        tail = np.setdiff1d(np.arange(run.num_classes), head)
        with torch.no_grad():
            probs = F.softmax(classifier(extract_features(run)), dim=1).cpu().numpy()
        labels = np.asarray(run.train_labels)
        mean_scores = np.stack([probs[labels == c].mean(0) for c in range(run.num_classes)])
        confusing = confusing_classes(mean_scores, tail, self.opts["n_f"],
                                      head if self.opts["confusing_from_head_only"] else None)
        self.split = {"head": head.tolist(), "tail": tail.tolist(), "confusing": confusing}
        if len(tail) == 0 or len(head) == 0:
            raise ConfigError(f"cam-fusion: h_r {self.opts['h_r']} leaves {len(head)} head and {len(tail)} tail "
                              f"classes; both must be non-empty")
        batch = 2 * self.opts["n_t"] * (1 + self.n_a)
        return SecondStage(epochs=1, lr=self.opts["phase2_lr"], batch_size=batch, cosine=False, cached_features=False,
                           data_parallel=False,  # an Algorithm-1 batch is one structure: every rank takes all of it
                           note=f"{self.iterations(run)} iterations of Algorithm-1 batches ({batch} items) on the "
                           f"frozen backbone")

    @hookimpl
    def ltbench_build_sampler(self, run, stage, labels):
        if stage != 2:
            return None
        return self.sampler_class(labels, np.array(self.split["tail"]), np.array(self.split["head"]),
                                  self.split["confusing"], self.opts["n_t"], self.n_a, self.iterations(run),
                                  run.generator, self.opts["head_draw"])

    @hookimpl
    def ltbench_augment_batch(self, run, model, batch):
        if run.stage != 2:
            return
        n_t, n_a = self.opts["n_t"], self.n_a
        with torch.no_grad():
            fmap = model.backbone.forward_features(batch.images).float()
        labels = batch.labels
        tail_maps, conf_maps = fmap[:n_t], fmap[n_t : n_t + n_t * n_a]
        weight = self.cam_weight.to(fmap.device)
        cam_t = class_activation_maps(tail_maps, weight, labels[:n_t])
        cam_c = class_activation_maps(conf_maps, weight, labels[n_t : n_t + n_t * n_a])
        length = fmap.shape[2] * fmap.shape[3]
        fused = []
        for i in range(n_t):
            specific = masked_vectors(tail_maps[i], cam_t[i] >= self.opts["tau_s"])
            for j in range(n_a):
                k = i * n_a + j
                generic = masked_vectors(conf_maps[k], cam_c[k] <= self.opts["tau_g"])
                gamma = float(torch.rand((), generator=self.generator))
                vectors, _ = fuse(specific, generic, gamma, length, self.generator)
                fused.append(vectors.mean(0))  # global average pooling of the fused map
        pooled = model.backbone.forward_pool(fmap)
        batch.features = torch.cat([pooled[:n_t], torch.stack(fused), pooled[n_t + n_t * n_a:]])
        batch.labels = torch.cat([labels[:n_t], labels[:n_t].repeat_interleave(n_a), labels[n_t + n_t * n_a:]])
        batch.images = None
        self.fused += len(fused)

    @hookimpl
    def ltbench_record(self):
        return {"head_classes": len(self.split.get("head", [])), "tail_classes": len(self.split.get("tail", [])),
                "confusing": {str(k): v for k, v in self.split.get("confusing", {}).items()},
                "fused_samples": self.fused}


@hookimpl
def ltbench_register_methods(register):
    register(CAMFusion)


