"""Records made elsewhere, checked before they join the board: ``ltbench leaderboard add RECORDS [--to DIR]``.

RECORDS are ``result.json`` files, run folders, or folders of them (searched for every ``result.json`` below).
Each record is read with the one record reader (:func:`ltbench.results.reader.read_record`: a regular file,
bounded, schema-checked) and added only when every check passes:

- **completed**, with its **predictions**: it names ``predictions.npz`` (``files.predictions``) and the file
  lies beside it, holding the test labels and predicted classes of its test images
  (:func:`ltbench.results.reader.read_predictions`);
- **its metrics recompute** from those predictions: per-class accuracies, overall, many, medium and few
  (:func:`ltbench.results.metrics.evaluate_predictions` with the record's training counts and group thresholds),
  the group sizes, and ECE and NLL where the record states them (from the file's ``confidence`` and
  ``true_probability``);
- **the canonical split**: its ``split_fingerprint``, training counts and group thresholds are the canonical ones of
  its dataset key (``cifar100-lt-if100``), and its test labels are the canonical test set. The canonical split
  comes from the dataset's data, loaded as a run loads it (``--data-root``, else ``$LTBENCH_DATA``; the embedded
  and generated datasets need nothing); where the data is not found, from the records of the same key already on
  the board (under ``--to``; the records being checked never count), which were checked when they were added.
  Where neither is there, the record is refused: the split cannot be checked;
- **its code is stated**: the ltbench version, and for each of its methods the distribution, version and code
  digest (``versions.plugins[<method>]``: ``distribution``, ``version``, ``source_sha256``);
- it is a run on its own dataset (not ``ltbench eval`` of a model trained on another key), and it does not put a
  second configuration into a board row (the same dataset, budget and variant with another ``config_id``, which
  ``ltbench leaderboard build`` refuses).

Each refused record gets one line naming its file and why (every reason found, separated by ``;``). Nothing is
written before every record has been checked, and only the records that passed are copied, each to
``<to>/<dataset>/<budget>/<method>/<config-id>/seed<k>/`` (``result.json`` and ``predictions.npz``; its path comes
from the record's names, which the reader checks, and is checked again to stay under ``<to>``). A different record
already at that place is never replaced unless ``replace`` is given; the same bytes are left as they are.
``check_only`` checks and copies nothing: the pull-request workflow runs it on the records a pull request adds.
"""

from __future__ import annotations

import io
import math
import os
import re
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ltbench.errors import ConfigError, LtbenchError
from ltbench.results.reader import (MAX_LABEL, MAX_PREDICTIONS_BYTES, Unreadable, npy_header, read_bytes,
                                    read_predictions, read_record)
from ltbench.results.records import PREDICTIONS_FILE, RESULT_FILE, atomic_write_bytes

#: where ``ltbench leaderboard add`` copies records (the board's records)
DEFAULT_TO = Path("leaderboards") / "records"
#: how far a stated accuracy (percent) may lie from the one its predictions give: JSON keeps floats exactly, so
#: only rounding of another platform's arithmetic is allowed for
ACCURACY_TOLERANCE = 1e-6
#: the same for ECE (percent) and NLL, recomputed from float32 probabilities
CALIBRATION_TOLERANCE = 1e-4
ACCURACY_FIELDS = ("overall", "many", "medium", "few")


@dataclass
class Split:
    """The canonical split of a dataset key, and where it came from (for the report)."""

    fingerprint: str
    train_counts: list[int]
    group_thresholds: dict[str, int]
    test_labels: np.ndarray | None
    source: str


@dataclass
class Checked:
    """A record that passed: what it is, where it goes, and the bytes to write there (those that were checked)."""

    source: Path
    record: dict[str, Any]
    dest: Path
    files: dict[str, bytes]
    split_source: str
    state: str = "new"  # "new", "unchanged" (the same bytes are there) or "replaces" (a different record is)


@dataclass
class Outcome:
    checked: list[Checked] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------
# finding the records


def find_records(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """The ``result.json`` files named by ``paths`` (a record, a run folder or a folder of them), each once, and a
    line for each path that holds none."""
    found: list[Path] = []
    seen: set[Path] = set()
    missing = []
    for path in map(Path, paths):
        if os.path.isdir(path):
            records = sorted(path.rglob(RESULT_FILE))  # linked folders are not searched
        elif os.path.lexists(path):
            records = [path]  # the reader says what is wrong with a file that is not a record
        else:
            missing.append(f"{path}: does not exist")
            continue
        if not records:
            missing.append(f"{path}: holds no {RESULT_FILE}")
        for record in records:
            key = Path(os.path.realpath(record))
            if key not in seen:
                seen.add(key)
                found.append(record)
    return found, missing


# ---------------------------------------------------------------------------------------------------------------
# the canonical split


class Splits:
    """The canonical split of each dataset key, looked up once: from the data where it is found, else from the
    board's records of that key (leaving out ``exclude``, the records being checked)."""

    def __init__(self, board: list[dict[str, Any]], board_dir: Path, data_root: str | None, exclude: set[Path]):
        self.board = [r for r in board if Path(os.path.realpath(r["_path"])) not in exclude]
        self.board_dir = board_dir
        self.data_root = data_root
        self._known: dict[tuple, tuple[Split | None, str | None]] = {}

    def of(self, rec: dict[str, Any]) -> tuple[Split | None, str | None]:
        name = rec.get("dataset_name") or rec["dataset"].rsplit("-", 1)[0]
        imb = (rec.get("config") or {}).get("imbalance_factor", rec.get("imbalance_factor"))
        key = (rec["dataset"], name, imb)
        if key not in self._known:
            self._known[key] = self._look_up(rec["dataset"], name, imb)
        return self._known[key]

    def _look_up(self, key: str, name: str, imb: Any) -> tuple[Split | None, str | None]:
        from_data, why_not, final = self._from_data(key, name, imb)
        if from_data is not None or final:
            return from_data, why_not or None
        from_board, board_why_not = self._from_board(key)
        if from_board is not None:
            return from_board, None
        return None, (f"cannot check its split: {why_not}, and {board_why_not}; give --data-root with the "
                      f"dataset's data")

    def _from_data(self, key: str, name: str, imb: Any) -> tuple[Split | None, str, bool]:
        """The split loaded from the data, or why not, and whether that refuses the record outright (its key is
        not what its dataset and imbalance factor make)."""
        from ltbench.data.split import load_checked
        from ltbench.plugins.catalog import get_catalog

        if imb is None or isinstance(imb, bool) or not isinstance(imb, (int, float)):
            return None, "config.imbalance_factor: missing, so its split cannot be checked", True
        try:
            spec = get_catalog().dataset(name)
        except LtbenchError:
            return None, f"dataset {name!r} is not installed here", False
        if spec.key(imb) != key:
            return None, (f"dataset: {key!r} is not the key of {name} at imbalance factor {imb:g} "
                          f"({spec.key(imb)!r})"), True
        try:
            data = load_checked(spec, self.data_root, imb)
        except Exception as exc:  # noqa: BLE001 - DataNotFoundError, or a loader's own failure: named, not raised
            return None, f"no data of {name} found ({_first_line(exc)})", False
        return Split(data.fingerprint, data.train_counts.tolist(), dict(data.group_thresholds),
                     np.asarray(data.y_test), f"the {key} data ({data.info.get('source', 'loaded')})"), "", True

    def _from_board(self, key: str) -> tuple[Split | None, str]:
        same = [r for r in self.board if r["dataset"] == key and r.get("split_fingerprint")]
        if not same:
            return None, f"no record of {key} is on the board under {self.board_dir} to compare with"
        prints = Counter(r["split_fingerprint"] for r in same)
        if len(prints) > 1:
            return None, (f"the {len(same)} records of {key} under {self.board_dir} disagree on its split "
                          f"(fingerprints {', '.join(sorted(prints))})")
        ref = same[0]
        labels = None
        for rec in same:  # the test labels of the first whose predictions read
            found, _ = read_predictions(rec)
            if found is not None:
                labels = found["labels"]
                break
        return Split(ref["split_fingerprint"], list(ref["train_counts"]), dict(ref["group_thresholds"]), labels,
                     f"{len(same)} record(s) of {key} on the board under {self.board_dir}"), ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


# ---------------------------------------------------------------------------------------------------------------
# the checks of one record


def _float_vector(archive: zipfile.ZipFile, key: str, length: int) -> np.ndarray | None:
    """The npz array ``key`` as a vector of ``length`` probabilities, or None where there is none; its header is
    checked before its data is read (as the reader checks the class vectors)."""
    member = f"{key}.npy"
    if member not in archive.namelist():
        return None
    shape, dtype = npy_header(archive, key)
    if shape != (length,) or dtype.kind != "f" or dtype.itemsize > 8:
        raise ValueError(f"{key!r} is a {dtype} array of shape {shape}, not {length} probabilities")
    with archive.open(member) as fh:
        values = np.lib.format.read_array(fh, allow_pickle=False)
    if not (np.isfinite(values).all() and (values >= 0).all() and (values <= 1).all()):
        raise ValueError(f"{key!r} holds values outside [0, 1]")
    return values


def _differs(said: Any, found: Any, tolerance: float) -> bool:
    if said is None or found is None:
        return not (said is None and found is None)
    return not math.isclose(float(said), float(found), rel_tol=0.0, abs_tol=tolerance)


def _shown(value: Any) -> str:
    return "none" if value is None else f"{value:.6g}"


def _metric_problems(rec: dict[str, Any], found: dict[str, Any], data: bytes) -> list[str]:
    """What the record states that its predictions do not give."""
    from ltbench.results.metrics import ECE_BINS, calibration, evaluate_predictions

    labels, predictions = found["labels"], found["predictions"]
    again = evaluate_predictions(labels, predictions, np.asarray(rec["train_counts"]), rec["group_thresholds"])
    wrong = [f"metrics.{g}: the record says {_shown(rec['metrics'].get(g))}, its {PREDICTIONS_FILE} gives "
             f"{_shown(getattr(again, g))}" for g in ACCURACY_FIELDS
             if _differs(rec["metrics"].get(g), getattr(again, g), ACCURACY_TOLERANCE)]
    classes = [c for c, (said, got) in enumerate(zip(rec["per_class_accuracy"], again.per_class_accuracy))
               if _differs(said, got, ACCURACY_TOLERANCE)]
    if classes:
        c = classes[0]
        wrong.append(f"per_class_accuracy: {len(classes)} class(es) differ from its {PREDICTIONS_FILE}, first "
                     f"class {c}: {_shown(rec['per_class_accuracy'][c])} against {_shown(again.per_class_accuracy[c])}")
    sizes = rec.get("group_sizes")
    if sizes is not None and {g: sizes.get(g) for g in again.group_sizes} != again.group_sizes:
        wrong.append(f"group_sizes: the record says {sizes}, its training counts give {again.group_sizes}")
    stated = rec.get("calibration") or {}
    if stated.get("ece") is not None or stated.get("nll") is not None:
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                conf = _float_vector(archive, "confidence", len(labels))
                true_p = _float_vector(archive, "true_probability", len(labels))
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
            return wrong + [f"calibration: its {PREDICTIONS_FILE} cannot give it ({str(exc)[:120]})"]
        if conf is None or true_p is None:
            return wrong + [f"calibration: stated, but its {PREDICTIONS_FILE} has no confidence and "
                            f"true_probability to recompute it from"]
        bins = stated.get("bins") or ECE_BINS
        if not 1 <= bins <= 10_000:
            return wrong + [f"calibration.bins: {bins}, not a number of confidence bins"]
        cal = calibration(conf, predictions == labels, true_p, bins=bins)
        wrong += [f"calibration.{k}: the record says {_shown(stated.get(k))}, its {PREDICTIONS_FILE} gives "
                  f"{_shown(cal[k])}" for k in ("ece", "nll")
                  if stated.get(k) is not None and _differs(stated[k], cal[k], CALIBRATION_TOLERANCE)]
    return wrong


def _version_problems(rec: dict[str, Any]) -> list[str]:
    """The code a record must state: ltbench's version, and each method's distribution, version and digest."""
    versions = rec.get("versions") if isinstance(rec.get("versions"), dict) else {}
    problems = []
    if not (isinstance(versions.get("ltbench"), str) and 0 < len(versions["ltbench"]) <= MAX_LABEL):
        problems.append("versions.ltbench: missing; a submission states the ltbench it ran")
    plugins = versions.get("plugins") or {}
    for method in rec["methods"]:
        said = plugins.get(method) or {}
        absent = [k for k in ("distribution", "version", "source_sha256") if not said.get(k)]
        if absent:
            problems.append(f"versions.plugins.{method}: no {', '.join(absent)}; a submission states each method's "
                            f"distribution, version and code digest (ltbench >= 0.2 writes them)")
    return problems


def _split_problems(rec: dict[str, Any], split: Split, labels: np.ndarray | None) -> list[str]:
    where = f"the canonical {rec['dataset']} split (from {split.source})"
    problems = []
    if rec.get("split_fingerprint") != split.fingerprint:
        problems.append(f"split_fingerprint: {rec.get('split_fingerprint') or 'missing'}, not the "
                        f"{split.fingerprint} of {where}: trained on other data")
    if list(rec["train_counts"]) != list(split.train_counts):
        problems.append(f"train_counts: not those of {where}")
    if dict(rec["group_thresholds"]) != dict(split.group_thresholds):
        problems.append(f"group_thresholds: {rec['group_thresholds']}, not {split.group_thresholds} of {where}")
    if labels is not None and split.test_labels is not None and not np.array_equal(labels, split.test_labels):
        problems.append(f"{PREDICTIONS_FILE}: its labels are not the test set of {where}")
    return problems


def _board_problems(rec: dict[str, Any], rows: dict[tuple, tuple[str, str]]) -> list[str]:
    """A second configuration in one board row (``leaderboard.render`` refuses to average two)."""
    row = (rec["dataset"], rec["budget"], rec["variant"])
    there = rows.get(row)
    if there is not None and there[0] != rec["config_id"]:
        return [f"config_id: {rec['config_id']}, where the row {rec['variant']!r} of {rec['dataset']}/"
                f"{rec['budget']} holds config {there[0]} ({there[1]}): the budget's defaults differ between them; "
                f"re-run it with this ltbench's defaults"]
    return []


def check_record(path: Path, splits: Splits, rows: dict[tuple, tuple[str, str]], to: Path
                 ) -> tuple[Checked | None, str | None]:
    """``(Checked, None)`` for a record that passes every check, else ``(None, "<path>: why")``, naming every
    reason found."""
    rec, problem = read_record(path)
    if problem:
        return None, problem
    try:  # the bytes checked are the bytes copied: read them before and after the checks
        before = {RESULT_FILE: read_bytes(path)}
    except Unreadable as exc:
        return None, str(exc)
    if rec["status"] != "completed":
        return None, f"{path}: status {rec['status']}: only completed runs join the board"
    rec["_path"] = str(path)
    problems = _version_problems(rec)
    evaluation = rec.get("evaluation") if isinstance(rec.get("evaluation"), dict) else {}
    if evaluation.get("trained_on") not in (None, rec["dataset"]):
        problems.append(f"evaluation.trained_on: {str(evaluation['trained_on'])[:MAX_LABEL]!r}: an evaluation on "
                        f"{rec['dataset']} of a model trained on another dataset; the board takes runs on their "
                        f"own dataset")
    found = None
    pred_path = Path(path).parent / PREDICTIONS_FILE
    if (rec.get("files") or {}).get("predictions") != PREDICTIONS_FILE:
        problems.append(f"files.predictions: the record names no {PREDICTIONS_FILE}; a submission needs its "
                        f"predictions to recompute its metrics")
    elif not os.path.lexists(pred_path):
        problems.append(f"{PREDICTIONS_FILE}: missing beside it; a submission needs its predictions to recompute "
                        f"its metrics")
    else:
        try:
            before[PREDICTIONS_FILE] = read_bytes(pred_path, MAX_PREDICTIONS_BYTES)
        except Unreadable as exc:
            problems.append(str(exc))
        else:
            found, why = read_predictions(rec)
            if why or found is None:
                problems.append(why or f"{pred_path}: cannot be read")
                found = None
    split, why = splits.of(rec)
    if split is None:
        problems.append(why)
    else:
        problems += _split_problems(rec, split, found["labels"] if found else None)
    # the metrics are recomputed on the canonical classes only (a crafted record's classes are never allocated)
    if found is not None and split is not None and list(rec["train_counts"]) == list(split.train_counts):
        problems += _metric_problems(rec, found, before[PREDICTIONS_FILE])
    problems += _board_problems(rec, rows)
    dest_root = Path(os.path.abspath(to))
    dest = dest_root / rec["dataset"] / rec["budget"] / rec["method"] / rec["config_id"] / f"seed{rec['seed']}"
    if dest_root.resolve() not in (dest / RESULT_FILE).resolve().parents:  # the names are checked; the last word
        problems.append(f"its place {dest} would lie outside {dest_root}")
    if problems:
        return None, f"{path}: " + "; ".join(problems)
    try:
        after = {name: read_bytes(Path(path).parent / name, MAX_PREDICTIONS_BYTES) for name in before}
    except Unreadable as exc:
        return None, str(exc)
    if after != before:
        return None, f"{path}: changed while it was checked; check it again"
    del rec["_path"]
    return Checked(Path(path), rec, dest, before, split.source), None


# ---------------------------------------------------------------------------------------------------------------
# the command


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _existing_state(item: Checked) -> str:
    """What lies at the record's place now: ``new`` (nothing, or not all of it), ``unchanged`` (the same bytes, or
    the very files: a pull request's records checked where they lie) or ``replaces`` (a different record)."""
    missing = differs = False
    for name, data in item.files.items():
        there = item.dest / name
        if not os.path.lexists(there):
            missing = True
        elif not _same_file(there, item.source.parent / name):
            try:
                differs |= read_bytes(there, MAX_PREDICTIONS_BYTES) != data
            except Unreadable:  # a link or a FIFO there: replaced, never followed
                differs = True
    return "replaces" if differs else "new" if missing else "unchanged"


def add(paths: list[Path], to: Path = DEFAULT_TO, data_root: str | None = None, check_only: bool = False,
        replace: bool = False) -> Outcome:
    """Check the records named by ``paths`` and copy those that pass into ``to`` (none with ``check_only``).
    Every record is checked before anything is written; :class:`Outcome` says what passed, what was refused
    (one line each, ``<path>: why``) and what was written."""
    from ltbench.results.leaderboard import load_records

    if data_root and not Path(data_root).expanduser().is_dir():
        raise ConfigError(f"--data-root {data_root} is not a directory")
    to = Path(to)
    if os.path.lexists(to) and not to.is_dir():
        raise ConfigError(f"--to {to} is not a directory")
    sources, missing = find_records(paths)
    outcome = Outcome(refused=missing)
    exclude = {Path(os.path.realpath(p)) for p in sources}
    board = load_records(to, []) if to.is_dir() else []
    splits = Splits(board, to, data_root, exclude)
    rows: dict[tuple, tuple[str, str]] = {}
    for rec in board:
        if Path(os.path.realpath(rec["_path"])) not in exclude:
            rows.setdefault((rec["dataset"], rec["budget"], rec["variant"]), (rec["config_id"], rec["_path"]))
    places: dict[Path, Path] = {}
    for path in sources:
        item, why = check_record(path, splits, rows, to)
        if item is None:
            outcome.refused.append(why)
            continue
        if item.dest in places:
            outcome.refused.append(f"{path}: the same run ({item.record['variant']} seed {item.record['seed']} on "
                                   f"{item.record['dataset']}, budget {item.record['budget']}, config "
                                   f"{item.record['config_id']}) as {places[item.dest]}, given twice")
            continue
        item.state = _existing_state(item)
        if item.state == "replaces" and not replace:
            outcome.refused.append(f"{path}: a different record of the same run is already at {item.dest}; "
                                   f"remove it or pass --replace to replace it")
            continue
        places[item.dest] = path
        rows.setdefault((item.record["dataset"], item.record["budget"], item.record["variant"]),
                        (item.record["config_id"], str(path)))
        outcome.checked.append(item)
    if check_only:
        return outcome
    for item in list(outcome.checked):
        if item.state == "unchanged":
            continue
        try:
            for name in (PREDICTIONS_FILE, RESULT_FILE):  # the record last, as a run writes it
                atomic_write_bytes(item.dest / name, item.files[name])
                outcome.written.append(item.dest / name)
        except OSError as exc:  # e.g. a file where a folder of the board should be
            outcome.checked.remove(item)
            outcome.refused.append(f"{item.source}: cannot be written to {item.dest} "
                                   f"({exc.strerror or type(exc).__name__})")
    return outcome


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def one_line(text: str) -> str:
    """``text`` on one printable line (a path may hold any character but ``/``)."""
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def report(outcome: Outcome, check_only: bool, to: Path) -> list[str]:
    """The lines ``ltbench leaderboard add`` prints: one per record, then a count."""
    lines = []
    for item in outcome.checked:
        rec = item.record
        what = (f"{rec['dataset']}/{rec['budget']}/{rec['variant']} seed {rec['seed']}, overall "
                f"{rec['metrics']['overall']:.2f}; split checked against {item.split_source}")
        if check_only:
            lines.append(f"valid {item.source}: {what}" + (f"; a different record is at {item.dest}"
                                                           if item.state == "replaces" else ""))
        elif item.state == "unchanged":
            lines.append(f"unchanged {item.source}: {what}; already at {item.dest}")
        else:
            lines.append(f"{'replaced' if item.state == 'replaces' else 'added'} {item.source} -> {item.dest}: "
                         f"{what}")
    lines += [f"refused {why}" for why in outcome.refused]
    states = Counter(item.state for item in outcome.checked)
    if check_only:
        lines.append(f"{len(outcome.checked)} valid, {len(outcome.refused)} refused; nothing copied (--check-only)")
    else:
        lines.append(f"{states['new']} added, {states['replaces']} replaced, {states['unchanged']} already there, "
                     f"{len(outcome.refused)} refused")
    if outcome.written and to.name == "records":
        lines.append(f"now rebuild the boards: ltbench leaderboard build --out {to.parent}")
    return [one_line(line) for line in lines]
