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
import math
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
METRIC_GROUPS = ("overall", "many", "medium", "few")


def record_problems(rec: Any) -> list[str]:
    """What is wrong with a record read from disk (``[]`` when nothing): each problem names the field. Checked
    before any command uses a record, so that a malformed or crafted one is skipped by name, never a traceback,
    and none of its fields reaches a file path unchecked."""
    if not isinstance(rec, dict):
        return [f"the record is a JSON {type(rec).__name__}, not an object"]
    problems = []

    def need(field: str, ok: bool, want: str) -> None:
        if not ok:
            problems.append(f"{field}: expected {want}, got {rec.get(field)!r:.80}")

    need("status", rec.get("status") in STATUSES, f"one of {', '.join(STATUSES)}")
    if "config_id" not in rec:
        problems.append("config_id: missing; the record predates run identity (ltbench < 0.2): re-run it")
    for field in ("dataset", "budget", "method", "config_id"):
        value = rec.get(field)
        if field not in rec and field == "config_id":
            continue
        need(field, isinstance(value, str) and SAFE_NAME.fullmatch(value) is not None and ".." not in value,
             "a name of letters, digits and . _ + = - (it becomes part of a path)")
    need("seed", isinstance(rec.get("seed"), int) and not isinstance(rec.get("seed"), bool) and rec["seed"] >= 0,
         "a non-negative integer")
    need("methods", isinstance(rec.get("methods"), list) and all(isinstance(m, str) for m in rec["methods"]),
         "a list of method names")
    need("variant", isinstance(rec.get("variant"), str), "a string")
    config = rec.get("config")
    need("config", isinstance(config, dict) and isinstance(config.get("backbone"), str)
         and isinstance(config.get("epochs"), int) and not isinstance(config.get("epochs"), bool),
         "an object with backbone and epochs")
    metrics = rec.get("metrics")
    finite = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    if rec.get("status") == "completed":
        need("metrics", isinstance(metrics, dict) and finite(metrics.get("overall"))
             and all(metrics.get(g) is None or finite(metrics.get(g)) for g in METRIC_GROUPS),
             "finite overall/many/medium/few accuracies")
        thresholds = rec.get("group_thresholds")
        need("group_thresholds", isinstance(thresholds, dict) and all(
            isinstance(thresholds.get(k), int) for k in ("many_above", "few_below")), "many_above and few_below")
        need("wall_time_s", finite(rec.get("wall_time_s")), "a number of seconds")
    else:
        need("metrics", metrics is None or isinstance(metrics, dict), "null or an object")
    for field in ("stage_wall_time_s", "method_metadata", "group_sizes", "throughput_img_per_s", "second_stage",
                  "calibration"):
        need(field, rec.get(field) is None or isinstance(rec.get(field), dict), "an object")
    history = rec.get("history", [])
    need("history", isinstance(history, list) and all(
        isinstance(e, dict) and isinstance(e.get("stage"), int) for e in history), "a list of epoch entries")
    return problems


def read_record(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(record, None)``, or ``(None, why not)`` for a file that is not a well-formed record: not a regular
    file (a link, a FIFO), not JSON, or failing :func:`record_problems`."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return None, f"{path}: not a regular file (links and special files are not followed)"
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return None, f"{path}: not readable JSON ({type(exc).__name__})"
    problems = record_problems(rec)
    if problems:
        return None, f"{path}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
    return rec, None


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
    """A record, or None when there is none or it cannot be read."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
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
    seen = {stage: sum(e.get("images", 0) for e in history if e["stage"] == stage) or None for stage in (1, 2)}
    stages = {"1": {"epochs": config["epochs"], "backbone": True, "images": seen[1]}}
    if plan:
        epochs = config["stage2_epochs"] if plan.get("epochs") is None else plan["epochs"]
        stages["2"] = {"epochs": epochs, "backbone": bool(plan.get("train_backbone")), "images": seen[2]}
    backbone = sum(s["epochs"] for s in stages.values() if s["backbone"])
    cost = record.get("cost") or {}
    return {"backbone_epochs": backbone, "stages": stages, "parameters": cost.get("parameters"),
            "inference_macs_per_image": cost.get("inference_macs_per_image")}


def reference_setting(record: dict[str, Any]) -> str:
    """Whether the paper's number for ``record`` (:func:`reference_result`) was measured in the record's own
    setting: ``""`` when the reference names a ``backbone`` and ``epochs`` and both are the record's (its
    config's backbone and stage-1 epochs), as is every method option it names in ``options``
    (``{"sam.rho": 0.8}``), else what keeps the two apart, for the board: ``"no published number"``,
    ``"setting not stated"``, or ``"other setting: resnet18, 200 epochs, sam.rho=0.8"``."""
    ref = reference_result(record)
    if not ref or ref.get("overall") is None:
        return "no published number"
    config = record.get("config") or {}
    differ = [f"{ref['backbone']}" if key == "backbone" else f"{ref['epochs']} epochs"
              for key in ("backbone", "epochs") if key in ref and ref[key] != config.get(key)]
    options = ref.get("options") if isinstance(ref.get("options"), dict) else {}
    method_options = config.get("methods") if isinstance(config.get("methods"), dict) else {}
    for option, value in sorted(options.items()):
        method, _, name = str(option).partition(".")
        chosen = method_options.get(method) if isinstance(method_options.get(method), dict) else {}
        if name not in chosen or chosen[name] != value:
            differ.append(f"{option}={value}")
    if differ:
        return "other setting: " + ", ".join(differ)
    return "" if "backbone" in ref and "epochs" in ref else "setting not stated"


def reference_description(ref: dict[str, Any]) -> str:
    """The setting a reference (:func:`reference_result`) was measured in, as the board prints it beside the
    number: backbone, epochs, augmentation and method options, each ``not stated`` where the reference lacks it,
    e.g. ``"resnet32, 200 epochs, random crop (4-pixel padding) and horizontal flip, sam.rho=0.8"``."""
    options = ref.get("options") if isinstance(ref.get("options"), dict) else {}
    return ", ".join([str(ref.get("backbone", "backbone not stated")),
                      f"{ref['epochs']} epochs" if "epochs" in ref else "epochs not stated",
                      str(ref.get("augmentation", "augmentation not stated"))]
                     + [f"{option}={value}" for option, value in sorted(options.items())])


def _reference_results(record: dict[str, Any], method: str) -> dict[str, Any]:
    """``method``'s ``reference_results``: the installed method's current metadata, so that a corrected or added
    reference reaches every record; the record's own copy (taken when it ran) only for a method that is not
    installed. ``{}`` where neither holds a mapping."""
    from ltbench.plugins.catalog import get_catalog  # the catalog imports this module

    entry = get_catalog().methods.get(method)
    if entry is not None:
        return dict(entry.cls.metadata.reference_results)
    meta = (record.get("method_metadata") or {}).get(method)
    refs = meta.get("reference_results") if isinstance(meta, dict) else None
    return refs if isinstance(refs, dict) else {}


def reference_result(record: dict[str, Any]) -> dict[str, Any]:
    """The paper's numbers for a record's dataset (or {}), from its methods' reference results
    (:func:`_reference_results`), keyed by the dataset key (``cifar100-lt-if100``), else by dataset and backbone
    (``imagenet-lt-resnet10``, for datasets with their natural profile), else by the dataset's name
    (``places-lt``). A composition's number lives with one of its methods, prefixed by the others joined with
    ``+`` in any order: safa's ``"ldam-drw:cifar100-lt-if200"`` is ``ldam-drw+safa``'s (and ``safa+ldam-drw``'s)."""
    methods = record.get("methods", [])
    name = record.get("dataset_name") or record["dataset"].rsplit("-", 1)[0]
    backbone = (record.get("config") or {}).get("backbone", "")
    keys = (record["dataset"], f"{name}-{backbone}", name)
    for method in methods:
        others = {m for m in methods if m != method}
        refs = {}
        for key, ref in _reference_results(record, method).items():
            prefix, _, dataset = str(key).rpartition(":")  # prefix "" for a key of the method alone
            if (set(prefix.split("+")) if prefix else set()) == others:
                refs[dataset] = ref
        for key in keys:
            ref = refs.get(key)
            if isinstance(ref, dict):  # a number that is not one is no published number (a crafted record)
                overall = ref.get("overall")
                ok = overall is None or (isinstance(overall, (int, float)) and not isinstance(overall, bool)
                                         and math.isfinite(overall))
                return ref if ok else {}
    return {}

