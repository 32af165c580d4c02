"""Helpers for testing ltbench and method plugins without installing them, and a pytest plugin for method
authors: fixtures (``tiny_run``, ``tiny_batch``, ``tiny_model``, ``ltbench_catalog``, ``method_check``) and
:func:`check_method`, the conformance check every built-in method passes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ltbench import hookimpl
from ltbench.catalog import Catalog, PluginInfo, build_catalog
from ltbench.method import Method
from ltbench.runner import execute, plan_grid


def catalog_with(*methods: type[Method], plugin_name: str = "test-plugin", reporters: tuple = ()) -> Catalog:
    """A fresh catalog (core + installed entry points) plus ``methods`` and ``reporters``,
    registered through ``ltbench_register_methods``/``ltbench_register_reporters`` like any plugin."""
    catalog = build_catalog()

    class _Plugin:
        @hookimpl
        def ltbench_register_methods(self, register):
            for cls in methods:
                register(cls)

        @hookimpl
        def ltbench_register_reporters(self, register):
            for cls in reporters:
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


# ---------------------------------------------------------------------------------------------------------------
# The conformance check and the pytest plugin for method authors


def _model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    state = {f"param:{k}": v.detach().clone() for k, v in model.named_parameters()}
    state.update({f"grad:{k}": v.grad.detach().clone() for k, v in model.named_parameters() if v.grad is not None})
    state.update({f"buffer:{k}": v.detach().clone() for k, v in model.named_buffers()})
    return state


def check_method(cls: type[Method], output: Path, settings: dict[str, Any] | None = None,
                 compose_with: str | None = "focal", catalog: Catalog | None = None) -> dict[str, Any]:
    """Run ``cls`` through the smoke stages on ``synthetic-lt`` and check what every method must do; raises
    ``AssertionError`` naming what failed, and returns the record of the plain run.

    1. it registers (hook contract: markers, signatures, options) and completes a run;
    2. its ``state_dict`` survives the checkpoint format (``weights_only=True``) unchanged;
    3. a run interrupted after a stage-1 epoch resumes to the identical result;
    4. its record fields are JSON;
    5. ``ltbench_augment_batch`` leaves parameters, gradients and batch-norm statistics as they were;
    6. where it does not answer the loss itself, it composes with ``compose_with`` (a loss method).
    """
    from ltbench import checkpoints, engine
    from ltbench.engine import build_run, image_batch

    output = Path(output)
    if catalog is None:  # an installed method (a built-in one) is already in the catalog
        installed = build_catalog()
        catalog = installed if getattr(installed.methods.get(cls.name), "cls", None) is cls else catalog_with(cls)
    settings = dict(settings or {})
    (record,) = run_methods(catalog, [cls.name], output / "plain", settings=settings)
    assert record["status"] == "completed", f"{cls.name}: the smoke run {record['status']}: {record['error']}"
    json.dumps(record["extra"])  # 4 (the runner refuses non-JSON fields; this states it)

    # 2. state_dict round trip through the checkpoint format
    (cell,) = plan_grid([cls.name], ["synthetic-lt"], [0], "smoke", settings=settings, catalog=catalog)
    run = build_run(catalog, cell.dataset, cell.data, cell.config, 0, torch.device("cpu"), output / "probe",
                    log=lambda m: None)
    engine.train_stage1(run, output / "probe" / "ckpt.pt")
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

    # 3. an interrupted run resumes to the identical result
    real_checkpoint = engine._checkpoint
    calls = {"n": 0}

    def interrupt_after_first(run_, path, optimizer):
        real_checkpoint(run_, path, optimizer)
        calls["n"] += 1
        if calls["n"] == 1 and run_.stage == 1:
            raise KeyboardInterrupt

    engine._checkpoint = interrupt_after_first
    try:
        try:
            run_methods(catalog, [cls.name], output / "resumed", settings=settings)
        except KeyboardInterrupt:
            pass
    finally:
        engine._checkpoint = real_checkpoint
    assert calls["n"] == 1, f"{cls.name}: the run was not interrupted after its first epoch"
    (resumed,) = run_methods(catalog, [cls.name], output / "resumed", settings=settings)
    losses = [[(k, v) for k, v in sorted(e.items()) if k.startswith("loss_")] for e in record["history"]]
    assert resumed["per_class_accuracy"] == record["per_class_accuracy"] and losses == [
        [(k, v) for k, v in sorted(e.items()) if k.startswith("loss_")] for e in resumed["history"]], \
        f"{cls.name}: a run resumed after an interrupted epoch differs from an uninterrupted one"

    # 6. composes with a loss method, unless it answers the loss itself
    if compose_with and not callable(getattr(cls, "ltbench_build_loss", None)):
        (composed,) = run_methods(catalog, [f"{cls.name}+{compose_with}"], output / "composed", settings=settings)
        assert composed["status"] == "completed", \
            f"{cls.name}+{compose_with}: {composed['status']}: {composed['error']}"
    return record


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if hasattr(a, "shape") and hasattr(a, "dtype"):  # numpy
        import numpy as np

        return np.array_equal(a, b)
    return a == b or (a != a and b != b)  # NaN equals NaN here


# pytest plugin (entry point pytest11 = "ltbench = ltbench.testing"): fixtures for method authors

try:
    import pytest
except ImportError:  # pragma: no cover - pytest is not a runtime dependency
    pytest = None

if pytest is not None:

    @pytest.fixture
    def ltbench_catalog():
        """A fresh catalog of every installed plugin; add your own classes with ``catalog_with(MyMethod)``."""
        return catalog_with()

    @pytest.fixture
    def tiny_run(tmp_path):
        """A built (untrained) run of ``ce`` on ``synthetic-lt`` at the smoke budget: a real ``Run`` with a
        tiny model, data and plugin manager, for testing a hook directly."""
        from ltbench.engine import build_run

        catalog = catalog_with()
        (cell,) = plan_grid(["ce"], ["synthetic-lt"], [0], "smoke", catalog=catalog)
        return build_run(catalog, cell.dataset, cell.data, cell.config, 0, torch.device("cpu"), tmp_path,
                         log=lambda m: None)

    @pytest.fixture
    def tiny_batch(tiny_run):
        """A training ``Batch`` of 16 augmented images (and labels) from ``tiny_run``."""
        from ltbench.engine import image_batch

        return image_batch(tiny_run, tiny_run.train_labels)(torch.arange(16))

    @pytest.fixture
    def tiny_model(tiny_run):
        """The ``LTModel`` of ``tiny_run`` (a tiny CNN with a linear head)."""
        return tiny_run.model

    @pytest.fixture
    def method_check(tmp_path):
        """``method_check(MyMethod, settings=None)`` runs :func:`check_method` in a temporary directory."""
        return lambda cls, **kwargs: check_method(cls, tmp_path, **kwargs)
