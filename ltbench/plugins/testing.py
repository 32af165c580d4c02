"""Helpers for testing ltbench and plugins without installing them, and the conformance checks: :func:`check_method`,
which every built-in method passes, and the checks of a dataset, a backbone and a method on another device. The
pytest fixtures built on them live in :mod:`ltbench.plugins.pytest_plugin`, which imports this module (and torch)
only when a fixture is used."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ltbench.data.split import DatasetSpec, LTData
from ltbench.hookspecs import hookimpl
from ltbench.grid.plan import Cell, plan_grid
from ltbench.grid.runner import execute
from ltbench.plugins.catalog import Catalog, PluginInfo, build_catalog
from ltbench.plugins.method import Method, MethodMetadata
from ltbench.plugins.reporter import Reporter
from ltbench.training.backbones import BackboneSpec

CPU = torch.device("cpu")


def catalog_with(*plugins: type[Method] | type[Reporter] | DatasetSpec | BackboneSpec,
                 plugin_name: str = "test-plugin", reporters: tuple = ()) -> Catalog:
    """A fresh catalog (core + installed entry points) plus ``plugins``: method classes, reporter classes,
    dataset specs (``DatasetSpec``) and backbone specs (``BackboneSpec``), each registered through its kind's
    ``ltbench_register_methods`` / ``_reporters`` / ``_datasets`` / ``_backbones`` hook like any plugin
    (``reporters`` takes reporter classes too). A name that is taken, or anything else, fails the plugin: an
    ``AssertionError`` says why."""
    methods: list[Any] = []
    datasets: list[DatasetSpec] = []
    backbones: list[BackboneSpec] = []
    reporter_classes: list[type] = list(reporters)
    for item in plugins:
        if isinstance(item, DatasetSpec):
            datasets.append(item)
        elif isinstance(item, BackboneSpec):
            backbones.append(item)
        elif isinstance(item, type) and issubclass(item, Reporter):
            reporter_classes.append(item)
        else:  # a method class, or anything else: the catalog's own check names what is wrong with it
            methods.append(item)
    catalog = build_catalog()

    class _Plugin:
        @hookimpl
        def ltbench_register_methods(self, register):
            for cls in methods:
                register(cls)

        @hookimpl
        def ltbench_register_datasets(self, register):
            for spec in datasets:
                register(spec)

        @hookimpl
        def ltbench_register_backbones(self, register):
            for spec in backbones:
                register(spec)

        @hookimpl
        def ltbench_register_reporters(self, register):
            for cls in reporter_classes:
                register(cls)

    catalog.add_plugin(_Plugin(), PluginInfo(plugin_name, __name__, "tests", "0"))
    if catalog.broken:
        raise AssertionError(f"plugins failed to load: {catalog.broken}")
    return catalog


def run_methods(catalog: Catalog, methods: list[str], output: Path, dataset: str = "synthetic-lt",
                seeds: tuple[int, ...] = (0,), budget: str = "smoke", settings: dict[str, Any] | None = None,
                epochs: int | None = None, rerun: bool = False, data_root: str | None = None) -> list[dict]:
    """Run ``methods`` (names, compositions with ``+``) on ``dataset`` at ``budget`` into ``output`` on the CPU
    and return their records, one per method and seed."""
    cells = plan_grid(methods, [dataset], list(seeds), budget, settings=settings, epochs=epochs,
                      data_root=data_root, catalog=catalog)
    return [execute(c, Path(output), torch.device("cpu"), rerun=rerun, log=lambda m: None, catalog=catalog)
            for c in cells]


def build_tiny_run(output: Path, method: str = "ce", settings: dict[str, Any] | None = None,
                   catalog: Catalog | None = None):
    """A built, untrained ``Run`` of ``method`` (a name or a ``+`` composition) on ``synthetic-lt`` at the smoke
    budget, on the CPU: real data, model (its ``ltbench_configure_model`` applied) and plugin manager, for
    calling a hook directly. ``settings`` are ``--set`` keys (``{"focal.gamma": 1}``)."""
    from ltbench.training.run import build_run

    catalog = catalog or catalog_with()
    (cell,) = plan_grid([method], ["synthetic-lt"], [0], "smoke", catalog=catalog,
                        settings={k: str(v) for k, v in (settings or {}).items()})
    return build_run(catalog, cell.dataset, cell.data, cell.config, 0, torch.device("cpu"), Path(output),
                     log=lambda m: None)


# ---------------------------------------------------------------------------------------------------------------
# The conformance check and the pytest plugin for method authors


def _model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    state = {f"param:{k}": v.detach().clone() for k, v in model.named_parameters()}
    state.update({f"grad:{k}": v.grad.detach().clone() for k, v in model.named_parameters() if v.grad is not None})
    state.update({f"buffer:{k}": v.detach().clone() for k, v in model.named_buffers()})
    return state


def check_method(cls: type[Method], output: Path, settings: dict[str, Any] | None = None,
                 compose_with: str | None = "focal", catalog: Catalog | None = None, ranks: int = 0,
                 streaming: bool = False, compose_loss_with: str | None = "mixup") -> dict[str, Any]:
    """Run ``cls`` through the smoke stages on ``synthetic-lt`` and check what every method must do; raises
    ``AssertionError`` naming what failed, and returns the record of the plain run.

    1. it registers (hook contract: markers, signatures, options) and completes a run;
    2. its ``state_dict`` survives the checkpoint format (``weights_only=True``) unchanged;
    3. a run interrupted after a stage-1 epoch resumes to the identical result (losses, per-class accuracy,
       final model); where the method asks for a second stage that trains, so does a run
       interrupted after its first stage-2 epoch (a state of stage 2 that ``state_dict`` leaves out fails here);
    4. its record fields are JSON;
    5. ``ltbench_augment_batch`` leaves parameters, gradients and batch-norm statistics as they were;
    6. it composes with :class:`BroadcastProbe`, a method that only broadcasts, to the identical result (so a
       method that answers the loss is checked too); where it does not answer the loss itself, it also
       composes with ``compose_with`` (a loss method), and where it does, with ``compose_loss_with`` (mixup,
       whose soft targets its loss must take);
    7. ``ranks=2``: :func:`check_distributed` (two gloo processes against one);
    8. ``streaming=True``: :func:`check_streaming` (images decoded from files against the in-memory store).
    """
    from ltbench.training import checkpoints
    from ltbench.training import loop
    from ltbench.training.run import build_run
    from ltbench.training.loop import image_batch

    output = Path(output)
    if catalog is None:  # an installed method (a built-in one) is already in the catalog
        catalog = _catalog_for(cls)
    settings = dict(settings or {})
    (record,) = run_methods(catalog, [cls.name], output / "plain", settings=settings)
    assert record["status"] == "completed", f"{cls.name}: the smoke run {record['status']}: {record['error']}"
    json.dumps(record["extra"])  # 4 (the runner refuses non-JSON fields; this states it)

    # 2. state_dict round trip through the checkpoint format
    (cell,) = plan_grid([cls.name], ["synthetic-lt"], [0], "smoke", settings=settings, catalog=catalog)
    run = build_run(catalog, cell.dataset, cell.data, cell.config, 0, CPU, output / "probe", log=lambda m: None)
    loop.train_stage1(run, output / "probe" / "ckpt.pt")
    for method in run.methods:
        state = method.state_dict()
        path = output / "probe" / f"{method.name}-state.pt"
        checkpoints.save({"state": state}, path)
        fresh = catalog.method(method.name).cls(**cell.config["methods"][method.name])
        fresh.load_state_dict(checkpoints.load(path)["state"])
        again = output / "probe" / f"{method.name}-again.pt"
        checkpoints.save({"state": fresh.state_dict()}, again)
        assert _same(checkpoints.load(path), checkpoints.load(again)), \
            f"{cls.name}: state_dict -> load_state_dict -> state_dict changes the state"

    # 5. augment_batch leaves the model as it was
    run.model.train()
    run.stage, run.epoch = 1, cell.config["epochs"] - 1
    batch = image_batch(run, run.train_labels)(torch.arange(min(32, len(run.train_labels))))
    before = _model_state(run.model)
    run.pm.hook.ltbench_augment_batch(run=run, model=run.model, batch=batch)
    after = _model_state(run.model)
    changed = sorted(k for k in set(before) | set(after) if k not in before or k not in after
                     or not torch.equal(before[k], after[k]))
    assert not changed, f"{cls.name}: ltbench_augment_batch changed the model: {', '.join(changed[:5])}"

    # 3. an interrupted run resumes to the identical result: after a stage-1 epoch, and after a stage-2 one
    stages = [1] + ([2] if any(e.get("stage") == 2 for e in record["history"]) else [])
    for stage in stages:
        where = output / ("resumed" if stage == 1 else f"resumed-stage{stage}")
        interrupted, resumed = _interrupt_and_resume(catalog, cell, where, stage)
        assert interrupted, f"{cls.name}: the run was not interrupted after its first stage-{stage} epoch"
        said = "an interrupted epoch" if stage == 1 else f"an interrupted stage-{stage} epoch"
        assert resumed["status"] == "completed", \
            f"{cls.name}: a run resumed after {said} {resumed['status']}: {resumed['error']}"
        assert resumed["per_class_accuracy"] == record["per_class_accuracy"] and \
            _losses(record) == _losses(resumed), \
            f"{cls.name}: a run resumed after {said} differs from an uninterrupted one" + _first_loss_difference(
                record, resumed)
        difference = _first_difference(_saved_model(output / "plain"), _saved_model(where))
        assert difference is None, (f"{cls.name}: a run resumed after {said} ends with another model than an "
                                    f"uninterrupted one: {difference} differs (a state that state_dict leaves out?)")

    # 6. composes with a method that only broadcasts, to the same result; with a loss method, unless it answers
    #    the loss itself: then with a method that mixes the targets
    if BroadcastProbe.name not in catalog.methods:  # on a copy: the caller's catalog stays as it was passed
        catalog = catalog.copy()
        catalog.add_plugin(_ProbePlugin(), PluginInfo("ltbench-kit-probe", __name__, "ltbench", "0"))
    (probed,) = run_methods(catalog, [f"{cls.name}+{BroadcastProbe.name}"], output / "probed", settings=settings)
    assert probed["status"] == "completed", f"{cls.name}+{BroadcastProbe.name}: {probed['status']}: {probed['error']}"
    assert probed["extra"][BroadcastProbe.name]["epochs_seen"] == len(record["history"]), \
        f"{cls.name}+{BroadcastProbe.name}: the composed method's epoch hooks were not all called"
    assert _losses(probed) == _losses(record) and probed["per_class_accuracy"] == record["per_class_accuracy"], \
        f"{cls.name}+{BroadcastProbe.name}: composed with a method that changes nothing, it trains differently"
    partner = compose_loss_with if callable(getattr(cls, "ltbench_build_loss", None)) else compose_with
    if partner and partner != cls.name:
        (composed,) = run_methods(catalog, [f"{cls.name}+{partner}"], output / "composed", settings=settings)
        assert composed["status"] == "completed", \
            f"{cls.name}+{partner}: {composed['status']}: {composed['error']}"
    if ranks:
        check_distributed(cls, output / "ranks", settings=settings, ranks=ranks, catalog=catalog)
    if streaming:
        check_streaming(cls, output / "streaming", settings=settings, catalog=catalog)
    return record


def _interrupt_and_resume(catalog: Catalog, cell: Cell, output: Path, stage: int,
                          device: torch.device = CPU) -> tuple[bool, dict[str, Any]]:
    """Run ``cell`` into ``output`` on ``device``, stopped as by Ctrl-C right after the checkpoint of its first
    stage-``stage`` epoch, then run it again (which resumes from that checkpoint). Returns whether the first run
    was stopped there, and the second run's record."""
    from ltbench.training import loop

    real_checkpoint = loop._checkpoint
    seen = {"n": 0}

    def interrupt_after_first(run_, path, optimizer):
        real_checkpoint(run_, path, optimizer)
        if run_.stage == stage:
            seen["n"] += 1
            if seen["n"] == 1:
                raise KeyboardInterrupt

    loop._checkpoint = interrupt_after_first
    try:
        try:
            execute(cell, Path(output), device, log=lambda m: None, catalog=catalog)
        except KeyboardInterrupt:
            pass
    finally:
        loop._checkpoint = real_checkpoint
    return seen["n"] == 1, execute(cell, Path(output), device, log=lambda m: None, catalog=catalog)


def _run_dir(output: Path) -> Path:
    """The directory of the one run under ``output`` (the one holding its record)."""
    from ltbench.results.records import RESULT_FILE

    found = sorted(Path(output).rglob(RESULT_FILE))
    assert len(found) == 1, f"expected one run under {output}, found {len(found)}"
    return found[0].parent


def _saved_model(output: Path) -> dict[str, Any]:
    """The model state the one run under ``output`` ended with (its model file; the methods' states there are left
    out: they may hold what differs by nature, such as the seconds a step took)."""
    from ltbench.results.records import MODEL_FILE
    from ltbench.training import checkpoints

    return checkpoints.load(_run_dir(output) / MODEL_FILE)["model"]


def _first_difference(a: Any, b: Any, where: str = "") -> str | None:
    """The first place (``classifier.weight``, ``stats.count``) where ``a`` and ``b`` differ, or None where they
    are equal (as :func:`_same` compares)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return f"{where or 'the state'} (keys {sorted(set(a) ^ set(b))[:5]})"
        for k in a:
            found = _first_difference(a[k], b[k], f"{where}.{k}" if where else str(k))
            if found is not None:
                return found
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            found = _first_difference(x, y, f"{where}[{i}]")
            if found is not None:
                return found
        return None
    return None if _same(a, b) else (where or "the state")


def _first_loss_difference(a: dict[str, Any], b: dict[str, Any]) -> str:
    """``: stage 2 epoch 2 loss_x 0.41 against 0.39``, the first epoch where the records' losses differ."""
    for x, y in zip(a["history"], b["history"]):
        for k in sorted(set(x) | set(y)):
            if k.startswith("loss_") and x.get(k) != y.get(k):
                return f": stage {x.get('stage')} epoch {x.get('epoch')} {k} {y.get(k)} against {x.get(k)}"
    if len(a["history"]) != len(b["history"]):
        return f": {len(b['history'])} epochs against {len(a['history'])}"
    return ": per-class test accuracy"


def _losses(record: dict[str, Any]) -> list[list[tuple[str, float]]]:
    return [[(k, v) for k, v in sorted(e.items()) if k.startswith("loss_")] for e in record["history"]]


class BroadcastProbe(Method):
    """A method that implements broadcast hooks only and changes nothing: it counts the epochs it sees. The
    conformance check composes every method with it; composed, a method must train exactly as alone."""

    name = "ltbench-kit-probe"
    metadata = MethodMetadata(title="The conformance kit's probe: broadcast hooks only, changes nothing",
                              family="test")

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.epochs_seen = 0

    @hookimpl
    def ltbench_epoch_end(self, run, stage, epoch):
        self.epochs_seen += 1

    @hookimpl
    def ltbench_record(self, run):
        return {"epochs_seen": self.epochs_seen}

    def state_dict(self) -> dict[str, Any]:
        return {"epochs_seen": self.epochs_seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs_seen = int(state["epochs_seen"])


class _ProbePlugin:
    @hookimpl
    def ltbench_register_methods(self, register):
        register(BroadcastProbe)


def _catalog_for(cls: type[Method]) -> Catalog:
    installed = build_catalog()
    return installed if getattr(installed.methods.get(cls.name), "cls", None) is cls else catalog_with(cls)


def _run_in_rank(rank: int, world: int, port: int, cls: type[Method], output: Path,
                 settings: dict[str, Any]) -> None:
    import os
    from datetime import timedelta

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(minutes=10))
    try:
        run_methods(_catalog_for(cls), [cls.name], output, settings=settings)
    finally:
        dist.destroy_process_group()


def check_distributed(cls: type[Method], output: Path, settings: dict[str, Any] | None = None, ranks: int = 2,
                      catalog: Catalog | None = None, rtol: float = 1e-4, per_class_tolerance: int = 1
                      ) -> dict[str, Any]:
    """Run ``cls`` in ``ranks`` gloo processes (as ``ltbench run --nproc`` starts them under torchrun, each
    with its share of every global batch) and in one process, with synced BatchNorm, and require the same
    losses (to ``rtol``) and the same test predictions: per class, the number of test images predicted right
    within ``per_class_tolerance`` (one) of one process's. A method whose state must be global (class
    statistics, banks, counters, a prior) and is kept per rank fails here, also where it only changes the
    predictions (a prior counted from the rank's own rows). ``cls`` must be importable by name (defined at a
    module's top level): the processes are spawned. Returns rank 0's record."""
    import socket

    output = Path(output)
    settings = {"sync_bn": "true", **(settings or {})}
    catalog = catalog or _catalog_for(cls)
    (single,) = run_methods(catalog, [cls.name], output / "one", settings=settings)
    assert single["status"] == "completed", f"{cls.name}: the one-process run {single['status']}: {single['error']}"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torch.multiprocessing.spawn(_run_in_rank, args=(ranks, port, cls, output / "ranks", settings), nprocs=ranks,
                                join=True)
    several = json.loads((_run_dir(output / "ranks") / "result.json").read_text())
    assert several["status"] == "completed" and several["world_size"] == ranks, \
        f"{cls.name}: the {ranks}-process run {several['status']}: {several['error']}"
    a, b = _losses(single), _losses(several)
    assert [[k for k, _ in e] for e in a] == [[k for k, _ in e] for e in b], \
        f"{cls.name}: {ranks} processes log other loss terms or epochs than one"
    x, y = np.array([v for e in a for _, v in e]), np.array([v for e in b for _, v in e])
    worst = float(np.max(np.abs(x - y) / np.maximum(np.abs(x), 1e-6))) if len(x) else 0.0
    assert np.allclose(x, y, rtol=rtol, atol=1e-6), \
        f"{cls.name}: {ranks} processes train differently from one (largest relative loss difference {worst:.2e})"
    labels, one = _saved_predictions(output / "one")
    _, many = _saved_predictions(output / "ranks")
    apart = _classes_apart(labels, one, many, per_class_tolerance)
    assert not apart, (f"{cls.name}: {ranks} processes predict differently from one: {len(apart)} classes are more "
                       f"than {per_class_tolerance} test image(s) apart ({'; '.join(apart[:3])}, right in one "
                       f"process against {ranks}); a state kept per rank (a prior from the rank's own rows?) that "
                       f"must be global")
    return several


def _saved_predictions(output: Path) -> tuple[np.ndarray, np.ndarray]:
    """(test labels, predicted classes) of the one run under ``output``, from its predictions file."""
    from ltbench.results.records import PREDICTIONS_FILE

    with np.load(_run_dir(output) / PREDICTIONS_FILE) as saved:
        return np.asarray(saved["labels"]), np.asarray(saved["predictions"])


def _classes_apart(labels: np.ndarray, a: np.ndarray, b: np.ndarray, tolerance: int) -> list[str]:
    """``class 3: 41 of 50 against 12``, for each class whose images predicted right by ``a`` and ``b`` differ
    by more than ``tolerance``."""
    classes = int(max(labels.max(initial=-1), a.max(initial=-1), b.max(initial=-1))) + 1
    right_a = np.bincount(labels[a == labels], minlength=classes)
    right_b = np.bincount(labels[b == labels], minlength=classes)
    total = np.bincount(labels, minlength=classes)
    return [f"class {c}: {right_a[c]} of {total[c]} against {right_b[c]}"
            for c in np.flatnonzero(np.abs(right_a - right_b) > tolerance)]


def check_streaming(cls: type[Method], output: Path, settings: dict[str, Any] | None = None,
                    catalog: Catalog | None = None, workers: int = 0) -> dict[str, Any]:
    """Run ``cls`` on ``synthetic-lt`` from the in-memory store and from image files decoded by the streaming
    store (``workers`` DataLoader processes), and require the identical result: the streaming path trains
    bit for bit as the in-memory one, so a difference is the method's (it reads ``run.train_images`` as an
    array, or assumes the images are in memory). Returns the streamed run's record."""
    import dataclasses

    from ltbench.data.files import export_list_dataset, load_image_folder_lt

    output = Path(output)
    catalog = catalog or _catalog_for(cls)
    (memory,) = plan_grid([cls.name], ["synthetic-lt"], [0], "smoke", settings=settings, catalog=catalog)
    root = export_list_dataset(memory.data, output / "files", "synthetic_lt", memory.dataset.crop_padding,
                               memory.dataset.flip, log=lambda m: None)
    files = load_image_folder_lt(str(root), 0.0)
    files = dataclasses.replace(files, group_thresholds=memory.data.group_thresholds)
    streamed = dataclasses.replace(memory, data=files, config={**memory.config, "workers": workers})
    a = execute(memory, output / "memory", torch.device("cpu"), log=lambda m: None, catalog=catalog)
    b = execute(streamed, output / "streamed", torch.device("cpu"), log=lambda m: None, catalog=catalog)
    assert a["status"] == "completed", f"{cls.name}: the in-memory run {a['status']}: {a['error']}"
    assert b["status"] == "completed", f"{cls.name}: the streaming run {b['status']}: {b['error']}"
    assert _losses(a) == _losses(b) and a["per_class_accuracy"] == b["per_class_accuracy"], \
        f"{cls.name}: trained from image files, it trains differently from the in-memory store"
    return b


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


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if hasattr(a, "shape") and hasattr(a, "dtype"):  # numpy
        return np.array_equal(a, b)
    return a == b or (a != a and b != b)  # NaN equals NaN here
