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

import gzip
import os
import pickle
import struct
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ltbench.hookspecs import hookimpl
from ltbench.data.split import Budget, DatasetSpec, LTData, check_images, exponential_counts, long_tailed_split
from ltbench.errors import ConfigError, DataNotFoundError


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
    from ltbench.data.files import load_image_folder_lt, load_inat2018, load_oltr_lists

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
