"""Print the paper-budget rows beside their published numbers: the outcome in docs/paper-budget.md and the README.

    python ci/paper_findings.py [RECORDS_DIR]     # default leaderboards/records

One section per dataset key (``cifar100-lt-if200``: a dataset at one imbalance factor) that has paper-budget records
or a paper-budget experiment file (``leaderboards/<dataset key>-paper.toml``), as the board has one paper section
per dataset key. In each: for each row (method or composition) with records, ours (mean over the seeds there are),
the published number (the installed method's current reference, compositions included), ours − paper where the
source measured the same setting (else why not), whether that is within the issue's ±1.5 points; then the
differences a seed paper claims, ours beside the paper's (``safa − ce`` and ``ldam-drw+safa − ldam-drw``, where
both rows have records), with the epoch where the row's training stops being its baseline's; then what stage 1
cost: its wall time and the images per second it trained at, from the records (a reused stage 1 counted once, by
the run that trained it). Rows that are still training are listed as pending, with the methods of the experiment
file that have no record yet.
"""

from __future__ import annotations

import sys
import tomllib
from collections import defaultdict
from pathlib import Path

import numpy as np

from ltbench.results.references import reference_description, reference_result, reference_setting
from ltbench.results.summary import load_records

REPO = Path(__file__).resolve().parents[1]
BUDGET, TOLERANCE = "paper", 1.5
#: the paper-budget experiment files, one per dataset key: ``cifar100-lt-if200-paper.toml`` plans that key's rows
EXPERIMENTS = REPO / "leaderboards"
#: (row, its baseline): the differences a seed paper claims, set beside the same difference of ours
DIFFERENCES = (("safa", "ce"), ("ldam-drw+safa", "ldam-drw"))


def _mean(recs: list[dict]) -> float:
    return float(np.mean([r["metrics"]["overall"] for r in recs]))


def _same_setting_number(recs: list[dict]) -> float | None:
    """The published overall of a row's records where it was measured in their setting, else None."""
    ref = reference_result(recs[0])
    return ref["overall"] if ref.get("overall") is not None and reference_setting(recs[0]) == "" else None


def departures(row: list[dict], base: list[dict]) -> list[str]:
    """Where ``row``'s stage 1 stops being ``base``'s, per seed both have: the first epoch whose task loss differs
    (a plug-in that is inactive until then trains as its baseline bit for bit), and the learning rate it trains at
    from there, as a fraction of the peak. Empty where the histories do not say."""
    lines = []
    for r in row:
        b = next((x for x in base if x["seed"] == r["seed"]), None)
        if b is None:
            continue
        mine, theirs = ({e["epoch"]: e for e in x.get("history", []) if e.get("stage") == 1} for x in (r, b))
        common = sorted(set(mine) & set(theirs))
        if not common or any("loss_task" not in mine[e] or "loss_task" not in theirs[e] for e in common):
            continue
        first = next((e for e in common if mine[e]["loss_task"] != theirs[e]["loss_task"]), None)
        if first is None:
            lines.append(f"seed {r['seed']}: trains as {b['variant']} bit for bit through all {common[-1]} epochs")
            continue
        peak = r["config"]["lr"]
        lines.append(f"seed {r['seed']}: trains as {b['variant']} bit for bit through epoch {first - 1} of "
                     f"{common[-1]}; from epoch {first} at {mine[first]['lr'] / peak:g} of the peak lr, then "
                     f"{min(mine[e]['lr'] for e in common if e >= first) / peak:g}")
    return lines


def trained_on(rec: dict) -> str:
    """The machine a record's stage 1 trained on, or, for one carried between machines (its ``machines``), each
    stretch of epochs and its machine."""
    stretches = [m for m in rec.get("machines") or [] if m.get("stage") == 1]
    if not stretches or {m.get("device_model") for m in stretches} == {rec.get("device_model")}:
        return str(rec.get("device_model") or rec["device"])
    return "; ".join(f"epochs {m['first_epoch']}-{m['last_epoch']} on {m.get('device_model') or 'a machine not stated'}"
                     for m in stretches)


def section(dataset: str, by_method: dict[str, list[dict]]) -> None:
    """Print one dataset key's paper section: ``by_method`` maps each row (its runnable name, as the board names
    it) to its completed paper-budget records."""
    print(f"{dataset}, budget {BUDGET}: ours against the published number (±{TOLERANCE} points is the goal)\n")
    header = f"{'method':22s} {'seeds':>5s} {'ours':>6s} {'paper':>6s} {'ours-paper':>10s}  verdict"
    print(header + "\n" + "-" * len(header))
    for method, recs in sorted(by_method.items(), key=lambda kv: -_mean(kv[1])):
        ours = _mean(recs)
        ref, setting = reference_result(recs[0]), reference_setting(recs[0])
        paper = f"{ref['overall']:.2f}" if ref.get("overall") is not None else "–"
        if setting:
            diff, verdict = "–", setting
        else:
            d = ours - ref["overall"]
            diff, verdict = f"{d:+.2f}", "within" if abs(d) <= TOLERANCE else "OUTSIDE the tolerance"
        print(f"{method:22s} {len(recs):5d} {ours:6.2f} {paper:>6s} {diff:>10s}  {verdict}")
        if ref.get("overall") is not None:
            print(f"{'':22s} paper: {reference_description(ref)}; {ref.get('source', 'source not stated')}")
        elif ref.get("source"):  # a recorded absence says why there is none
            print(f"{'':22s} paper: {ref['source']}")
    experiment = EXPERIMENTS / f"{dataset}-{BUDGET}.toml"
    grid = tomllib.loads(experiment.read_text()) if experiment.is_file() else {}
    # the grid's methods, then its variants' (e.g. ldam-drw+sam with the source's rho)
    planned = grid.get("methods", []) + [v["method"] for v in grid.get("variants", {}).values()]
    for row, base in DIFFERENCES:
        if row not in by_method and row not in planned:
            continue
        missing = [f"{name} ({'planned' if name in planned else f'not in {experiment.name}'})"
                   for name in (row, base) if name not in by_method]
        if missing:
            print(f"\n{row} − {base}: no record yet of {' and '.join(missing)}")
            continue
        ours = _mean(by_method[row]) - _mean(by_method[base])
        a, b = _same_setting_number(by_method[row]), _same_setting_number(by_method[base])
        lacking = [name for name, number in ((row, a), (base, b)) if number is None]
        paper = f"{a - b:+.2f}" if not lacking else f"– (no same-setting published number of {' or '.join(lacking)})"
        print(f"\n{row} − {base}: ours {ours:+.2f}, paper {paper}")
        for line in departures(by_method[row], by_method[base]):
            print(f"  {line}")
    print("\nstage 1 of each run that trained one (a reused stage 1 is the run that trained it):")
    for method, recs in sorted(by_method.items()):
        for rec in recs:
            if rec["stage1"].get("reused"):
                continue
            seconds = rec["stage_wall_time_s"].get("stage1")
            ips = (rec.get("throughput_img_per_s") or {}).get("stage1")
            print(f"  {method} seed {rec['seed']}: {seconds / 3600:.2f} h at {ips:.0f} images/s "
                  f"({trained_on(rec)}; commit {rec['versions'].get('git_commit', '?')[:7]})")
    selection = []
    for method, recs in sorted(by_method.items()):
        for rec in recs:
            val = [e["val_overall"] for e in rec.get("history", []) if e.get("stage") == 1 and "val_overall" in e]
            if val:
                selection.append(f"  {method} seed {rec['seed']}: {max(val) - val[-1]:+.2f} (best {max(val):.2f}, "
                                 f"final {val[-1]:.2f})")
    if selection:
        print("\nstage 1's validation accuracy, its best epoch over its final one (what selecting an epoch would add; "
              "ltbench reports the final epoch):", *selection, sep="\n")
    pending = [m for m in planned if m not in by_method]
    if pending:
        print(f"\npending (no record yet): {', '.join(pending)}")


def main(records_dir: str = str(REPO / "leaderboards" / "records")) -> None:
    by_dataset: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for rec in load_records(Path(records_dir)):
        if rec["budget"] == BUDGET and rec["status"] == "completed":
            by_dataset[rec["dataset"]][rec["variant"]].append(rec)
    planned = {p.name.removesuffix(f"-{BUDGET}.toml") for p in EXPERIMENTS.glob(f"*-{BUDGET}.toml")}
    for i, dataset in enumerate(sorted(set(by_dataset) | planned)):
        if i:
            print("\n" + "=" * 100 + "\n")
        section(dataset, by_dataset.get(dataset, {}))


if __name__ == "__main__":
    main(*sys.argv[1:])
