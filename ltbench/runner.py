"""Running a grid of (dataset, method, seed) cells and writing their records.

Everything that can be checked before training is checked first, for the
whole grid: names, options, data. A cell whose ``result.json`` says
``completed`` (or ``diverged``) is skipped unless ``rerun``; an interrupted
cell resumes from its last checkpoint. A cell that fails is recorded as
``failed`` and the grid goes on.
"""

from __future__ import annotations

import json
import resource
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from ltbench import config as config_mod
from ltbench.catalog import Catalog, get_catalog
from ltbench.datasets import DatasetSpec, LTData
from ltbench.engine import (Diverged, Run, _rng_state, _set_rng_state, build_run, evaluate, make_plugin_manager,
                            prepare_stage2, stage1_key, train_stage1, train_stage2)
from ltbench.errors import ConfigError, LtbenchError
from ltbench.records import (RESULT_FILE, SCHEMA_VERSION, atomic_torch_save, atomic_write_json, atomic_write_text,
                             load_result, run_dir, versions)


@dataclass
class Cell:
    dataset: DatasetSpec
    dataset_key: str
    data: LTData
    method: str  # "a" or "a+b"
    seed: int
    config: dict[str, Any]
    budget: str


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
              data_root: str | None = None, catalog: Catalog | None = None) -> list[Cell]:
    """Resolve every cell; raises before any training on unknown names, bad options or missing data."""
    catalog = catalog or get_catalog()
    if not methods:
        raise ConfigError("--methods: give at least one method")
    if not datasets:
        raise ConfigError("--datasets: give at least one dataset")
    if any(s < 0 for s in seeds):
        raise ConfigError(f"--seeds must be non-negative integers, got {seeds}")
    composed = {m: [catalog.method(part.strip()).cls for part in m.split("+")] for m in methods}
    specs = [catalog.dataset(d) for d in datasets]
    every = [cls for classes in composed.values() for cls in classes]
    cells = []
    for spec in specs:
        configs = {m: config_mod.resolve(spec, budget, classes, settings, epochs, imbalance_factor, every)
                   for m, classes in composed.items()}
        for m, classes in composed.items():  # option values a method rejects, and composition conflicts
            make_plugin_manager([cls(**configs[m]["methods"][cls.name]) for cls in classes])
        catalog.backbone(next(iter(configs.values()))["backbone"])
        imb = next(iter(configs.values()))["imbalance_factor"]
        data = spec.load(data_root, imb)
        for m in methods:
            for seed in seeds:
                cells.append(Cell(spec, spec.key(imb), data, m, seed, configs[m], budget))
    return cells


def _peak_memory(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"


def _write_history(run: Run) -> None:
    atomic_write_text(run.out_dir / "metrics.jsonl", "".join(json.dumps(e) + "\n" for e in run.history))


def execute(cell: Cell, output: Path, device: torch.device, rerun: bool = False, log=print,
            catalog: Catalog | None = None, retrained: set[Path] | None = None) -> dict[str, Any]:
    """Run one cell (or skip/resume it) and return its record.

    ``rerun`` retrains the cell, including a shared stage 1 unless that is in ``retrained`` (the shared
    stage-1 models this grid already retrained); the ones it retrains are added there.
    """
    catalog = catalog or get_catalog()
    out = run_dir(output, cell.dataset_key, cell.budget, cell.method, cell.seed)
    result_path = out / RESULT_FILE
    if rerun and out.exists():
        shutil.rmtree(out)
    existing = load_result(result_path)
    if existing and existing["status"] in ("completed", "diverged"):
        log(f"[{cell.method} seed {cell.seed}] {cell.dataset_key}/{cell.budget}: already {existing['status']}, "
            f"skipped (use --rerun to force)")
        return existing
    config_path = out / "config.json"
    if config_path.exists():
        old, new = json.loads(config_path.read_text()), json.loads(json.dumps(cell.config))  # as JSON sees them
        if old != new:
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ConfigError(f"{out} holds a run with a different config (keys: {', '.join(changed)}); "
                              f"pass --rerun to replace it")
    atomic_write_json(config_path, cell.config)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = datetime.now(timezone.utc)
    t_start = time.perf_counter()
    run = build_run(catalog, cell.dataset, cell.data, cell.config, cell.seed, device, out, log=log)
    timing: dict[str, float] = {}
    stage1_info: dict[str, Any] = {}
    plan = None
    status, error, test, val = "completed", None, None, None
    try:
        plain = all(m.plain_stage1 for m in run.methods)
        key = stage1_key(cell.config, cell.data, cell.dataset_key, cell.seed)
        s1_dir = (output / cell.dataset_key / cell.budget / "_stage1" / f"seed{cell.seed}-{key}") if plain else out
        retrained = set() if retrained is None else retrained
        if rerun and plain and s1_dir not in retrained:
            shutil.rmtree(s1_dir, ignore_errors=True)
            retrained.add(s1_dir)
        stage1_info = run_stage1(run, s1_dir, output, timing)
        stage1_info["shared"] = plain
        plan = run.pm.hook.ltbench_second_stage(run=run)
        if plan is not None:
            t2 = time.perf_counter()
            prepare_stage2(run, plan)
            train_stage2(run, plan, out / "checkpoint-stage2.pt", on_epoch_end=lambda: _write_history(run))
            timing["stage2"] = time.perf_counter() - t2
        t3 = time.perf_counter()
        run.stage, run.epoch = 0, 0  # evaluation
        val = evaluate(run, cell.data.x_val, cell.data.y_val)
        test = evaluate(run, cell.data.x_test, cell.data.y_test)
        timing["eval"] = time.perf_counter() - t3
    except Diverged as exc:
        status, error = "diverged", str(exc)
        log(f"[{cell.method} seed {cell.seed}] diverged: {exc}")
    except KeyboardInterrupt:
        log(f"[{cell.method} seed {cell.seed}] interrupted; the next run resumes from the last checkpoint")
        raise
    except LtbenchError as exc:
        status, error = "failed", f"{type(exc).__name__}: {exc}"
        log(f"[{cell.method} seed {cell.seed}] failed: {error}")
    except Exception as exc:  # recorded, and the grid goes on
        status, error = "failed", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        log(f"[{cell.method} seed {cell.seed}] failed: {type(exc).__name__}: {exc}")
    _write_history(run)
    peak, peak_kind = _peak_memory(device)
    extra = {}
    if status == "completed":
        # called one implementation at a time so that each method's fields go under its own name
        for impl in run.pm.hook.ltbench_record.get_hookimpls():
            fields = impl.function(*[{"run": run}[a] for a in impl.argnames])
            if fields:
                extra[impl.plugin_name] = fields
    entries = {m.name: catalog.method(m.name) for m in run.methods}
    record = {
        "schema_version": SCHEMA_VERSION,
        "method": cell.method,
        "methods": [m.name for m in run.methods],
        "dataset": cell.dataset_key,
        "dataset_name": cell.dataset.name,
        "imbalance_factor": cell.config["imbalance_factor"],
        "budget": cell.budget,
        "seed": cell.seed,
        "status": status,
        "error": error,
        "metrics": test.metrics() if test else None,
        "val_metrics": val.metrics() if val else None,
        "per_class_accuracy": test.per_class_accuracy if test else None,
        "train_counts": cell.data.train_counts.tolist(),
        "group_thresholds": dict(cell.data.group_thresholds),
        "group_sizes": test.group_sizes if test else None,
        "val_size": int(len(cell.data.y_val)),
        "test_size": int(len(cell.data.y_test)),
        "split_fingerprint": cell.data.fingerprint,
        "stage1": stage1_info,
        "second_stage": plan.describe() if plan is not None else None,
        "stage_wall_time_s": {k: round(v, 3) for k, v in timing.items()},
        "wall_time_s": round(sum(timing.values()), 3),
        "process_time_s": round(time.perf_counter() - t_start, 3),
        "epochs_completed": len(run.history),
        "peak_memory_mb": round(peak, 1),
        "peak_memory_kind": peak_kind,
        "config": cell.config,
        "versions": versions({n: {"distribution": e.plugin.distribution, "version": e.plugin.version}
                              for n, e in entries.items()}),
        "method_metadata": {n: e.cls.metadata.to_dict() for n, e in entries.items()},
        "device": str(device) if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})",
        "extra": extra,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_json(result_path, record)
    if status == "completed":
        m = record["metrics"]
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        log(f"[{cell.method} seed {cell.seed}] {cell.dataset_key}/{cell.budget}: overall {fmt(m['overall'])} "
            f"many {fmt(m['many'])} medium {fmt(m['medium'])} few {fmt(m['few'])} ({record['wall_time_s']:.0f}s)")
    return record


def run_stage1(run: Run, s1_dir: Path, output: Path, timing: dict[str, float]) -> dict[str, Any]:
    """Train stage 1, or load it when it is already complete in ``s1_dir``."""
    final = s1_dir / "stage1.pt"
    info_path = s1_dir / "stage1.json"
    if final.exists() and info_path.exists():
        state = torch.load(final, weights_only=False)
        info = json.loads(info_path.read_text())
        run.model.load_state_dict(state["model"])
        for m in run.methods:
            m.load_state_dict(state["methods"].get(m.name, {}))
        _set_rng_state(run, state["rng"])
        run.history = list(info["history"])
        timing["stage1"] = info["wall_time_s"]
        reused = info.get("trained_by") != str(run.out_dir.relative_to(output))
        if reused:
            run.log(f"[{run.method_name} seed {run.seed}] stage 1 reused from {s1_dir.relative_to(output)}")
        return {"source": str(s1_dir.relative_to(output)), "reused": reused, "trained_by": info.get("trained_by")}
    t1 = time.perf_counter()
    prior = json.loads((s1_dir / "stage1-progress.json").read_text())["seconds"] if (
        s1_dir / "stage1-progress.json").exists() else 0.0
    ckpt = s1_dir / "checkpoint-stage1.pt"

    def log_progress() -> None:
        _write_history(run)
        atomic_write_json(s1_dir / "stage1-progress.json", {"seconds": prior + time.perf_counter() - t1})

    train_stage1(run, ckpt, on_epoch_end=log_progress)
    seconds = prior + time.perf_counter() - t1
    trained_by = str(run.out_dir.relative_to(output))
    atomic_torch_save({"model": run.model.state_dict(), "methods": {m.name: m.state_dict() for m in run.methods},
                       "rng": _rng_state(run)}, final)
    atomic_write_json(info_path, {"wall_time_s": round(seconds, 3), "history": run.history, "trained_by": trained_by})
    timing["stage1"] = seconds
    return {"source": str(s1_dir.relative_to(output)), "reused": False, "trained_by": trained_by}


def run_grid(cells: list[Cell], output: Path, device: torch.device, rerun: bool = False, log=print,
             catalog: Catalog | None = None) -> list[dict]:
    records, retrained = [], set()
    for i, cell in enumerate(cells, 1):
        log(f"== run {i}/{len(cells)}: {cell.method} on {cell.dataset_key} ({cell.budget}), seed {cell.seed}")
        records.append(execute(cell, output, device, rerun=rerun, log=log, catalog=catalog, retrained=retrained))
    return records


def stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
