"""Decoupling representation and classifier (Kang et al., ICLR 2020):
``crt``, ``lws``, ``tau-norm`` and ``ncm``.

All four leave stage 1 plain (cross-entropy, instance-balanced), so they
share one stage-1 model per (dataset, budget, seed) with ``ce``, and change
only the classifier in stage 2, on the frozen backbone. cRT and LWS train
it as BagofTricks-LT's code does by default (augmented class-balanced images
through the backbone in train mode, so batch-norm statistics are
re-estimated), or on cached features (``stage2=cached``); tau-norm and NCM
train nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ltbench.api import (ConfigError, Method, MethodMetadata, PluginContractError, SecondStage, class_balanced,
                         evaluate_predictions, extract_features, hookimpl)

from ltbench_builtin.ce import LDAM_SETTING  # the setting of numbers published at the LDAM-DRW recipe

PAPER = "Kang et al., Decoupling Representation and Classifier for Long-Tailed Recognition"
CODE = "https://github.com/facebookresearch/classifier-balancing"
BOT = "BagofTricks-LT trick gallery (ResNet-32, LDAM recipe; 100 - error)"
CACHED_NOTE = ("stage 2 trains on cached features of un-augmented training images (stage2=cached; the "
               "Decoupling and BagofTricks-LT code pass augmented images through the frozen backbone)")
RECIPE_NOTE = ("Stage 2 is BagofTricks-LT's cRT/LWS config and code by default (stage2=bagoftricks), where the "
               "reference numbers come from: batch 128, lr 0.1 with WarmupMultiStepLR as its loop steps it (warm-up "
               "from a third of the rate, x0.1 at each step, 1-based epochs), Nesterov SGD, wd 5e-4, and the frozen "
               "backbone in train mode on augmented class-balanced images, so batch-norm statistics are re-estimated. "
               "At the CIFAR paper budget its own 30 epochs (warm-up 5, steps at 10 and 20); at a budget with a "
               "shorter stage 2 that schedule scaled to its length (the cpu budget's 10: warm-up 2, steps at 3 and "
               "7), an ltbench interpretation. The cpu board measured that the cheaper stage2=cached (eval-mode "
               "features cached once, a cosine) changes the ranking, so the board uses BagofTricks-LT's.")
BAGOFTRICKS_NOTE = ("BagofTricks-LT's stage 2: the frozen backbone in train mode on augmented class-balanced images "
                    "(batch-norm statistics re-estimated), Nesterov SGD, its warm-up and steps")

#: how cRT and LWS train their stage 2 (the ``stage2`` option)
STAGE2_RECIPES = ("bagoftricks", "cached", "decoupling")
#: BagofTricks-LT's CIFAR cRT/LWS schedule (configs/cao_cifar/two_stage/*): 30 epochs, a 5-epoch warm-up, x0.1 from
#: epoch 10 and 20
BAGOFTRICKS_EPOCHS, BAGOFTRICKS_WARMUP, BAGOFTRICKS_MILESTONES = 30, 5, (10, 20)


def bagoftricks_recipe(run) -> bool:
    """Whether the budget's stage 2 is BagofTricks-LT's cRT/LWS recipe: a budget that gives stage 2 milestones
    (the CIFAR paper budget) gives that recipe, whose code also trains on augmented images with the backbone in
    train mode and Nesterov momentum."""
    return bool(run is not None and run.config.get("stage2_lr_milestones"))


def bagoftricks_schedule(epochs: int) -> tuple[int, tuple[int, ...]]:
    """BagofTricks-LT's warm-up and steps scaled from its 30 stage-2 epochs to ``epochs`` (each rounded, steps kept
    inside the stage): ``(2, (3, 7))`` at the cpu budget's 10, ``(5, (10, 20))`` at 30."""
    scale = epochs / BAGOFTRICKS_EPOCHS
    steps = sorted({round(m * scale) for m in BAGOFTRICKS_MILESTONES} & set(range(1, epochs)))
    return min(epochs, max(1, round(BAGOFTRICKS_WARMUP * scale))), tuple(steps)


TAU_GRID = tuple(round(0.1 * i, 1) for i in range(21))  # 0.0, 0.1, ..., 2.0 as tau_norm.py


def choose_on_validation(run, candidates: Sequence[float],
                         logits_for: Callable[[float, torch.Tensor], torch.Tensor]) -> tuple[float, dict[str, float]]:
    """Pick the candidate with the best validation accuracy (mean of per-class); ties go to the first.

    ``logits_for(candidate, val_features)`` gives the validation logits.
    Only the validation split is read.
    """
    if len(run.data.y_val) == 0:
        raise ConfigError(f"{run.dataset.name} has no validation split to choose a hyper-parameter on")
    features = extract_features(run, run.data.x_val)
    scores = {}
    with torch.no_grad():
        for c in candidates:
            preds = logits_for(c, features).argmax(1).cpu().numpy()
            scores[c] = evaluate_predictions(run.data.y_val, preds, run.train_counts, run.data.group_thresholds).overall
    best = max(candidates, key=lambda c: scores[c])  # max keeps the first of equal scores
    return best, {f"{c:g}": round(s, 4) for c, s in scores.items()}


def _linear(previous: nn.Module, method: str) -> nn.Linear:
    if not isinstance(previous, nn.Linear):
        raise PluginContractError(f"method {method!r} needs a linear stage-1 classifier, got {type(previous).__name__}")
    return previous


class LWSHead(nn.Module):
    """Learnable weight scaling: logits_c = f_c * (w_c . x + b_c); only f is trained."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear
        for p in self.linear.parameters():
            p.requires_grad_(False)
        self.scales = nn.Parameter(torch.ones(linear.out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * self.scales


class TauNormHead(nn.Module):
    """logits_c = (w_c / ||w_c||^tau) . x, bias dropped."""

    def __init__(self, linear: nn.Linear, tau: float = 1.0):
        super().__init__()
        self.register_buffer("weight", linear.weight.detach().clone())
        self.tau = tau

    def normalised_weight(self, tau: float) -> torch.Tensor:
        return self.weight / self.weight.norm(dim=1, keepdim=True).pow(tau)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.normalised_weight(self.tau).t()

    # tau is chosen after training: it is part of the head's state (``model.pt``, ``ltbench eval``), kept as the
    # Python float the forward pass uses
    def get_extra_state(self) -> dict:
        return {"tau": self.tau}

    def set_extra_state(self, state: dict) -> None:
        self.tau = state["tau"]


NCM_METRICS = ("cl2n-euclidean", "cosine")


class NCMHead(nn.Module):
    """Nearest class mean. ``cl2n-euclidean`` (the Decoupling code's default ``feat_type='cl2n'``,
    ``dist_type='l2'``): features are centred on the training mean and L2-normalised, the centroids are the
    class means of those, and logits_c = -||f - centroid_c||. ``cosine``: logits_c = cos(x, mean_c) on raw
    features."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, num_classes: int, metric: str = "cl2n-euclidean"):
        super().__init__()
        self.metric = metric
        self.register_buffer("centre", features.mean(0) if metric == "cl2n-euclidean" else torch.zeros(0))
        feats = self.transform(features)
        means = torch.stack([feats[labels == c].mean(0) for c in range(num_classes)])
        self.register_buffer("means", means if metric == "cl2n-euclidean" else F.normalize(means, dim=1))

    @classmethod
    def to_load(cls, in_features: int, num_classes: int, metric: str) -> "NCMHead":
        """A head of the right shape whose centre and means a state dict then sets (``ltbench eval`` rebuilds a
        trained run without its cached features)."""
        head = cls.__new__(cls)
        nn.Module.__init__(head)
        head.metric = metric
        head.register_buffer("centre", torch.zeros(in_features if metric == "cl2n-euclidean" else 0))
        head.register_buffer("means", torch.zeros(num_classes, in_features))
        return head

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x - self.centre, dim=1) if self.metric == "cl2n-euclidean" else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.metric == "cl2n-euclidean":
            return -torch.cdist(self.transform(x), self.means)
        return F.normalize(x, dim=1) @ self.means.t()


class _Decoupled(Method):
    plain_stage1 = True


class _ClassBalancedRetraining(_Decoupled):
    """Stage 2 trains the head with class-balanced sampling on the frozen backbone (cRT, LWS), as ``stage2`` says:

    - ``bagoftricks`` (the default): BagofTricks-LT's code, where the published CIFAR numbers come from: the backbone
      in train mode on augmented images (batch-norm statistics re-estimated), Nesterov SGD, its warm-up and steps:
      the budget's where it gives them (the paper budget), else its 30-epoch schedule scaled to the budget's length;
    - ``cached``: on features of the un-augmented images cached once from the eval-mode backbone, the budget's
      schedule (a cosine at the cpu budget): the cheapest;
    - ``decoupling``: the Decoupling code's: the backbone in train mode on augmented images, the budget's schedule.
    """

    options = {"stage2": "bagoftricks"}

    def check_options(self):
        if self.opts["stage2"] not in STAGE2_RECIPES:
            raise ConfigError(f"{self.name}.stage2 must be one of {', '.join(STAGE2_RECIPES)}, "
                              f"got {self.opts['stage2']!r}")

    @hookimpl
    def ltbench_second_stage(self, run):
        recipe = self.opts["stage2"]
        if recipe == "bagoftricks":
            if bagoftricks_recipe(run):  # the budget's own steps are BagofTricks-LT's (the paper budget)
                warmup, steps, note = 0, None, BAGOFTRICKS_NOTE
            else:
                warmup, steps = bagoftricks_schedule(run.config["stage2_epochs"])
                note = (f"{BAGOFTRICKS_NOTE}, scaled from its 30 epochs to {run.config['stage2_epochs']}: warm-up "
                        f"{warmup}, steps at {list(steps)}")
            return SecondStage(cached_features=False, update_bn_statistics=True, nesterov=True, lr_milestones=steps,
                               warmup_epochs=warmup, note=note)
        if recipe == "decoupling":
            return SecondStage(cached_features=False, update_bn_statistics=True,
                               note="the Decoupling code's stage 2: batch-norm statistics re-estimated on augmented "
                               "class-balanced batches, the budget's schedule")
        return SecondStage(note=CACHED_NOTE)

    @hookimpl
    def ltbench_build_sampler(self, run, stage, labels):
        return class_balanced(labels, run.generator) if stage == 2 else None


class CRT(_ClassBalancedRetraining):
    name = "crt"
    metadata = MethodMetadata(
        family="decoupling",
        title="Classifier re-training (cRT)", paper=PAPER, venue="ICLR", year=2020, code_url=CODE,
        summary="Stage 2: re-initialise the linear classifier and retrain it with class-balanced sampling on the "
        "frozen stage-1 backbone.",
        reference_results={"cifar100-lt-if100": {"overall": 40.26, **LDAM_SETTING, "source": BOT},
                           "cifar10-lt-if100": {"overall": 74.99, **LDAM_SETTING, "source": BOT}},
        interpretations=(RECIPE_NOTE, CACHED_NOTE,
                         "stage2=decoupling is the Decoupling code's stage 2: the frozen backbone in train mode on "
                         "augmented class-balanced images, with the budget's schedule and plain momentum (it "
                         "replaces the former shift_bn=true)."),
    )

    @hookimpl
    def ltbench_build_classifier(self, in_features, num_classes, stage):
        return nn.Linear(in_features, num_classes) if stage == 2 else None


class LWS(_ClassBalancedRetraining):
    name = "lws"
    metadata = MethodMetadata(
        family="decoupling",
        title="Learnable weight scaling (LWS)", paper=PAPER, venue="ICLR", year=2020, code_url=CODE,
        summary="Stage 2: learn one scale per class on the stage-1 classifier (weights frozen), class-balanced.",
        reference_results={"cifar100-lt-if100": {"overall": 40.16, **LDAM_SETTING, "source": BOT},
                           "cifar10-lt-if100": {"overall": 72.63, **LDAM_SETTING, "source": BOT}},
        interpretations=(RECIPE_NOTE, CACHED_NOTE,
                         "The scale multiplies the whole logit, bias included, as the Decoupling code."),
    )

    @hookimpl
    def ltbench_build_classifier(self, stage, previous):
        return LWSHead(_linear(previous, self.name)) if stage == 2 else None


class TauNorm(_Decoupled):
    name = "tau-norm"
    metadata = MethodMetadata(
        family="decoupling",
        title="tau-normalised classifier", paper=PAPER, venue="ICLR", year=2020, code_url=CODE,
        summary="Divide each classifier weight row by its norm^tau and drop the bias; tau in 0, 0.1, ..., 2 chosen "
        "on the validation split.",
        reference_results={"cifar100-lt-if100": {"overall": 40.96, **LDAM_SETTING, "source": BOT},
                           "cifar10-lt-if100": {"overall": 72.70, **LDAM_SETTING, "source": BOT}},
        interpretations=("tau is chosen on validation (mean per-class accuracy), never on test. BagofTricks-LT, "
                         "whose number is the reference, fixes tau = 1.",),
    )

    def __init__(self, **options):
        super().__init__(**options)
        self.scores: dict[str, float] = {}

    @hookimpl
    def ltbench_second_stage(self):
        return SecondStage(epochs=0, cached_features=False, note="no training; tau chosen on validation")

    @hookimpl
    def ltbench_build_classifier(self, stage, previous):
        return TauNormHead(_linear(previous, self.name)) if stage == 2 else None

    @hookimpl
    def ltbench_stage_end(self, run, stage):
        if stage != 2:
            return
        head = run.model.classifier
        head.tau, self.scores = choose_on_validation(run, TAU_GRID, lambda t, f: f @ head.normalised_weight(t).t())

    @hookimpl
    def ltbench_record(self, run):
        return {"tau": run.model.classifier.tau, "validation_accuracy_by_tau": self.scores}

    def state_dict(self):
        return {"scores": self.scores}

    def load_state_dict(self, state):
        self.scores = state.get("scores", {})


class NCM(_Decoupled):
    name = "ncm"
    options = {"metric": "cl2n-euclidean"}
    metadata = MethodMetadata(
        family="decoupling",
        title="Nearest class mean", paper=PAPER, venue="ICLR", year=2020, code_url=CODE,
        summary="Stage 2: features centred on the training mean and L2-normalised; classify by Euclidean "
        "distance to each class's mean of them (the Decoupling code's cl2n / l2 default).",
        interpretations=("Class means of un-augmented training features in eval mode.",
                         "metric=cosine is the earlier ltbench rule (cosine to raw-feature class means; 12 % of "
                         "predictions differ)."),
    )

    def check_options(self):
        if self.opts["metric"] not in NCM_METRICS:
            raise ConfigError(f"ncm.metric must be one of {', '.join(NCM_METRICS)}, got {self.opts['metric']!r}")

    @hookimpl
    def ltbench_second_stage(self):
        return SecondStage(epochs=0, note="no training; class means of cached features")

    @hookimpl
    def ltbench_build_classifier(self, run, in_features, num_classes, stage):
        if stage != 2:
            return None
        if run.train_features is None:  # rebuilt to load a trained state, not to fit
            return NCMHead.to_load(in_features, num_classes, self.opts["metric"])
        labels = torch.as_tensor(np.asarray(run.train_labels), device=run.train_features.device)
        return NCMHead(run.train_features, labels, num_classes, self.opts["metric"])


@hookimpl
def ltbench_register_methods(register):
    for cls in (CRT, LWS, TauNorm, NCM):
        register(cls)
