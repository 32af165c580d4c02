"""What a set of records says: a table of means over seeds (``ltbench show``, and the end of every
``ltbench run``) and a paired comparison of two methods with a bootstrap interval (``ltbench compare``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from ltbench.errors import LtbenchError, UnknownNameError
from ltbench.results.reader import consistent, read_predictions, read_record
from ltbench.results.records import RESULT_FILE

GROUPS = ("overall", "many", "medium", "few")
FORMATS = ("table", "csv", "json", "markdown")
SMOKE_NOTE = ("smoke-budget numbers only show that the runs work; they mean nothing about the methods "
              "(use --budget cpu or paper to compare)")


def load_records(path: Path) -> list[dict[str, Any]]:
    """Every record (any status) under a runs directory, a leaderboard's records, or one result.json."""
    path = Path(path)
    if not path.exists():
        raise LtbenchError(f"{path} does not exist; give a runs directory (the --output of ltbench run)")
    paths = [path] if path.is_file() else sorted(path.rglob(RESULT_FILE))
    records, skipped = [], []
    for p in paths:
        rec, problem = read_record(p)
        if problem:  # a malformed or crafted record is named and left out, never a traceback
            skipped.append(problem)
            continue
        rec["_path"] = str(p)
        records.append(rec)
    records, other_classes = consistent(records)
    for line in skipped + other_classes:
        print(f"skipped {line}", file=sys.stderr)
    if not records:
        raise LtbenchError(f"no run records (result.json) under {path}")
    return records


def label(rec: dict[str, Any]) -> str:
    """A record's row: its variant (or method), saying ``(trained on <dataset key>)`` where the record evaluates a
    model trained in another setting (``ltbench eval --imbalance-factor``), so that such a row is never read as a
    model trained on the key it is listed under. Records of ``ltbench eval`` carry it in their variant; older ones
    only name the training key under ``evaluation``."""
    name = rec.get("variant", rec["method"])
    trained = rec.get("trained_on")
    trained = trained.get("dataset") if isinstance(trained, dict) else None
    if trained is None and isinstance(rec.get("evaluation"), dict):
        trained = rec["evaluation"].get("trained_on")
    if (isinstance(trained, str) and trained.isprintable() and len(trained) <= 200 and trained != rec.get("dataset")
            and f"(trained on {trained})" not in name):
        name = f"{name} (trained on {trained})"
    return name


def summarise(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (dataset, budget, method or variant): mean and std over seeds of each group's accuracy,
    and how many runs completed, failed and diverged."""
    rows = []
    for rec in records:
        m = rec.get("metrics") or {}
        cal = rec.get("calibration") or {}
        rows.append({"dataset": rec["dataset"], "budget": rec["budget"], "method": label(rec),
                     "seed": rec["seed"], "status": rec["status"], **{g: m.get(g) for g in GROUPS},
                     "ece": cal.get("ece"), "nll": cal.get("nll")})
    df = pd.DataFrame(rows)
    for g in (*GROUPS, "ece", "nll"):
        df[g] = pd.to_numeric(df[g], errors="coerce")
    out = []
    for (dataset, budget, method), part in df.groupby(["dataset", "budget", "method"], sort=True):
        done = part[part["status"] == "completed"]
        row = {"dataset": dataset, "budget": budget, "method": method, "seeds": int(len(done))}
        for g in GROUPS:
            row[g] = done[g].mean() if len(done) else np.nan
            row[f"{g}_std"] = done[g].std() if len(done) > 1 else np.nan
            # a seed whose split has no class in the group has no accuracy for it: the mean is over the others,
            # and the table says over how many (:func:`seeds_note`)
            row[f"{g}_seeds"] = int(done[g].notna().sum())
        for c in ("ece", "nll"):  # records from before calibration have none: – in the table
            row[c] = done[c].mean() if len(done) and done[c].notna().all() else np.nan
        row["failed"] = int((part["status"] == "failed").sum())
        row["diverged"] = int((part["status"] == "diverged").sum())
        out.append(row)
    table = pd.DataFrame(out)
    return table.sort_values(["dataset", "budget", "overall"], ascending=[True, True, False], kind="mergesort",
                             ignore_index=True)


def seeds_note(have: int, seeds: int) -> str:
    """`` (2 of 3 seeds)`` after a mean that some of its row's seeds have no value for (a group with no class in
    their split), so that a mean over fewer seeds is never read as the row's mean over all; ``""`` otherwise."""
    return f" ({have} of {seeds} seeds)" if 0 < have < seeds else ""


def _cell(mean: float, std: float, have: int = 0, seeds: int = 0) -> str:
    if pd.isna(mean):
        return "–"
    return (f"{mean:.2f}" if pd.isna(std) else f"{mean:.2f} ± {std:.2f}") + seeds_note(have, seeds)


def render(table: pd.DataFrame, fmt: str = "table") -> str:
    """``table`` (from :func:`summarise`) as text; csv and json keep full precision, the others show 2 decimals."""
    if fmt not in FORMATS:
        raise UnknownNameError("format", fmt, FORMATS)
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "json":
        return json.dumps(json.loads(table.to_json(orient="records")), indent=2)
    shown = [[r["dataset"], r["budget"], r["method"], *[_cell(r[g], r[f"{g}_std"], r[f"{g}_seeds"], r["seeds"])
                                                         for g in GROUPS],
              _cell(r["ece"], np.nan), r["seeds"], r["failed"], r["diverged"]] for _, r in table.iterrows()]
    headers = ["dataset", "budget", "method", *GROUPS, "ECE", "seeds", "failed", "diverged"]
    text = tabulate(shown, headers=headers, tablefmt="github" if fmt == "markdown" else "simple",
                    disable_numparse=True)
    if (table["budget"] == "smoke").any():
        text += f"\n\nNote: {SMOKE_NOTE}."
    return text


# ---------------------------------------------------------------------------------------------------------------
# paired comparison


def _predictions(rec: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """The test labels and predictions beside ``rec``, or None (a file that is not its record's is named)."""
    found, problem = read_predictions(rec)
    if problem:
        print(f"ignored {problem}; comparing by seed", file=sys.stderr)
    return found


def _group_of_classes(rec: dict[str, Any]) -> dict[str, np.ndarray]:
    from ltbench.results.metrics import shot_groups

    groups = shot_groups(np.asarray(rec["train_counts"]), **rec["group_thresholds"])
    return {"overall": np.ones(len(groups), bool), **{g: groups == g for g in ("many", "medium", "few")}}


def compare(records: list[dict[str, Any]], a: str, b: str, dataset: str | None = None, budget: str | None = None,
            n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """``a`` minus ``b`` per group, paired by seed (and by test image where both have predictions), with a
    95 % percentile-bootstrap interval: seeds are resampled, and within each class its test images."""
    done = [r for r in records if r["status"] == "completed"]
    names = sorted({label(r) for r in done})
    for name in (a, b):
        if name not in names:
            raise UnknownNameError("method", name, names)
    pick = lambda name: [r for r in done if label(r) == name  # noqa: E731
                         and (dataset is None or r["dataset"] == dataset) and (budget is None or r["budget"] == budget)]
    ra, rb = pick(a), pick(b)
    places = sorted({(r["dataset"], r["budget"]) for r in ra} & {(r["dataset"], r["budget"]) for r in rb})
    if not places:
        raise LtbenchError(f"{a!r} and {b!r} have no dataset and budget in common"
                           + (f" (asked: {dataset or 'any'}/{budget or 'any'})" if dataset or budget else ""))
    if len(places) > 1:
        raise LtbenchError(f"{a!r} and {b!r} share several datasets/budgets ({', '.join('/'.join(p) for p in places)});"
                           f" choose one with --dataset and --budget")
    ds, bud = places[0]
    by_seed_a = {r["seed"]: r for r in ra if (r["dataset"], r["budget"]) == (ds, bud)}
    by_seed_b = {r["seed"]: r for r in rb if (r["dataset"], r["budget"]) == (ds, bud)}
    seeds = sorted(set(by_seed_a) & set(by_seed_b))
    if not seeds:
        raise LtbenchError(f"{a!r} and {b!r} have no seed in common on {ds}/{bud} (seeds "
                           f"{sorted(by_seed_a)} and {sorted(by_seed_b)}): nothing to pair")
    pairs = [(by_seed_a[s], by_seed_b[s]) for s in seeds]
    masks = _group_of_classes(pairs[0][0])
    rng = np.random.default_rng(seed)
    preds = [(_predictions(x), _predictions(y)) for x, y in pairs]
    # images are paired only where every record predicted the same test images (their labels, in one order)
    by_image = all(p is not None and q is not None for p, q in preds) and all(
        np.array_equal(p["labels"], preds[0][0]["labels"]) and np.array_equal(q["labels"], preds[0][0]["labels"])
        for p, q in preds)
    if by_image:  # per-class accuracy of each bootstrap draw of test images, the same images for a and b
        labels = preds[0][0]["labels"]
        num_classes = len(masks["overall"])
        acc = np.zeros((2, len(pairs), n_boot, num_classes))
        for c in range(num_classes):
            rows = np.flatnonzero(labels == c)
            if len(rows) == 0:
                acc[..., c] = np.nan
                continue
            draw = rows[rng.integers(0, len(rows), (n_boot, len(rows)))]
            for k, (p, q) in enumerate(preds):
                acc[0, k, :, c] = 100.0 * (p["predictions"][draw] == c).mean(1)
                acc[1, k, :, c] = 100.0 * (q["predictions"][draw] == c).mean(1)
    else:
        acc = np.array([[np.array(x["per_class_accuracy"], float) for x, _ in pairs],
                        [np.array(y["per_class_accuracy"], float) for _, y in pairs]])[:, :, None, :]
        acc = np.repeat(acc, n_boot, axis=2)
    seed_draw = rng.integers(0, len(pairs), (n_boot, len(pairs)))
    result = {"a": a, "b": b, "dataset": ds, "budget": bud, "seeds": seeds, "resampled": "seeds and test images"
              if by_image else "seeds only (the records have no predictions.npz)", "groups": {}}
    for g, mask in masks.items():
        if not mask.any():
            continue
        mean_a = np.array([np.nanmean(np.array(x["per_class_accuracy"], float)[mask]) for x, _ in pairs])
        mean_b = np.array([np.nanmean(np.array(y["per_class_accuracy"], float)[mask]) for _, y in pairs])
        group_a = np.nanmean(acc[0][..., mask], axis=-1)  # (seeds, n_boot)
        group_b = np.nanmean(acc[1][..., mask], axis=-1)
        diff = group_a - group_b
        boot = diff[seed_draw, np.arange(n_boot)[:, None]].mean(1)
        low, high = np.percentile(boot, [2.5, 97.5])
        result["groups"][g] = {"a": float(mean_a.mean()), "b": float(mean_b.mean()),
                               "difference": float((mean_a - mean_b).mean()), "ci95": [float(low), float(high)],
                               "distinguishable": bool(low > 0 or high < 0)}
    return result


def render_comparison(result: dict[str, Any]) -> str:
    rows = [[g, f"{r['a']:.2f}", f"{r['b']:.2f}", f"{r['difference']:+.2f}",
             f"[{r['ci95'][0]:+.2f}, {r['ci95'][1]:+.2f}]", "yes" if r["distinguishable"] else "no (within noise)"]
            for g, r in result["groups"].items()]
    head = (f"{result['a']} vs {result['b']} on {result['dataset']} ({result['budget']}), paired over seeds "
            f"{', '.join(map(str, result['seeds']))}; 95 % bootstrap interval, resampling {result['resampled']}")
    table = tabulate(rows, headers=["group", result["a"], result["b"], "difference", "95 % interval",
                                    "distinguishable"], tablefmt="simple", disable_numparse=True)
    note = ""
    if len(result["seeds"]) < 3:
        note = f"\nNote: {len(result['seeds'])} paired seed(s); the interval says little about seed-to-seed spread."
    if result["budget"] == "smoke":  # distinguishable or not, a smoke run says nothing about the methods
        note += f"\nNote: {SMOKE_NOTE}."
    return f"{head}\n\n{table}{note}"
