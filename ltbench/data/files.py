"""File-backed datasets on the streaming path: ``image-folder-lt``, and exporting a dataset to files.

**Layout** (ImageNet-LT's list-file format, which OLTR, Decoupling and their descendants use)::

    ROOT/
      NAME_train.txt        # one "relative/path.png <label>" per line
      NAME_val.txt          # optional: the validation split
      NAME_test.txt
      dataset.json          # optional: mean, std, class_names, transform, image_hw, channels
      ...images...

or an ImageFolder tree ``ROOT/{train,val,test}/<class name>/<image>`` (classes in sorted order). Without
``dataset.json`` the images are normalised with ImageNet's mean and std and get the ``imagenet`` transform
at 224 pixels.

``ltbench data export cifar100-lt --format imagenet-lt-list --out DIR`` writes a dataset's split in that
format (PNG, lossless) with a ``dataset.json`` that keeps its normalisation and its pad-crop-flip
augmentation, so the streaming path can be checked against the in-memory one on real images.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ltbench.data.imagefiles import ImageFiles
from ltbench.errors import DataNotFoundError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SPLITS = ("train", "val", "test")
EXPORT_FORMATS = ("imagenet-lt-list",)


def export_list_dataset(data, out: Path, name: str, crop_padding: int = 4, flip: bool = True, log=print) -> Path:
    """Write ``data`` (an in-memory :class:`ltbench.data.split.LTData`) as PNG files and ImageNet-LT-style list
    files under ``out``. Returns the root."""
    from PIL import Image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        images, labels = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        folder = out / split
        folder.mkdir(exist_ok=True)
        lines = []
        for i, (img, y) in enumerate(zip(images, labels)):
            rel = f"{split}/{i:06d}.png"
            Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img).save(out / rel)
            lines.append(f"{rel} {int(y)}")
        (out / f"{name}_{split}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
        log(f"wrote {len(lines)} {split} images")
    meta = {"name": name, "num_classes": int(data.num_classes), "mean": list(data.mean), "std": list(data.std),
            "class_names": list(data.class_names), "transform": "pad-crop-flip",
            "image_hw": list(int(d) for d in data.x_train.shape[1:3]), "channels": int(data.channels),
            "crop_padding": crop_padding, "flip": flip, "group_thresholds": dict(data.group_thresholds),
            "exported_from": data.info.get("source", data.name)}
    (out / "dataset.json").write_text(json.dumps(meta, indent=2))
    return out


def _read_list(path: Path) -> tuple[list[str], np.ndarray]:
    paths, labels = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DataNotFoundError(f"{path}:{n}: expected '<relative path> <integer label>', got {line!r}")
        paths.append(parts[0])
        labels.append(int(parts[1]))
    return paths, np.asarray(labels, dtype=np.int64)


def _read_tree(root: Path, split: str, classes: list[str]) -> tuple[list[str], np.ndarray]:
    paths, labels = [], []
    folder = root / split
    for c, name in enumerate(classes):
        for f in sorted((folder / name).iterdir()) if (folder / name).is_dir() else []:
            if f.is_file():
                paths.append(str(f.relative_to(root)))
                labels.append(c)
    return paths, np.asarray(labels, dtype=np.int64)


def read_root(root: Path) -> tuple[dict[str, tuple[list[str], np.ndarray]], dict[str, Any]]:
    """The splits (paths relative to ``root``, labels) and ``dataset.json`` (or {}) of a file-backed root."""
    meta = json.loads((root / "dataset.json").read_text()) if (root / "dataset.json").is_file() else {}
    lists = {split: sorted(root.glob(f"*_{split}.txt")) for split in SPLITS}
    if lists["train"]:
        if len(lists["train"]) > 1:
            raise DataNotFoundError(f"{root} holds several training lists ({', '.join(p.name for p in lists['train'])}); "
                                    f"keep one NAME_train.txt per root")
        prefix = lists["train"][0].name[: -len("_train.txt")]
        splits = {}
        for split in SPLITS:
            path = root / f"{prefix}_{split}.txt"
            if split != "val" and not path.is_file():
                raise DataNotFoundError(f"{root}: found {prefix}_train.txt but not {path.name}; expected "
                                        f"{prefix}_train.txt, {prefix}_test.txt and optionally {prefix}_val.txt")
            splits[split] = _read_list(path) if path.is_file() else ([], np.zeros(0, dtype=np.int64))
        return splits, meta
    if (root / "train").is_dir() and (root / "test").is_dir():
        classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
        meta.setdefault("class_names", classes)
        return {split: _read_tree(root, split, classes) for split in SPLITS}, meta
    raise DataNotFoundError(f"{root} is not an image-folder-lt root: expected NAME_train.txt and NAME_test.txt "
                            f"(lines '<relative path> <label>', optionally NAME_val.txt), or train/<class>/ and "
                            f"test/<class>/ folders; found {sorted(p.name for p in root.iterdir())[:10]}")


def load_image_folder_lt(data_root: str | None, imbalance_factor: float):
    """``image-folder-lt``: the root's splits as they are (imbalance factor 0, the natural profile), or the
    training list subsampled to an exponential profile of ``imbalance_factor`` (LDAM-DRW's draw, seed 0)."""
    from ltbench.data.split import LTData, exponential_counts, long_tailed_split

    if not data_root:
        raise DataNotFoundError("image-folder-lt needs --data-root DIR: a folder with NAME_train.txt / "
                                "NAME_test.txt list files or train/ and test/ class folders")
    root = Path(data_root).expanduser()
    splits, meta = read_root(root)
    (tr_paths, y_train), (va_paths, y_val), (te_paths, y_test) = (splits[s] for s in SPLITS)
    if not tr_paths:
        raise DataNotFoundError(f"{root}: the training split is empty")
    num_classes = int(meta.get("num_classes", max(y_train.max(), y_test.max() if len(y_test) else 0) + 1))
    if imbalance_factor:
        counts = exponential_counts(int(np.bincount(y_train).max()), num_classes, imbalance_factor)
        keep, _ = long_tailed_split(y_train, counts, 0)
        tr_paths, y_train = [tr_paths[i] for i in keep], y_train[keep]
    transform = meta.get("transform", "imagenet")
    common = {"transform": transform, "size": int(meta.get("size", 224)), "channels": int(meta.get("channels", 3)),
              "root": str(root), "info": {"image_hw": meta.get("image_hw", [224, 224]),
                                          "crop_padding": int(meta.get("crop_padding", 4)),
                                          "flip": bool(meta.get("flip", True))}}
    return LTData(
        name="image-folder-lt", num_classes=num_classes,
        x_train=ImageFiles(tr_paths, **common), y_train=y_train,
        x_val=ImageFiles(va_paths, **common), y_val=y_val,
        x_test=ImageFiles(te_paths, **common), y_test=y_test,
        mean=tuple(meta.get("mean", IMAGENET_MEAN)), std=tuple(meta.get("std", IMAGENET_STD)),
        class_names=list(meta.get("class_names", [])),
        info={"source": str(root), "natural_profile": not imbalance_factor},
    )


# --------------------------------------------------------------------------
# The seed papers' benchmarks: ImageNet-LT, Places-LT (OLTR list files) and iNaturalist 2018 (COCO-style JSON)
# --------------------------------------------------------------------------

#: list-file datasets: file prefix, classes, and the official line counts of train / val / test
OLTR_LISTS = {
    "imagenet-lt": {"prefix": "ImageNet_LT", "classes": 1000, "totals": {"train": 115_846, "val": 20_000,
                                                                         "test": 50_000},
                    "where": "the ImageNet_LT_*.txt lists from the OLTR / Decoupling repositories (Liu et al. 2019, "
                             "https://github.com/zhmiao/OpenLongTailRecognition-OLTR); images from ILSVRC-2012 "
                             "(https://image-net.org), train/ and val/ as the list paths name them"},
    "places-lt": {"prefix": "Places_LT", "classes": 365, "totals": {"train": 62_500, "val": 7_300, "test": 36_500},
                  "where": "the Places_LT_*.txt lists from the OLTR repository; images from Places365-Standard "
                           "(http://places2.csail.mit.edu/download.html), laid out as the list paths name them"},
}
INAT_TOTALS = {"train": 437_513, "test": 24_426, "classes": 8_142}
INAT_WHERE = ("train2018.json and val2018.json with the train_val2018/ images from the iNaturalist 2018 competition "
              "(https://github.com/visipedia/inat_comp/tree/master/2018; free on AWS Open Data since 2021)")


def _known(found: int, total: int) -> str:
    return f"{found:,} lines" + ("" if found == total else f" (the official file has {total:,})")


_CHECKED: set[tuple] = set()  # (root, index file, its mtime and size, split): already found complete here


def _check_images_exist(root: Path, split: str, paths: list[str], source: str, index: Path) -> None:
    """Every image an index file names exists under ``root``; checked once per process and index file version
    (a grid plans each cell, and ``--jobs`` workers re-plan theirs: one stat per image per process, not per run)."""
    stat = index.stat()
    key = (str(root), str(index), stat.st_mtime_ns, stat.st_size, split)
    if key in _CHECKED:
        return
    missing = [p for p in paths if not (root / p).is_file()]
    if missing:
        raise DataNotFoundError(f"{source}: {len(missing):,} of the {len(paths):,} {split} images the list names are "
                                f"missing under {root} (first: {missing[0]}); the root is partial")
    _CHECKED.add(key)


def load_oltr_lists(name: str, data_root: str | None, size: int = 224):
    """ImageNet-LT or Places-LT from ``DATA_ROOT/<Prefix>_{train,val,test}.txt`` with the images under DATA_ROOT
    at the paths the lists give. The splits are the lists as they are (their natural profile)."""
    from ltbench.data.split import LTData

    spec = OLTR_LISTS[name]
    if not data_root:
        raise DataNotFoundError(f"{name} needs --data-root DIR holding {spec['prefix']}_train.txt, _val.txt, "
                                f"_test.txt and the images they name. Get {spec['where']}.")
    root = Path(data_root).expanduser()
    files = {split: root / f"{spec['prefix']}_{split}.txt" for split in SPLITS}
    absent = [p.name for p in files.values() if not p.is_file()]
    if absent:
        found = [f"{p.name}: {_known(len(p.read_text().splitlines()), spec['totals'][s])}"
                 for s, p in files.items() if p.is_file()]
        raise DataNotFoundError(f"{name}: {root} lacks {', '.join(absent)}; expected "
                                f"{', '.join(p.name for p in files.values())} and the images they name. Found: "
                                f"{'; '.join(found) or 'none of them'}. Get {spec['where']}.")
    splits = {split: _read_list(path) for split, path in files.items()}
    for split, (paths, _) in splits.items():
        _check_images_exist(root, split, paths, f"{name} ({files[split].name}: "
                                                f"{_known(len(paths), spec['totals'][split])})", files[split])
    common = {"transform": "imagenet", "size": size, "channels": 3, "root": str(root)}
    counts = {s: len(p) for s, (p, _) in splits.items()}
    return LTData(
        name=name, num_classes=spec["classes"],
        x_train=ImageFiles(splits["train"][0], **common), y_train=splits["train"][1],
        x_val=ImageFiles(splits["val"][0], **common), y_val=splits["val"][1],
        x_test=ImageFiles(splits["test"][0], **common), y_test=splits["test"][1],
        mean=IMAGENET_MEAN, std=IMAGENET_STD,
        info={"source": str(root), "lines": counts,
              "official": all(counts[s] == spec["totals"][s] for s in SPLITS)},
    )


def inat_validation_rule(labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """iNaturalist 2018 has no separate validation set (its val2018.json is the test set): one training image per
    class with at least 2 is held out (seeded), so every class keeps a training image and nearly every class
    has a validation image. Returns (train indices, validation indices)."""
    rng = np.random.RandomState(seed)
    train, val = [], []
    by_class = np.argsort(labels, kind="stable")  # each class's indices, ascending, in one pass (8,142 classes)
    for idx in np.split(by_class, np.flatnonzero(np.diff(labels[by_class])) + 1):
        idx = idx.copy()
        rng.shuffle(idx)
        cut = 1 if len(idx) >= 2 else 0
        val.append(idx[:cut])
        train.append(idx[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _read_coco(path: Path) -> tuple[list[str], np.ndarray]:
    try:
        meta = json.loads(path.read_text())
        label = {a["image_id"]: int(a["category_id"]) for a in meta["annotations"]}
        images = meta["images"]
        return [im["file_name"] for im in images], np.asarray([label[im["id"]] for im in images], dtype=np.int64)
    except (ValueError, KeyError, TypeError) as exc:
        raise DataNotFoundError(f"{path} is not an iNaturalist COCO-style file (images, annotations with "
                                f"image_id and category_id): {type(exc).__name__}: {exc}") from exc


def load_inat2018(data_root: str | None, size: int = 224):
    """iNaturalist 2018 from ``DATA_ROOT/train2018.json`` and ``val2018.json`` (the test set), images at the
    ``file_name`` paths under DATA_ROOT; validation held out from train by :func:`inat_validation_rule`."""
    from ltbench.data.split import LTData

    if not data_root:
        raise DataNotFoundError(f"inat2018 needs --data-root DIR holding train2018.json, val2018.json and the "
                                f"images. Get {INAT_WHERE}.")
    root = Path(data_root).expanduser()
    absent = [n for n in ("train2018.json", "val2018.json") if not (root / n).is_file()]
    if absent:
        raise DataNotFoundError(f"inat2018: {root} lacks {', '.join(absent)}; expected train2018.json "
                                f"({INAT_TOTALS['train']:,} images) and val2018.json ({INAT_TOTALS['test']:,}, the "
                                f"test set) with the images they name. Get {INAT_WHERE}.")
    paths, labels = _read_coco(root / "train2018.json")
    test_paths, y_test = _read_coco(root / "val2018.json")
    for split, p, index in (("train", paths, "train2018.json"), ("test", test_paths, "val2018.json")):
        _check_images_exist(root, split, p, f"inat2018 ({_known(len(p), INAT_TOTALS[split])} images in {split})",
                            root / index)
    keep, held = inat_validation_rule(labels)
    common = {"transform": "imagenet", "size": size, "channels": 3, "root": str(root)}
    num_classes = int(max(labels.max(), y_test.max()) + 1)
    return LTData(
        name="inat2018", num_classes=num_classes,
        x_train=ImageFiles([paths[i] for i in keep], **common), y_train=labels[keep],
        x_val=ImageFiles([paths[i] for i in held], **common), y_val=labels[held],
        x_test=ImageFiles(test_paths, **common), y_test=y_test,
        mean=IMAGENET_MEAN, std=IMAGENET_STD,
        info={"source": str(root), "validation_rule": "one training image per class with >= 2, seed 0",
              "official": len(paths) == INAT_TOTALS["train"] and len(test_paths) == INAT_TOTALS["test"]},
    )
