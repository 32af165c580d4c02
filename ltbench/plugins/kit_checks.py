"""The testing kit's checks of the other plugin kinds and of devices: :func:`check_dataset`,
:func:`check_backbone` and :func:`check_device` (public as ``ltbench.api``'s; imported on first use). The method
checks and the catalog helpers they build on are :mod:`ltbench.plugins.testing`'s."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ltbench.data.split import DatasetSpec, LTData
from ltbench.grid.plan import Cell, plan_grid
from ltbench.plugins.catalog import Catalog, build_catalog
from ltbench.plugins.method import Method
from ltbench.grid.runner import execute
from ltbench.plugins.testing import (CPU, _catalog_for, _classes_apart, _first_difference, _first_loss_difference,
                                      _interrupt_and_resume, _losses, _run_dir, _same, _saved_predictions, catalog_with,
                                      run_methods)
from ltbench.training.backbones import BackboneSpec


# ---------------------------------------------------------------------------------------------------------------
# A method on another device


def check_device(cls: type[Method], output: Path, settings: dict[str, Any] | None = None,
                 catalog: Catalog | None = None, device: str = "cuda", per_class_tolerance: int = 2
                 ) -> dict[str, Any]:
    """Run ``cls`` on ``device`` (CUDA) as on the CPU, where a tensor left on the wrong device fails. Without
    the device it is skipped with the reason (``pytest.skip``; ``unittest.SkipTest`` where pytest is not
    installed), so a test suite runs it everywhere and it checks where a GPU is.

    1. a smoke run on ``device``, interrupted after its first epoch and resumed, completes: every hook runs on
       the device's tensors, also with method states restored from a checkpoint (which the core loads to the
       CPU: a state that must live on the device is moved there by the method);
    2. the CPU-trained model, loaded on ``device`` (its method states too, as ``ltbench eval`` loads them)
       predicts the test images as on the CPU: per class, the images predicted right within
       ``per_class_tolerance`` of the CPU's (the device computes in bfloat16 autocast, so a few may flip).

    Training on the device is not compared with the CPU: its augmentation draws from the device's generator.
    Returns the device run's record."""
    device_ = torch.device(device)
    reason = _unavailable(device_)
    if reason:
        _skip(f"{reason}: check_device runs {cls.name} on {device} and compares it with the CPU; run it where "
              f"torch sees that device")
    output = Path(output)
    catalog = catalog or _catalog_for(cls)
    (cell,) = plan_grid([cls.name], ["synthetic-lt"], [0], "smoke", settings=dict(settings or {}), catalog=catalog)
    on_cpu = execute(cell, output / "cpu", CPU, log=lambda m: None, catalog=catalog)
    assert on_cpu["status"] == "completed", f"{cls.name}: the CPU run {on_cpu['status']}: {on_cpu['error']}"
    interrupted, on_device = _interrupt_and_resume(catalog, cell, output / "device", 1, device_)
    assert on_device["status"] == "completed", \
        f"{cls.name}: the run on {device} {on_device['status']}: {on_device['error']}"
    assert interrupted, f"{cls.name}: the run on {device} was not interrupted after its first epoch"
    assert [[k for k, _ in e] for e in _losses(on_device)] == [[k for k, _ in e] for e in _losses(on_cpu)], \
        f"{cls.name}: on {device} it logs other loss terms or epochs than on the CPU"
    labels, cpu_predictions = _saved_predictions(output / "cpu")
    try:
        predictions = _predict_saved(catalog, cell, _run_dir(output / "cpu"), device_, output / "evaluated")
    except Exception as exc:  # noqa: BLE001 - whatever fails is the method's, and is named
        raise AssertionError(f"{cls.name}: the CPU-trained model, loaded and evaluated on {device}, fails: "
                             f"{type(exc).__name__}: {exc}") from exc
    apart = _classes_apart(labels, cpu_predictions, predictions, per_class_tolerance)
    assert not apart, (f"{cls.name}: the CPU-trained model predicts differently on {device}: {len(apart)} classes "
                       f"are more than {per_class_tolerance} test images apart ({'; '.join(apart[:3])}, right on "
                       f"the CPU against on {device})")
    return on_device


def _unavailable(device: torch.device) -> str | None:
    """Why ``device`` cannot be used here (``CUDA is not available``), or None."""
    if device.type == "cpu":
        return None
    if device.type == "cuda" and not torch.cuda.is_available():
        return "CUDA is not available"
    try:
        torch.zeros(1, device=device)
    except Exception as exc:  # noqa: BLE001 - any failure means the device is not there
        return f"device {device} is not available ({type(exc).__name__}: {exc})"
    return None


def _skip(reason: str) -> None:
    """Skip the calling test with ``reason``: ``pytest.skip``, or ``unittest.SkipTest`` without pytest."""
    try:
        import pytest
    except ImportError:
        import unittest

        raise unittest.SkipTest(reason) from None
    pytest.skip(reason)


def _predict_saved(catalog: Catalog, cell: Cell, run_dir: Path, device: torch.device, out_dir: Path) -> np.ndarray:
    """The test predictions of the model saved in ``run_dir``, rebuilt on ``device`` as ``ltbench eval`` rebuilds
    it (the methods' states loaded, the stage-2 classifier built by the methods)."""
    from ltbench.results.records import MODEL_FILE
    from ltbench.training import checkpoints
    from ltbench.training.evaluate import evaluate
    from ltbench.training.hooks import build_classifier
    from ltbench.training.run import build_run

    saved = checkpoints.load(run_dir / MODEL_FILE)
    run = build_run(catalog, cell.dataset, cell.data, cell.config, cell.seed, device, out_dir, log=lambda m: None)
    for method in run.methods:
        method.load_state_dict(saved["methods"].get(method.name, {}))
    if saved["stages"] == 2:
        run.stage = 2
        run.model.classifier = build_classifier(run, 2, run.model.num_features, run.model.classifier).to(device)
    run.model.load_state_dict(saved["model"])
    run.stage, run.epoch = 0, 0
    return np.asarray(evaluate(run, cell.data.x_test, cell.data.y_test).predictions)


# ---------------------------------------------------------------------------------------------------------------
# Dataset and backbone plugins


def check_dataset(spec: DatasetSpec, output: Path, data_root: str | None = None,
                  imbalance_factor: float | None = None, train_counts: Sequence[int] | None = None,
                  val_counts: int | Sequence[int] | None = None, test_counts: int | Sequence[int] | None = None,
                  every_class_in_test: bool = True, shared_images: int = 0, stream_images: int = 32,
                  method: str | None = "ce", budget: str = "smoke", catalog: Catalog | None = None) -> LTData:
    """Check a dataset plugin's ``spec``: load it from ``data_root`` at ``imbalance_factor`` (default: the spec's)
    and require what every dataset must give; raises ``AssertionError`` naming what failed, and returns the
    loaded data.

    1. **splits**: what ``load`` returns passes the core's checks (images of the declared shape, one label per
       image, every class with training images); labels are integers in ``0..num_classes-1`` in every split;
       every class has test images (``every_class_in_test``); the classes without validation images are the
       ones ``info["classes_without_val"]`` names, where it names them; ``mean``/``std`` give one value per
       channel; ``val_counts`` and ``test_counts`` (per class, or one number for every class), where given,
       are the counts;
    2. **disjoint**: no image (by its pixels; by its file for images on disk) is in two splits (up to
       ``shared_images``, for a source with exact duplicates);
    3. **class counts**: the training counts are ``train_counts`` where given, else (an imbalance factor above
       0) the exponential profile of that factor from the largest class (``exponential_counts``), in any
       class order;
    4. **determinism**: a second load gives identical splits, labels, classes and normalisation;
    5. **streaming**: the first ``stream_images`` images of each split, decoded as the streaming store decodes
       image files, are the arrays ``load`` returned (written as PNG and read back), or, for images on disk,
       are decoded alike twice at the size the data and the spec declare;
    6. ``method`` (``ce``) trains on it by name at ``budget`` (the spec's ``smoke``), through
       :func:`catalog_with` (a spec whose name is installed runs as installed); ``None`` skips it.
    """
    output = Path(output)
    assert isinstance(spec, DatasetSpec), f"check_dataset expects a DatasetSpec, got {type(spec).__name__}"
    factor = spec.default_imbalance_factor if imbalance_factor is None else float(imbalance_factor)
    who = f"dataset {spec.name!r}"
    data = _load_dataset(spec, data_root, factor, who)
    again = _load_dataset(spec, data_root, factor, who)
    classes = int(data.num_classes)

    # 1. splits
    for split in ("train", "val", "test"):
        y = np.asarray(getattr(data, f"y_{split}"))
        assert len(y) == 0 or np.issubdtype(y.dtype, np.integer), \
            f"{who}: y_{split} holds {y.dtype} labels; labels are integers (int64) 0..{classes - 1}"
        outside = np.unique(y[(y < 0) | (y >= classes)]) if len(y) else []
        assert len(outside) == 0, (f"{who}: y_{split} holds labels outside 0..{classes - 1}: "
                                   f"{', '.join(map(str, outside[:5]))} (num_classes is {classes})")
    counts = {split: np.bincount(np.asarray(getattr(data, f"y_{split}"), dtype=np.int64), minlength=classes)
              for split in ("train", "val", "test")}
    if every_class_in_test:
        missing = np.flatnonzero(counts["test"] == 0)
        assert not len(missing), (f"{who}: classes {', '.join(map(str, missing[:10]))} have no test image, so their "
                                  f"accuracy cannot be measured (pass every_class_in_test=False where that is so)")
    if "classes_without_val" in data.info:
        said, found = sorted(int(c) for c in data.info["classes_without_val"]), \
            [int(c) for c in np.flatnonzero(counts["val"] == 0)]
        assert said == found, (f"{who}: info['classes_without_val'] names classes {said[:10]}, but the classes "
                               f"without a validation image are {found[:10]}")
    assert len(data.mean) == len(data.std) == data.channels and all(s > 0 for s in data.std), \
        (f"{who}: mean {tuple(data.mean)} and std {tuple(data.std)} must give one value per channel "
         f"({data.channels}), std above 0")
    assert not data.class_names or len(data.class_names) == classes, \
        f"{who}: {len(data.class_names)} class names for {classes} classes"
    for split, expected in (("val", val_counts), ("test", test_counts)):
        if expected is not None:
            want = np.full(classes, int(expected)) if isinstance(expected, (int, np.integer)) else np.asarray(expected)
            assert np.array_equal(counts[split], want), (f"{who}: the {split} split has {counts[split].tolist()} "
                                                         f"images per class, expected {want.tolist()}")

    # 2. disjoint splits
    keys = {split: _image_keys(getattr(data, f"x_{split}")) for split in ("train", "val", "test")}
    for a, b in (("val", "train"), ("test", "train"), ("test", "val")):
        index = {k: i for i, k in enumerate(keys[b])}
        shared = [(i, index[k]) for i, k in enumerate(keys[a]) if k in index]
        named = {"train": "training", "val": "validation", "test": "test"}
        assert len(shared) <= shared_images, (
            f"{who}: the {named[a]} split shares {len(shared)} images with the {named[b]} split ({a} image "
            f"{shared[0][0]} is {b} image {shared[0][1]}); the splits must be disjoint")

    # 3. class counts
    if train_counts is not None:
        assert np.array_equal(counts["train"], np.asarray(train_counts)), \
            f"{who}: the training split has {counts['train'].tolist()} images per class, expected {list(train_counts)}"
    elif factor > 0:
        from ltbench.data.split import exponential_counts
        from ltbench.errors import ConfigError

        try:
            profile = exponential_counts(int(counts["train"].max()), classes, factor)
        except ConfigError as exc:
            raise AssertionError(f"{who}: its largest class has {counts['train'].max()} training images, too few "
                                 f"for the exponential profile of imbalance factor {factor:g}: {exc}") from exc
        got = sorted(counts["train"].tolist(), reverse=True)
        assert got == sorted(profile, reverse=True), (
            f"{who}: the training counts {got} (largest first) do not follow the exponential profile of imbalance "
            f"factor {factor:g} from {profile[0]} images, {sorted(profile, reverse=True)}; pass train_counts= where "
            f"the dataset declares another profile")

    # 4. determinism
    for field_ in ("num_classes", "class_names", "mean", "std"):
        assert _same(getattr(data, field_), getattr(again, field_)), \
            f"{who}: two loads give different {field_}: load must be deterministic"
    for split in ("train", "val", "test"):
        for name in (f"x_{split}", f"y_{split}"):
            one, two = getattr(data, name), getattr(again, name)
            same = list(map(str, one.paths)) == list(map(str, two.paths)) if hasattr(one, "paths") and \
                hasattr(two, "paths") else _same(np.asarray(one), np.asarray(two))
            assert same, (f"{who}: two loads give different {name} (split fingerprints {data.fingerprint} and "
                          f"{again.fingerprint}): load must be deterministic; seed its random draws")

    # 5. streaming
    _check_streamed_images(spec, data, again, output / "files", stream_images, who)

    # 6. a run by name
    if method:
        assert budget in spec.budgets, (f"{who} has no {budget!r} budget to train {method} on (budgets: "
                                        f"{', '.join(spec.budgets)}); give it a smoke budget, or pass method=None")
        if catalog is None:
            catalog = build_catalog()
            if spec.name not in catalog.datasets:
                catalog = catalog_with(spec)
        (record,) = run_methods(catalog, [method], output / "run", dataset=spec.name, budget=budget,
                                data_root=data_root,
                                settings=None if imbalance_factor is None else {"imbalance_factor": str(factor)})
        assert record["status"] == "completed", \
            f"{who}: {method} at budget {budget} {record['status']}: {record['error']}"
    return data


def _load_dataset(spec: DatasetSpec, data_root: str | None, factor: float, who: str) -> LTData:
    """``spec.load`` with the core's checks of what it returns; a refusal is an ``AssertionError`` saying why."""
    from ltbench.data.split import load_checked
    from ltbench.errors import LtbenchError

    try:
        data = load_checked(spec, data_root, factor)
    except LtbenchError as exc:
        raise AssertionError(f"{who}: the core refuses what load returns (or finds nothing): {type(exc).__name__}: "
                             f"{exc}") from exc
    assert isinstance(data, LTData), f"{who}: load returns a {type(data).__name__}, not an LTData"
    return data


def _image_keys(images: Any) -> list[Any]:
    """One key per image that equal images share: the file's path for images on disk, else a hash of the pixels."""
    import hashlib

    if hasattr(images, "paths"):
        return [str(images.path(i)) for i in range(len(images))]
    return [hashlib.sha1(np.ascontiguousarray(image).tobytes()).digest() for image in images]


def _check_streamed_images(spec: DatasetSpec, data: LTData, again: LTData, out: Path, n: int, who: str) -> None:
    """Part 5 of :func:`check_dataset`: the images the streaming store decodes are the data's."""
    import dataclasses

    from ltbench.data.files import export_list_dataset, load_image_folder_lt
    from ltbench.data.stores import make_store

    if n <= 0:
        return

    def decoded(data_: LTData, images: Any) -> torch.Tensor:
        store = make_store(images, spec, data_, CPU, {})
        batches = list(store.eval_batches(n))
        return torch.cat(batches) if batches else torch.zeros(0)

    splits = ("train", "val", "test")
    if not data.streaming:  # written as image files and read back by the streaming store
        head = dataclasses.replace(data, **{f"{k}_{s}": getattr(data, f"{k}_{s}")[:n] for s in splits for k in "xy"})
        files = load_image_folder_lt(str(export_list_dataset(head, out, "dataset", spec.crop_padding, spec.flip,
                                                             log=lambda m: None)), 0.0)
        for split in splits:
            arrays, streamed = decoded(head, getattr(head, f"x_{split}")), decoded(files, getattr(files, f"x_{split}"))
            assert arrays.shape == streamed.shape and torch.equal(arrays, streamed), (
                f"{who}: its {split} images decoded from image files (as the streaming store decodes them) "
                f"differ from the arrays load returns ({tuple(streamed.shape)} against {tuple(arrays.shape)})")
        return
    for split in splits:  # images on disk: decoded alike twice, at the declared size
        files, other = getattr(data, f"x_{split}"), getattr(again, f"x_{split}")
        if not len(files):
            continue
        first = dataclasses.replace(files, paths=list(files.paths[:n]))
        try:
            images = decoded(data, first)
        except Exception as exc:  # noqa: BLE001 - a file that does not decode, or images of several sizes
            raise AssertionError(f"{who}: its first {len(first)} {split} images do not decode as the streaming store "
                                 f"decodes them: {type(exc).__name__}: {exc}") from exc
        declared = (files.channels, *files.image_hw)
        assert tuple(images.shape[1:]) == tuple(declared), (
            f"{who}: its {split} images decode to {tuple(images.shape[1:])} (C, H, W), but the data declare "
            f"{declared} (channels, image_hw)")
        if spec.image_shape and files.transform == "pad-crop-flip":
            h, w, c = spec.image_shape
            assert tuple(images.shape[1:]) == (c, h, w), (
                f"{who}: its {split} images decode to {tuple(images.shape[1:])} (C, H, W), but the spec's "
                f"image_shape is {spec.image_shape} (H, W, C)")
        assert torch.equal(images, decoded(again, dataclasses.replace(other, paths=list(other.paths[:n])))), \
            f"{who}: its first {split} images decode differently from a second load"


def check_backbone(spec: BackboneSpec, output: Path, channels: tuple[int, ...] = (3, 1), image_size: int = 16,
                   method: str | None = "ce", catalog: Catalog | None = None) -> dict[str, Any] | None:
    """Check a backbone plugin's ``spec``; raises ``AssertionError`` naming what failed, and returns the record of
    the first training run (None with ``method=None``).

    1. ``build(in_chans)`` gives an ``nn.Module`` with ``num_features``, ``forward_features`` and
       ``forward_pool``, for each of ``channels`` (grey and RGB);
    2. on a tiny batch of ``image_size`` pixels a side, ``forward_features`` gives a feature map
       ``(B, C, H, W)`` and ``forward_pool`` features ``(B, num_features)``: the width the head is built for;
       in training mode every forward pass reaches some parameter's gradient;
    3. deterministic: two builds under the same seed hold the same tensors, and in eval mode the same images
       give the same features twice (nothing random runs at evaluation);
    4. ``method`` (``ce``) trains with it by name on ``synthetic-lt`` at the smoke budget (``--set
       backbone=NAME``), through :func:`catalog_with` (a spec whose name is installed runs as installed),
       and a second run repeats the first exactly; ``None`` skips it.
    """
    from torch import nn

    from ltbench.training.run import seed_everything

    output = Path(output)
    assert isinstance(spec, BackboneSpec), f"check_backbone expects a BackboneSpec, got {type(spec).__name__}"
    who = f"backbone {spec.name!r}"
    for in_chans in channels:
        built = []
        for _ in range(2):
            seed_everything(0)
            module = spec.build(in_chans)
            assert isinstance(module, nn.Module), \
                f"{who}: build({in_chans}) returns a {type(module).__name__}, not an nn.Module"
            missing = [a for a in ("forward_features", "forward_pool") if not callable(getattr(module, a, None))]
            assert not missing, f"{who}: build({in_chans}) gives a module without {', '.join(missing)}"
            width = getattr(module, "num_features", None)
            assert isinstance(width, int) and width > 0, \
                f"{who}: build({in_chans}) gives a module whose num_features is {width!r}, not a positive int"
            built.append(module)
        difference = _first_difference(built[0].state_dict(), built[1].state_dict())
        assert difference is None, (f"{who}: two builds under the same seed differ in {difference}: initialise "
                                    f"from torch's generator (the run seeds it), not from a seed of its own")
        module, width = built[0], built[0].num_features
        images = torch.randn(4, in_chans, image_size, image_size, generator=torch.Generator().manual_seed(0))
        module.eval()
        with torch.no_grad():
            fmap = module.forward_features(images)
            assert isinstance(fmap, torch.Tensor) and fmap.dim() == 4 and fmap.shape[0] == len(images), (
                f"{who}: forward_features of a ({len(images)}, {in_chans}, {image_size}, {image_size}) batch gives "
                f"{tuple(fmap.shape) if isinstance(fmap, torch.Tensor) else type(fmap).__name__}, not a feature "
                f"map (B, C, H, W)")
            pooled = module.forward_pool(fmap)
            assert isinstance(pooled, torch.Tensor) and tuple(pooled.shape) == (len(images), width), (
                f"{who}: forward_pool gives features of shape "
                f"{tuple(pooled.shape) if isinstance(pooled, torch.Tensor) else type(pooled).__name__}, but "
                f"num_features is {width}: the head would be built for ({len(images)}, {width})")
            twice = module.forward_pool(module.forward_features(images))
            assert torch.equal(pooled, twice), (
                f"{who}: in eval mode the same images give different features twice: something random runs at "
                f"evaluation (F.dropout without training=self.training?)")
        module.train()
        module.forward_pool(module.forward_features(images)).float().square().mean().backward()
        assert any(p.grad is not None for p in module.parameters()), \
            f"{who}: a forward pass in training mode reaches no parameter's gradient"
    if not method:
        return None
    if catalog is None:
        catalog = build_catalog()
        if spec.name not in catalog.backbones:
            catalog = catalog_with(spec)
    settings = {"backbone": spec.name}
    (first,) = run_methods(catalog, [method], output / "run", settings=settings)
    assert first["status"] == "completed", f"{who}: {method} with it {first['status']}: {first['error']}"
    (second,) = run_methods(catalog, [method], output / "again", settings=settings)
    assert _losses(first) == _losses(second) and first["per_class_accuracy"] == second["per_class_accuracy"], \
        f"{who}: two runs of {method} with the same seed train differently" + _first_loss_difference(first, second)
    return first


