"""Image-and-target mixing: ``mixup``, ``cutmix`` and ``remix``.

Each implements one hook, ``ltbench_augment_batch``: it mixes the stage-1
training images of a batch with a shuffled copy of the same batch and sets
``batch.targets`` to the matching soft targets (:mod:`ltbench.training.targets`).
They own no loss, so they compose with any loss method: ``remix+ldam-drw``
trains LDAM-DRW's loss on remixed targets. ``batch.labels`` keep the rows'
own labels. Mixing happens in stage 1 only (stage 2 of a decoupled method
trains on its own terms).

Randomness (the mixing weight and the pairing) comes from each method's own
generator, seeded by the run's seed and saved in checkpoints, so a resumed
run mixes exactly as an uninterrupted one. Under torchrun every rank draws
the same pairing and weight over the global batch and takes each row's
partner from every rank's rows (``gather_batch``), so two ranks mix as one
process does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ltbench.api import (ConfigError, Method, MethodMetadata, gather_batch, hookimpl, is_distributed, mix_pairs,
                         shard_rows)

# --------------------------------------------------------------------------
# Arithmetic
# --------------------------------------------------------------------------


def mixup_images(images: torch.Tensor, perm: torch.Tensor, lam: float, pool: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """Zhang et al. 2018: ``lam * x + (1 - lam) * x[perm]`` (the partners taken from ``pool``, the global batch's
    images under torchrun, else from ``images``)."""
    return lam * images + (1.0 - lam) * (images if pool is None else pool)[perm]


def cut_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """Yun et al. 2019 (official ``rand_bbox``): a box of side ``sqrt(1 - lam)`` times the image's, centred at
    a uniform pixel and clipped to the image. Returns (top, bottom, left, right)."""
    ratio = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = int(np.clip(cy - cut_h // 2, 0, height)), int(np.clip(cy + cut_h // 2, 0, height))
    left, right = int(np.clip(cx - cut_w // 2, 0, width)), int(np.clip(cx + cut_w // 2, 0, width))
    return top, bottom, left, right


def cutmix_images(images: torch.Tensor, perm: torch.Tensor, box: tuple[int, int, int, int],
                  pool: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """Paste the box of the paired image (from ``pool``, else ``images``) into each image. Returns the images and
    the weight of the rows' own labels, ``1 - box area / image area`` (the area actually kept, after clipping)."""
    top, bottom, left, right = box
    mixed = images.clone()
    mixed[:, :, top:bottom, left:right] = (images if pool is None else pool)[perm][:, :, top:bottom, left:right]
    h, w = images.shape[-2:]
    return mixed, 1.0 - (bottom - top) * (right - left) / (h * w)


def remix_label_weights(labels_a: torch.Tensor, labels_b: torch.Tensor, lam: float, counts: torch.Tensor,
                        kappa: float, tau: float) -> torch.Tensor:
    """Chou et al. 2020, Eq. 6: the weight of label a in the mixed label of ``lam * x_a + (1 - lam) * x_b``.

    0 when a's class has at least kappa times b's images and lam < tau (the label goes wholly to the
    minority class b); 1 when b's class has at least kappa times a's and 1 - lam < tau; else lam."""
    n_a, n_b = counts[labels_a].double(), counts[labels_b].double()
    weights = torch.full(labels_a.shape, float(lam), dtype=torch.float32, device=labels_a.device)
    weights[(n_a / n_b >= kappa) & (lam < tau)] = 0.0
    weights[(n_a / n_b <= 1.0 / kappa) & (1.0 - lam < tau)] = 1.0
    return weights


# --------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------


class _Mixing(Method):
    """Shared machinery: the per-run generator, its checkpointed state, and the stage-1 guard."""

    options: dict[str, Any] = {"alpha": 1.0}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.rng = np.random.default_rng(0)
        self.mixed_batches = 0

    def check_options(self) -> None:
        if not self.opts["alpha"] > 0:
            raise ConfigError(f"{self.name}.alpha (of the Beta(alpha, alpha) mixing weight) must be > 0, "
                              f"got {self.opts['alpha']}")

    @hookimpl
    def ltbench_configure_model(self, run):
        # one stream per seed, the same on every rank (they draw one pairing of the global batch); a seed repeats
        self.rng = np.random.default_rng([run.seed, 0, 7_001])

    def draw(self, batch) -> tuple[torch.Tensor, float]:
        perm = torch.from_numpy(self.rng.permutation(len(batch.labels))).to(batch.labels.device)
        return perm, float(self.rng.beta(self.opts["alpha"], self.opts["alpha"]))

    def pairing(self, run, batch) -> tuple[torch.Tensor, float, torch.Tensor | None, torch.Tensor]:
        """(each row's partner, as an index into the pool; the mixing weight; the pool's images, ``None`` for the
        batch's own; the pool's labels). Under torchrun the pool is the global batch, gathered from every rank,
        and the pairing is drawn over it alike on every rank, as one process draws it."""
        if not (is_distributed() and run.shard_batches):
            perm, lam = self.draw(batch)
            return perm, lam, None, batch.labels
        labels = gather_batch(run, batch.labels)
        pool = gather_batch(run, batch.images.detach())
        perm = torch.from_numpy(self.rng.permutation(len(labels))).to(labels.device)
        lam = float(self.rng.beta(self.opts["alpha"], self.opts["alpha"]))
        return perm[shard_rows(len(labels))], lam, pool, labels

    @staticmethod
    def applies(run, batch) -> bool:
        return run.stage == 1 and batch.images is not None and batch.targets is None

    @hookimpl
    def ltbench_record(self):
        return {"mixed_batches": self.mixed_batches}

    def state_dict(self) -> dict[str, Any]:
        state = self.rng.bit_generator.state
        return {"rng": {"state": str(state["state"]["state"]), "inc": str(state["state"]["inc"]),
                        "has_uint32": int(state["has_uint32"]), "uinteger": int(state["uinteger"])},
                "mixed_batches": self.mixed_batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            rng = state["rng"]
            self.rng.bit_generator.state = {"bit_generator": "PCG64",
                                            "state": {"state": int(rng["state"]), "inc": int(rng["inc"])},
                                            "has_uint32": rng["has_uint32"], "uinteger": rng["uinteger"]}
            self.mixed_batches = state["mixed_batches"]


class Mixup(_Mixing):
    name = "mixup"
    metadata = MethodMetadata(
        family="augmentation",
        title="mixup", paper="Zhang et al., mixup: Beyond Empirical Risk Minimization", venue="ICLR", year=2018,
        code_url="https://github.com/facebookresearch/mixup-cifar10",
        summary="Each stage-1 batch is mixed with a shuffled copy of itself, x = lam x_i + (1 - lam) x_j, "
        "lam ~ Beta(alpha, alpha) once per batch (alpha 1), and trained toward lam y_i + (1 - lam) y_j. "
        "Composes with any loss method.",
        reference_results={"cifar100-lt-if100": {"overall": 39.5, "source": "MiSLAS README, stage 1 (mixup, "
                                                 "alpha 1, CE, ResNet-32, 200 epochs)"}},
        interpretations=("Mixing is applied in stage 1 only, after the crop/flip augmentation, on normalised "
                         "images (as the official code mixes the normalised tensors).",),
    )

    @hookimpl
    def ltbench_augment_batch(self, run, batch):
        if not self.applies(run, batch):
            return
        perm, lam, pool, pool_labels = self.pairing(run, batch)
        batch.images = mixup_images(batch.images, perm, lam, pool)
        batch.targets = mix_pairs(batch.labels, pool_labels[perm], lam, run.num_classes)
        self.mixed_batches += 1


class CutMix(_Mixing):
    name = "cutmix"
    options = {"alpha": 1.0, "prob": 0.5}
    metadata = MethodMetadata(
        family="augmentation",
        title="CutMix",
        paper="Yun et al., CutMix: Regularization Strategy to Train Strong Classifiers with Localizable Features",
        venue="ICCV", year=2019, code_url="https://github.com/clovaai/CutMix-PyTorch",
        summary="With probability prob (0.5, the official CIFAR recipe) a stage-1 batch gets a box of a shuffled "
        "copy pasted in; the box's side is sqrt(1 - lam) of the image's, lam ~ Beta(alpha, alpha), and the "
        "targets are weighted by the area each image keeps.",
        interpretations=("No CIFAR-100-LT reference number is quoted: the paper reports balanced CIFAR only.",),
    )

    def check_options(self) -> None:
        super().check_options()
        if not 0 <= self.opts["prob"] <= 1:
            raise ConfigError(f"cutmix.prob must be in [0, 1], got {self.opts['prob']}")

    @hookimpl
    def ltbench_augment_batch(self, run, batch):
        if not self.applies(run, batch) or self.rng.random() >= self.opts["prob"]:
            return
        perm, lam, pool, pool_labels = self.pairing(run, batch)
        box = cut_box(batch.images.shape[-2], batch.images.shape[-1], lam, self.rng)
        batch.images, kept = cutmix_images(batch.images, perm, box, pool)
        batch.targets = mix_pairs(batch.labels, pool_labels[perm], kept, run.num_classes)
        self.mixed_batches += 1


class Remix(_Mixing):
    name = "remix"
    options = {"alpha": 1.0, "kappa": 3.0, "tau": 0.5}
    metadata = MethodMetadata(
        family="augmentation",
        title="Remix (rebalanced mixup)", paper="Chou et al., Remix: Rebalanced Mixup", venue="ECCV Workshops",
        year=2020, code_url="",
        summary="mixup's images, with the label moved wholly to the minority class of a pair when the other "
        "class has at least kappa (3) times its images and the minority image's share is at least tau "
        "(0.5). Meant to be composed with a re-weighting loss: remix+ldam-drw.",
        interpretations=("There is no official code; Eq. 6 of the paper is implemented as written, with one "
                         "mixing weight per batch as mixup.",
                         "No CIFAR-100-LT reference number is quoted here: none was verified against the paper.",),
    )

    def check_options(self) -> None:
        super().check_options()
        if not self.opts["kappa"] >= 1 or not 0 <= self.opts["tau"] <= 1:
            raise ConfigError(f"remix: kappa must be >= 1 and tau in [0, 1], got kappa={self.opts['kappa']}, "
                              f"tau={self.opts['tau']}")

    @hookimpl
    def ltbench_augment_batch(self, run, batch):
        if not self.applies(run, batch):
            return
        perm, lam, pool, pool_labels = self.pairing(run, batch)
        if getattr(self, "_counts", None) is None:  # the class counts on the device, once per run
            self._counts = torch.as_tensor(run.train_counts, device=batch.labels.device)
        weights = remix_label_weights(batch.labels, pool_labels[perm], lam, self._counts, self.opts["kappa"],
                                      self.opts["tau"])
        batch.images = mixup_images(batch.images, perm, lam, pool)
        batch.targets = mix_pairs(batch.labels, pool_labels[perm], weights, run.num_classes)
        self.mixed_batches += 1


@hookimpl
def ltbench_register_methods(register):
    for cls in (Mixup, CutMix, Remix):
        register(cls)
