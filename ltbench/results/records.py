"""Run records on disk.

One directory per run, that is per (dataset, budget, method, configuration,
seed); ``<config-id>`` is a hash of the resolved configuration
(:func:`ltbench.grid.config.config_id`), so variants of a method live side by side::

    <output>/<dataset>-if<IF>/<budget>/<method>/<config-id>/seed<k>/
        config.json          the resolved configuration
        metrics.jsonl        one line per training epoch
        checkpoint-stage*.pt the last checkpoint of a stage (resume); a finished stage 1's is replaced by
                             stage1.pt (its final state, which runs that share it load)
        model.pt             the trained model and method states as they predict (``ltbench eval``)
        result.json          written last, atomically
    <output>/.../<config-id>/seed<k>.lock   held while a process works on the run

Plain stage-1 models shared by decoupled methods live in
``<output>/<dataset>/<budget>/_stage1/seed<k>-<key>/``.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

RESULT_FILE = "result.json"
SCHEMA_VERSION = 3  # 2: config holds every method option; config_id, overrides, variant
# 3: adds class_names, history, world_size, files (predictions.npz); a schema-2 reader ignores them
PREDICTIONS_FILE = "predictions.npz"
#: beside a completed run's record: the model's and the methods' states once training is over (after every
#: stage's end hooks) and how many stages built the model; ``ltbench eval`` evaluates the run again from it
MODEL_FILE = "model.pt"
STATUSES = ("completed", "failed", "diverged")


#: what a record field that becomes part of a file path may hold (dataset, budget, method, config id)
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]*")
#: the longest such name: short enough that every file name made of it stays under the 255 bytes a name may have
MAX_NAME = 100


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=json_default) + "\n")


def atomic_torch_save(obj: Any, path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def run_dir(output: Path, dataset_key: str, budget: str, method: str, config_id: str, seed: int) -> Path:
    return Path(output) / dataset_key / budget / method / config_id / f"seed{seed}"


def load_result(path: Path) -> dict[str, Any] | None:
    """A run's own record, for the run that wrote it (to skip or resume it), or None when there is none or it
    cannot be read: read as :mod:`ltbench.results.reader` reads any file (a regular file, bounded in size and
    nesting), but not schema-checked, so that a run never retrains over a record it wrote."""
    from ltbench.results.safe_files import Unreadable, read_json

    try:
        data = read_json(Path(path))
    except Unreadable:
        return None
    return data if isinstance(data, dict) and data.get("status") in STATUSES else None


@functools.cache
def git_commit() -> dict[str, Any]:
    """The commit of ltbench's checkout, and whether it has uncommitted changes, as first asked in this process.

    :func:`ltbench.grid.runner.execute` asks before its first run trains: a record states the code the process
    imported, not a commit made (or a file edited) while a long grid was running."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def source_digest(cls: type) -> str:
    """The first 16 hex digits of the SHA-256 of the file that defines ``cls`` ("" where there is none): a
    record keeps it for each method, so that a change to a method's code is seen, whatever its version says."""
    import hashlib
    import inspect

    try:
        return hashlib.sha256(Path(inspect.getfile(cls)).read_bytes()).hexdigest()[:16]
    except (TypeError, OSError):
        return ""


def changed_code(record: dict[str, Any], catalog: Any) -> list[str]:
    """A line for each method of ``record`` whose code differs from what is installed now (distribution
    version or source digest), e.g. ``method 'ce': ltbench 0.2.0 (source 1a2b3c4d) -> 0.2.0 (source 5e6f7a8b)``;
    [] for records that predate source digests."""
    lines = []
    for name, old in ((record.get("versions") or {}).get("plugins") or {}).items():
        if not isinstance(old, dict) or not old.get("source_sha256") or name not in catalog.methods:
            continue
        entry = catalog.methods[name]
        new = {"version": entry.plugin.version, "source_sha256": source_digest(entry.cls)}
        if (old.get("version"), old["source_sha256"]) != (new["version"], new["source_sha256"]):
            lines.append(f"method {name!r}: {old.get('distribution')} {old.get('version')} (source "
                         f"{old['source_sha256'][:8]}) -> {new['version']} (source {new['source_sha256'][:8]})")
    return lines


def versions(plugins: dict[str, dict[str, str]]) -> dict[str, Any]:
    import platform

    import numpy
    import timm
    import torch
    import torchvision

    from ltbench.hookspecs import installed_version

    git = git_commit()
    return {"ltbench": installed_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__, "numpy": numpy.__version__, "python": platform.python_version(),
            "plugins": plugins, "git_commit": git["commit"], "git_dirty": git["dirty"]}


def compute(record: dict[str, Any]) -> dict[str, Any]:
    """What a run trained, for compute-matched comparisons: ``backbone_epochs`` (epochs in which the backbone's
    weights were trained: stage 1, plus stage 2 when it fine-tunes the backbone) and, per stage, its epochs,
    whether it trained the backbone, and the training images it saw (from the record's history; ``None`` where
    the history lacks the stage, e.g. a reused stage 1 or a record that predates histories); and the model's
    ``parameters`` and ``inference_macs_per_image`` from the record's ``cost`` (``None`` where it has none).
    Derived from the record, so it works for every schema."""
    config, plan = record["config"], record.get("second_stage")
    history = record.get("history") or []
    seen = {stage: sum(e.get("images") or 0 for e in history if e["stage"] == stage) or None for stage in (1, 2)}
    stages = {"1": {"epochs": config["epochs"], "backbone": True, "images": seen[1]}}
    if plan:
        epochs = config["stage2_epochs"] if plan.get("epochs") is None else plan["epochs"]
        stages["2"] = {"epochs": epochs, "backbone": bool(plan.get("train_backbone")), "images": seen[2]}
    backbone = sum(s["epochs"] for s in stages.values() if s["backbone"])
    cost = record.get("cost") or {}
    return {"backbone_epochs": backbone, "stages": stages, "parameters": cost.get("parameters"),
            "inference_macs_per_image": cost.get("inference_macs_per_image")}
