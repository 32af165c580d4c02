"""A grid beyond one sequential process: worker processes on one machine, a cluster job array, disjoint shards.

Every mode runs the same :func:`ltbench.grid.runner.execute` on the same cells, so records are the same as a
sequential run's. Three things make that safe:

- a worker or a job gets a cell's :attr:`~ltbench.grid.plan.Cell.request` (a few names and numbers), plans the
  cell again and loads its data itself; nothing large is pickled;
- the per-run and shared-stage-1 file locks of :mod:`ltbench.grid.runner` keep two processes off one run;
- cells that share a stage 1 are kept apart (``--jobs``) or together (job arrays and shards), so that a shared
  stage 1 is trained once, while the others wait for it or reuse it.

``--jobs N`` (:func:`run_parallel`) runs the cells in N long-lived worker processes (``spawn``), each with
``cores // N`` threads (or, when several GPUs are visible, one GPU per worker slot). A worker that dies
(killed, out of memory) gets its cell a ``failed`` record naming its exit code and is replaced; the cell's
checkpoints stay, so the same command resumes it. ``--launcher slurm|local`` (:func:`submit`) hands the grid to submitit as one job array,
one task per stage-1 group. ``--shard I/N`` (:func:`shard`) keeps the I-th of N disjoint parts of the grid.
Each mode writes a manifest of the planned runs under ``<output>/_grids/`` so that ``ltbench status`` can name
the runs that were never started.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import time
from multiprocessing.connection import wait as wait_for_exit
from pathlib import Path
from typing import Any, Callable

import torch

from ltbench.errors import ConfigError
from ltbench.grid.plan import Cell, grid_description, grid_id, replan, resolve_device, stage1_dir, stderr_log
from ltbench.grid.runner import _Lock, execute, make_record
from ltbench.plugins.catalog import Catalog, get_catalog
from ltbench.results.records import RESULT_FILE, atomic_write_json, load_result

GRIDS_DIR = "_grids"
SUBMITIT_DIR = "_submitit"
LAUNCHERS = ("slurm", "local")


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def stage1_groups(cells: list[Cell], output: Path, catalog: Catalog | None = None) -> list[list[Cell]]:
    """The cells, grouped by the shared stage 1 they reuse (a cell that trains its own is a group of one),
    in the grid's order."""
    groups: dict[Any, list[Cell]] = {}
    for i, cell in enumerate(cells):
        groups.setdefault(stage1_dir(cell, output, catalog) or i, []).append(cell)
    return list(groups.values())


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` with 1 <= I <= N."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard expects I/N (the I-th of N parts, 1 <= I <= N), got {text!r}") from None
    if not 1 <= i <= n:
        raise ConfigError(f"--shard {text}: I must be between 1 and N={n}, e.g. --shard 1/{max(n, 1)}")
    return i, n


def shard(cells: list[Cell], text: str, output: Path, catalog: Catalog | None = None) -> list[Cell]:
    """The I-th of N disjoint parts of the grid: stage-1 groups dealt round-robin, so that a shared stage 1 is
    trained by one shard only, and every cell is in exactly one shard."""
    i, n = parse_shard(text)
    return [cell for group in stage1_groups(cells, output, catalog)[i - 1 :: n] for cell in group]


def clear_for_rerun(cells: list[Cell], output: Path, catalog: Catalog | None = None, log=stderr_log) -> None:
    """``--rerun`` for workers and jobs: delete each run and each shared stage 1 once, here, under their locks,
    so that no two workers each retrain a shared stage 1."""
    cleared: set[Path] = set()
    for cell in cells:
        for path in (cell.out_dir(output), stage1_dir(cell, output, catalog)):
            if path is None or path in cleared:
                continue
            cleared.add(path)
            if path.exists():
                with _Lock(path, f"--rerun: {path}", log):
                    shutil.rmtree(path)


def write_manifest(cells: list[Cell], output: Path, how: str) -> Path:
    """``<output>/_grids/<id>.json``: the runs a grid planned, for ``ltbench status`` to find the missing ones."""
    runs = [{"run_dir": str(cell.out_dir(output).relative_to(output)), "variant": cell.label, "seed": cell.seed,
             "dataset": cell.dataset_key, "budget": cell.budget} for cell in cells]
    grid = grid_id(cells, output)
    path = output / GRIDS_DIR / f"{grid}.json"
    atomic_write_json(path, {"grid_id": grid, "how": how, "written_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                             "runs": runs})
    return path


_REPORTING: dict[tuple[str, ...], Any] = {}  # one Reporting per worker process and selection


def run_cell(request: dict[str, Any], output: str, device: str, threads: int | None = None, quiet: bool = False,
             catalog_factory: Callable[[], Catalog] | None = None, report: list[str] | None = None,
             grid_id: str | None = None) -> str:
    """One cell in this process, from its request: the body of a worker process and of a cluster job.
    Returns the record's status."""
    if threads:
        torch.set_num_threads(threads)
    from ltbench.training import progress

    progress.SHOW_PROGRESS = False  # several workers share one terminal; each logs a line per epoch instead
    catalog = catalog_factory() if catalog_factory else get_catalog()
    cell = replan(request, catalog)
    log = (lambda msg: None) if quiet else stderr_log
    where = resolve_device(device) if device in ("auto", "cpu", "cuda") else torch.device(device)
    reporting = None
    if report:
        from ltbench.plugins.reporting import Reporting

        reporting = _REPORTING.setdefault(tuple(report), Reporting(report, Path(output), catalog))
    return execute(cell, Path(output), where, rerun=False, log=log, catalog=catalog, reporting=reporting,
                   grid_id=grid_id)["status"]


def run_cells(requests: list[dict[str, Any]], output: str, device: str, threads: int | None = None,
              quiet: bool = False, catalog_factory: Callable[[], Catalog] | None = None,
              report: list[str] | None = None, grid_id: str | None = None) -> list[str]:
    """Several cells one after another in this process (a cluster job runs one stage-1 group)."""
    return [run_cell(r, output, device, threads, quiet, catalog_factory, report, grid_id) for r in requests]


def record_worker_death(cell: Cell, output: Path, device: torch.device, catalog: Catalog, exitcode: int | None,
                        since: float) -> dict[str, Any]:
    """The record of a cell whose worker process died: ``failed``, naming the exit code, unless the worker had
    written a finished record before it died. Checkpoints and history stay, so the next run resumes."""
    out = cell.out_dir(output)
    result_path = out / RESULT_FILE
    with _Lock(out, f"[{cell.label} seed {cell.seed}] {out}", stderr_log):  # the dead worker's lock is free
        existing = load_result(result_path)
        if existing and existing["status"] in ("completed", "diverged") and result_path.stat().st_mtime >= since:
            return existing
        how = f"killed by signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit code {exitcode}"
        history = out / "metrics.jsonl"
        record = make_record(cell, device, catalog, "failed",
                             f"the worker process running this run died ({how}); run the same command again to "
                             f"resume it from its last checkpoint",
                             epochs_completed=len(history.read_text().splitlines()) if history.exists() else 0)
        atomic_write_json(result_path, record)
        return record


def _worker_device(device: torch.device, slot: int) -> torch.device:
    if device.type == "cuda" and device.index is None and torch.cuda.device_count() > 1:
        return torch.device("cuda", slot % torch.cuda.device_count())
    return device


def _worker(conn, device: str, threads: int, quiet: bool, catalog_factory: Callable[[], Catalog] | None,
            report: list[str] | None = None, grid_id: str | None = None) -> None:
    """A worker process: runs the cells the parent sends (``(request, output)``), answers each with its
    status, and stops at ``None``. It lives for many cells, so torch and the plugins are imported once."""
    while (message := conn.recv()) is not None:
        request, output = message
        conn.send(run_cell(request, output, device, threads, quiet, catalog_factory, report, grid_id))


def run_parallel(cells: list[Cell], output: Path, device: torch.device, jobs: int, threads: int | None = None,
                 rerun: bool = False, log=stderr_log, quiet: bool = False,
                 catalog_factory: Callable[[], Catalog] | None = None, report: list[str] | None = None,
                 grid: str | None = None) -> list[dict[str, Any]]:
    """Run the cells in ``jobs`` worker processes; return their records in the grid's order.

    A cell waits while another worker trains the shared stage 1 it needs, if other work is ready (that one
    trains it once; this one then reuses it). A worker that dies gets its cell a ``failed`` record and is
    replaced; the others go on.
    """
    if jobs < 1:
        raise ConfigError(f"--jobs must be a positive integer, got {jobs}")
    catalog = catalog_factory() if catalog_factory else get_catalog()
    threads = threads or max(1, available_cores() // jobs)
    if rerun:
        clear_for_rerun(cells, output, catalog, log)
    context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools into the child
    pending = list(range(len(cells)))
    shared = [stage1_dir(cell, output, catalog) for cell in cells]
    workers: dict[int, list[Any]] = {}  # slot -> [process, connection, cell index or None, start time]
    records: dict[int, dict[str, Any]] = {}
    log(f"== {len(cells)} runs in {min(jobs, len(cells))} worker processes, {threads} threads each")
    grid = grid_description(cells, output, grid)  # a shard's workers report under the whole grid's id
    reporting = None
    if report:  # grid events here; each worker reports its runs
        from ltbench.plugins.reporting import Reporting

        reporting = Reporting(report, output, catalog)
        reporting.emit("ltbench_report_grid_start", grid=grid)

    def start_worker(slot: int) -> None:
        parent_end, child_end = context.Pipe()
        process = context.Process(target=_worker, name=f"ltbench-worker-{slot}", daemon=True,
                                  args=(child_end, str(_worker_device(device, slot)), threads, quiet,
                                        catalog_factory, report, grid["grid_id"]))
        process.start()
        child_end.close()
        workers[slot] = [process, parent_end, None, 0.0]

    def assign(slot: int) -> None:
        busy = {shared[w[2]] for w in workers.values() if w[2] is not None and shared[w[2]] is not None}
        index = next((i for i in pending if shared[i] not in busy), pending[0])
        pending.remove(index)
        workers[slot][2:] = [index, time.time() - 1]
        workers[slot][1].send((cells[index].request, str(output)))

    def finish(slot: int, died: bool) -> None:
        process, _, index, since = workers[slot]
        workers[slot][2] = None
        cell = cells[index]
        record = load_result(cell.out_dir(output) / RESULT_FILE)
        if died or record is None:
            process.join(timeout=10)
            record = record_worker_death(cell, output, device, catalog, process.exitcode, since)
            log(f"[{cell.label} seed {cell.seed}] failed: {record['error']}")
        records[index] = record
        log(f"== {len(records)}/{len(cells)} runs finished")

    try:
        for slot in range(min(jobs, len(cells))):
            start_worker(slot)
            assign(slot)
        while any(w[2] is not None for w in workers.values()):
            ready = wait_for_exit([w[1] for w in workers.values() if w[2] is not None]
                                  + [w[0].sentinel for w in workers.values() if w[2] is not None])
            for slot, (process, conn, index, _) in list(workers.items()):
                if index is None:
                    continue
                if conn in ready or process.sentinel in ready:
                    try:
                        conn.recv()  # the cell's status; its record is on disk
                        died = False
                    except (EOFError, OSError):
                        died = True
                    finish(slot, died)
                    if died:
                        conn.close()
                        start_worker(slot) if pending else workers.pop(slot)
                    if pending and slot in workers:
                        assign(slot)
    except KeyboardInterrupt:
        for process, *_ in workers.values():
            process.terminate()  # each run resumes from its last checkpoint next time
        raise
    finally:
        for process, conn, *_ in workers.values():
            if process.is_alive():
                try:
                    conn.send(None)
                except OSError:
                    pass
            process.join(timeout=30)
    result = [records[i] for i in range(len(cells))]
    if reporting is not None:
        from ltbench.results import summary

        reporting.emit("ltbench_report_grid_end", grid=grid, records=result,
                       summary=summary.render(summary.summarise(result)))
    return result


def submit(cells: list[Cell], output: Path, launcher: str, device: str, options: dict[str, Any],
           rerun: bool = False, log=stderr_log, quiet: bool = False,
           catalog_factory: Callable[[], Catalog] | None = None, report: list[str] | None = None,
           grid: str | None = None) -> list[Any]:
    """Submit the grid through submitit as one job array (one task per stage-1 group); return the jobs.

    ``options`` are submitit parameters (``slurm_partition``, ``gpus_per_node``, ``timeout_min``, ...);
    ``launcher`` ``"local"`` runs the array as local processes (submitit's local executor), ``"slurm"`` on a
    SLURM cluster. ``device`` is resolved in each job (``auto``: its GPU if it has one). Logs go to
    ``<output>/_submitit/``.
    """
    if launcher not in LAUNCHERS:
        raise ConfigError(f"--launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    try:
        import submitit
    except ImportError:
        raise ConfigError(f"--launcher {launcher} needs submitit: pip install \"ltbench[slurm]\"") from None
    catalog = catalog_factory() if catalog_factory else get_catalog()
    if rerun:
        clear_for_rerun(cells, output, catalog, log)
    groups = stage1_groups(cells, output, catalog)
    folder = output / SUBMITIT_DIR
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster="local" if launcher == "local" else "slurm")
    except RuntimeError as exc:  # no srun/sbatch here
        raise ConfigError(f"--launcher {launcher}: {exc} Submit from a machine of the cluster (a login node), "
                          f"or use --launcher local, --jobs or --shard") from None
    executor.update_parameters(name="ltbench", **options)
    threads = options.get("cpus_per_task")  # else torch's default, which follows the job's CPU allocation
    jobs = executor.map_array(run_cells, [[c.request for c in g] for g in groups], [str(output)] * len(groups),
                              [device] * len(groups), [threads] * len(groups), [quiet] * len(groups),
                              [catalog_factory] * len(groups), [report] * len(groups),
                              [grid or grid_id(cells, output)] * len(groups))  # each job reports its runs
    return jobs
