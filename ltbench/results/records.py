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
#: the longest such name: short enough that every file name made of it stays under the 255 bytes a name may have
MAX_NAME = 100


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Atomically: a temporary file beside ``path``, flushed to disk, then renamed over it (a link there is
    replaced, never followed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


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


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one step (Linux's ``renameat2`` with ``RENAME_EXCHANGE``), so that neither name is
    ever missing; False where the system cannot (another OS, an old C library or kernel, a file system without it)."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def replace_dir(staged: Path, final: Path) -> None:
    """Put the directory ``staged`` in the place of ``final`` (a generated site) so that a kill at any moment leaves
    a whole ``final``, the old one or the new: one exchange where the system has it, then the old one deleted;
    elsewhere the old one renamed aside (``.<name>-old``) and ``staged`` renamed in, a gap that
    :func:`recover_dir` closes when a kill fell into it."""
    import shutil

    if final.is_dir() and not final.is_symlink() and _exchange(staged, final):
        shutil.rmtree(staged)  # (now the old one)
        return
    old = final.with_name(f".{final.name}-old")
    shutil.rmtree(old, ignore_errors=True)
    if os.path.lexists(final):
        final.rename(old)
    staged.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(final: Path) -> None:
    """Put back the ``final`` that :func:`replace_dir` had renamed aside when a kill left no ``final``."""
    old = final.with_name(f".{final.name}-old")
    if old.is_dir() and not old.is_symlink() and not os.path.lexists(final):
        old.rename(final)


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
    import inspect

    try:
        return _file_digest(Path(inspect.getfile(cls)))
    except TypeError:
        return ""


# -- code identity beyond the defining file -------------------------------------------------------------------
#
# A method's record states, besides ``source_sha256`` (the file that defines its class), ``modules_sha256``: the
# digest of every other module of the plugin's own package that the class's module imports, directly or through
# another of them. The modules are found by reading the import statements (``import``, ``from ... import``,
# relative ones resolved, those inside functions included) of each module's source, not by asking which modules
# are loaded: two methods of one package name each other's modules only when one imports the other. Only modules
# of the same top-level package are followed (never torch or another distribution), and never ltbench's own
# (``ltbench``: the core, which the record's ``git_commit`` and ``ltbench`` version state). The packages a module
# sits in are part of it (their ``__init__`` runs first). A backbone or dataset registered by a plugin is stated the
# same way under ``versions.components`` (``"backbone:<name>"``, ``"dataset:<name>"``).

#: the core: stated by the record's ltbench version and git commit, never walked
CORE_PACKAGE = "ltbench"
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_HEX = re.compile(r"[0-9a-f]{1,64}")


def _file_digest(path: Path) -> str:
    import hashlib

    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    except (OSError, ValueError):
        return ""


def _module_file(name: str) -> Path | None:
    """The source file of module ``name`` (``None`` where there is none, e.g. a name imported from a package that
    is not a module), found without importing it: the loaded module's file, else by path below its top-level
    package."""
    import importlib.util
    import sys

    if not (isinstance(name, str) and len(name) <= 500 and _MODULE_NAME.fullmatch(name)):
        return None
    module = sys.modules.get(name)
    where = getattr(module, "__file__", None) if module is not None else None
    if where:
        return Path(where)
    parts = name.split(".")
    top = sys.modules.get(parts[0])
    if top is not None:
        locations, origin = list(getattr(top, "__path__", None) or []), getattr(top, "__file__", None)
    else:
        try:
            spec = importlib.util.find_spec(parts[0])
        except (ImportError, ValueError, AttributeError):
            return None
        if spec is None:
            return None
        locations, origin = list(spec.submodule_search_locations or []), spec.origin
    if len(parts) == 1:
        return Path(origin) if origin and Path(origin).is_file() else None
    for location in locations:
        base = Path(location, *parts[1:])
        for candidate in (base / "__init__.py", base.with_name(base.name + ".py")):
            if candidate.is_file():
                return candidate
    return None


@functools.lru_cache(maxsize=256)
def _imports(source: bytes) -> tuple[tuple[str, tuple[str, ...], int], ...]:
    """The import statements of a module's source, as (module, names, level): ``import a.b`` is ("a.b", (), 0),
    ``from ..x import y`` ("x", ("y",), 2); cached by content."""
    import ast

    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, (), 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", tuple(alias.name for alias in node.names if alias.name != "*"),
                          node.level or 0))
    return tuple(found)


def module_digests(roots: list[str], package: str | None = None) -> dict[str, str]:
    """``{module: digest}`` for the modules ``roots`` and every module of their top-level package (``package``
    when given: roots outside it are left out) that they import, transitively, with the packages they sit in;
    digests as :func:`source_digest`. ltbench's own modules are never included."""
    allowed = {package} if package else {r.split(".")[0] for r in roots if isinstance(r, str)}
    allowed.discard(CORE_PACKAGE)
    queue = [r for r in roots if isinstance(r, str) and r.split(".")[0] in allowed]
    digests: dict[str, str] = {}
    while queue:
        name = queue.pop()
        if name in digests:
            continue
        path = _module_file(name)
        if path is None:
            continue
        try:
            source = path.read_bytes()
        except OSError:
            continue
        import hashlib

        digests[name] = hashlib.sha256(source).hexdigest()[:16]
        parts = name.split(".")
        queue += [".".join(parts[:i]) for i in range(1, len(parts))]  # the packages it sits in run first
        if path.suffix != ".py":
            continue
        here = parts if path.name == "__init__.py" else parts[:-1]  # the package a relative import starts from
        for module, names, level in _imports(source):
            if level:
                if level - 1 >= len(here):  # beyond the top-level package: Python refuses it too
                    continue
                base = here[:len(here) - (level - 1)]
                target = ".".join([*base, *module.split(".")]) if module else ".".join(base)
            else:
                target = module
            if not target or target.split(".")[0] not in allowed:
                continue
            queue.append(target)
            queue += [f"{target}.{n}" for n in names]  # `from pkg import helper` may name a module
    return digests


def plugin_identity(entry: Any) -> dict[str, Any]:
    """What a record states of a method's code (``versions.plugins[name]``): its distribution and version, the
    digest of the file that defines its class (``source_sha256``) and of every other module of its package that
    module imports (``modules_sha256``, :func:`module_digests`)."""
    cls = entry.cls
    module = getattr(cls, "__module__", None)
    modules = module_digests([module]) if isinstance(module, str) else {}
    modules.pop(module, None)  # source_sha256 states it
    return {"distribution": entry.plugin.distribution, "version": entry.plugin.version,
            "source_sha256": source_digest(cls), "modules_sha256": dict(sorted(modules.items()))}


def _callable_module(fn: Any) -> str | None:
    import functools as ft
    import inspect

    while isinstance(fn, ft.partial):
        fn = fn.func
    try:
        fn = inspect.unwrap(fn)
    except ValueError:
        pass
    module = getattr(fn, "__module__", None)
    return module if isinstance(module, str) else None


def _component_roots(kind: str, spec: Any, owner: Any) -> tuple[str | None, list[str]]:
    """The top-level package of the plugin that registered ``spec`` (``None`` for the core's) and the modules
    that define it: its builder's (``build``; a dataset's ``load`` and ``download``) where they are the plugin's
    own, then the module that registered it."""
    registered = str(getattr(owner, "module", "") or "").split(":")[0]
    package = registered.split(".")[0] if registered else None
    if not package or package == CORE_PACKAGE:
        return None, []
    callables = (spec.build,) if kind == "backbone" else (spec.load, getattr(spec, "download", None))
    roots = [m for m in map(_callable_module, [c for c in callables if c is not None])
             if m and m.split(".")[0] == package]
    return package, list(dict.fromkeys([*roots, registered]))


def component_identity(kind: str, spec: Any, owner: Any) -> dict[str, Any] | None:
    """What a record states of a backbone or dataset a plugin registered (``kind`` "backbone" or "dataset"):
    the plugin's distribution and version, the module that defines it (its builder's, else the one that
    registered it) with its digest (``module``, ``source_sha256``) and every other module of the plugin's package
    those import (``modules_sha256``). ``None`` for the core's own (``owner`` in ``ltbench``) and for timm models."""
    package, roots = _component_roots(kind, spec, owner)
    if not roots:
        return None
    modules = module_digests(roots, package=package)
    source = modules.pop(roots[0], "")
    return {"distribution": owner.distribution, "version": owner.version, "module": roots[0],
            "source_sha256": source, "modules_sha256": dict(sorted(modules.items()))}


def components(catalog: Any, dataset: Any, backbone: str) -> dict[str, dict[str, Any]]:
    """``versions.components`` of a run on ``dataset`` (its DatasetSpec) with backbone ``backbone`` (a name):
    :func:`component_identity` of each that a plugin registered. Never raises: a record is written whatever."""
    found = {}
    owners = getattr(catalog, "owners", {}) or {}
    for kind, name, spec in (("dataset", getattr(dataset, "name", None), dataset),
                             ("backbone", backbone, (getattr(catalog, "backbones", {}) or {}).get(backbone))):
        try:
            owner = owners.get((kind, name))
            identity = component_identity(kind, spec, owner) if spec is not None and owner is not None else None
        except Exception:  # noqa: BLE001 - stating identity must never stop a record being written
            identity = None
        if identity:
            found[f"{kind}:{name}"] = identity
    return found


def _changed_modules(old: Any, package: str | None, skip: str | None = None) -> list[tuple[str, str, str]]:
    """(module, old digest, digest now or "missing") for each module of ``old`` (a record's ``modules_sha256``)
    in ``package`` whose file differs now; entries of other packages, or not a module name and a hex digest (a
    crafted record), are ignored."""
    if not isinstance(old, dict) or not package or package == CORE_PACKAGE:
        return []
    changed = []
    for module, digest in sorted(old.items(), key=lambda kv: str(kv[0])):
        if not (isinstance(module, str) and isinstance(digest, str) and module != skip and len(module) <= 500
                and _MODULE_NAME.fullmatch(module) and module.split(".")[0] == package
                and _HEX.fullmatch(digest)):
            continue
        path = _module_file(module)
        now = _file_digest(path) if path is not None else ""
        if now != digest:
            changed.append((module, digest, now or "missing"))
    return changed


def changed_code(record: dict[str, Any], catalog: Any) -> list[str]:
    """A line for each method, and each backbone or dataset a plugin registered, of ``record`` whose code differs
    from what is installed now:

    - a method's distribution version or the digest of the file that defines its class, e.g. ``method 'ce':
      ltbench 0.2.0 (source 1a2b3c4d) -> 0.2.0 (source 5e6f7a8b)``;
    - each other module of its package it imports (records that state ``modules_sha256``), e.g. ``method 'x':
      helper module 'pkg.helpers' changed (source 1a2b3c4d -> 5e6f7a8b)``;
    - the same for a plugin's backbone or dataset (``versions.components``), e.g. ``backbone 'tiny': module
      'pkg.nets' changed (source 1a2b3c4d -> 5e6f7a8b)``.

    [] for records that predate source digests; what a record does not state is not compared. Methods, backbones
    and datasets that are no longer installed are left out."""
    lines: list[str] = []
    versions_ = record.get("versions") if isinstance(record, dict) else None
    versions_ = versions_ if isinstance(versions_, dict) else {}
    plugins = versions_.get("plugins") if isinstance(versions_.get("plugins"), dict) else {}
    methods = getattr(catalog, "methods", {}) or {}
    for name, old in plugins.items():
        if not isinstance(old, dict) or not old.get("source_sha256") or name not in methods:
            continue
        entry = methods[name]
        new = {"version": entry.plugin.version, "source_sha256": source_digest(entry.cls)}
        if (old.get("version"), old["source_sha256"]) != (new["version"], new["source_sha256"]):
            lines.append(f"method {name!r}: {old.get('distribution')} {old.get('version')} (source "
                         f"{str(old['source_sha256'])[:8]}) -> {new['version']} (source {new['source_sha256'][:8]})")
        module = getattr(entry.cls, "__module__", None)
        package = module.split(".")[0] if isinstance(module, str) else None
        for helper, was, now in _changed_modules(old.get("modules_sha256"), package, skip=module):
            lines.append(f"method {name!r}: helper module {helper!r} changed (source {was[:8]} -> {now[:8]})")
    found = versions_.get("components") if isinstance(versions_.get("components"), dict) else {}
    tables = {"backbone": getattr(catalog, "backbones", {}) or {}, "dataset": getattr(catalog, "datasets", {}) or {}}
    owners = getattr(catalog, "owners", {}) or {}
    for key, old in found.items():
        kind, _, name = str(key).partition(":")
        if kind not in tables or not isinstance(old, dict) or name not in tables[kind] or (kind, name) not in owners:
            continue
        owner = owners[kind, name]
        package, _roots = _component_roots(kind, tables[kind][name], owner)
        if isinstance(old.get("version"), str) and old["version"] != owner.version:
            lines.append(f"{kind} {name!r}: {old.get('distribution')} {old['version']} -> {owner.version}")
        stated = dict(old["modules_sha256"]) if isinstance(old.get("modules_sha256"), dict) else {}
        if isinstance(old.get("module"), str) and isinstance(old.get("source_sha256"), str):
            stated[old["module"]] = old["source_sha256"]
        for module, was, now in _changed_modules(stated, package):
            lines.append(f"{kind} {name!r}: module {module!r} changed (source {was[:8]} -> {now[:8]})")
    return lines


def versions(plugins: dict[str, dict[str, Any]],
             components: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The record's ``versions``: ltbench's and its libraries', each method's code (``plugins``, as
    :func:`plugin_identity`), the backbone and dataset a plugin registered (``components``, as
    :func:`components`) and ltbench's git commit."""
    import platform

    import numpy
    import timm
    import torch
    import torchvision

    from ltbench.hookspecs import installed_version

    git = git_commit()
    return {"ltbench": installed_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__, "numpy": numpy.__version__, "python": platform.python_version(),
            "plugins": plugins, "components": components or {}, "git_commit": git["commit"],
            "git_dirty": git["dirty"]}


#: what counted a record's ``compute.training_flops``
TRAINING_FLOPS_COUNTED_BY = "torch.utils.flop_counter: each epoch's first step, times the epoch's images"
#: training FLOPs per image processed, where a record has no count: a forward (2 FLOPs a multiply-accumulate of
#: the evaluation path) and a backward of twice that (:func:`training_compute`)
ESTIMATE_FLOPS_PER_MAC = 6


def _count(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    return float(value) if ok else None


def _stage_flops(entries: list[dict[str, Any]], epochs: int) -> int | None:
    """A stage's training FLOPs from its history entries: each epoch's counted FLOPs per image times its images;
    ``None`` where an epoch has no count (a record or a reused stage 1 that predates counting, a device the counter
    cannot run on) or the history lacks the stage; 0 for a stage of no epochs."""
    if not entries:
        return 0 if epochs == 0 else None
    total = 0.0
    for e in entries:
        per_image, images = _count(e.get("train_flops_per_image")), e.get("images")
        if per_image is None or not isinstance(images, int) or isinstance(images, bool) or images < 0:
            return None
        total += per_image * images
    return round(total)


def compute(record: dict[str, Any]) -> dict[str, Any]:
    """What a run trained, for compute-matched comparisons: ``backbone_epochs`` (epochs in which the backbone's
    weights were trained: stage 1, plus stage 2 when it fine-tunes the backbone) and, per stage, its epochs,
    whether it trained the backbone, and the training images it saw (from the record's history; ``None`` where
    the history lacks the stage, e.g. a reused stage 1 or a record that predates histories); and the model's
    ``parameters`` and ``inference_macs_per_image`` from the record's ``cost`` (``None`` where it has none).

    ``training_flops``: the FLOPs the run's training took, measured: the first training step of every epoch is
    counted by ``torch.utils.flop_counter`` (every forward and backward pass the step runs: all views, extra
    losses and their encoders, a step owner's closure such as SAM's, generated samples) per image, and each epoch
    costs that per image times the images it processed (the history's ``train_flops_per_image`` and ``images``);
    the counter counts matrix products, convolutions and attention (2 FLOPs a multiply-accumulate), not
    element-wise work such as batch norm or the optimiser's update.
    Per stage, ``training_flops`` and ``flops_per_image`` (the stage's FLOPs over its images, each view an image);
    ``None`` wherever an epoch of the run has no count (records that predate counting: the boards then estimate,
    and say so, :func:`training_compute`). Work outside the steps is not counted: epoch hooks, validation, and a
    stage 2's one pass extracting the training set's features. ``counted_by`` names the counter.
    Derived from the record, so it works for every schema."""
    config, plan = record["config"], record.get("second_stage")
    history = record.get("history") or []
    seen = {stage: sum(e.get("images") or 0 for e in history if e["stage"] == stage) or None for stage in (1, 2)}
    stages = {"1": {"epochs": config["epochs"], "backbone": True, "images": seen[1]}}
    if plan:
        epochs = config["stage2_epochs"] if plan.get("epochs") is None else plan["epochs"]
        stages["2"] = {"epochs": epochs, "backbone": bool(plan.get("train_backbone")), "images": seen[2]}
    for key, stage in stages.items():
        flops = _stage_flops([e for e in history if e["stage"] == int(key)], stage["epochs"])
        stage["training_flops"] = flops
        stage["flops_per_image"] = flops / stage["images"] if flops is not None and stage["images"] else None
    backbone = sum(s["epochs"] for s in stages.values() if s["backbone"])
    cost = record.get("cost") or {}
    counted = [s["training_flops"] for s in stages.values()]
    total = sum(counted) if counted and None not in counted and sum(counted) > 0 else None
    return {"backbone_epochs": backbone, "stages": stages, "parameters": cost.get("parameters"),
            "inference_macs_per_image": cost.get("inference_macs_per_image"), "training_flops": total,
            "counted_by": TRAINING_FLOPS_COUNTED_BY if total is not None else None}


def training_compute(record: dict[str, Any]) -> tuple[float | None, bool]:
    """The FLOPs a run's training took, and whether they are estimated: ``compute(record)["training_flops"]``
    where the record counted them; else (a record that predates counting) the estimate the boards used before,
    backbone epochs x inference cost, in FLOPs: ``ESTIMATE_FLOPS_PER_MAC`` x the inference multiply-accumulates
    per image x the images the backbone's stages processed (from the history, each view an image; else the
    training set once per backbone epoch). It misses every pass beyond one forward and backward of the evaluation
    path (SAM's second, a key encoder); ``(None, True)`` where the record has no inference cost either."""
    block = compute(record)
    if block["training_flops"] is not None:
        return float(block["training_flops"]), False
    macs = _count(block.get("inference_macs_per_image"))
    if macs is None:
        return None, True
    images = 0
    for key, stage in block["stages"].items():
        if not stage["backbone"]:
            continue
        if stage["images"]:
            images += stage["images"]
        else:
            counts = record.get("train_counts") or []
            images += stage["epochs"] * sum(c for c in counts if isinstance(c, int) and not isinstance(c, bool))
    return (ESTIMATE_FLOPS_PER_MAC * macs * images if images else None), True
