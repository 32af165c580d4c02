"""Print the paper-budget rows beside their published numbers: the outcome in docs/paper-budget.md and the README.

    python ci/paper_findings.py [RECORDS_DIR]     # default leaderboards/records

For each method with paper-budget records of CIFAR-100-LT IF100: ours (mean over the seeds there are), the
published number and its source, ours − paper where the source measured the same setting (else why not),
whether that is within the issue's ±1.5 points, and what stage 1 cost: its wall time and the images per second
it trained at, from the records (a reused stage 1 counted once, by the run that trained it). Rows that are still
training are listed as pending, with the methods of the experiment file that have no record yet.
"""

from __future__ import annotations

import sys
import tomllib
from collections import defaultdict
from pathlib import Path

import numpy as np

from ltbench.results.records import reference_result, reference_setting
from ltbench.results.summary import load_records

REPO = Path(__file__).resolve().parents[1]
DATASET, BUDGET, TOLERANCE = "cifar100-lt-if100", "paper", 1.5
EXPERIMENT = REPO / "leaderboards" / "cifar100-lt-if100-paper.toml"


def main(records_dir: str = str(REPO / "leaderboards" / "records")) -> None:
    by_method: dict[str, list[dict]] = defaultdict(list)
    for rec in load_records(Path(records_dir)):
        if rec["dataset"] == DATASET and rec["budget"] == BUDGET and rec["status"] == "completed":
            by_method[rec["variant"]].append(rec)
    print(f"{DATASET}, budget {BUDGET}: ours against the published number (±{TOLERANCE} points is the goal)\n")
    header = f"{'method':22s} {'seeds':>5s} {'ours':>6s} {'paper':>6s} {'ours-paper':>10s}  verdict"
    print(header + "\n" + "-" * len(header))
    for method, recs in sorted(by_method.items(), key=lambda kv: -np.mean([r["metrics"]["overall"] for r in kv[1]])):
        ours = float(np.mean([r["metrics"]["overall"] for r in recs]))
        ref, setting = reference_result(recs[0]), reference_setting(recs[0])
        paper = f"{ref['overall']:.2f}" if ref.get("overall") is not None else "–"
        if setting:
            diff, verdict = "–", setting
        else:
            d = ours - ref["overall"]
            diff, verdict = f"{d:+.2f}", "within" if abs(d) <= TOLERANCE else "OUTSIDE the tolerance"
        print(f"{method:22s} {len(recs):5d} {ours:6.2f} {paper:>6s} {diff:>10s}  {verdict}")
    print("\nstage 1 of each run that trained one (a reused stage 1 is the run that trained it):")
    for method, recs in sorted(by_method.items()):
        for rec in recs:
            if rec["stage1"].get("reused"):
                continue
            seconds = rec["stage_wall_time_s"].get("stage1")
            ips = (rec.get("throughput_img_per_s") or {}).get("stage1")
            print(f"  {method} seed {rec['seed']}: {seconds / 3600:.2f} h at {ips:.0f} images/s "
                  f"({rec.get('device_model') or rec['device']}, commit {rec['versions'].get('git_commit', '?')[:7]})")
    planned = tomllib.loads(EXPERIMENT.read_text())["methods"]
    pending = [m for m in planned if m not in by_method]
    if pending:
        print(f"\npending (no record yet): {', '.join(pending)}")


if __name__ == "__main__":
    main(*sys.argv[1:])
