"""The one reader of what runs leave on disk: run records (``result.json``), the ``predictions.npz`` beside
them, and the JSON files a command reads with them (``config.json``, grid manifests).

A record is untrusted input: anyone may hand over a run folder or commit a record. Every command that reads
records (``show``, ``compare``, ``plot``, ``status``, ``eval``, ``leaderboard build`` and ``check``, the web
leaderboard) reads them through :func:`read_record`, which refuses, naming the file and the reason:

- anything that is not a regular file: a link, a FIFO, a device, a directory named ``result.json``. The file is
  opened without following a link and without blocking, and checked before a byte is read, so a FIFO never
  hangs a command;
- a file larger than :data:`MAX_BYTES`, or not UTF-8 JSON;
- JSON nested deeper than :data:`MAX_DEPTH`, counted on the text before the parser recurses;
- a record that fails its schema (:func:`record_problems`): the types, ranges and lengths of every field a
  command uses. Names that become parts of paths (dataset, budget, method, config id) are short names of
  letters, digits and ``. _ + = -``; numbers are finite and in range (accuracies in [0, 100], seeds in
  [0, 2**32 - 1]); ``per_class_accuracy`` and ``class_names`` have one entry per class of ``train_counts``;
  ``files.predictions`` names the ``predictions.npz`` beside the record and nothing else; no text holds a lone
  surrogate (which no file or terminal can print), and no label shown on one line holds a control character.

A command skips a refused record with one line naming its file and the reason (``skipped <path>: <why>``) and
goes on with the others; it never shows a traceback for a record. :func:`consistent` then leaves out, by name,
records whose number of classes is not their dataset's, and :func:`read_predictions` reads the predictions
beside a record with the same care (integer vectors of the record's test size and classes, their shapes checked
before their data is decompressed). A run reads its own record back (to skip or resume it) with the same file
checks but without the schema (:func:`ltbench.results.records.load_result`).
"""

from __future__ import annotations

import io
import math
import os
import re
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ltbench.results.records import MAX_NAME, PREDICTIONS_FILE, SAFE_NAME, STATUSES
# the safe file reads, used here and re-exported: the reader's callers need one import
from ltbench.results.safe_files import (MAX_BYTES, MAX_DEPTH, Unreadable, nesting_depth, read_bytes,  # noqa: F401
                                        read_json, regular_file)

#: the largest predictions.npz read
MAX_PREDICTIONS_BYTES = 512 * 2**20
#: labels shown in tables and plots (a variant names each option that differs from the defaults)
MAX_LABEL = 500
MAX_SEED = 2**32 - 1  # what numpy and torch take as a seed
MAX_CLASSES = 1_000_000
MAX_COUNT = 10**15  # images, epochs, parameters, MACs: anything counted
MAX_VALUE = 1e15  # any other number a command computes with (losses, seconds, rates)


# ---------------------------------------------------------------------------------------------------------------
# the record schema
#
# A check takes a value and where it is (``"second_stage.epochs"``) and returns what is wrong with it, each line
# naming where; [] when nothing is.

Check = Callable[[Any, str], list[str]]


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return f"an object of {len(value)} keys"
    if isinstance(value, list):
        return f"an array of {len(value)} items"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**15:
        return f"an integer of {len(str(abs(value)))} digits"
    return f"{value!r:.60}"


def _wrong(where: str, want: str, value: Any) -> list[str]:
    return [f"{where}: expected {want}, got {_shown(value)}"]


def anything(value: Any, where: str) -> list[str]:
    return []


def integer(low: int = 0, high: int = MAX_COUNT) -> Check:
    def check(value: Any, where: str) -> list[str]:
        if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
            return []
        return _wrong(where, f"an integer in [{low}, {high}]", value)
    return check


def number(low: float = -MAX_VALUE, high: float = MAX_VALUE) -> Check:
    def check(value: Any, where: str) -> list[str]:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
                and low <= value <= high:
            return []
        return _wrong(where, f"a finite number in [{low:g}, {high:g}]", value)
    return check


PERCENT = number(0.0, 100.0)


def boolean(value: Any, where: str) -> list[str]:
    return [] if isinstance(value, bool) else _wrong(where, "true or false", value)


_SURROGATE = re.compile(r"[\ud800-\udfff]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def text(max_chars: int, one_line: bool = True) -> Check:
    """A string of at most ``max_chars``; ``one_line``: without control characters (a label in a table)."""
    def check(value: Any, where: str) -> list[str]:
        if isinstance(value, str) and len(value) <= max_chars and not (one_line and _CONTROL.search(value)):
            return []
        return _wrong(where, f"a string of at most {max_chars} characters" + (" on one line" if one_line else ""),
                      value)
    return check


def name(value: Any, where: str) -> list[str]:
    """A name that becomes part of a path (dataset, budget, method, config id)."""
    if isinstance(value, str) and len(value) <= MAX_NAME and SAFE_NAME.fullmatch(value) and ".." not in value:
        return []
    return _wrong(where, f"a name of at most {MAX_NAME} letters, digits and . _ + = - (it becomes part of a path)",
                  value)


def one_of(*values: Any) -> Check:
    def check(value: Any, where: str) -> list[str]:
        if any(type(value) is type(v) and value == v for v in values):
            return []
        return _wrong(where, "one of " + ", ".join(map(str, values)), value)
    return check


def optional(inner: Check) -> Check:
    """``null``, or what ``inner`` accepts."""
    return lambda value, where: [] if value is None else inner(value, where)


def list_of(item: Check, max_items: int = MAX_CLASSES, min_items: int = 0) -> Check:
    """An array of ``min_items`` to ``max_items`` items that ``item`` accepts (the first bad one is named)."""
    def check(value: Any, where: str) -> list[str]:
        if not (isinstance(value, list) and min_items <= len(value) <= max_items):
            return _wrong(where, f"an array of {min_items} to {max_items} items", value)
        for i, v in enumerate(value):
            problems = item(v, f"{where}[{i}]")
            if problems:
                return problems
        return []
    return check


def fields(spec: dict[str, Check], required: tuple[str, ...] = (), others: Check = anything) -> Check:
    """An object whose keys in ``spec`` pass their checks (those in ``required`` must be there) and whose other
    keys' values pass ``others``."""
    def check(value: Any, where: str) -> list[str]:
        if not isinstance(value, dict):
            return _wrong(where, "an object", value)
        problems = [f"{where}.{key}: missing" for key in required if key not in value]
        for key, v in value.items():
            problems += spec.get(key, others)(v, f"{where}.{key}")
        return problems
    return check


def mapping(values: Check = anything) -> Check:
    """An object whose every value ``values`` accepts."""
    return fields({}, others=values)


GROUPS = ("overall", "many", "medium", "few")
ACCURACIES = fields({g: optional(PERCENT) for g in GROUPS})
THRESHOLDS = fields({"many_above": integer(), "few_below": integer()}, required=("many_above", "few_below"))
HISTORY_ENTRY = fields({"stage": integer(1, 2), "epoch": optional(integer()), "images": optional(integer()),
                        "val_overall": optional(PERCENT)},
                       required=("stage",), others=optional(number()))  # losses, lr, seconds, images per second
#: a stretch of consecutive epochs one machine trained (the record's ``machines``); device_model None: not stated
MACHINE_STRETCH = fields({"stage": integer(1, 2), "first_epoch": integer(1, 10**6), "last_epoch": integer(1, 10**6),
                          "device_model": optional(text(MAX_LABEL))},
                         required=("stage", "first_epoch", "last_epoch"))
REFERENCE = fields({**{g: optional(number()) for g in GROUPS}, "epochs": optional(integer()),
                    "backbone": text(MAX_LABEL), "options": mapping(), "source": text(10_000, one_line=False),
                    "augmentation": text(10_000, one_line=False)})
METHOD_METADATA = fields({"reference_results": mapping(REFERENCE), "interpretations": list_of(anything)})
PLUGIN_VERSION = fields({key: optional(text(MAX_LABEL)) for key in ("distribution", "version", "source_sha256")})

#: every field a command reads, and what it must be when it is there; the fields it does not name are kept and
#: never used
RECORD: dict[str, Check] = {
    "schema_version": optional(integer()),
    "status": one_of(*STATUSES),
    "dataset": name, "budget": name, "method": name, "config_id": name,
    "dataset_name": optional(name),
    "seed": integer(0, MAX_SEED),
    "methods": list_of(name, max_items=64, min_items=1),
    "variant": text(MAX_LABEL),
    "overrides": optional(mapping()),
    "imbalance_factor": optional(number(0.0)),
    "error": optional(text(MAX_BYTES, one_line=False)),
    "metrics": optional(ACCURACIES),
    "val_metrics": optional(ACCURACIES),
    "calibration": optional(fields({"ece": optional(number()), "nll": optional(number()),
                                    "bins": optional(integer())})),
    "cost": optional(fields({"parameters": optional(integer()), "inference_macs_per_image": optional(integer()),
                             "counted_by": optional(text(MAX_LABEL))})),
    "per_class_accuracy": optional(list_of(optional(PERCENT))),
    "train_counts": optional(list_of(integer(), min_items=1)),
    "class_names": optional(list_of(text(MAX_LABEL, one_line=False))),
    "group_thresholds": optional(THRESHOLDS),
    "group_sizes": optional(mapping(integer())),
    "val_size": optional(integer()), "test_size": optional(integer()),
    "split_fingerprint": optional(text(MAX_NAME)),
    "data_sha256": optional(fields({split: text(64) for split in ("train", "val", "test")})),
    "stage1": optional(mapping()),
    "second_stage": optional(fields({"epochs": optional(integer(0, 10**6)), "train_backbone": optional(boolean)})),
    "stage_wall_time_s": optional(mapping(optional(number(0.0)))),
    "wall_time_s": optional(number(0.0)),
    "history": optional(list_of(HISTORY_ENTRY, max_items=10**6)),
    "config": fields({"backbone": text(MAX_LABEL), "epochs": integer(1, 10**6), "stage2_epochs": integer(0, 10**6),
                      "imbalance_factor": number(0.0), "methods": mapping(mapping())},
                     required=("backbone", "epochs")),
    "versions": optional(fields({"plugins": optional(mapping(PLUGIN_VERSION))})),
    "method_metadata": optional(mapping(METHOD_METADATA)),
    "device": optional(text(MAX_LABEL)), "device_model": optional(text(MAX_LABEL)),
    "machines": optional(list_of(MACHINE_STRETCH, max_items=10**6)),
    "world_size": optional(integer(1, 10**6)),
    "throughput_img_per_s": optional(mapping(optional(number(0.0)))),
    "extra": optional(mapping()),
    "files": optional(fields({"predictions": optional(one_of(PREDICTIONS_FILE))})),
}
#: what a completed record must hold besides, for the commands that rank, compare and plot it
COMPLETED: dict[str, Check] = {
    "metrics": fields({**{g: optional(PERCENT) for g in GROUPS}, "overall": PERCENT}, required=GROUPS),
    "group_thresholds": THRESHOLDS, "wall_time_s": number(0.0), "train_counts": list_of(integer(), min_items=1),
    "per_class_accuracy": list_of(optional(PERCENT), min_items=1),
}
REQUIRED = ("status", "dataset", "budget", "method", "config_id", "seed", "methods", "variant", "config")


def _strings(value: Any) -> Iterator[str]:
    """Every string in a parsed JSON value, keys included (without recursion)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            yield from item.keys()
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def record_problems(rec: Any) -> list[str]:
    """What is wrong with a record read from disk (``[]`` when nothing): each problem names the field. Checked
    before any command uses a record, so that a malformed or crafted one is skipped by name, never a traceback,
    and none of its fields reaches a file path unchecked."""
    if not isinstance(rec, dict):
        return [f"the record is a JSON {type(rec).__name__}, not an object"]
    if "config_id" not in rec:
        return ["config_id: missing; the record predates run identity (ltbench < 0.2): re-run it"]
    problems = [f"{field}: missing" for field in REQUIRED if field not in rec]
    completed = rec.get("status") == "completed"
    for field, check in RECORD.items():
        if completed and field in COMPLETED:
            problems += COMPLETED[field](rec[field], field) if field in rec else [f"{field}: missing"]
        elif field in rec:
            problems += check(rec[field], field)
    counts = rec.get("train_counts")
    for field in ("per_class_accuracy", "class_names"):  # one entry per class
        value = rec.get(field)
        if isinstance(counts, list) and isinstance(value, list) and len(value) != len(counts):
            problems.append(f"{field}: {len(value)} entries for the {len(counts)} classes of train_counts")
    plan, config = rec.get("second_stage"), rec.get("config")
    if isinstance(plan, dict) and plan.get("epochs") is None and isinstance(config, dict) \
            and "stage2_epochs" not in config:
        problems.append("config.stage2_epochs: missing, and second_stage.epochs does not say")
    for field, value in rec.items():  # text that no file or terminal can print
        if any(_SURROGATE.search(s) for s in _strings({field: value})):
            problems.append(f"{field}: holds text that is not valid Unicode (a lone surrogate)")
    return problems


def read_record(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(record, None)``, or ``(None, why not)`` for a file that is not a well-formed record: not a regular
    file (a link, a FIFO, a directory), too large or too deeply nested, not JSON, or failing
    :func:`record_problems`. ``why not`` starts with the path."""
    path = Path(path)
    try:
        rec = read_json(path)
    except Unreadable as exc:
        return None, str(exc)
    problems = record_problems(rec)
    if problems:
        return None, f"{path}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
    return rec, None


def consistent(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The records whose number of classes is their dataset's (the most common among its records), each run once
    (:func:`_distinct`), and a line naming each other one: a dataset's records are compared class by class, so one
    with other classes is left out rather than break the comparison."""
    classes: dict[str, Counter] = {}
    for rec in records:
        if rec.get("train_counts"):
            classes.setdefault(rec["dataset"], Counter())[len(rec["train_counts"])] += 1
    kept, skipped = [], []
    for rec in records:
        usual = classes[rec["dataset"]].most_common(1)[0][0] if rec.get("train_counts") else None
        if usual is not None and len(rec["train_counts"]) != usual:
            skipped.append(f"{rec.get('_path', rec['dataset'])}: train_counts: {len(rec['train_counts'])} classes, "
                           f"where the other records of {rec['dataset']} have {usual}")
        else:
            kept.append(rec)
    return _distinct(kept, skipped)


def _distinct(records: list[dict[str, Any]], skipped: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Each run once: a record of the same (dataset, budget, method or variant, config id, seed) as one read before
    it (the same run copied into two folders) is left out with a line naming both files, so that it does not count
    as a second seed."""
    seen: dict[tuple, str] = {}
    kept = []
    for rec in records:
        key = (rec.get("dataset"), rec.get("budget"), rec.get("variant", rec.get("method")), rec.get("config_id"),
               rec.get("seed"))
        where = rec.get("_path", "a record")
        if key in seen:
            skipped.append(f"{where}: the same run ({key[2]} seed {key[4]} on {key[0]}, budget {key[1]}, config "
                           f"{key[3]}) as {seen[key]}: counted once")
            continue
        seen[key] = where
        kept.append(rec)
    return kept, skipped


# ---------------------------------------------------------------------------------------------------------------
# predictions


def npy_header(archive: zipfile.ZipFile, key: str) -> tuple[tuple[int, ...], Any]:
    """(shape, dtype) of the npz array ``key``, read from its header alone (its data is not read, so that a
    crafted header never makes numpy allocate)."""
    import numpy as np

    with archive.open(f"{key}.npy") as fh:
        version = np.lib.format.read_magic(fh)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"{key!r} is in npy format {version}")
        header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = header(fh)
    return shape, dtype


def _class_vector(archive: zipfile.ZipFile, key: str, length: int | None, classes: int) -> Any:
    """The npz array ``key``, which must be a vector of ``length`` class indices; its header is checked before
    its data is read (:func:`npy_header`)."""
    import numpy as np

    member = f"{key}.npy"
    if member not in archive.namelist():
        raise ValueError(f"no {key!r} array")
    shape, dtype = npy_header(archive, key)
    if len(shape) != 1 or dtype.kind not in "iu" or shape[0] * dtype.itemsize > MAX_PREDICTIONS_BYTES \
            or (length is not None and shape[0] != length):
        raise ValueError(f"{key!r} is a {dtype} array of shape {shape}, not {length or 'n'} class indices")
    with archive.open(member) as fh:
        values = np.lib.format.read_array(fh, allow_pickle=False)
    if len(values) and (values.min() < 0 or values.max() >= classes):
        raise ValueError(f"{key!r} holds classes outside 0..{classes - 1}")
    return values


def read_predictions(rec: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """``({"labels": ..., "predictions": ...}, None)`` from the ``predictions.npz`` beside a completed record read
    by :func:`read_record` (at ``rec["_path"]``); ``(None, None)`` where the record names none or there is none;
    ``(None, why not)`` for a file that is not regular, or whose arrays are not the labels and predicted classes
    of the record's test images."""
    files = rec.get("files") or {}
    if files.get("predictions") != PREDICTIONS_FILE or "_path" not in rec:
        return None, None
    path = Path(rec["_path"]).parent / PREDICTIONS_FILE
    if not os.path.lexists(path):
        return None, None
    classes = len(rec["train_counts"])
    test_size = rec.get("test_size")
    try:
        with zipfile.ZipFile(io.BytesIO(read_bytes(path, MAX_PREDICTIONS_BYTES))) as archive:
            labels = _class_vector(archive, "labels", test_size, classes)
            predictions = _class_vector(archive, "predictions", len(labels), classes)
    except Unreadable as exc:
        return None, str(exc)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
        return None, f"{path}: not the predictions of its record ({str(exc)[:120] or type(exc).__name__})"
    return {"labels": labels, "predictions": predictions}, None
