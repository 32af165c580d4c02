"""The run object hooks receive (``Run``, ``Batch``, ``SecondStage``) and ``build_run``, which makes one.

One run = one (dataset, budget, method, seed). When every method of a run leaves stage 1 plain
(``Method.plain_stage1``), stage 1 is the same computation for all of them: it is trained once per
(dataset, budget, seed) in a shared directory and reused.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pluggy
import torch
from torch import nn

from ltbench.data.split import DatasetSpec, LTData, sealed_for_training
from ltbench.data.stores import make_store
from ltbench.grid import config as config_mod
from ltbench.plugins.catalog import Catalog
from ltbench.plugins.method import Method
from ltbench.results.metrics import EvalResult
from ltbench.training import distributed
from ltbench.training.evaluate import evaluate
from ltbench.training.hooks import build_classifier, make_plugin_manager
from ltbench.training.model import LTModel, ParamGroup  # (ParamGroup: re-exported where it lived)

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ltbench.data.stores import ImageStore


@dataclass
class Batch:
    """One training batch. ``images`` are normalised tensors on the device;
    in a stage trained on cached features ``images`` is ``None`` and
    ``features`` holds the pooled embeddings.

    ``labels`` are the hard class labels of the rows' own images (what per-class statistics, samplers and
    feature banks use). ``targets`` is what the task loss trains toward when a method mixed the targets
    (mixup, cutmix, remix): soft targets ``(B, C)``, one distribution per row (see Mixed targets, at the end of the API reference);
    ``None`` means the hard labels. :meth:`loss_targets` gives whichever applies, and is what the task loss
    receives; extra-loss hooks that train toward the labels should use it too.

    ``indices`` (int64, on the CPU) are the rows' positions in the stage's training set, the order the
    sampler drew: indices into ``run.train_labels`` and ``run.train_images`` (into ``SecondStage.labels``
    and ``SecondStage.features`` when a second stage supplies its own set, into ``run.train_features`` on a
    cached-feature stage). They identify an image across epochs, so per-sample state (a memory bank, a
    per-image weight) is keyed by them. Under torchrun a rank's batch holds its rows of the global batch and
    their indices.

    ``extra_views`` holds the further augmented views of the rows when a method asked for ``k`` views
    (``ltbench_train_views``): ``k - 1`` tensors shaped as ``images``, each a new draw of the core augmentation
    of the same images (``images`` is the first view). The forward pass then runs on all views at once, view
    by view (:meth:`view_rows` says where view ``v``'s rows are in ``ModelOutput``), and the task loss sees the
    first view's rows. Empty otherwise.

    ``row_weights`` (``(B,)``, non-negative, on the device) weights each row's term of the task loss: a
    method that re-weights samples sets it in ``ltbench_augment_batch``, and the core passes it to the task
    loss as ``row_weights=`` (``ltbench.api.cross_entropy`` takes it), whichever method built that loss. ``None``
    weighs every row alike. A loss that does not take ``row_weights`` fails the run with a named error."""

    labels: torch.Tensor
    images: torch.Tensor | None = None
    features: torch.Tensor | None = None
    indices: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    extra_views: tuple[torch.Tensor, ...] = ()
    row_weights: torch.Tensor | None = None

    def rows(self, rows: slice) -> "Batch":
        """The batch's rows ``rows`` (a rank's share of a global batch)."""
        take = lambda t: None if t is None else t[rows]  # noqa: E731
        return Batch(labels=self.labels[rows], images=take(self.images), features=take(self.features),
                     indices=take(self.indices), targets=take(self.targets),
                     extra_views=tuple(v[rows] for v in self.extra_views), row_weights=take(self.row_weights))

    @property
    def views(self) -> int:
        """How many views of each row the forward pass sees: 1 + ``len(extra_views)``."""
        return 1 + len(self.extra_views)

    def view_rows(self, view: int) -> slice:
        """Where view ``view`` (0 = ``images``) of the batch's rows lies in the forward pass's output."""
        if not 0 <= view < self.views:
            raise IndexError(f"view {view} of a batch with {self.views} views")
        n = len(self.images) if self.images is not None else len(self.labels)
        return slice(view * n, (view + 1) * n)

    def loss_targets(self, num_classes: int) -> torch.Tensor:
        """The task loss's targets: the hard labels, or the soft targets a method set. Rows appended after the
        targets were mixed (a module that generates samples, as SAFA's) get one-hot rows of their labels."""
        if self.targets is None:
            return self.labels
        extra = len(self.labels) - len(self.targets)
        if extra <= 0:
            return self.targets
        appended = nn.functional.one_hot(self.labels[len(self.targets):], num_classes).to(self.targets.dtype)
        return torch.cat([self.targets, appended])


@dataclass
class SecondStage:
    """What a method asks of stage 2 (see ``ltbench_second_stage``).

    ``None`` fields take the budget's ``stage2_*`` values. With
    ``train_backbone=False`` the backbone is frozen (eval mode) and, when
    ``cached_features`` is true, its training features are computed once
    without augmentation and stage 2 trains on them. ``epochs=0`` trains
    nothing (for methods that only transform the head, like tau-norm).
    """

    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    weight_decay: float = 5e-4
    momentum: float = 0.9
    #: Nesterov momentum in stage 2's SGD (BagofTricks-LT's optimiser)
    nesterov: bool = False
    cosine: bool = True
    train_backbone: bool = False
    backbone_lr: float | None = None
    cached_features: bool = True
    note: str = ""
    #: under torchrun, each rank trains on its rows of a global batch (the default); False: on the whole
    #: batch, for batches with a structure that rows would cut (CAM fusion's Algorithm-1 batches)
    data_parallel: bool = True
    #: train on these features and labels instead of the cached training features
    #: (a method's own feature set, e.g. Breadcrumb's EMANATE set); implies a frozen backbone
    features: torch.Tensor | None = None
    labels: np.ndarray | None = None
    #: the frozen backbone's batch-norm layers stay in train mode, so their running statistics are re-estimated
    #: on stage 2's batches (MiSLAS's shifted BN); its weights stay frozen. Trains on images, not cached features
    update_bn_statistics: bool = False
    #: learning-rate multipliers for the classifier's parameters, by name prefix (``{"head.": 0.2}``); others x1
    head_lr_factors: dict[str, float] = field(default_factory=dict)
    #: a step schedule of the method's own, as BagofTricks-LT's ``WarmupMultiStepLR`` steps it: x ``stage2_lr_decay``
    #: at each of these 1-based stage-2 epochs, after a warm-up from a third of the rate over ``warmup_epochs``.
    #: None takes the budget's stage-2 schedule (its ``stage2_lr_milestones``, else a cosine)
    lr_milestones: tuple[int, ...] | None = None
    warmup_epochs: int = 0

    def describe(self) -> dict[str, Any]:
        """The JSON-serialisable part, for the run record."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("features", "labels")}
        out["own_feature_set"] = self.features is not None
        if self.features is not None:
            out["feature_set_size"] = int(len(self.features))
        return out


@dataclass
class Run:
    """Everything a hook may look at during a run."""

    #: the dataset's registration: name, budgets, normalisation, crop padding and flip
    dataset: DatasetSpec
    #: the long-tailed split (class counts, shot groups, validation split); its test images are sealed away
    #: during training
    data: LTData
    #: the resolved configuration: the budget's keys and ``methods`` (each method's options, defaults included)
    config: dict[str, Any]
    seed: int
    #: the training device (a method puts its own tensors there)
    device: torch.device
    #: this run's method instances, in the order the run names them (``a+b``: a, then b)
    methods: list[Method]
    #: the run's plugin manager (the engine calls hooks through it; a method does not need it)
    pm: pluggy.PluginManager
    #: the run's directory (checkpoints, record); a method may write files of its own here
    out_dir: Path
    #: ``log(message)``: writes a line to the console
    log: Any = print
    #: the run's random generator on the CPU, seeded by ``seed``: samplers and anything every rank draws alike
    generator: torch.Generator = field(default_factory=torch.Generator)
    #: augmentation randomness, on the training device (on the CPU it is ``generator`` itself)
    aug_generator: torch.Generator | None = None
    #: 1 or 2, the stage being trained (2 also during stage-2 evaluation)
    stage: int = 1
    #: the epoch being trained, from 0 within its stage
    epoch: int = 0
    #: how many augmented views of each row the stage trains on (``ltbench_train_views``; 1 by default)
    views: int = 1
    #: the network (``backbone``, ``classifier``, ``heads``), on ``device`` once the run is built
    model: LTModel | None = None
    #: the training images as a store: ``get(indices, augment, generator)`` returns those images normalised
    #: (augmented: the dataset's crop and flip, drawn from ``generator``; ``views=k``: k draws, view by view,
    #: ``k * len(indices)`` rows), ``eval_batches(n)`` the split in order
    #: un-augmented, ``image_hw`` their size, ``len()`` their number. It holds the uint8 images on the device
    #: (in memory) or decodes image files in DataLoader workers (streaming datasets: nothing is held, so do not
    #: read it as an array). The step loop's own batches are prefetched; a method's extra ``get`` is decoded
    #: on demand and leaves that read-ahead alone
    train_images: ImageStore | None = None
    #: stage 2 on a frozen backbone: pooled training features (eval mode, no augmentation)
    train_features: torch.Tensor | None = None
    #: one entry per finished epoch: stage, epoch, lr, seconds, images, ``loss_<term>`` means, ``val_overall``
    history: list[dict[str, Any]] = field(default_factory=list)
    #: True while a step-owning method's ``closure()`` evaluates the step's batch again (``ltbench_optimizer_step``):
    #: hooks then compute the same loss terms as in the step's first pass without advancing any state of theirs
    #: (queues, banks, running means, counters, generators)
    reevaluating: bool = False
    #: stage ("1", "2") -> the optimiser that trained it: name, momentum and each parameter group as used
    #: (``ltbench_param_groups``); the record's ``optimizer``
    optimizers: dict[str, Any] = field(default_factory=dict)
    _validation_cache: tuple[tuple[int, int], EvalResult] | None = None
    #: under torchrun, each rank trains on its rows of the global batch; False: every rank on all of it
    #: (a stage whose batches have a structure, see ``SecondStage.data_parallel``)
    shard_batches: bool = True
    #: called with each epoch's history entry (the reporters' epoch-end event); set by the runner
    on_epoch_entry: Callable[[dict[str, Any]], None] | None = None
    #: where the backbone's starting weights came from (source and sha256), when they were pretrained
    pretrained: dict[str, Any] | None = None
    #: what the checkpoints written now belong to (a shared stage 1's key, else the run's config id); set by
    #: the runner. A checkpoint or finished stage 1 that names another is refused, never resumed from or reused;
    #: a resume checkpoint that names none is refused too
    checkpoint_identity: str = ""
    #: what this process trains on, as the record's ``device_model`` names it; set by the runner, "" outside a grid
    machine: str = ""
    #: which machine trained which epochs: ``{"stage", "first_epoch", "last_epoch", "device_model"}`` per stretch
    #: of consecutive epochs on one machine, in order; kept in checkpoints, so that a run carried between machines
    #: says where each part of it ran (the record's ``machines``). ``device_model`` None: epochs trained before
    #: ltbench noted machines
    machines: list[dict[str, Any]] = field(default_factory=list)
    _eval_stores: dict[int, tuple[Any, Any]] = field(default_factory=dict)

    def image_store(self, images):
        """The store of an evaluation split (its device copy, or its streaming reader), made once per run."""
        key = id(images)
        if key not in self._eval_stores or self._eval_stores[key][0] is not images:
            self._eval_stores[key] = (images, make_store(images, self.dataset, self.data, self.device, self.config))
        return self._eval_stores[key][1]

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @property
    def train_counts(self) -> np.ndarray:
        return self.data.train_counts

    @property
    def train_labels(self) -> np.ndarray:
        return self.data.y_train

    @property
    def method_name(self) -> str:
        return "+".join(m.name for m in self.methods)

    def validation(self) -> EvalResult:
        """The model's validation results now (cached for the current stage and epoch)."""
        key = (self.stage, self.epoch)
        if self._validation_cache is None or self._validation_cache[0] != key:
            self._validation_cache = (key, evaluate(self, self.data.x_val, self.data.y_val))
        return self._validation_cache[1]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def stage1_key(config: dict[str, Any], data: LTData, dataset_key: str, seed: int) -> str:
    """Identity of a plain stage 1: everything stage 1 depends on, nothing it does not."""
    relevant = {k: v for k, v in config_mod.identity(config).items() if not k.startswith("stage2_") and k != "methods"}
    blob = json.dumps({"dataset": dataset_key, "split": data.fingerprint, "seed": seed, "config": relevant},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def build_run(catalog: Catalog, dataset: DatasetSpec, data: LTData, config: dict[str, Any], seed: int,
              device: torch.device, out_dir: Path, log=print) -> Run:
    methods = [catalog.method(name).cls(**opts) for name, opts in config["methods"].items()]
    pm = make_plugin_manager(methods)
    seed_everything(seed)
    run = Run(dataset=dataset, data=sealed_for_training(data), config=config, seed=seed, device=device,
              methods=methods, pm=pm, out_dir=out_dir, log=log)
    run.generator.manual_seed(seed)
    run.aug_generator = run.generator if device.type == "cpu" else torch.Generator(device=device).manual_seed(seed)
    backbone = catalog.backbone(config["backbone"]).build(data.channels)
    if config.get("pretrained") or config.get("pretrained_path"):
        from ltbench.training.backbones import load_pretrained

        run.pretrained = load_pretrained(backbone, config["backbone"], config.get("pretrained_path", ""))
    head = build_classifier(run, 1, backbone.num_features, None)
    run.model = LTModel(backbone, head)
    run.train_images = make_store(data.x_train, dataset, data, device, config)  # (configure_model may read it)
    run.pm.hook.ltbench_configure_model(run=run, model=run.model)
    if config.get("sync_bn", False):
        run.model = distributed.convert_sync_batchnorm(run.model)
    run.model.to(device)
    distributed.broadcast_state(run.model)  # the same start on every rank (the seed makes it so already)
    channels_last = config.get("channels_last", False)
    if channels_last:
        run.model.to(memory_format=torch.channels_last)
    if config.get("compile", False):
        run.model.backbone.compile()  # in place: state-dict keys, hooks and methods stay as they are
    return run
