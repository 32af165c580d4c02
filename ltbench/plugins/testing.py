"""Helpers for testing ltbench and plugins without installing them, and the conformance checks: :func:`check_method`,
which every built-in method passes, and the checks of a dataset, a backbone and a method on another device. The
pytest fixtures built on them live in :mod:`ltbench.plugins.pytest_plugin`, which imports this module (and torch)
only when a fixture is used."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ltbench.data.split import DatasetSpec
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
