"""Long-tailed datasets, their splits and their named budgets.

A dataset is a :class:`DatasetSpec` in the catalog; plugins add more through
``ltbench_register_datasets``. Loading one gives an :class:`LTData`: uint8
images in memory (N, H, W, C), integer labels, and three disjoint splits:

* ``train``: the long-tailed training subset;
* ``val``: images the long-tailed subset left out (never test images); used
  for anything that selects or tunes;
* ``test``: the balanced test set; only evaluation reads it.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import os
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ltbench import hookimpl
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


@dataclass
class LTData:
    name: str
    num_classes: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str] = field(default_factory=list)
    group_thresholds: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_GROUP_THRESHOLDS))
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def train_counts(self) -> np.ndarray:
        return np.bincount(self.y_train, minlength=self.num_classes)

    @property
    def streaming(self) -> bool:
        """True when the images stay on disk (:class:`ltbench.imagefiles.ImageFiles`), false for uint8 arrays."""
        from ltbench.imagefiles import ImageFiles

        return isinstance(self.x_train, ImageFiles)

    @property
    def channels(self) -> int:
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
    """A dataset in the catalog.

    ``load(data_root, imbalance_factor)`` returns an :class:`LTData`; it must
    raise :class:`ltbench.errors.DataNotFoundError` when no copy is found,
    and never download (``download`` does, when the user asks for it).
    The core checks what ``load`` returns (:func:`check_data`).
    """

    name: str
    description: str
    load: Callable[[str | None, float], LTData]
    budgets: dict[str, Budget]
    default_imbalance_factor: float = 100.0
    crop_padding: int = 4
    flip: bool = True
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


# --------------------------------------------------------------------------
# Long-tailed profile and subset, exactly as LDAM-DRW draws them.
# --------------------------------------------------------------------------


def exponential_counts(n_max: int, num_classes: int, imbalance_factor: float) -> list[int]:
    """n_c = int(n_max * (1/IF)^(c/(C-1))), class 0 the head."""
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


# --------------------------------------------------------------------------
# CIFAR-10/100
# --------------------------------------------------------------------------

_CIFAR = {
    100: {"npz": "cifar100.npz", "dir": "cifar-100-python", "train": ["train"], "test": ["test"],
          "label_key": b"fine_labels", "mean": (0.5071, 0.4865, 0.4409), "std": (0.2673, 0.2564, 0.2762)},
    10: {"npz": "cifar10.npz", "dir": "cifar-10-batches-py", "train": [f"data_batch_{i}" for i in range(1, 6)],
         "test": ["test_batch"], "label_key": b"labels", "mean": (0.4914, 0.4822, 0.4465),
         "std": (0.2470, 0.2435, 0.2616)},
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles what the official CIFAR python-format files hold (a dict of bytes keys, lists, and numpy
    arrays) and nothing else: a file that asks for any other global is refused before it can run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not part of the CIFAR format")


def _read_cifar_pickles(folder: Path, files: list[str], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in files:
        with open(folder / name, "rb") as fh:
            try:
                entry = _CifarUnpickler(fh, encoding="bytes").load()
            except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
                raise DataNotFoundError(f"{folder / name} is not an official CIFAR python-format file ({exc}); "
                                        f"nothing in it was run. Replace it with the file from the official "
                                        f"archive, or use cifar{{10,100}}.npz") from None
            if not isinstance(entry, dict) or b"data" not in entry or label_key not in entry:
                raise DataNotFoundError(f"{folder / name} is not an official CIFAR python-format file: expected a "
                                        f"dict with b'data' and {label_key!r}")
        xs.append(np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(np.asarray(entry[label_key], dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


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


def _check_arrays(x_train, y_train, x_test, y_test, source: Path, num_classes: int) -> None:
    for key, arr in (("x_train", x_train), ("x_test", x_test)):
        check_images(key, arr, source, (32, 32, 3))
    for key, arr in (("y_train", y_train), ("y_test", y_test)):
        if arr.ndim != 1:
            raise DataNotFoundError(f"{source}: {key} has shape {arr.shape}; expected one label per image")
    if x_train.dtype != np.uint8 or x_test.dtype != np.uint8:
        raise DataNotFoundError(f"{source}: images must be uint8, got {x_train.dtype}/{x_test.dtype}")
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise DataNotFoundError(f"{source}: image and label counts differ")
    if y_train.min() < 0 or y_train.max() >= num_classes:
        raise DataNotFoundError(f"{source}: labels outside 0..{num_classes - 1}")


def load_npz(path: Path, num_classes: int) -> tuple[np.ndarray, ...]:
    """Load ``x_train, y_train, x_test, y_test`` from an .npz without pickle."""
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in data.files]
            if missing:
                raise DataNotFoundError(f"{path} lacks arrays {missing}; it must hold x_train, y_train, x_test, y_test")
            arrays = tuple(np.asarray(data[k]) for k in ("x_train", "y_train", "x_test", "y_test"))
    except DataNotFoundError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, ValueError, EOFError ...
        raise DataNotFoundError(f"{path} is not a readable .npz file ({type(exc).__name__}: {exc})") from exc
    x_train, y_train, x_test, y_test = arrays
    _check_arrays(x_train, y_train, x_test, y_test, path, num_classes)
    return x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64)


def _candidate_roots(data_root: str | None) -> list[Path]:
    roots = []
    if data_root:
        roots.append(Path(data_root).expanduser())
    if os.environ.get("LTBENCH_DATA"):
        roots.append(Path(os.environ["LTBENCH_DATA"]).expanduser())
    return roots


def find_cifar(num_classes: int, data_root: str | None) -> tuple[tuple[np.ndarray, ...], str]:
    """Find CIFAR-10/100 under ``--data-root`` or ``$LTBENCH_DATA``, else download it."""
    meta = _CIFAR[num_classes]
    looked = []
    for root in _candidate_roots(data_root):
        npz, folder = root / meta["npz"], root / meta["dir"]
        if root.is_file() and root.suffix == ".npz":
            return load_npz(root, num_classes), str(root)
        if npz.is_file():
            return load_npz(npz, num_classes), str(npz)
        if folder.is_dir():
            try:
                x_tr, y_tr = _read_cifar_pickles(folder, meta["train"], meta["label_key"])
                x_te, y_te = _read_cifar_pickles(folder, meta["test"], meta["label_key"])
            except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError) as exc:
                raise DataNotFoundError(f"{folder} is not a readable CIFAR-{num_classes} folder: {exc}") from exc
            _check_arrays(x_tr, y_tr, x_te, y_te, folder, num_classes)
            return (x_tr, y_tr, x_te, y_te), str(folder)
        looked += [str(npz), str(folder)]
    where = "\n  ".join(looked) if looked else "(no --data-root given and LTBENCH_DATA is not set)"
    raise DataNotFoundError(
        f"CIFAR-{num_classes} not found. Looked in:\n  {where}\n"
        f"Put either {meta['npz']} (arrays x_train, y_train, x_test, y_test) or the official "
        f"{meta['dir']}/ folder in a directory and pass it with --data-root DIR or LTBENCH_DATA=DIR, "
        f"or add --download to fetch it with torchvision into that directory."
    )


def _cifar_download(num_classes: int) -> Callable[[Path], None]:
    def download(root: Path) -> None:
        import torchvision

        cls = torchvision.datasets.CIFAR100 if num_classes == 100 else torchvision.datasets.CIFAR10
        try:
            cls(str(root), train=True, download=True)
            cls(str(root), train=False, download=True)
        except Exception as exc:
            raise DataNotFoundError(f"downloading CIFAR-{num_classes} into {root} failed "
                                    f"({type(exc).__name__}: {str(exc)[:200]})") from None

    return download


#: the official class orders (CIFAR-100: the fine labels, alphabetical)
CIFAR_CLASSES = {
    10: ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck'],
    100: [
        'apple', 'aquarium_fish', 'baby', 'bear', 'beaver', 'bed', 'bee', 'beetle', 'bicycle', 'bottle', 'bowl',
        'boy', 'bridge', 'bus', 'butterfly', 'camel', 'can', 'castle', 'caterpillar', 'cattle', 'chair',
        'chimpanzee', 'clock', 'cloud', 'cockroach', 'couch', 'crab', 'crocodile', 'cup', 'dinosaur', 'dolphin',
        'elephant', 'flatfish', 'forest', 'fox', 'girl', 'hamster', 'house', 'kangaroo', 'keyboard', 'lamp',
        'lawn_mower', 'leopard', 'lion', 'lizard', 'lobster', 'man', 'maple_tree', 'motorcycle', 'mountain', 'mouse',
        'mushroom', 'oak_tree', 'orange', 'orchid', 'otter', 'palm_tree', 'pear', 'pickup_truck', 'pine_tree',
        'plain', 'plate', 'poppy', 'porcupine', 'possum', 'rabbit', 'raccoon', 'ray', 'road', 'rocket', 'rose',
        'sea', 'seal', 'shark', 'shrew', 'skunk', 'skyscraper', 'snail', 'snake', 'spider', 'squirrel', 'streetcar',
        'sunflower', 'sweet_pepper', 'table', 'tank', 'telephone', 'television', 'tiger', 'tractor', 'train',
        'trout', 'tulip', 'turtle', 'wardrobe', 'whale', 'willow_tree', 'wolf', 'woman', 'worm',
    ],
}


def _cifar_loader(num_classes: int) -> Callable[[str | None, float], LTData]:
    def load(data_root: str | None, imbalance_factor: float) -> LTData:
        (x_train, y_train, x_test, y_test), source = find_cifar(num_classes, data_root)
        counts = exponential_counts(500 if num_classes == 100 else 5000, num_classes, imbalance_factor)
        train_idx, val_idx = long_tailed_split(y_train, counts, val_per_class=20)
        no_val = [c for c in range(num_classes) if not np.any(y_train[val_idx] == c)]
        meta = _CIFAR[num_classes]
        return LTData(
            name=f"cifar{num_classes}-lt",
            num_classes=num_classes,
            x_train=x_train[train_idx], y_train=y_train[train_idx],
            x_val=x_train[val_idx], y_val=y_train[val_idx],
            x_test=x_test, y_test=y_test,
            mean=meta["mean"], std=meta["std"], class_names=list(CIFAR_CLASSES[num_classes]),
            info={"imbalance_factor": imbalance_factor, "source": source,
                  "val_rule": "up to 20 left-out training images per class",
                  "classes_without_val": no_val},
        )

    return load


# --------------------------------------------------------------------------
# Fashion-MNIST-LT (embedded) and synthetic-LT (tests)
# --------------------------------------------------------------------------

FASHION_FILE = "fashion_mnist_lt.npz"


def load_fashion_mnist_lt(data_root: str | None, imbalance_factor: float) -> LTData:
    """The embedded Fashion-MNIST-LT (n_max 500, IF 100); built by
    ``ltbench/data/build_fashion_mnist_lt.py``. Only IF 100 is embedded."""
    del data_root
    if imbalance_factor != 100:
        raise ConfigError(f"imbalance_factor: fashion-mnist-lt is embedded at IF 100 only, got {imbalance_factor:g}")
    with resources.as_file(resources.files("ltbench") / "data" / FASHION_FILE) as path, np.load(path) as d:
        arrays = {k: np.asarray(d[k]) for k in d.files}
    return LTData(
        name="fashion-mnist-lt", num_classes=10,
        x_train=arrays["x_train"], y_train=arrays["y_train"].astype(np.int64),
        x_val=arrays["x_val"], y_val=arrays["y_val"].astype(np.int64),
        x_test=arrays["x_test"], y_test=arrays["y_test"].astype(np.int64),
        mean=(0.2860,), std=(0.3530,),
        class_names=["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                     "Ankle boot"],
        info={"imbalance_factor": 100.0, "source": "embedded (Fashion-MNIST, MIT licence, Zalando SE)",
              "val_rule": "20 left-out training images per class", "classes_without_val": []},
    )


def load_synthetic_lt(data_root: str | None, imbalance_factor: float) -> LTData:
    """Generated 16x16 RGB images: a fixed smooth random pattern per class plus noise.

    The class signal is learnable by a tiny CNN within a few epochs. Counts
    follow the exponential profile with n_max 150 over 10 classes.
    """
    del data_root
    rng = np.random.RandomState(1234)
    num_classes, size = 10, 16
    # smooth (4x4 upsampled) colour patterns: class signal that survives crops and flips
    coarse = rng.uniform(0, 1, size=(num_classes, 4, 4, 3))
    protos = coarse.repeat(size // 4, axis=1).repeat(size // 4, axis=2)

    def draw(counts):
        labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)]).astype(np.int64)
        noise = rng.normal(0, 0.35, size=(len(labels), size, size, 3))
        images = np.clip(protos[labels] * 0.6 + 0.2 + noise, 0, 1)
        return (images * 255).astype(np.uint8), labels

    x_train, y_train = draw(exponential_counts(150, num_classes, imbalance_factor))
    x_val, y_val = draw([10] * num_classes)
    x_test, y_test = draw([50] * num_classes)
    return LTData(
        name="synthetic-lt", num_classes=num_classes, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val,
        x_test=x_test, y_test=y_test, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
        class_names=[f"pattern {c}" for c in range(num_classes)],
        info={"imbalance_factor": imbalance_factor, "source": "generated", "val_rule": "10 per class",
              "classes_without_val": []},
    )


# --------------------------------------------------------------------------
# Budgets
# --------------------------------------------------------------------------

#: The LDAM-DRW recipe (Cao et al. 2019, official ``cifar_train.py``), which BagofTricks-LT's trick gallery
#: uses for every CIFAR-LT row: the setting of the published numbers the board's ``paper`` section compares
#: with. Stage 2, for the methods that take the budget's (cRT, LWS), is BagofTricks-LT's cRT/LWS config
#: (``configs/cao_cifar/two_stage/classifier_balance``), where the cRT/LWS/tau-norm numbers come from.
CIFAR_PAPER = Budget(
    backbone="resnet32", epochs=200, batch_size=128, lr=0.1, weight_decay=2e-4, warmup_epochs=5,
    lr_milestones=(0.8, 0.9), lr_decay=0.01,
    stage2_epochs=30, stage2_lr=0.1, stage2_batch_size=128, stage2_warmup_epochs=5, stage2_lr_milestones=(10, 20),
    stage2_lr_decay=0.1,
    description="LDAM-DRW recipe: ResNet-32, 200 epochs, batch 128, SGD 0.9, lr 0.1 after a 5-epoch linear "
    "warm-up (0.02, 0.04, ... per epoch), x0.01 from epoch 160 and x0.0001 from 180, wd 2e-4; stage 2 as "
    "BagofTricks-LT's cRT/LWS: 30 epochs, batch 128, lr 0.1, 5 warm-up epochs, x0.1 at 10 and 20, wd 5e-4",
)
CIFAR_CPU = Budget(
    backbone="resnet8", epochs=30, batch_size=128, lr=0.1, weight_decay=2e-4, warmup_epochs=1,
    lr_milestones=(0.8, 0.9), lr_decay=0.01, stage2_epochs=10, stage2_lr=0.1,
    description="about 5 minutes a stage 1 on 2 CPU cores: CIFAR ResNet-8, 30 epochs, the paper recipe's shape "
    "(x0.01 at 80 % and 90 %, where DRW switches; wd 2e-4); chosen by measurement (README, leaderboard section)",
)
CIFAR_SMOKE = Budget(backbone="resnet8", epochs=1, batch_size=128, lr=0.05, stage2_epochs=1, smoke=True,
                     description="seconds: one epoch of ResNet-8")


def _cifar_budgets() -> dict[str, Budget]:
    return {"paper": CIFAR_PAPER, "cpu": CIFAR_CPU, "smoke": CIFAR_SMOKE}


@hookimpl
def ltbench_register_datasets(register: Callable[[DatasetSpec], None]) -> None:
    register(DatasetSpec("cifar100-lt", "CIFAR-100-LT (Cao et al. 2019 subset, seed 0); needs CIFAR-100",
                         _cifar_loader(100), _cifar_budgets(), needs_data_root=True, image_shape=(32, 32, 3),
                         download=_cifar_download(100)))
    register(DatasetSpec("cifar10-lt", "CIFAR-10-LT (Cao et al. 2019 subset, seed 0); needs CIFAR-10",
                         _cifar_loader(10), _cifar_budgets(), needs_data_root=True, image_shape=(32, 32, 3),
                         download=_cifar_download(10)))
    register(DatasetSpec(
        "fashion-mnist-lt", "Fashion-MNIST-LT, n_max 500, IF 100, embedded (no set-up)", load_fashion_mnist_lt,
        {"paper": CIFAR_PAPER,
         "cpu": Budget(backbone="resnet8", epochs=20, batch_size=64, lr=0.05, weight_decay=5e-4, warmup_epochs=1,
                       lr_milestones=(0.8,), stage2_epochs=10, stage2_lr=0.05, stage2_batch_size=64,
                       description="a minute or two on 2 CPU cores"),
         "smoke": Budget(backbone="resnet8", epochs=2, batch_size=64, lr=0.05, stage2_epochs=1, smoke=True,
                         stage2_batch_size=64, description="seconds")},
        crop_padding=2, image_shape=(28, 28, 1),
    ))
    from ltbench.filedatasets import load_image_folder_lt, load_inat2018, load_oltr_lists

    def natural_only(load, name: str):
        def loader(root, imbalance_factor):
            if imbalance_factor:
                raise ConfigError(f"{name} has its own long-tailed profile; --imbalance-factor "
                                  f"{imbalance_factor:g} does not apply (leave it out)")
            return load(root)
        return loader

    def large(backbone: str, epochs: int, description: str, **kw) -> Budget:
        """The Decoupling code's large-dataset recipe: batch 512, SGD lr 0.2 cosine, wd 5e-4, stage 2 (cRT and
        kin) 10 epochs at 0.2, 224-pixel crops."""
        recipe = dict(backbone=backbone, epochs=epochs, batch_size=512, lr=0.2, weight_decay=5e-4, schedule="cosine",
                      stage2_epochs=10, stage2_lr=0.2, stage2_batch_size=512, eval_batch_size=256, workers=8,
                      description=description)
        return Budget(**{**recipe, **kw})

    def smoke_large(**kw) -> Budget:
        return Budget(backbone="resnet10", epochs=1, batch_size=64, lr=0.05, stage2_epochs=1, stage2_batch_size=64,
                      eval_batch_size=128, image_size=32, smoke=True,
                      description="seconds on a generated root: shows that runs work, 32-pixel crops", **kw)

    register(DatasetSpec(
        "imagenet-lt", "ImageNet-LT (Liu et al. 2019; OLTR lists, 1000 classes, 115,846 training images; streamed)",
        natural_only(lambda root: load_oltr_lists("imagenet-lt", root), "imagenet-lt"),
        {"paper": large("resnet10", 90, "Decoupling / BLT / Breadcrumb / CAM fusion: ResNet-10, 90 epochs, batch "
                        "512, lr 0.2 cosine, wd 5e-4 (Kang et al. 2020 configs)"),
         "resnext50": large("resnext50_32x4d", 90, "Decoupling's ResNeXt-50 recipe: 90 epochs, batch 512, lr 0.2 "
                            "cosine"),
         "smoke": smoke_large()},
        default_imbalance_factor=0.0, needs_data_root=True,
    ))
    register(DatasetSpec(
        "places-lt", "Places-LT (Liu et al. 2019; OLTR lists, 365 classes, 62,500 training images; streamed)",
        natural_only(lambda root: load_oltr_lists("places-lt", root), "places-lt"),
        {"paper": large("resnet152", 30, "OLTR / Decoupling: ImageNet-pretrained ResNet-152, 30 epochs, batch "
                        "128, lr 0.01 cosine (pretrained=true downloads torchvision's weights; pretrained_path "
                        "for a local file)", batch_size=128, lr=0.01, stage2_lr=0.01, stage2_batch_size=128,
                        pretrained=True),
         "smoke": smoke_large()},
        default_imbalance_factor=0.0, needs_data_root=True,
    ))
    register(DatasetSpec(
        "inat2018", "iNaturalist 2018 (8,142 classes, 437,513 training images; val2018 is the test set; streamed)",
        natural_only(load_inat2018, "inat2018"),
        {"paper": large("resnet50", 90, "Decoupling: ResNet-50, 90 epochs, batch 512, lr 0.2 cosine, wd 5e-4"),
         "paper-200": large("resnet50", 200, "Decoupling: ResNet-50, 200 epochs, batch 512, lr 0.2 cosine"),
         "smoke": smoke_large()},
        default_imbalance_factor=0.0, needs_data_root=True,
    ))
    register(DatasetSpec(
        "image-folder-lt", "your own long-tailed images on disk (list files or class folders; streamed, never "
        "loaded whole); imbalance factor 0 keeps the natural profile", load_image_folder_lt, _cifar_budgets(),
        default_imbalance_factor=0.0, needs_data_root=True,
    ))
    register(DatasetSpec(
        "synthetic-lt", "generated 16x16 images with class signal, 10 classes (for tests)", load_synthetic_lt,
        {"smoke": Budget(backbone="tiny-cnn", epochs=3, batch_size=64, lr=0.05, stage2_epochs=2, stage2_lr=0.05,
                         smoke=True,
                         stage2_batch_size=64, eval_batch_size=500, description="a second or two"),
         "cpu": Budget(backbone="resnet8", epochs=10, batch_size=64, lr=0.05, stage2_epochs=5,
                       stage2_batch_size=64)},
        default_imbalance_factor=30.0, crop_padding=2, image_shape=(16, 16, 3),
    ))


# --------------------------------------------------------------------------
# IDX reader (Fashion-MNIST build script)
# --------------------------------------------------------------------------


def read_idx_gz(path: str | Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    _, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
