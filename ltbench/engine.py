"""The training engine: one run = one (dataset, budget, method, seed).

Stage 1 trains backbone + classifier; an optional stage 2 (asked for by
``ltbench_second_stage``) retrains the classifier on the frozen backbone,
on cached features when it can. Both stages call the run hooks of
:mod:`ltbench.hookspecs` on a plugin manager that holds only the core
defaults and this run's methods.

When every method of a run leaves stage 1 plain (``Method.plain_stage1``),
stage 1 is the same computation for all of them: it is trained once per
(dataset, budget, seed) in a shared directory and reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pluggy
import torch
from torch import nn

from ltbench import checkpoints, distributed, hookspecs
from ltbench import config as config_mod
from ltbench.catalog import Catalog
from ltbench.datasets import DatasetSpec, LTData, sealed_for_training
from ltbench.defaults import CoreDefaults
from ltbench.errors import CheckpointError, CompositionError, PluginContractError
from ltbench.method import Method
from ltbench.metrics import EvalResult, evaluate_predictions
from ltbench.model import LTModel, ModelOutput

FIRST_RESULT_HOOKS = sorted(
    name for name in dir(hookspecs)
    if name.startswith("ltbench_") and getattr(getattr(hookspecs, name), "ltbench_spec", {}).get("firstresult")
)


#: hooks called on every method of a run, in the order the run names them (not registration, not reporting)
BROADCAST_RUN_HOOKS = sorted(
    name for name in dir(hookspecs)
    if name.startswith("ltbench_") and not name.startswith(("ltbench_register_", "ltbench_report_"))
    and hasattr(getattr(hookspecs, name), "ltbench_spec") and name not in FIRST_RESULT_HOOKS
)


def order_sensitive_hooks(classes: list[type[Method]]) -> list[str]:
    """The broadcast run hooks that two or more of ``classes`` implement: where the order of a composition can
    change what a run computes. ``ltbench_record`` is left out: each method's fields are stored under its own
    name. First-result hooks cannot matter: two methods answering one is a composition error."""
    return [hook for hook in BROADCAST_RUN_HOOKS if hook != "ltbench_record"
            and sum(callable(getattr(cls, hook, None)) for cls in classes) > 1]


def canonical_order(classes: list[type[Method]]) -> list[type[Method]]:
    """The order a composition runs in: sorted by name when the hooks prove the order cannot matter (no
    broadcast run hook is implemented by two of them), so ``a+b`` and ``b+a`` are one run; otherwise the
    order written, which the run's name and record keep."""
    return classes if order_sensitive_hooks(classes) else sorted(classes, key=lambda cls: cls.name)


class Diverged(Exception):
    """A non-finite loss: the run stops and is recorded as ``diverged``."""


@dataclass
class Batch:
    """One training batch. ``images`` are normalised tensors on the device;
    in a stage trained on cached features ``images`` is ``None`` and
    ``features`` holds the pooled embeddings.

    ``labels`` are the hard class labels of the rows' own images (what per-class statistics, samplers and
    feature banks use). ``targets`` is what the task loss trains toward when a method mixed the targets
    (mixup, cutmix, remix): soft targets ``(B, C)``, one distribution per row (see :mod:`ltbench.targets`);
    ``None`` means the hard labels. :meth:`loss_targets` gives whichever applies, and is what the task loss
    receives; extra-loss hooks that train toward the labels should use it too.

    ``indices`` (int64, on the CPU) are the rows' positions in the stage's training set, the order the
    sampler drew: indices into ``run.train_labels`` and ``run.train_images`` (into ``SecondStage.labels``
    and ``SecondStage.features`` when a second stage supplies its own set, into ``run.train_features`` on a
    cached-feature stage). They identify an image across epochs, so per-sample state (a memory bank, a
    per-image weight) is keyed by them. Under torchrun a rank's batch holds its rows of the global batch and
    their indices."""

    labels: torch.Tensor
    images: torch.Tensor | None = None
    features: torch.Tensor | None = None
    indices: torch.Tensor | None = None
    targets: torch.Tensor | None = None

    def rows(self, rows: slice) -> "Batch":
        """The batch's rows ``rows`` (a rank's share of a global batch)."""
        take = lambda t: None if t is None else t[rows]  # noqa: E731
        return Batch(labels=self.labels[rows], images=take(self.images), features=take(self.features),
                     indices=take(self.indices), targets=take(self.targets))

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

    def describe(self) -> dict[str, Any]:
        """The JSON-serialisable part, for the run record."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("features", "labels")}
        out["own_feature_set"] = self.features is not None
        if self.features is not None:
            out["feature_set_size"] = int(len(self.features))
        return out


class ImageStore:
    """uint8 images held on the training device; augmentation is batched there.

    A batch is gathered, cropped and flipped in uint8 and converted to float once, at the size the model sees.
    """

    def __init__(self, images: np.ndarray, spec: DatasetSpec, data: LTData, device: torch.device,
                 channels_last: bool = False):
        self.x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous().to(device)
        self.mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
        self.padding, self.flip = spec.crop_padding, spec.flip
        self.channels_last = channels_last

    def __len__(self) -> int:
        return len(self.x)

    @property
    def image_hw(self) -> tuple[int, int]:
        """(H, W) of the images the model sees."""
        return tuple(self.x.shape[2:4])

    def normalise_uint8(self, x: torch.Tensor) -> torch.Tensor:
        return normalise_uint8(x, self.mean, self.std, self.channels_last)

    def eval_batches(self, batch_size: int):
        """The split in order, un-augmented and normalised, ``batch_size`` images at a time."""
        for start in range(0, len(self.x), batch_size):
            yield self.normalise_uint8(self.x[start : start + batch_size])

    def prefetch(self, order: torch.Tensor, batch_size: int, generator: torch.Generator | None = None,
                 local_rows: Callable[[int], slice] | None = None) -> None:
        """Nothing to do: the images are in memory (the streaming store decodes ahead here)."""

    def get(self, idx: torch.Tensor, augment: bool, generator: torch.Generator | None = None,
            local: slice | None = None) -> torch.Tensor:
        """Images ``idx``, normalised (augmented when ``augment``). ``local`` (a rank's rows, which the
        streaming store alone decodes) changes nothing here: every row is already in memory."""
        x = self.x[idx.to(self.x.device, non_blocking=True)]
        if augment:
            x = random_crop_flip(x, self.padding, self.flip, generator)
        return self.normalise_uint8(x)


def normalise_uint8(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 (B, C, H, W) to normalised float: ``(x / 255 - mean) / std``, in place on one new tensor (both
    stores, in memory and streaming, normalise through this).

    The new tensor has standard strides: a cropped single-channel batch can carry strides that also read
    as channels-last, and convolution backends pick their algorithm (and their rounding) by layout."""
    x = x.to(torch.float32, memory_format=torch.contiguous_format).div_(255).sub_(mean).div_(std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def make_store(images, spec: DatasetSpec, data: LTData, device: torch.device, config: dict[str, Any]):
    """The store for one split: in memory (uint8 arrays) or streaming (:class:`ltbench.imagefiles.ImageFiles`)."""
    from ltbench.imagefiles import FileImageStore, ImageFiles

    channels_last = config.get("channels_last", False)
    if isinstance(images, ImageFiles):
        if config.get("image_size") and images.transform == "imagenet":
            images = dataclasses.replace(images, size=int(config["image_size"]))
        return FileImageStore(images, data.mean, data.std, device, images.info.get("crop_padding", spec.crop_padding),
                              images.info.get("flip", spec.flip),
                              workers=config.get("workers", 0), channels_last=channels_last)
    return ImageStore(images, spec, data, device, channels_last)


def random_crop_flip(x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator | None) -> torch.Tensor:
    """Random crop after zero padding, and random horizontal flip, per image, in one batched op.

    Works on any dtype (ltbench crops uint8). The offsets and flips are drawn from ``generator`` on its own
    device (the training device on a GPU, so nothing is copied from the host), in the order oy, ox, flip."""
    b, c, h, w = x.shape
    gen_device = generator.device if generator is not None else torch.device("cpu")
    if padding:
        oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=gen_device).to(x.device)
        ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=gen_device).to(x.device)
        windows = nn.functional.pad(x, (padding, padding, padding, padding)).unfold(2, h, 1).unfold(3, w, 1)
        x = windows[torch.arange(b, device=x.device), :, oy, ox]  # (B, C, H, W): one window per image
    if flip:
        mask = (torch.rand(b, generator=generator, device=gen_device) < 0.5).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


def lr_at(config: dict[str, Any], epoch: int) -> float:
    """Linear warm-up, then step decay at the milestone fractions of the epochs (``schedule`` "step"), or a
    cosine from the base rate to 0 over the epochs after the warm-up ("cosine", per epoch)."""
    base, warm = config["lr"], config["warmup_epochs"]
    if epoch < warm:
        return base * (epoch + 1) / warm
    if config.get("schedule", "step") == "cosine":
        return 0.5 * base * (1 + math.cos(math.pi * (epoch - warm) / max(config["epochs"] - warm, 1)))
    passed = sum(epoch >= round(m * config["epochs"]) for m in config["lr_milestones"])
    return base * config["lr_decay"] ** passed


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
    #: the network (``backbone``, ``classifier``, ``heads``), on ``device`` once the run is built
    model: LTModel | None = None
    #: the training images as a store: ``get(indices, augment, generator)`` returns those images normalised
    #: (augmented: the dataset's crop and flip, drawn from ``generator``), ``eval_batches(n)`` the split in order
    #: un-augmented, ``image_hw`` their size, ``len()`` their number. It holds the uint8 images on the device
    #: (in memory) or decodes image files in DataLoader workers (streaming datasets: nothing is held, so do not
    #: read it as an array). The step loop's own batches are prefetched; a method's extra ``get`` is decoded
    #: on demand and leaves that read-ahead alone
    train_images: ImageStore | None = None
    #: stage 2 on a frozen backbone: pooled training features (eval mode, no augmentation)
    train_features: torch.Tensor | None = None
    #: one entry per finished epoch: stage, epoch, lr, seconds, images, ``loss_<term>`` means, ``val_overall``
    history: list[dict[str, Any]] = field(default_factory=list)
    _validation_cache: tuple[tuple[int, int], EvalResult] | None = None
    #: under torchrun, each rank trains on its rows of the global batch; False: every rank on all of it
    #: (a stage whose batches have a structure, see ``SecondStage.data_parallel``)
    shard_batches: bool = True
    #: called with each epoch's history entry (the reporters' epoch-end event); set by the runner
    on_epoch_entry: Callable[[dict[str, Any]], None] | None = None
    #: where the backbone's starting weights came from (source and sha256), when they were pretrained
    pretrained: dict[str, Any] | None = None
    #: what the checkpoints written now belong to (a shared stage 1's key, else the run's config id); set by
    #: the runner. A checkpoint that names another is refused, never resumed from
    checkpoint_identity: str = ""
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


# --------------------------------------------------------------------------
# Building a run's plugin manager
# --------------------------------------------------------------------------


def check_composition(classes: list[type[Method]]) -> None:
    """Raise :class:`CompositionError` when two of ``classes`` implement the same first-result hook."""
    claims: dict[str, list[str]] = {}
    for cls in classes:
        for hook in FIRST_RESULT_HOOKS:
            if callable(getattr(cls, hook, None)):
                claims.setdefault(hook, []).append(cls.name)
    conflicts = {h: names for h, names in claims.items() if len(names) > 1}
    if conflicts:
        hook, names = sorted(conflicts.items())[0]
        raise CompositionError(
            f"methods {' and '.join(repr(n) for n in names)} both implement {hook}, which only one method of a "
            f"composed run may answer; compose methods that change different stages"
        )


def make_plugin_manager(methods: list[Method]) -> pluggy.PluginManager:
    """A fresh manager: the core defaults plus this run's method instances.

    Raises :class:`CompositionError` when two methods implement the same
    first-result hook.
    """
    check_composition([type(m) for m in methods])
    pm = pluggy.PluginManager("ltbench")
    pm.add_hookspecs(hookspecs)
    pm.register(CoreDefaults(), name="core")
    for m in reversed(methods):  # pluggy calls the last registered first: broadcast hooks run a, then b
        pm.register(m, name=m.name)
    pm.check_pending()
    return pm


def _owner(run: Run, hook: str) -> str:
    for m in run.methods:
        if callable(getattr(m, hook, None)):
            return f"method {m.name!r}"
    return "the core defaults"


def _expect(run: Run, hook: str, value: Any, check, expected: str) -> Any:
    if not check(value):
        raise PluginContractError(
            f"{_owner(run, hook)}: {hook} returned {type(value).__name__}; the hook specification expects {expected}"
        )
    return value


def build_classifier(run: Run, stage: int, in_features: int, previous: nn.Module | None) -> nn.Module:
    head = run.pm.hook.ltbench_build_classifier(run=run, in_features=in_features, num_classes=run.num_classes,
                                                 stage=stage, previous=previous)
    return _expect(run, "ltbench_build_classifier", head, lambda v: isinstance(v, nn.Module), "an nn.Module")


def build_sampler(run: Run, stage: int, labels: np.ndarray | None = None) -> torch.utils.data.Sampler:
    labels = run.train_labels if labels is None else labels
    sampler = run.pm.hook.ltbench_build_sampler(run=run, stage=stage, labels=labels)
    ok = lambda v: hasattr(v, "__iter__") and hasattr(v, "__len__")  # noqa: E731
    return _expect(run, "ltbench_build_sampler", sampler, ok, "a sampler (iterable of indices with a length)")


def build_loss(run: Run, stage: int):
    loss = run.pm.hook.ltbench_build_loss(run=run, stage=stage)
    return _expect(run, "ltbench_build_loss", loss, callable, "a callable loss(logits, targets)")


def compute_loss(run: Run, loss_fn, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if len(logits) != len(targets):
        raise PluginContractError(f"the batch has {len(targets)} targets but the model gave {len(logits)} logits; "
                                  f"a method's ltbench_augment_batch and the modules it inserted disagree")
    if targets.dim() == 2 and tuple(targets.shape) != tuple(logits.shape):
        raise PluginContractError(f"the batch's soft targets have shape {tuple(targets.shape)}; the logits "
                                  f"{tuple(logits.shape)}: a method set batch.targets with the wrong number of classes")
    loss = loss_fn(logits, targets)
    if not (isinstance(loss, torch.Tensor) and loss.dim() == 0):
        raise PluginContractError(f"{_owner(run, 'ltbench_build_loss')}: its loss returned "
                                  f"{type(loss).__name__} {getattr(loss, 'shape', '')}; expected a scalar tensor")
    return loss


# --------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------


def model_cost(run: Run) -> dict[str, Any]:
    """What the trained model costs: ``parameters``, every learned number it holds (the parameters of the
    backbone, the classifier and the heads a method added, e.g. RIDE's experts, and the floating-point buffers
    that stand in for parameters, e.g. tau-norm's weights and NCM's class means; batch-norm running statistics
    are not counted), and ``inference_macs_per_image``, the multiply-accumulates of classifying one image along
    the method's own evaluation path (:func:`predict_logits`), counted by ``torch.utils.flop_counter`` (two
    FLOPs per multiply-accumulate of a convolution or matrix product; element-wise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    images = run.data.x_val if len(run.data.x_val) else run.data.x_train
    # one image: an array's first row, or (streaming) the image files' first path
    images = dataclasses.replace(images, paths=list(images.paths[:1])) if hasattr(images, "paths") else images[:1]
    with FlopCounterMode(display=False) as counter:
        predict_logits(run, images)
    held = [b for name, b in run.model.named_buffers()
            if b.is_floating_point() and not name.endswith(("running_mean", "running_var"))]
    return {"parameters": int(sum(p.numel() for p in run.model.parameters()) + sum(b.numel() for b in held)),
            "inference_macs_per_image": int(counter.get_total_flops() // 2), "counted_by": "torch.utils.flop_counter"}


@torch.no_grad()
def predict_logits(run: Run, images: np.ndarray) -> torch.Tensor:
    model = run.model
    was_training = model.training
    model.eval()
    store = run.image_store(images) if len(images) else None
    out = []
    bs = run.config["eval_batch_size"]
    beat = Heartbeat(run, "predicting, images", len(images))
    combine = bool(run.pm.hook.ltbench_eval_logits.get_hookimpls())
    batches = store.eval_batches(bs) if store is not None else []
    for start, x in zip(range(0, len(images), bs), batches):
        beat(start)
        with _autocast(run.device):
            if combine:  # a method defines the evaluation logits from all heads and features
                output = model.forward_all(x)
                logits = run.pm.hook.ltbench_eval_logits(run=run, model=model, output=output)
                logits = output.logits if logits is None else logits
                shape = (len(x), run.num_classes)
                _expect(run, "ltbench_eval_logits", logits,
                        lambda v: isinstance(v, torch.Tensor) and tuple(v.shape) == shape, f"a tensor of shape {shape}")
                logits = logits.float()
            else:
                logits = model(x).float()
        adjusted = run.pm.hook.ltbench_adjust_logits(run=run, logits=logits)
        if adjusted is not None:
            _expect(run, "ltbench_adjust_logits", adjusted,
                    lambda v: isinstance(v, torch.Tensor) and v.shape == logits.shape, f"a tensor of shape {tuple(logits.shape)}")
            logits = adjusted
        out.append(logits)
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, run.num_classes, device=run.device)


def evaluate(run: Run, images: np.ndarray, labels: np.ndarray) -> EvalResult:
    logits = predict_logits(run, images)
    top = logits.argmax(1)
    probs = torch.softmax(logits.float(), dim=1)
    rows = torch.arange(len(top), device=probs.device)
    on_device = torch.as_tensor(np.asarray(labels), device=probs.device, dtype=torch.long)
    preds, confidence, true_p = (t.cpu().numpy() for t in (top, probs[rows, top], probs[rows, on_device]))
    result = evaluate_predictions(labels, preds, run.train_counts, run.data.group_thresholds)
    result.predictions, result.confidence, result.true_probability = preds, confidence, true_p
    return result


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------


#: progress bars on a terminal; worker processes that share one terminal turn them off
SHOW_PROGRESS = True
#: on a non-terminal (a log file, a batch job), a progress line at least this often during a long phase
HEARTBEAT_S = 30.0


class Heartbeat:
    """A progress line every :data:`HEARTBEAT_S` seconds of a long loop, for logs that have no bar."""

    def __init__(self, run: Run, what: str, total: int) -> None:
        self.run, self.what, self.total = run, what, total
        self.start = self.last = time.perf_counter()

    def __call__(self, done: int) -> None:
        now = time.perf_counter()
        if now - self.last >= HEARTBEAT_S:
            self.last = now
            rate = done / (now - self.start)
            eta = (self.total - done) / rate if rate > 0 else float("nan")
            self.run.log(f"[{self.run.method_name} seed {self.run.seed}] {self.what}: {done}/{self.total} "
                         f"({100 * done / max(self.total, 1):.0f} %, about {eta:.0f} s left)")


def _progress(run: Run, total: int, desc: str):
    if SHOW_PROGRESS and sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, leave=False, file=sys.stderr)
    return None


def _rng_state(run: Run) -> dict[str, Any]:
    state = {"generator": run.generator.get_state(), "torch": torch.get_rng_state(),
             "numpy": np.random.get_state(), "python": random.getstate()}
    if run.aug_generator is not None and run.aug_generator is not run.generator:
        state["aug_generator"] = run.aug_generator.get_state()
    return state


def _set_rng_state(run: Run, state: dict[str, Any]) -> None:
    run.generator.set_state(state["generator"])
    if "aug_generator" in state and run.aug_generator is not None and run.aug_generator is not run.generator:
        run.aug_generator.set_state(state["aug_generator"])
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def method_states(run: Run) -> dict[str, Any]:
    """Each method's ``state_dict``, checked and made safe to load (see :mod:`ltbench.checkpoints`)."""
    return {m.name: checkpoints.to_safe(m.state_dict(), f"method {m.name!r}: state_dict()") for m in run.methods}


def _checkpoint(run: Run, path: Path, optimizer: torch.optim.Optimizer) -> None:
    checkpoints.save({
        "stage": run.stage, "epoch": run.epoch, "model": run.model.state_dict(), "optimizer": optimizer.state_dict(),
        "methods": method_states(run), "rng": _rng_state(run), "history": run.history,
        "identity": run.checkpoint_identity,
    }, path)


def _restore(run: Run, ckpt: dict[str, Any], optimizer: torch.optim.Optimizer) -> int:
    run.model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    for m in run.methods:
        m.load_state_dict(ckpt["methods"].get(m.name, {}))
    _set_rng_state(run, ckpt["rng"])
    run.history = ckpt["history"]
    run.log(f"resuming stage {ckpt['stage']} after epoch {ckpt['epoch'] + 1}")
    return ckpt["epoch"] + 1


def extra_losses(run: Run, model: LTModel, batch: Batch, output: ModelOutput) -> dict[str, torch.Tensor]:
    """Every method's ``ltbench_extra_losses``, checked: a dict of named scalar tensors or None; ``"task"`` is
    reserved, and two methods may not use one name (one term would silently replace the other)."""
    kwargs = {"run": run, "model": model, "batch": batch, "output": output}
    owner: dict[str, str] = {}
    terms: dict[str, torch.Tensor] = {}
    for impl in reversed(run.pm.hook.ltbench_extra_losses.get_hookimpls()):  # the call order: a, then b
        value = impl.function(*[kwargs[a] for a in impl.argnames])
        if value is None:
            continue
        who = f"method {impl.plugin_name!r}: ltbench_extra_losses"
        if not isinstance(value, dict):
            raise PluginContractError(f"{who} returned {type(value).__name__}; the hook specification expects a "
                                      f"dict of named scalar tensors, e.g. {{'my_term': loss}}, or None")
        for name, term in value.items():
            if name == "task":
                raise PluginContractError(f"{who} returned a term named 'task'; that name is the task loss's, "
                                          f"choose another (the task loss comes from ltbench_build_loss)")
            if name in owner:
                raise PluginContractError(f"{who} and method {owner[name]!r} both return a loss term named "
                                          f"{name!r}; one would replace the other: rename one of them")
            if not (isinstance(term, torch.Tensor) and term.dim() == 0):
                raise PluginContractError(f"{who} returned {name!r} = {type(term).__name__}"
                                          f"{tuple(term.shape) if isinstance(term, torch.Tensor) else ''}; "
                                          f"the hook specification expects a scalar tensor")
            owner[name] = impl.plugin_name
            terms[name] = term
    return terms


def _train_step(run: Run, optimizer: torch.optim.Optimizer, loss_fn, batch: Batch,
                scale: float = 1.0) -> dict[str, torch.Tensor]:
    """One optimisation step: augmentation hooks, forward, task loss plus extra losses, backward.

    Returns the detached loss terms, still on the device: nothing here waits for the device
    (no ``float()``/``item()``/``bool()`` on a device tensor), so a GPU queue never stalls mid-epoch."""
    model = run.model
    run.pm.hook.ltbench_augment_batch(run=run, model=model, batch=batch)
    with _autocast(run.device):
        if batch.images is None:  # a classifier-only stage on features
            output = ModelOutput(model.classifier(batch.features), batch.features, batch.features)
        else:
            output = model.forward_all(batch.images)
        terms = {"task": compute_loss(run, loss_fn, output.logits.float(), batch.loss_targets(run.num_classes))}
        terms.update(extra_losses(run, model, batch, output))
        total = sum(terms.values())
    optimizer.zero_grad(set_to_none=True)
    (total * scale if scale != 1.0 else total).backward()
    distributed.average_gradients(model.parameters())  # under torchrun: the gradient of the global batch
    optimizer.step()
    return {k: v.detach() for k, v in terms.items()}


def run_steps(run: Run, optimizer: torch.optim.Optimizer, loss_fn, order: torch.Tensor, batch_size: int,
              make_batch: Callable[[torch.Tensor], Batch], bar=None) -> tuple[dict[str, torch.Tensor], int]:
    """The steps of one epoch over ``order`` (indices): per-term loss sums on the device, and the step count.

    A non-finite loss is not checked per step (that would wait for the device every step): it makes its
    term's sum non-finite, which :func:`check_finite` reads once at the end of the epoch."""
    sums: dict[str, torch.Tensor] = {}
    steps = 0
    shard = distributed.is_distributed() and run.shard_batches
    beat = Heartbeat(run, f"stage {run.stage} epoch {run.epoch + 1} steps", -(-len(order) // batch_size))
    for start in range(0, len(order), batch_size):
        batch, scale = make_batch(order[start : start + batch_size]), 1.0
        if shard:  # the global batch (sampled and augmented alike on every rank), then this rank's rows
            rows = distributed.shard_rows(len(batch.labels))
            scale = (rows.stop - rows.start) * distributed.world_size() / len(batch.labels)
            batch = batch.rows(rows)
        for k, v in _train_step(run, optimizer, loss_fn, batch, scale).items():
            sums[k] = sums[k] + v.double() if k in sums else v.double()
        steps += 1
        if bar:
            bar.update(1)
        else:
            beat(steps)
    return sums, steps


def epoch_losses(entry: dict[str, Any]) -> str:
    """The epoch line's losses: the task loss, then every extra term by name, e.g.
    ``loss 2.3012 (+ diversity -0.0130, supcon 0.4410)``."""
    extra = ", ".join(f"{k[len('loss_'):]} {v:.4f}" for k, v in entry.items()
                      if k.startswith("loss_") and k != "loss_task")
    return f"loss {entry.get('loss_task', float('nan')):.4f}" + (f" (+ {extra})" if extra else "")


def _mean_over_ranks(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    """The epoch's loss sums as floats; under torchrun, the mean over ranks (every rank gets the same, so a
    NaN on one rank stops them all)."""
    if not distributed.is_distributed():
        return {k: float(v) for k, v in sums.items()}
    keys: list[list[str]] = [[] for _ in range(distributed.world_size())]
    torch.distributed.all_gather_object(keys, sorted(sums))
    names = sorted(set().union(*keys))
    if not names:
        return {}
    device = next(iter(sums.values())).device  # every rank ran the same steps, so each has some term
    vector = torch.stack([sums[k] if k in sums else torch.zeros((), dtype=torch.float64, device=device)
                          for k in names])
    distributed.all_reduce_sum(vector)
    return {k: float(v) / distributed.world_size() for k, v in zip(names, vector.tolist())}


def check_finite(run: Run, sums: dict[str, float]) -> None:
    """Raise :class:`Diverged` when an epoch's loss went non-finite, naming the stage, epoch and terms."""
    bad = [k for k, v in sums.items() if not math.isfinite(v)]
    if bad:
        raise Diverged(f"non-finite loss at stage {run.stage}, epoch {run.epoch + 1} (terms: {', '.join(bad)})")


def _train_epochs(run: Run, stage: int, epochs: int, optimizer: torch.optim.Optimizer, set_lr: Callable[[int], None],
                  labels: np.ndarray, make_batch: Callable[[torch.Tensor], Batch], batch_size: int, ckpt_path: Path,
                  on_epoch_end: Callable[[], None] | None, frozen_backbone: bool = False) -> None:
    """The epoch loop both stages share: hooks, batches from the stage's sampler over ``labels``, history,
    checkpoints."""
    model = run.model
    sampler = build_sampler(run, stage, labels)
    loss_fn = build_loss(run, stage)
    start = 0
    if distributed.agree(ckpt_path.exists()):
        ckpt = checkpoints.load(ckpt_path)
        written_for = ckpt.get("identity") or ""  # "" in checkpoints from before identities were written
        if written_for and run.checkpoint_identity and written_for != run.checkpoint_identity:
            raise CheckpointError(f"checkpoint {ckpt_path} belongs to another configuration ({written_for}; this "
                                  f"run is {run.checkpoint_identity}): it was copied or left there; refused, not "
                                  f"resumed from. Pass --rerun to retrain the run, or remove the file")
        start = _restore(run, ckpt, optimizer)
    for epoch in range(start, epochs):
        run.epoch = epoch
        set_lr(epoch)
        run.pm.hook.ltbench_epoch_start(run=run, stage=stage, epoch=epoch)
        model.train()
        if frozen_backbone:
            model.backbone.eval()  # frozen: batch-norm statistics stay as stage 1 left them
        order = torch.as_tensor(list(iter(sampler)), dtype=torch.long)
        if hasattr(make_batch, "prefetch"):  # a streaming store decodes the epoch's image batches ahead
            make_batch.prefetch(order, batch_size)
        bar = _progress(run, math.ceil(len(order) / batch_size), f"stage {stage} epoch {epoch + 1}/{epochs}")
        t0 = time.perf_counter()
        device_sums, steps = run_steps(run, optimizer, loss_fn, order, batch_size, make_batch, bar)
        sums = _mean_over_ranks(device_sums)  # the one wait for the device per epoch
        distributed.broadcast_state(model, buffers_only=True)  # rank 0's running statistics everywhere
        seconds = time.perf_counter() - t0
        if bar:
            bar.close()
        check_finite(run, sums)
        entry = {"stage": stage, "epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
                 "seconds": round(seconds, 3), "images": len(order),
                 "images_per_s": round(len(order) / seconds, 1) if seconds > 0 else None,
                 **{f"loss_{k}": v / max(steps, 1) for k, v in sums.items()}}
        run.pm.hook.ltbench_epoch_end(run=run, stage=stage, epoch=epoch)
        every = run.config.get("val_every", 0)
        if every and ((epoch + 1) % every == 0 or epoch + 1 == epochs):
            run.validation()  # a learning curve: cheap (the validation split is small), and never the test split
        if run._validation_cache and run._validation_cache[0] == (stage, epoch):
            entry["val_overall"] = run._validation_cache[1].overall
        run.history.append(entry)
        if run.on_epoch_entry is not None:
            run.on_epoch_entry(entry)
        run.log(f"[{run.method_name} seed {run.seed}] stage {stage} epoch {epoch + 1}/{epochs} "
                f"{epoch_losses(entry)} ({entry['seconds']:.1f}s)")
        if distributed.is_main():
            _checkpoint(run, ckpt_path, optimizer)
        if on_epoch_end:
            on_epoch_end()
    run.pm.hook.ltbench_stage_end(run=run, stage=stage)


def image_batch(run: Run, labels: np.ndarray) -> Callable[[torch.Tensor], Batch]:
    """Batches of augmented training images: labels and images gathered on the device."""
    on_device = torch.as_tensor(np.asarray(labels), device=run.device)

    # Under torchrun every rank builds the global batch and keeps its rows (run_steps). The store is told
    # which rows those are, so that a streaming store decodes this rank's share of the image files only.
    def local_rows() -> Callable[[int], slice] | None:
        return distributed.shard_rows if distributed.is_distributed() and run.shard_batches else None

    def make_images(idx: torch.Tensor) -> Batch:
        where = idx.to(run.device, non_blocking=True)
        rows = local_rows()
        images = run.train_images.get(where, augment=True, generator=run.aug_generator,
                                      local=rows(len(idx)) if rows else None)
        return Batch(labels=on_device[where], indices=idx, images=images)

    def prefetch(order: torch.Tensor, batch_size: int) -> None:
        run.train_images.prefetch(order, batch_size, run.aug_generator, local_rows=local_rows())

    make_images.prefetch = prefetch
    return make_images


def train_stage1(run: Run, ckpt_path: Path, on_epoch_end: Callable[[], None] | None = None) -> None:
    config = run.config
    params = [p for p in run.model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=config["lr"], momentum=config["momentum"],
                                weight_decay=config["weight_decay"])

    def set_lr(epoch: int) -> None:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(config, epoch)

    _train_epochs(run, 1, config["epochs"], optimizer, set_lr, run.train_labels, image_batch(run, run.train_labels),
                  config["batch_size"], ckpt_path, on_epoch_end)


@torch.no_grad()
def extract_features(run: Run, images: np.ndarray | None = None) -> torch.Tensor:
    """Pooled features in eval mode without augmentation: of the training images, or of ``images``."""
    store = run.train_images if images is None else run.image_store(images)
    was_training = run.model.training
    run.model.eval()
    out = []
    bs = run.config["eval_batch_size"]
    for x in store.eval_batches(bs):
        with _autocast(run.device):
            out.append(run.model.features(x).float())
    run.model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, run.model.num_features, device=run.device)


def prepare_stage2(run: Run, plan: SecondStage) -> None:
    """Freeze the backbone (unless the plan trains it) and build the stage-2 head."""
    run.stage = 2
    if not plan.train_backbone:
        for p in run.model.backbone.parameters():
            p.requires_grad_(False)
        if plan.features is not None:
            if plan.labels is None or len(plan.labels) != len(plan.features):
                raise PluginContractError(f"{_owner(run, 'ltbench_second_stage')}: SecondStage.features needs "
                                          f"labels of the same length")
            run.train_features = plan.features.to(run.device)
        elif plan.cached_features and not plan.update_bn_statistics:
            t0 = time.perf_counter()
            run.log(f"[{run.method_name} seed {run.seed}] stage 2: extracting the features of "
                    f"{len(run.train_labels)} training images")
            run.train_features = extract_features(run)
            run.log(f"[{run.method_name} seed {run.seed}] features extracted ({time.perf_counter() - t0:.1f}s)")
    run.model.classifier = build_classifier(run, 2, run.model.num_features, run.model.classifier).to(run.device)
    distributed.broadcast_state(run.model.classifier)  # a new head starts the same on every rank


def stage2_schedule(config: dict[str, Any], plan: SecondStage) -> Callable[[int, int], float]:
    """``factor(epoch, epochs)``: the multiple of stage 2's learning rate at a (0-based) epoch.

    A stage 2 that takes the budget's length (``plan.epochs`` None) with the default ``cosine`` follows the
    budget's stage-2 schedule: with ``stage2_lr_milestones``, a linear warm-up over ``stage2_warmup_epochs``
    ((e + 1) / warm-up, as stage 1's) and then x ``stage2_lr_decay`` at each milestone; without, a cosine to 0.
    A method that sets its own length keeps its own: a cosine, or a constant rate with ``cosine=False``."""
    milestones = config.get("stage2_lr_milestones", []) if plan.epochs is None and plan.cosine else []
    if milestones:
        warm, decay = config.get("stage2_warmup_epochs", 0), config.get("stage2_lr_decay", 0.1)

        def step(epoch: int, epochs: int) -> float:
            if epoch < warm:
                return (epoch + 1) / warm
            return decay ** sum(epoch >= m for m in milestones)
        return step
    if plan.cosine:
        return lambda epoch, epochs: 0.5 * (1 + math.cos(math.pi * epoch / epochs))
    return lambda epoch, epochs: 1.0


def head_lr_factor(plan: SecondStage, name: str) -> float:
    """The stage-2 learning-rate multiplier of the classifier parameter ``name``: the first of
    ``plan.head_lr_factors`` whose prefix it starts with, else 1."""
    return next((f for prefix, f in plan.head_lr_factors.items() if name.startswith(prefix)), 1.0)


def train_stage2(run: Run, plan: SecondStage, ckpt_path: Path, on_epoch_end: Callable[[], None] | None = None) -> None:
    config, model = run.config, run.model
    epochs = config["stage2_epochs"] if plan.epochs is None else plan.epochs
    lr = config["stage2_lr"] if plan.lr is None else plan.lr

    head = [(n, p) for n, p in model.classifier.named_parameters() if p.requires_grad]
    factors = {n: head_lr_factor(plan, n) for n, _ in head}
    groups = [{"params": [p for n, p in head if factors[n] == f], "lr": lr * f} for f in sorted(set(factors.values()))]
    if plan.train_backbone:
        groups.append({"params": [p for p in model.backbone.parameters() if p.requires_grad],
                       "lr": plan.backbone_lr if plan.backbone_lr is not None else lr})
    groups = [g for g in groups if g["params"]]
    if not groups or epochs == 0:
        run.pm.hook.ltbench_stage_end(run=run, stage=2)
        return
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=plan.momentum, weight_decay=plan.weight_decay)
    base_lrs = [g["lr"] for g in optimizer.param_groups]

    schedule = stage2_schedule(config, plan)

    def set_lr(epoch: int) -> None:
        factor = schedule(epoch, epochs)
        for g, base in zip(optimizer.param_groups, base_lrs):
            g["lr"] = base * factor

    labels = run.train_labels if plan.labels is None else np.asarray(plan.labels)
    run.shard_batches = plan.data_parallel
    features = run.train_features
    if features is not None:
        on_device = torch.as_tensor(labels, device=run.device)

        def make_batch(idx: torch.Tensor) -> Batch:
            where = idx.to(run.device, non_blocking=True)
            return Batch(labels=on_device[where], features=features[where.to(features.device)], indices=idx)
    else:
        make_batch = image_batch(run, labels)
    _train_epochs(run, 2, epochs, optimizer, set_lr, labels, make_batch, plan.batch_size or config["stage2_batch_size"],
                  ckpt_path, on_epoch_end, frozen_backbone=not (plan.train_backbone or plan.update_bn_statistics))


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
        from ltbench.backbones import load_pretrained

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
