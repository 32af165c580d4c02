"""Running a grid of (dataset, method, configuration, seed) cells and writing their records.

Everything that can be checked before training is checked first, for the whole grid: names, options,
data. A cell is identified by its resolved configuration (:func:`ltbench.grid.config.config_id`): a cell
whose ``result.json`` says ``completed`` (or ``diverged``) is skipped unless ``rerun``, an interrupted cell
resumes from its last checkpoint, and a cell with other settings is another run in another directory. A
process holds a file lock on a cell (and on a shared stage 1) while it works on it. Any exception in a cell,
from the core or from any plugin hook, records the cell as ``failed`` with the method and hook named, and the
grid goes on. A completed cell keeps its trained model (``model.pt``) beside its record.
"""

from __future__ import annotations

import json
import platform
import resource
import shutil
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout

from ltbench.errors import CheckpointError, ConfigError, LtbenchError, PluginContractError
from ltbench.grid import config as config_mod
from ltbench.grid.plan import grid_description, grid_progress, stage1_dir
from ltbench.plugins.catalog import Catalog, get_catalog
from ltbench.plugins.method import Method
from ltbench.results import records as records_mod
from ltbench.results.records import (MODEL_FILE, PREDICTIONS_FILE, RESULT_FILE, SCHEMA_VERSION, atomic_write_bytes,
                                     atomic_write_json, atomic_write_text, json_default, load_result, versions)
from ltbench.training import checkpoints, distributed
from ltbench.training.evaluate import evaluate, model_cost
from ltbench.training.loop import (Diverged, _rng_state, _set_rng_state, check_identity, method_states, prepare_stage2,
                                   train_stage1, train_stage2, unstated_machine)
from ltbench.training.run import Run, build_run

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ltbench.grid.plan import Cell


def _peak_memory(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"


def _write_history(run: Run) -> None:
    if not distributed.is_main():
        return
    atomic_write_text(run.out_dir / "metrics.jsonl", "".join(json.dumps(e) + "\n" for e in run.history))


def _blame(exc: BaseException) -> str:
    """``method 'x', hook ltbench_y: `` for the innermost method hook on the traceback, else ``""``."""
    found = ""
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        owner = frame.f_locals.get("self")
        if frame.f_code.co_name.startswith("ltbench_") and isinstance(owner, Method):
            found = f"method {owner.name!r}, hook {frame.f_code.co_name}: "
        tb = tb.tb_next
    return found


class _Lock:
    """One worker per run: an OS file lock beside the directory it guards (released by the OS if the holder dies)."""

    def __init__(self, guarded: Path, what: str, log) -> None:
        guarded.parent.mkdir(parents=True, exist_ok=True)
        self.lock = FileLock(str(guarded) + ".lock")
        self.what, self.log = what, log

    def __enter__(self) -> "_Lock":
        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            self.log(f"{self.what} is in use by another process ({self.lock.lock_file}); waiting for it to finish")
            self.lock.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.lock.release()

    def remove_if(self, finished: bool) -> None:
        """Delete the lock file of a finished run while holding the lock, so that none stays behind. A process
        that was waiting on it still gets the lock (on the deleted file), then finds the run complete, as does
        one that comes later and makes a new file: a finished run is not trained again without --rerun."""
        if finished:
            Path(self.lock.lock_file).unlink(missing_ok=True)


def execute(cell: Cell, output: Path, device: torch.device, rerun: bool = False, log=print,
            catalog: Catalog | None = None, retrained: set[Path] | None = None, reporting=None,
            grid_id: str | None = None) -> dict[str, Any]:
    """Run one cell (or skip/resume it) and return its record.

    The cell's directory is locked while this process works on it: a second process asking for the same run
    waits, then finds it complete. ``rerun`` retrains the cell, including a shared stage 1 unless that is in
    ``retrained`` (the shared stage-1 models this grid already retrained); the ones it retrains are added there.
    """
    out = cell.out_dir(output)
    records_mod.git_commit()  # the checkout's state now, before anything trains (cached for the records)
    if not distributed.is_main():  # under torchrun, rank 0 holds the locks, writes and reports; the others follow
        return _execute_locked(cell, output, out, device, rerun, log, catalog or get_catalog(),
                               set() if retrained is None else retrained, None, grid_id)
    with _Lock(out, f"[{cell.label} seed {cell.seed}] {out}", log) as lock:
        record = _execute_locked(cell, output, out, device, rerun, log, catalog or get_catalog(),
                                 set() if retrained is None else retrained, reporting, grid_id)
        lock.remove_if(record.get("status") == "completed")
        return record


def _execute_locked(cell: Cell, output: Path, out: Path, device: torch.device, rerun: bool, log,
                    catalog: Catalog, retrained: set[Path], reporting=None, grid_id: str | None = None) -> dict[str, Any]:
    tag = f"[{cell.label} seed {cell.seed}]"
    result_path = out / RESULT_FILE
    error, existing = distributed.agree(_check_run_dir(cell, out, rerun) if distributed.is_main() else None)
    if error:
        raise ConfigError(error)
    if existing:
        changed = records_mod.changed_code(existing, catalog)
        if changed and distributed.is_main():  # kept, since retraining is the user's choice, but never silently
            print(f"{tag} {cell.dataset_key}/{cell.budget}: already {existing['status']}, skipped, but its code "
                f"changed since it ran: {'; '.join(changed)}; pass --rerun to retrain it", file=sys.stderr)
        elif not changed:
            log(f"{tag} {cell.dataset_key}/{cell.budget}: already {existing['status']}, skipped (use --rerun to "
                f"force)")
        return existing
    if distributed.is_main():
        atomic_write_json(out / "config.json", cell.config)
        atomic_write_json(out / DATA_FILE, {"dataset": cell.dataset_key, "split_fingerprint": cell.data.fingerprint,
                                            "data_sha256": cell.data.content_fingerprint})
    info = None
    if reporting is not None:
        from ltbench.plugins.reporting import run_info

        history = out / "metrics.jsonl"
        info = run_info(cell, output, grid_id, len(history.read_text().splitlines()) if history.exists() else 0)
        reporting.emit("ltbench_report_run_start", run=info)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = datetime.now(timezone.utc)
    t_start = time.perf_counter()
    timing: dict[str, float] = {}
    eval_images = 0
    stage1_info: dict[str, Any] = {}
    run, plan = None, None
    status, error, test, val, cost = "completed", None, None, None, None
    try:
        run = build_run(catalog, cell.dataset, cell.data, cell.config, cell.seed, device, out, log=log)
        run.machine = device_model(device)
        if reporting is not None:
            run.on_epoch_entry = lambda entry: reporting.emit("ltbench_report_epoch_end", run=info, entry=entry)
        shared = stage1_dir(cell, output, catalog)
        trained_on = {k: cell.data.content_fingerprint[k] for k in STAGE1_SPLITS}  # what a stage 1 learns from
        plain = shared is not None
        s1_dir = shared if plain else out
        # a shared stage 1's checkpoints belong to its key (every method that reuses it), others to the run
        run.checkpoint_identity = f"stage 1 {shared.name}" if plain else f"config {cell.config_id}"
        if plain and distributed.is_main():
            with _Lock(s1_dir, f"{tag} shared stage 1 {s1_dir}", log) as s1_lock:
                if rerun and s1_dir not in retrained:
                    shutil.rmtree(s1_dir, ignore_errors=True)
                    retrained.add(s1_dir)
                stage1_info = run_stage1(run, s1_dir, output, timing, trained_on)
                s1_lock.remove_if((s1_dir / "stage1.pt").exists())
        else:
            stage1_info = run_stage1(run, s1_dir, output, timing, trained_on)
        stage1_info["shared"] = plain
        plan = run.pm.hook.ltbench_second_stage(run=run)
        if plan is not None:
            t2 = time.perf_counter()
            progress = out / "stage2-progress.json"
            prior = distributed.agree(json.loads(progress.read_text())["seconds"] if progress.exists() else 0.0)

            def log_stage2() -> None:
                _write_history(run)
                if distributed.is_main():
                    atomic_write_json(progress, {"seconds": prior + time.perf_counter() - t2})

            prepare_stage2(run, plan)
            run.checkpoint_identity = f"config {cell.config_id}"
            train_stage2(run, plan, out / "checkpoint-stage2.pt", on_epoch_end=log_stage2)
            timing["stage2"] = prior + time.perf_counter() - t2
        if distributed.is_main():  # the trained model and method states as they predict, for `ltbench eval`
            checkpoints.save({"model": run.model.state_dict(), "methods": method_states(run), "config_id":
                              cell.config_id, "stages": 2 if plan is not None else 1}, out / MODEL_FILE)
        t3 = time.perf_counter()
        log(f"{tag} evaluating: {len(cell.data.y_val)} validation and {len(cell.data.y_test)} test images")
        run.stage, run.epoch = 0, 0  # evaluation
        val = evaluate(run, cell.data.x_val, cell.data.y_val)
        test = evaluate(run, cell.data.x_test, cell.data.y_test)
        timing["eval"] = time.perf_counter() - t3
        eval_images = len(cell.data.y_val) + len(cell.data.y_test)
        try:
            cost = model_cost(run)
        except Exception as exc:  # noqa: BLE001 - a cost the counter cannot take is left out, the run stands
            log(f"{tag} parameters and MACs not counted: {type(exc).__name__}: {exc}")
    except Diverged as exc:
        status, error = "diverged", str(exc)
        log(f"{tag} diverged: {exc}")
    except KeyboardInterrupt:
        log(f"{tag} interrupted; the next run resumes from the last checkpoint")
        raise
    except LtbenchError as exc:
        status, error = "failed", f"{_blame(exc)}{type(exc).__name__}: {exc}"
        log(f"{tag} failed: {error}")
    except BaseException as exc:  # any plugin or core fault, sys.exit or another BaseException too: recorded, and
        # the grid goes on (only Ctrl-C, above, stops it)
        status, error = "failed", f"{_blame(exc)}{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        if distributed.is_distributed():
            stopped = distributed.stopped_ranks(output / RANKS_DIR)
            error = (f"rank {distributed.rank()} of {distributed.world_size()}: " + (
                f"rank(s) {', '.join(map(str, stopped))} stopped answering (no heartbeat for over "
                f"{6 * distributed.HEARTBEAT_S} s); " if stopped else "") + error)
        log(f"{tag} failed: {error.splitlines()[0]}")
    parts = dict(run=run, plan=plan, test=test, val=val, stage1_info=stage1_info, timing=timing,
                 eval_images=eval_images, cost=cost, started=started)
    record: dict[str, Any] | None = None
    plots: list[str] = []
    # recording: whatever raises from here on (the history, the record and the libraries it names, the predictions,
    # the plots) is this run's failure, recorded where it still can be, and the grid goes on to the next run
    try:
        if run is not None and (run.history or not (out / "metrics.jsonl").exists()):
            _write_history(run)  # never replaces a written history with an empty one (a run that failed to resume)
        peak, peak_kind = _peak_memory(device)
        extra: dict[str, Any] = {}
        if status == "completed":
            try:
                extra = _record_fields(run)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:
                status, error = "failed", f"{_blame(exc)}{type(exc).__name__}: {exc}"
                log(f"{tag} failed: {error}")
        record = make_record(cell, device, catalog, status, error, **parts, extra=extra,
                             process_time=time.perf_counter() - t_start, peak=(peak, peak_kind))
        rank_failed = status == "failed" and distributed.is_distributed()
        if distributed.is_main() or rank_failed:  # a failing rank writes its own record: rank 0 may be waiting
            if test is not None and test.predictions is not None:
                save_predictions(out / PREDICTIONS_FILE, test, cell.data.y_test)
                record["files"] = {"predictions": PREDICTIONS_FILE}
            atomic_write_json(result_path, record)
        if reporting is not None and not rank_failed:
            from ltbench.results.plots import run_plots

            plots = run_plots(out, record, tag)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        status = "failed"
        rank_failed = distributed.is_distributed()
        record = _recording_failed(exc, record, cell, device, catalog, result_path, tag, log,
                                   write=distributed.is_main() or rank_failed, **parts,
                                   process_time=time.perf_counter() - t_start)
        error = record["error"]
    if rank_failed:
        # the other ranks may be waiting in a collective this rank will never join: end the job now (torchrun
        # stops the others) rather than leave them hanging; the same command resumes the rest of the grid
        raise RankFailed(f"{tag} failed on rank {distributed.rank()}; the job ends here: {error.splitlines()[0]}")
    if reporting is not None:
        reporting.emit("ltbench_report_run_end", run=info, record=record, plots=plots)
    if status == "completed":
        m = record["metrics"]
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        log(f"{tag} {cell.dataset_key}/{cell.budget}: overall {fmt(m['overall'])} "
            f"many {fmt(m['many'])} medium {fmt(m['medium'])} few {fmt(m['few'])} ({record['wall_time_s']:.0f}s)")
    return record


def _recording_failed(exc: BaseException, record: dict[str, Any] | None, cell: Cell, device: torch.device,
                      catalog: Catalog, result_path: Path, tag: str, log, write: bool = True,
                      doing: str = "recording the run", **parts: Any) -> dict[str, Any]:
    """The record of a run whose recording raised ``exc`` after it trained: ``failed``, with the error, and
    written (when ``write``) where it still can be. It is the record made so far, or a new one; where that fails
    too (what failed may be what every record needs, e.g. timm, whose version each record states), the run's
    identity from its cell: what ``ltbench status``, ``show`` and the record reader need."""
    error = f"{doing} failed: {_blame(exc)}{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
    log(f"{tag} failed: {error.splitlines()[0]}")
    if record is not None:
        failed = {**record, "status": "failed", "error": error}
    else:
        try:
            failed = make_record(cell, device, catalog, "failed", error, **parts)
        except KeyboardInterrupt:
            raise
        except BaseException as again:
            started = parts.get("started") or datetime.now(timezone.utc)
            failed = {
                "schema_version": SCHEMA_VERSION, "method": cell.method, "methods": list(cell.config["methods"]),
                "variant": cell.label, "config_id": cell.config_id, "overrides": cell.overrides,
                "dataset": cell.dataset_key, "dataset_name": cell.dataset.name,
                "imbalance_factor": cell.config["imbalance_factor"], "budget": cell.budget, "seed": cell.seed,
                "status": "failed", "metrics": None, "config": cell.config, "split_fingerprint": cell.data.fingerprint,
                "error": f"{error}\n(nor could the full failed record be made: {type(again).__name__}: {again})",
                "device": str(device), "started_at": started.isoformat(timespec="seconds"),
                "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if write:
        try:
            atomic_write_json(result_path, failed)
        except KeyboardInterrupt:
            raise
        except BaseException as again:
            log(f"{tag} its record could not be written either ({type(again).__name__}: {again}); the grid goes on")
    return failed


def make_record(cell: Cell, device: torch.device, catalog: Catalog, status: str, error: str | None, *,
                run: Run | None = None, plan: Any = None, test: Any = None, val: Any = None,
                stage1_info: dict[str, Any] | None = None, timing: dict[str, float] | None = None,
                eval_images: int = 0, extra: dict[str, Any] | None = None, started: datetime | None = None,
                process_time: float = 0.0, peak: tuple[float, str] = (0.0, "none"),
                epochs_completed: int | None = None, cost: dict[str, Any] | None = None) -> dict[str, Any]:
    """A run's ``result.json``; every field is present whatever the status."""
    timing = timing or {}
    started = started or datetime.now(timezone.utc)
    peak, peak_kind = peak
    names = list(cell.config["methods"])
    entries = {n: catalog.method(n) for n in names}
    record = {
        "schema_version": SCHEMA_VERSION,
        "method": cell.method,
        "methods": names,
        "variant": cell.label,
        "config_id": cell.config_id,
        "overrides": cell.overrides,
        "dataset": cell.dataset_key,
        "dataset_name": cell.dataset.name,
        "imbalance_factor": cell.config["imbalance_factor"],
        "budget": cell.budget,
        "budget_description": cell.dataset.budgets[cell.budget].description,
        "seed": cell.seed,
        "status": status,
        "error": error,
        "metrics": test.metrics() if test else None,
        "calibration": test.calibration(cell.data.y_test) if test else None,
        "cost": cost if test else None,
        "val_metrics": val.metrics() if val else None,
        "per_class_accuracy": test.per_class_accuracy if test else None,
        "train_counts": cell.data.train_counts.tolist(),
        "class_names": list(cell.data.class_names) or None,
        "group_thresholds": dict(cell.data.group_thresholds),
        "group_sizes": test.group_sizes if test else None,
        "val_size": int(len(cell.data.y_val)),
        "test_size": int(len(cell.data.y_test)),
        "split_fingerprint": cell.data.fingerprint,
        # what every split holds (images and labels): a run found again on changed contents is refused by it
        "data_sha256": cell.data.content_fingerprint,
        "stage1": stage1_info or {},
        "second_stage": plan.describe() if plan is not None else None,
        "stage_wall_time_s": {k: round(v, 3) for k, v in timing.items()},
        "wall_time_s": round(sum(timing.values()), 3),
        "process_time_s": round(process_time, 3),
        "history": run.history if run is not None else [],
        # what each stage trained with (a reused stage 1 is absent: its own record has it)
        "optimizer": run.optimizers if run is not None else {},
        "backbone_weights": (run.pretrained if run is not None else None) or "random initialisation",
        "epochs_completed": epochs_completed if epochs_completed is not None else len(run.history) if run else 0,
        "peak_memory_mb": round(peak, 1),
        "peak_memory_kind": peak_kind,
        "config": cell.config,
        # each method's code (its class's file and the modules of its package it imports), and the backbone's and
        # dataset's where a plugin registered them: `run` and `status` name any of them that changed since
        "versions": versions({n: records_mod.plugin_identity(e) for n, e in entries.items()},
                             records_mod.components(catalog, cell.dataset, cell.config.get("backbone"))),
        "method_metadata": {n: e.cls.metadata.to_dict() for n, e in entries.items()},
        "device": str(device) if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})",
        "device_model": device_model(device),
        # which machine trained which epochs (a run carried between machines names each; a reused stage 1 its own)
        "machines": run.machines if run is not None else [],
        "world_size": distributed.world_size(),
        "throughput_img_per_s": throughput(run.history if run is not None else [], eval_images, timing.get("eval")),
        "extra": extra or {},
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    record["compute"] = records_mod.compute(record)
    return record


#: under torchrun, each rank's heartbeat (ltbench.training.distributed.start_heartbeat), under the grid's output
RANKS_DIR = "_ranks"


class RankFailed(LtbenchError):
    """A run failed on one rank of a torchrun job: the job ends, since the others cannot go on without it."""


#: beside config.json in a run directory: the data the run trains on, checked when it resumes or is found done
DATA_FILE = "data.json"


def _check_run_dir(cell: Cell, out: Path, rerun: bool) -> tuple[str | None, dict[str, Any] | None]:
    """(an error, or None; the finished record to return instead of running, or None)."""
    if rerun and out.exists():
        shutil.rmtree(out)
    config_path = out / "config.json"
    if config_path.exists():
        old, new = config_mod.identity(json.loads(config_path.read_text())), config_mod.identity(cell.config)
        if old != new:
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            return (f"{out} holds a run with a different config (keys: {', '.join(changed)}); "
                    f"pass --rerun to replace it"), None
    existing = load_result(out / RESULT_FILE)
    if existing and config_mod.identity(existing.get("config", {})) != config_mod.identity(cell.config):
        return f"{out / RESULT_FILE} is the record of another configuration; pass --rerun to replace it", None
    # the same configuration on other data (another copy or root of the dataset) is another run
    trained_on = existing.get("split_fingerprint") if existing else None
    if trained_on is None and (out / DATA_FILE).exists():
        trained_on = json.loads((out / DATA_FILE).read_text()).get("split_fingerprint")
    if trained_on is not None and trained_on != cell.data.fingerprint:
        return (f"{out} holds a run of {cell.dataset_key} trained on other data (split fingerprint {trained_on}; "
                f"the data loaded now gives {cell.data.fingerprint}): another copy or root of the dataset was "
                f"used. Give this data its own --output, or pass --rerun to replace that run"), None
    # ... and so is the same split with other contents (images rewritten in place, another test set)
    changed = _other_contents(cell, out, existing)
    if changed:
        return changed, None
    if existing and existing["status"] in ("completed", "diverged"):
        return None, existing
    return None, None


def _other_contents(cell: Cell, out: Path, existing: dict[str, Any] | None) -> str | None:
    """Why the run in ``out`` was made on other contents than the data loaded now, or None. The record's
    ``data_sha256`` (else ``data.json``'s, for a run that has not finished) must be the data's
    :attr:`~ltbench.data.split.LTData.content_fingerprint`. A record from before ``data_sha256`` is compared by what
    it holds: its test set's size and the test labels in its ``predictions.npz``, in order (it cannot tell changed
    test images, nor, for images on disk, changed training images)."""
    from ltbench.data.split import DATA_SPLITS

    now = cell.data.content_fingerprint
    remedy = "Give this data its own --output, or pass --rerun to replace that run"
    stored = existing.get("data_sha256") if existing else None
    if stored is None and (out / DATA_FILE).exists():
        stored = json.loads((out / DATA_FILE).read_text()).get("data_sha256")
    if stored is not None:
        differ = [s for s in DATA_SPLITS if not isinstance(stored, dict) or stored.get(s) != now[s]]
        if not differ:
            return None
        then = {s: str(stored.get(s) if isinstance(stored, dict) else stored)[:80] for s in differ}
        said = "; ".join(f"{s}: {then[s]} then, {now[s]} now" for s in differ)
        return (f"{out} holds a run of {cell.dataset_key} made on other contents of the data: the images or labels "
                f"of its {', '.join(differ)} split{'s' if len(differ) > 1 else ''} changed since (data_sha256 {said}). "
                f"{remedy}")
    if not existing or existing.get("status") != "completed":
        return None
    y_test = cell.data.y_test
    if isinstance(existing.get("test_size"), int) and existing["test_size"] != len(y_test):
        return (f"{out} holds a run of {cell.dataset_key} evaluated on {existing['test_size']} test images; the "
                f"test split loaded now has {len(y_test)}: the test set changed since it ran. {remedy}")
    from ltbench.results.reader import read_predictions

    if not isinstance(existing.get("train_counts"), list):
        return None
    found, _ = read_predictions({**existing, "_path": str(out / RESULT_FILE)})
    if found is None:  # none there, or unreadable: nothing to compare
        return None
    labels = found["labels"]
    if len(labels) != len(y_test) or (labels != y_test).any():
        differ = (f"{len(labels)} test labels, the test split loaded now {len(y_test)}" if len(labels) != len(y_test)
                  else f"test labels of which {int((labels != y_test).sum())} of {len(y_test)} are not the test "
                       f"split's loaded now")
        return (f"{out} holds a run of {cell.dataset_key} whose {PREDICTIONS_FILE} holds {differ}: the test set "
                f"changed since it ran. {remedy}")
    return None


def save_predictions(path: Path, test: Any, labels: Any) -> None:
    """``predictions.npz`` beside a record: the test split's labels and predicted classes (so that comparisons
    can pair methods image by image), the confusion matrix [true, predicted], and each image's softmax
    probability of its predicted and of its true class (so that ECE and NLL can be recomputed)."""
    import io

    import numpy as np

    extra = {} if test.confidence is None else {"confidence": test.confidence.astype(np.float32),
                                                 "true_probability": test.true_probability.astype(np.float32)}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, labels=np.asarray(labels, dtype=np.int32),
                        predictions=test.predictions.astype(np.int32), confusion=test.confusion.astype(np.int32),
                        **extra)
    atomic_write_bytes(path, buffer.getvalue())  # whole or not at all: a full disk leaves no truncated file


def throughput(history: list[dict[str, Any]], eval_images: int, eval_seconds: float | None) -> dict[str, Any]:
    """Images per second of each stage's step loop (from the epoch history) and of evaluation."""
    out: dict[str, Any] = {}
    for stage in (1, 2):
        done = [e for e in history if e.get("stage") == stage and e.get("images")]
        seconds = sum(e["seconds"] for e in done)
        out[f"stage{stage}"] = round(sum(e["images"] for e in done) / seconds, 1) if seconds > 0 else None
    out["eval"] = round(eval_images / eval_seconds, 1) if eval_images and eval_seconds else None
    return out


def device_model(device: torch.device) -> str:
    """What a run was measured on: the GPU's name, or the CPU's model, the instruction set torch's kernels chose on
    it and the threads torch used, e.g. ``"AMD EPYC (family 25 model 1, AVX2), 1 threads"``.

    A virtual machine often names only the vendor's line (``"AMD EPYC"``) for CPUs of different generations, which
    train at different speeds and can round a training step's floats differently: a paper-budget run resumed on
    another generation parted from its own earlier path at the first epoch trained there (docs/paper-budget.md).
    The family and model numbers and torch's kernel level tell them apart, so that the boards compare wall times
    only between like machines and a reproduction can tell a machine's rounding from a change of code."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    first: dict[str, str] = {}  # the first processor's lines of /proc/cpuinfo
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip() and first:
                break
            key, _, value = line.partition(":")
            first.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    model = first.get("model name") or platform.processor() or platform.machine()
    details = [f"family {first['cpu family']} model {first['model']}"] if "cpu family" in first and "model" in first \
        else []
    capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)  # torch >= 2.1
    if capability is not None:
        details.append(str(capability()))
    said = f" ({', '.join(details)})" if details else ""
    return f"{model}{said}, {torch.get_num_threads()} threads"


def _record_fields(run: Run) -> dict[str, Any]:
    """Each method's ``ltbench_record`` fields under its own name; a value JSON cannot hold is a contract error."""
    extra = {}
    for impl in run.pm.hook.ltbench_record.get_hookimpls():  # one at a time, so each method's fields are its own
        fields = impl.function(*[{"run": run}[a] for a in impl.argnames])
        if fields is None:
            continue
        if not isinstance(fields, dict):
            raise PluginContractError(f"method {impl.plugin_name!r}: ltbench_record returned "
                                      f"{type(fields).__name__}; the hook specification expects a dict or None")
        try:
            json.dumps(fields, default=json_default)
        except (TypeError, ValueError) as exc:
            raise PluginContractError(f"method {impl.plugin_name!r}: ltbench_record returned a value JSON cannot "
                                      f"hold ({exc}); return numbers, strings, lists and dicts") from None
        if fields:
            extra[impl.plugin_name] = fields
    return extra


#: the splits whose contents a stage 1 is trained and selected on: a finished stage 1 states their ``data_sha256``
STAGE1_SPLITS = ("train", "val")


def run_stage1(run: Run, s1_dir: Path, output: Path, timing: dict[str, float],
               trained_on: dict[str, str] | None = None) -> dict[str, Any]:
    """Train stage 1, or load it when it is already complete in ``s1_dir``. ``trained_on``: the contents digests
    of the training and validation splits loaded now (:data:`STAGE1_SPLITS`); a finished stage 1 states the ones
    it was trained on, and one trained on other contents (images rewritten in place under the same names) is
    refused, never reused. A stage 1 from before ltbench stated them is reused as before."""
    final = s1_dir / "stage1.pt"
    info_path = s1_dir / "stage1.json"
    if distributed.agree(final.exists() and info_path.exists()):
        state = checkpoints.load(final)
        check_identity(run, final, state, stated_only=True)  # another key's (or run's) stage 1 is never reused
        info = json.loads(info_path.read_text())
        made_on = info.get("data_sha256")
        if isinstance(made_on, dict) and trained_on is not None:
            changed = [k for k in STAGE1_SPLITS if made_on.get(k) != trained_on[k]]
            if changed:
                said = ", ".join(f"{k}: {made_on.get(k)} then, {trained_on[k]} now" for k in changed)
                raise CheckpointError(f"{final} was trained on other contents of the {' and '.join(changed)} "
                                      f"split{'s' if len(changed) > 1 else ''} than the data loaded now "
                                      f"(data_sha256 {said}): refused, never reused. Pass --rerun to retrain it, "
                                      f"or give this data its own --output")
        run.model.load_state_dict(state["model"])
        for m in run.methods:
            m.load_state_dict(state["methods"].get(m.name, {}))
        _set_rng_state(run, state["rng"])
        run.history = list(info["history"])
        run.machines = list(info["machines"]) if "machines" in info else unstated_machine(
            1, sum(1 for e in run.history if e.get("stage") == 1))
        timing["stage1"] = info["wall_time_s"]
        reused = info.get("trained_by") != str(run.out_dir.relative_to(output))
        if reused:
            run.log(f"[{run.method_name} seed {run.seed}] stage 1 reused from {s1_dir.relative_to(output)}")
        return {"source": str(s1_dir.relative_to(output)), "reused": reused, "trained_by": info.get("trained_by")}
    t1 = time.perf_counter()
    prior = distributed.agree(json.loads((s1_dir / "stage1-progress.json").read_text())["seconds"] if (
        s1_dir / "stage1-progress.json").exists() else 0.0)
    ckpt = s1_dir / "checkpoint-stage1.pt"

    def log_progress() -> None:
        _write_history(run)
        if distributed.is_main():
            atomic_write_json(s1_dir / "stage1-progress.json", {"seconds": prior + time.perf_counter() - t1})

    train_stage1(run, ckpt, on_epoch_end=log_progress)
    seconds = prior + time.perf_counter() - t1
    trained_by = str(run.out_dir.relative_to(output))
    if distributed.is_main():
        checkpoints.save({"model": run.model.state_dict(), "methods": method_states(run), "rng": _rng_state(run),
                          "identity": run.checkpoint_identity}, final)
        atomic_write_json(info_path, {"wall_time_s": round(seconds, 3), "history": run.history,
                                      "machines": run.machines, "trained_by": trained_by, "data_sha256": trained_on})
        ckpt.unlink(missing_ok=True)  # stage1.pt holds the finished stage; the resume checkpoint is redundant
    timing["stage1"] = seconds
    return {"source": str(s1_dir.relative_to(output)), "reused": False, "trained_by": trained_by}


def _failed_last(cells: list[Cell], output: Path, log) -> list[Cell]:
    """Under torchrun: the cells whose record says ``failed`` after the others. A run that fails on a rank ends the
    job (:class:`RankFailed`), so a failure that repeats on every try would otherwise come first again on each rerun
    and the rest of the grid would never train. Rank 0 reads the records; every rank takes its order."""
    failed = distributed.agree([i for i, cell in enumerate(cells) if (load_result(cell.out_dir(output) / RESULT_FILE)
                                                                      or {}).get("status") == "failed"]
                               if distributed.is_main() else None)
    if not failed or len(failed) == len(cells):
        return cells
    log(f"{len(failed)} run(s) that failed before go last, so that the rest of the grid trains first: "
        + ", ".join(f"{cells[i].label} seed {cells[i].seed}" for i in failed))
    return [c for i, c in enumerate(cells) if i not in failed] + [cells[i] for i in failed]


def run_grid(cells: list[Cell], output: Path, device: torch.device, rerun: bool = False, log=print,
             catalog: Catalog | None = None, reporting=None, grid_id: str | None = None) -> list[dict]:
    """The cells one after another; after each, a line with the grid's progress and an estimate of when it
    ends (from the time the runs trained here took; skipped runs cost nothing). ``reporting``
    (:class:`ltbench.plugins.reporting.Reporting`) gets the grid's and the runs' events."""
    records, retrained = [], set()
    if distributed.is_distributed():
        cells = _failed_last(cells, output, log)
    start, trained = time.perf_counter(), []
    began = datetime.now(timezone.utc).replace(microsecond=0)
    grid = grid_description(cells, output, grid_id)
    if reporting is not None:
        reporting.emit("ltbench_report_grid_start", grid=grid)
    for i, cell in enumerate(cells, 1):
        log(f"== run {i}/{len(cells)}: {cell.label} on {cell.dataset_key} ({cell.budget}), seed {cell.seed}")
        t0 = time.perf_counter()
        try:
            record = execute(cell, output, device, rerun=rerun, log=log, catalog=catalog, retrained=retrained,
                             reporting=reporting, grid_id=grid["grid_id"])
        except OSError as exc:  # a full disk (or a read-only one) where this run's files go: it fails, the grid goes on
            if distributed.is_distributed():  # (under torchrun the job ends, as for any failure on a rank)
                raise
            record = _recording_failed(exc, None, cell, device, catalog or get_catalog(),
                                       cell.out_dir(output) / RESULT_FILE, f"[{cell.label} seed {cell.seed}]", log,
                                       doing="writing the run's files")
        records.append(record)
        if record.get("started_at") and datetime.fromisoformat(record["started_at"]) >= began:  # not skipped
            trained.append(time.perf_counter() - t0)
        log(grid_progress(i, len(cells), time.perf_counter() - start, trained))
    if reporting is not None:
        from ltbench.results import summary

        reporting.emit("ltbench_report_grid_end", grid=grid, records=records,
                       summary=summary.render(summary.summarise(records)) if records else "")
    return records


