"""``ltbench status RUNS``: what is done, running, failed or missing, from the records and locks alone.

A run directory (``<dataset>/<budget>/<method>/<config_id>/seed<k>``, holding ``config.json``) is

- ``completed``, ``diverged`` or ``failed``: what its ``result.json`` says;
- ``running``: a process holds its lock (``seed<k>.lock``), whatever is on disk;
- ``interrupted``: started, no finished record, and nobody holds its lock; the same command resumes it.

A run that a grid planned (``<RUNS>/_grids/*.json``, written by ``ltbench run``) but that has no directory yet is
``missing``. Nothing is written, and no run is disturbed: a lock is only tried, never waited for.
"""

from __future__ import annotations

import fcntl
import os
import stat
import sys
from pathlib import Path
from typing import Any

from ltbench.errors import ConfigError
from ltbench.grid.launch import GRIDS_DIR
from ltbench.plugins.catalog import get_catalog
from ltbench.results.reader import MAX_SEED, Unreadable, fields, integer, list_of, read_bytes, read_json, \
    read_record, text
from ltbench.results.records import RESULT_FILE, changed_code

STATES = ("completed", "running", "interrupted", "failed", "diverged", "missing")
#: what ``status`` reads of a grid manifest (:func:`ltbench.grid.launch.write_manifest`)
MANIFEST = fields({"runs": list_of(fields({key: text(10_000) for key in ("run_dir", "dataset", "budget", "variant")}
                                          | {"seed": integer(0, MAX_SEED)},
                                          required=("run_dir", "dataset", "budget", "variant", "seed")),
                                   max_items=10**7)}, required=("runs",))


def _locked(run: Path) -> bool:
    """Whether a process holds the run's lock (``seed<k>.lock``, which ``ltbench run`` makes before it works on the
    run). Only a lock file that is there is tried, opened read-only and shared: ``status`` never makes one, and
    works on runs it may not write (a read-only copy, another user's)."""
    path = Path(str(run) + ".lock")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:  # none (nobody is working on the run), or not a file it can open
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # a worker holds it, exclusively
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _describe(runs: Path, run: Path) -> dict[str, Any]:
    rel = run.relative_to(runs)
    parts = rel.parts  # dataset, budget, method, config_id, seed<k>
    seed = parts[-1][4:]  # a folder named seed<k> by a run; another (seedX) is shown as it is named
    seed = int(seed) if seed.isascii() and seed.isdigit() and len(seed) < 12 else seed
    row = {"run_dir": str(rel), "dataset": parts[0], "budget": parts[1], "variant": parts[2], "seed": seed,
           "state": "", "detail": "", "code_changed": False}
    record, problem = read_record(run / RESULT_FILE) if os.path.lexists(run / RESULT_FILE) else (None, None)
    if problem:  # a malformed record is reported by file and field, not fatal
        row["detail"] = f"malformed result.json: {problem}"
    if _locked(run):
        row["state"] = "running"
        try:
            epochs = len(read_bytes(run / "metrics.jsonl").splitlines())
            row["detail"] = f"{epochs} epochs done"
        except Unreadable:  # none yet, or not a regular file
            pass
    elif record and record.get("status") in ("completed", "diverged", "failed"):
        row["state"] = record["status"]
        row["variant"] = record.get("variant", row["variant"])
        if record["status"] == "completed":
            row["detail"] = f"overall {record['metrics']['overall']:.2f}"
            changed = changed_code(record, get_catalog())
            if changed:
                row["code_changed"] = True
                row["detail"] += f"; code changed since: {'; '.join(changed)} (--rerun retrains it)"
        else:
            row["detail"] = (record.get("error") or "").splitlines()[0] if record.get("error") else ""
    else:
        row["state"] = "interrupted"
        row["detail"] = row["detail"] or "no finished record; run the same command again to resume it"
    return row


def collect(runs: Path) -> list[dict[str, Any]]:
    """One row per run directory under ``runs`` and per planned run without one."""
    if not runs.is_dir():
        raise ConfigError(f"ltbench status: {runs} is not a directory of runs (the --output of ltbench run)")
    rows = [_describe(runs, config.parent) for config in sorted(runs.glob("*/*/*/*/seed*/config.json"))]
    seen = {row["run_dir"] for row in rows}
    for manifest in sorted((runs / GRIDS_DIR).glob("*.json")):
        try:
            planned_runs = read_json(manifest)
        except Unreadable as exc:
            print(f"skipped grid manifest {exc}", file=sys.stderr)
            continue
        problems = MANIFEST(planned_runs, "manifest")
        if problems:
            print(f"skipped grid manifest {manifest}: {problems[0]}", file=sys.stderr)
            continue
        for planned in planned_runs["runs"]:
            if planned["run_dir"] not in seen:
                seen.add(planned["run_dir"])
                rows.append({"run_dir": planned["run_dir"], "dataset": planned["dataset"],
                             "budget": planned["budget"], "variant": planned["variant"], "seed": planned["seed"],
                             "state": "missing", "detail": f"planned by grid {manifest.stem}, not started",
                             "code_changed": False})
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, int]:
    return {state: sum(r["state"] == state for r in rows) for state in STATES}
