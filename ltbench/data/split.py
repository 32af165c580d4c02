"""What a dataset is to ltbench: its registration (``DatasetSpec``, ``Budget``), the long-tailed split
(``LTData``, exponential class counts), the sealing of the test images during training, and the checks
every loaded split passes.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ltbench.errors import ConfigError, DataNotFoundError


#: Shot groups by training count (OLTR / Decoupling convention):
#: many > 100, medium 20..100 inclusive, few < 20.
DEFAULT_GROUP_THRESHOLDS = {"few_below": 20, "many_above": 100}


@dataclass(frozen=True)
class Budget:
    """A training recipe. ``lr_milestones`` are fractions of ``epochs``."""

    backbone: str
    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 2e-4
    warmup_epochs: int = 0
    lr_milestones: tuple[float, ...] = ()
    lr_decay: float = 0.1
    stage2_epochs: int = 10
    stage2_lr: float = 0.1
    stage2_batch_size: int = 128
    #: the schedule of a stage 2 that takes the budget's length (``SecondStage.epochs`` None, ``cosine`` left
    #: on): with no milestones, a cosine from stage2_lr to 0 (Decoupling); with milestones (stage-2 epochs,
    #: 0-based), a linear warm-up over ``stage2_warmup_epochs`` and then x ``stage2_lr_decay`` at each
    #: milestone (BagofTricks-LT's cRT/LWS recipe)
    stage2_warmup_epochs: int = 0
    stage2_lr_milestones: tuple[int, ...] = ()
    stage2_lr_decay: float = 0.1
    eval_batch_size: int = 500
    #: under torchrun: BatchNorm statistics over the global batch, as in a single process (else per rank)
    sync_bn: bool = False
    #: a budget that only shows that runs work: methods with a fixed cost of their own (CAM fusion's 6,400
    #: Phase-II iterations) cut it short
    smoke: bool = False
    #: "step": warm-up, then x lr_decay at each milestone; "cosine": warm-up, then cosine to 0 over the epochs
    schedule: str = "step"
    #: start the backbone from pretrained weights: the library's own (torchvision / timm; downloads when online)
    pretrained: bool = False
    #: ... or from this local state-dict file (offline clusters); loaded with weights_only=True
    pretrained_path: str = ""
    #: streaming datasets with the imagenet transform: the side of the crops the model sees (0: the dataset's)
    image_size: int = 0
    #: execution options: how a run is computed, not what it computes (recorded, not part of its identity)
    #: validation accuracy every this many epochs (and at the last) in metrics.jsonl; 0: only when a hook asks
    val_every: int = 2
    channels_last: bool = False
    compile: bool = False
    #: streaming datasets: DataLoader worker processes that decode images ahead of the training loop
    workers: int = 0
    description: str = ""


#: the keys `--set` and a config file set on the core (a budget's fields and the imbalance factor), as opposed
#: to a method's options
CORE_KEYS = [f.name for f in dataclasses.fields(Budget) if f.name != "description"] + ["imbalance_factor"]


@dataclass
class LTData:
    """A loaded long-tailed dataset: what ``DatasetSpec.load`` returns, three disjoint splits with their labels.

    A dataset plugin builds one from uint8 image arrays ``(N, H, W, C)`` (C is 1 or 3) and int64 labels
    ``0..num_classes-1``; ``exponential_counts`` and ``long_tailed_split`` draw the long-tailed subset and a
    validation split from left-over training images, as the CIFAR-LT datasets do. The core checks what ``load``
    returns before anything trains (images of the spec's ``image_shape``, one label per image, every class with
    training images) and seals the test split while a run trains: methods select and tune on validation only.
    """

    #: the dataset's name as records show it (usually the ``DatasetSpec``'s)
    name: str
    #: the number of classes; labels are ``0..num_classes-1``
    num_classes: int
    #: the long-tailed training images, uint8 ``(N, H, W, C)``
    x_train: np.ndarray
    #: their labels, int64 ``(N,)``
    y_train: np.ndarray
    #: validation images (never test images), for anything that selects or tunes; may be empty
    x_val: np.ndarray
    y_val: np.ndarray
    #: the (usually balanced) test images: only evaluation reads them
    x_test: np.ndarray
    y_test: np.ndarray
    #: the per-channel mean and standard deviation of the pixels in [0, 1], one value per channel
    mean: tuple[float, ...]
    std: tuple[float, ...]
    #: one name per class, for plots and ``ltbench data`` (may be empty)
    class_names: list[str] = field(default_factory=list)
    #: the shot groups by training count: many above ``many_above``, few below ``few_below`` (100 and 20)
    group_thresholds: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_GROUP_THRESHOLDS))
    #: free-form facts for ``ltbench data`` and error messages: ``source`` (where the data came from),
    #: ``imbalance_factor``, ``val_rule``, ``classes_without_val``
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def train_counts(self) -> np.ndarray:
        """The number of training images of each class, ``(num_classes,)``."""
        return np.bincount(self.y_train, minlength=self.num_classes)

    @property
    def streaming(self) -> bool:
        """True when the images stay on disk (the streaming datasets: image-folder-lt, imagenet-lt, ...), false
        for uint8 arrays."""
        from ltbench.data.imagefiles import ImageFiles

        return isinstance(self.x_train, ImageFiles)

    @property
    def channels(self) -> int:
        """The images' channels: 1 (grey) or 3 (RGB)."""
        return self.x_train.channels if self.streaming else self.x_train.shape[-1]

    @functools.cached_property
    def fingerprint(self) -> str:
        """A hash of the training and validation splits (which images, which labels); for images on disk, of
        their paths."""
        h = hashlib.sha256()
        for arr in (self.x_train, self.y_train, self.x_val, self.y_val):
            if hasattr(arr, "paths"):
                h.update("\n".join(map(str, arr.paths)).encode())
            else:
                h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()[:16]

    @functools.cached_property
    def content_fingerprint(self) -> dict[str, str]:
        """What every split holds: for each of ``train``, ``val`` and ``test``, the sha256 of its images and its
        labels, in order (images in memory by their pixels, images on disk by each file's bytes, hashed once and
        cached beside the data: :func:`ltbench.data.imagefiles.file_digests`). Records keep it as ``data_sha256``.
        Unlike :attr:`fingerprint` (training and validation only; image files by their paths), it changes when
        any image or label of any split does."""
        from ltbench.data.imagefiles import ImageFiles, file_digests

        on_disk = [x for x in (self.x_train, self.x_val, self.x_test) if isinstance(x, ImageFiles)]
        digests = dict(zip(map(id, on_disk), file_digests(on_disk)))
        return {split: split_sha256(getattr(self, f"x_{split}"), getattr(self, f"y_{split}"),
                                    digests.get(id(getattr(self, f"x_{split}"))))
                for split in DATA_SPLITS}


#: the splits of a dataset, as ``LTData.content_fingerprint`` (and a record's ``data_sha256``) names them
DATA_SPLITS = ("train", "val", "test")


def split_sha256(images: Any, labels: Any, file_digests: list[str] | None = None) -> str:
    """The sha256 of one split: its images (uint8 arrays by their shape and pixels; image files by the digests of
    their bytes, ``file_digests``, in order) and its labels (as int64), in hex."""
    h = hashlib.sha256()
    if file_digests is not None:
        h.update(f"files {len(file_digests)}\n".encode())
        for digest in file_digests:
            h.update(bytes.fromhex(digest))
    else:
        arr = np.ascontiguousarray(images)
        h.update(f"array {arr.dtype.str} {arr.shape}\n".encode())
        h.update(memoryview(arr).cast("B"))
    y = np.ascontiguousarray(labels, dtype=np.int64)
    h.update(f"labels {len(y)}\n".encode())
    h.update(memoryview(y).cast("B"))
    return h.hexdigest()


class SealedSplit:
    """Stands in for the test arrays while a run trains: any use of it is an error."""

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        from ltbench.errors import LtbenchError

        raise LtbenchError("the test split is not available during training; select and tune on run.data.x_val")

    __len__ = __getitem__ = __iter__ = __array__ = _refuse

    def __getattr__(self, name: str) -> Any:
        return self._refuse()


def sealed_for_training(data: LTData) -> LTData:
    """A view of ``data`` whose test split cannot be read."""
    return dataclasses.replace(data, x_test=SealedSplit(), y_test=SealedSplit())


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset in the catalog, registered with ``ltbench_register_datasets``.

    ``load(data_root, imbalance_factor)`` returns an :class:`LTData`; it must
    raise :class:`ltbench.api.DataNotFoundError` when no copy is found (naming
    where it looked and what it expects there), and never download
    (``download`` does, when the user asks for it with ``--download``).
    ``data_root`` is ``--data-root`` (``None`` when not given). The core
    checks what ``load`` returns: uint8 images of ``image_shape``, one label
    per image, every class with training images. ``budgets`` name the
    training recipes (``--budget``); a ``smoke`` budget lets tests run it.
    """

    name: str
    description: str
    load: Callable[[str | None, float], LTData]
    budgets: dict[str, Budget]
    #: the imbalance factor a run uses unless ``--imbalance-factor`` says otherwise (0: the data's own profile)
    default_imbalance_factor: float = 100.0
    #: the core's training augmentation: pad by this many pixels, crop back at random, and flip when ``flip``
    crop_padding: int = 4
    flip: bool = True
    #: the data is not shipped with the plugin: ``load`` reads it from ``--data-root``
    needs_data_root: bool = False
    #: (height, width, channels) every image must have; ``None`` accepts any HWC size
    image_shape: tuple[int, int, int] | None = None
    #: ``download(root)`` fetches the data into ``root``; only ``--download`` calls it
    download: Callable[[Path], None] | None = None

    def key(self, imbalance_factor: float) -> str:
        """The name used for run directories and leaderboards (imbalance factor 0: the data's natural profile)."""
        return f"{self.name}-natural" if imbalance_factor == 0 else f"{self.name}-if{imbalance_factor:g}"


def load_checked(spec: DatasetSpec, data_root: str | None, imbalance_factor: float,
                 download: bool = False) -> LTData:
    """``spec.load`` with the core's checks: an existing ``--data-root`` (never created), a download only when
    asked for, and data of the shape the dataset declares (:func:`check_data`)."""
    if data_root and not Path(data_root).expanduser().exists():
        raise DataNotFoundError(f"--data-root {data_root} does not exist; ltbench never creates it. Give the "
                                f"directory that holds the data (or create it yourself to --download into it)")
    try:
        data = spec.load(data_root, imbalance_factor)
    except DataNotFoundError:
        if not download:
            raise
        if spec.download is None:
            raise ConfigError(f"--download: dataset {spec.name!r} cannot be downloaded by ltbench") from None
        root = Path(data_root or os.environ.get("LTBENCH_DATA") or Path.home() / ".cache" / "ltbench").expanduser()
        if not data_root:  # ltbench's own cache (or $LTBENCH_DATA) may be made; a --data-root the user named never is
            root.mkdir(parents=True, exist_ok=True)
        spec.download(root)
        data = spec.load(str(root), imbalance_factor)
    check_data(spec, data)
    return data


def check_data(spec: DatasetSpec, data: LTData) -> None:
    """Images HWC uint8 of the declared shape, one label per image, every class with training images."""
    source = f"dataset {spec.name!r} ({data.info.get('source', 'loaded')})"
    for key in ("x_train", "x_val", "x_test"):
        images = getattr(data, key)
        if data.streaming:
            if len(images) and not images.path(0).is_file():
                raise DataNotFoundError(f"{source}: {key}'s first image {images.path(0)} does not exist")
        elif len(images) or key == "x_train":
            check_images(key, images, source, spec.image_shape)
    for x, y in (("x_train", "y_train"), ("x_val", "y_val"), ("x_test", "y_test")):
        if len(getattr(data, x)) != len(getattr(data, y)):
            raise DataNotFoundError(f"{source}: {x} has {len(getattr(data, x))} images but {y} has "
                                    f"{len(getattr(data, y))} labels")
    empty = np.flatnonzero(data.train_counts == 0)
    if len(empty):
        raise ConfigError(f"{source}: {len(empty)} classes have no training image (classes "
                          f"{', '.join(map(str, empty[:10]))}{' ...' if len(empty) > 10 else ''}); "
                          f"lower the imbalance factor")


def exponential_counts(n_max: int, num_classes: int, imbalance_factor: float) -> list[int]:
    """The exponential long-tailed profile (CIFAR-LT's): class ``c`` keeps n_c = int(n_max * (1/IF)^(c/(C-1)))
    training images, class 0 (the head) ``n_max``. A factor below 1 is a ``ConfigError``, as is one that leaves
    a class without an image (the error names the largest factor allowed)."""
    if not imbalance_factor >= 1:
        raise ConfigError(f"imbalance_factor must be >= 1, got {imbalance_factor!r}")
    counts = [int(n_max * (1.0 / imbalance_factor) ** (c / (num_classes - 1))) for c in range(num_classes)]
    empty = sum(n == 0 for n in counts)
    if empty:
        raise ConfigError(f"imbalance_factor {imbalance_factor:g} leaves {empty} of {num_classes} classes without a "
                          f"training image (the head class has {n_max}); the largest imbalance factor allowed "
                          f"is {n_max}")
    return counts


def long_tailed_split(
    labels: np.ndarray, counts: list[int], val_per_class: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Return (train indices, validation indices).

    LDAM-DRW's draw: one ``np.random.seed(seed)``; for each class in label
    order, shuffle the class's indices (ascending) and keep the first n_c.
    Validation takes the next ``val_per_class`` of the same shuffled order, so
    it only ever holds images the long-tailed subset left out (a class with
    no left-over images has no validation images).
    """
    rng = np.random.RandomState(seed)
    train, val = [], []
    for c, n_c in enumerate(counts):
        idx = np.where(labels == c)[0]
        rng.shuffle(idx)
        train.append(idx[:n_c])
        val.append(idx[n_c : n_c + val_per_class])
    return np.concatenate(train), np.concatenate(val)


def check_images(key: str, images: Any, source: Any, shape: tuple[int, int, int] | None = None) -> None:
    """``images`` must be uint8 (N, H, W, C), C 1 or 3, and (H, W, C) == ``shape`` when given."""
    arr = np.asarray(images) if not hasattr(images, "shape") else images
    want = f"(N, {shape[0]}, {shape[1]}, {shape[2]})" if shape else "(N, H, W, C) with C 1 or 3"
    if arr.ndim != 4:
        raise DataNotFoundError(f"{source}: {key} has shape {tuple(arr.shape)}; expected images {want}")
    if arr.dtype != np.uint8:
        raise DataNotFoundError(f"{source}: {key} must be uint8 images, got {arr.dtype}")
    hwc = tuple(int(d) for d in arr.shape[1:])
    if hwc != tuple(shape or hwc) or hwc[2] not in (1, 3):
        hint = ""
        if hwc[0] in (1, 3) and hwc[2] not in (1, 3):
            hint = ("; it looks channels-first (N, C, H, W): ltbench expects channels-last, "
                    "e.g. x.transpose(0, 2, 3, 1)")
        raise DataNotFoundError(f"{source}: {key} has images of shape {hwc}; expected {want}{hint}")
