"""Planning a grid: its cells (dataset, budget, method composition, seed, resolved configuration), their
run directories and shared stage 1s, and the grid's identity and progress line.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ltbench.data.split import DatasetSpec, LTData, load_checked
from ltbench.errors import ConfigError, LtbenchError, PluginContractError
from ltbench.grid import config as config_mod
from ltbench.plugins.catalog import Catalog, get_catalog
from ltbench.results.records import run_dir
from ltbench.training.hooks import canonical_order, check_composition, make_plugin_manager
from ltbench.training.run import stage1_key


@dataclass
class Cell:
    dataset: DatasetSpec
    dataset_key: str
    data: LTData
    method: str  # "a" or "a+b"
    seed: int
    config: dict[str, Any]
    budget: str
    #: what differs from the budget's defaults, ``{"breadcrumb.alignment": "var"}``; names the variant
    overrides: dict[str, Any] = field(default_factory=dict)
    #: the :func:`plan_grid` arguments that plan this cell alone: small and picklable, so that a worker
    #: process or a cluster job re-plans the cell (and loads its data) itself; see :func:`replan`
    request: dict[str, Any] = field(default_factory=dict)

    @property
    def config_id(self) -> str:
        return config_mod.config_id(self.config)

    @property
    def label(self) -> str:
        """The method, and what differs from the defaults: ``breadcrumb [alignment=var]``."""
        return config_mod.variant_label(self.method, self.overrides)

    def out_dir(self, output: Path) -> Path:
        return run_dir(output, self.dataset_key, self.budget, self.method, self.config_id, self.seed)


def resolve_device(name: str) -> torch.device:
    if name not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def split_methods(spec: str) -> list[str]:
    return [m.strip() for m in spec.split(",") if m.strip()]


def plan_grid(methods: list[str], datasets: list[str], seeds: list[int], budget: str,
              settings: dict[str, Any] | None = None, epochs: int | None = None, imbalance_factor: float | None = None,
              data_root: str | None = None, catalog: Catalog | None = None, download: bool = False,
              log=None) -> list[Cell]:
    """Resolve every cell; raises before any training on unknown names, bad options or missing data.
    ``log`` gets a line per dataset loaded."""
    catalog = catalog or get_catalog()
    if not methods:
        raise ConfigError("--methods: give at least one method")
    if not datasets:
        raise ConfigError("--datasets: give at least one dataset")
    if not seeds:
        raise ConfigError("--seeds: give at least one seed, e.g. --seeds 0,1,2")
    if any(s < 0 for s in seeds):
        raise ConfigError(f"--seeds must be non-negative integers, got {seeds}")
    composed: dict[str, list] = {}
    for written in methods:
        written_classes = [catalog.method(part.strip()).cls for part in written.split("+")]
        check_composition(written_classes)  # before saying anything about its order
        classes = canonical_order(written_classes)
        name = "+".join(cls.name for cls in classes)
        if log and name != written.replace(" ", ""):
            log(f"{written} runs as {name}: no hook is asked of more than one of them in a stage, so the order "
                f"cannot matter and a composition has one canonical name")
        composed.setdefault(name, classes)
    specs = [catalog.dataset(d) for d in datasets]
    every = [cls for classes in composed.values() for cls in classes]
    cells = []
    for name, spec in zip(datasets, specs):
        configs = {m: config_mod.resolve(spec, budget, classes, settings, epochs, imbalance_factor, every)
                   for m, classes in composed.items()}
        ranks = int(os.environ.get("WORLD_SIZE", "1"))  # under torchrun: how many ranks share each batch
        for config in configs.values():
            if ranks > 1 and not config["sync_bn"]:  # per-rank batch-norm statistics: another computation
                config["world_size"] = ranks
        for m, classes in composed.items():  # option values a method rejects, and composition conflicts
            make_plugin_manager([construct(cls, configs[m]["methods"][cls.name]) for cls in classes])
        catalog.backbone(next(iter(configs.values()))["backbone"])
        imb = next(iter(configs.values()))["imbalance_factor"]
        t0 = time.perf_counter()
        if log:
            log(f"loading {spec.key(imb)} ...")
        data = load_checked(spec, data_root, imb, download=download)
        if log:
            log(f"loaded {spec.key(imb)}: {len(data.y_train)} training, {len(data.y_val)} validation, "
                f"{len(data.y_test)} test images ({time.perf_counter() - t0:.1f}s)")
        for m, classes in composed.items():
            changed = config_mod.overrides(configs[m], config_mod.resolve(spec, budget, classes))
            for seed in seeds:
                request = {"methods": [m], "datasets": [name], "seeds": [seed], "budget": budget,
                           "settings": settings, "epochs": epochs, "imbalance_factor": imbalance_factor,
                           "data_root": data_root}
                cells.append(Cell(spec, spec.key(imb), data, m, seed, configs[m], budget, changed, request))
    return cells


def replan(request: dict[str, Any], catalog: Catalog | None = None) -> Cell:
    """The cell a :attr:`Cell.request` describes, planned again (in a worker process or a cluster job)."""
    (cell,) = plan_grid(**request, catalog=catalog)
    return cell


def stage1_dir(cell: Cell, output: Path, catalog: Catalog | None = None) -> Path | None:
    """Where the cell's shared stage 1 lives, or None when one of its methods changes stage 1."""
    catalog = catalog or get_catalog()
    if not all(catalog.method(name).cls.plain_stage1 for name in cell.config["methods"]):
        return None
    key = stage1_key(cell.config, cell.data, cell.dataset_key, cell.seed)
    return output / cell.dataset_key / cell.budget / "_stage1" / f"seed{cell.seed}-{key}"


def construct(cls: type, options: dict[str, Any]):
    """A method instance; an unexpected exception from its constructor is a contract error naming it."""
    try:
        return cls(**options)
    except LtbenchError:
        raise
    except Exception as exc:
        raise PluginContractError(f"method {cls.name!r} failed to construct with options {options}: "
                                  f"{type(exc).__name__}: {exc}") from exc


def grid_id(cells: list[Cell], output: Path) -> str:
    """A grid's id: a hash of its run directories (the name of its plan in ``<output>/_grids/``)."""
    import hashlib

    dirs = [str(c.out_dir(output).relative_to(output)) for c in cells]
    return hashlib.sha256(json.dumps(dirs).encode()).hexdigest()[:12]


def grid_description(cells: list[Cell], output: Path, grid: str | None = None) -> dict[str, Any]:
    """What reporters get as ``grid``: its id (``grid``, else :func:`grid_id`) and its planned runs."""
    runs = [{"run_dir": str(c.out_dir(output)), "variant": c.label, "seed": c.seed, "dataset": c.dataset_key,
             "budget": c.budget, "config_id": c.config_id} for c in cells]
    return {"grid_id": grid or grid_id(cells, output), "output": str(output), "runs": runs}


def grid_progress(done: int, total: int, elapsed: float, trained: list[float]) -> str:
    """``== 3/10 runs done, 4m12s so far; about 9m48s left``."""
    def clock(seconds: float) -> str:
        seconds = int(round(seconds))
        return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"

    left = total - done
    eta = f"about {clock(left * sum(trained) / len(trained))} left" if left and trained else (
        "done" if not left else "no estimate yet")
    return f"== {done}/{total} runs done, {clock(elapsed)} so far; {eta}"


def stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
