"""Print the measurements behind the reading of the committed CIFAR-100-LT board.

    python ci/board_findings.py [RECORDS_DIR [ABLATIONS_DIR]]   # default leaderboards/records, leaderboards/ablations

Every number docs/board.md ("Reading the board") quotes comes from here, computed from the committed
records alone (result.json and predictions.npz), so anyone can check it:

1. each comparison the section makes, method A minus method B per shot group, paired by seed and test image,
   with ltbench's 95 % bootstrap interval (the same numbers as `ltbench compare`);
2. what each seed method's mechanism did in those runs, from the fields its plugin records: Breadcrumb's
   aligned history by snapshot age, SAFA's head directions, BLT's hallucinations, CAM fusion's head and tail
   sets;
3. the ablations behind it (ci/breadcrumb_ablation.py, ci/cam_fusion_ablation.py), against the board's rows.

A comparison whose rows are not complete yet (fewer than 3 seeds of either) is reported as pending.
"""
from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ltbench.results import summary
from ltbench.results.metrics import shot_groups

DATASET, BUDGET, SEEDS = "cifar100-lt-if100", "cpu", 3

# (a, b, why the pair is compared)
COMPARISONS = [
    ("balanced-softmax", "ce", "issue 15 direction: balanced-softmax > ce overall"),
    ("crt", "ce", "issue 15 direction: crt > ce overall"),
    ("tau-norm", "ce", "issue 15 direction: tau-norm > ce few-shot"),
    ("ldam-drw", "ce", "the ldam-drw trend's 30-epoch point"),
    ("breadcrumb", "crt", "Breadcrumb's classifier vs the plain class-balanced retrain"),
    ("breadcrumb-weak", "crt", "the final EMANATE set vs class-balanced sampling, same stage 2"),
    ("breadcrumb", "breadcrumb-weak", "strong (every epoch's set) vs weak (the last one)"),
    ("cam-fusion", "crt", "fused features vs the plain class-balanced retrain"),
    ("cam-fusion", "ce", "Phase II vs its own Phase I"),
    ("safa", "ce", "SAFA's generated tail features vs none"),
    ("ldam-drw+safa", "ldam-drw", "SAFA on LDAM-DRW, supplementary Table 4's setting"),
    ("blt", "blt-finetune", "hallucination alone (same backbone epochs)"),
    ("blt", "ce [epochs=40]", "BLT vs ce at the same backbone epochs"),
    ("blt-finetune", "ce [epochs=40]", "the class-balanced full fine-tune vs ce at the same backbone epochs"),
    ("ldam", "ce", "LDAM's margins alone, without DRW"),
    ("ldam-drw", "ldam", "what DRW adds to the margins"),
    ("cb-focal", "ce", "class-balanced sigmoid focal loss"),
    ("mislas", "ce", "MiSLAS (mixup stage 1 + its stage 2) vs plain training"),
    ("mislas", "mixup", "MiSLAS's stage 2 over its own stage-1 recipe"),
    ("mislas", "crt", "MiSLAS's stage 2 vs the plain class-balanced retrain"),
    ("mixup", "ce", "mixup at 30 epochs"),
    ("cutmix", "ce", "cutmix at 30 epochs"),
    ("remix", "mixup", "remix's label rule over mixup"),
    ("ldam-drw+remix", "ldam-drw", "remix on LDAM-DRW, the pairing Remix recommends"),
    ("ride", "ldam-drw", "RIDE's experts over their own loss, one backbone"),
    ("ride [reduce_width=True]", "ldam-drw", "RIDE with its reduced-width experts over one backbone"),
    ("ride", "ride [reduce_width=True]", "full-width experts over RIDE's reduced ones"),
]

ABLATIONS = [
    ("crt-capped", "crt", "crt with classes cut to n_B rows"),
    ("crt-train-mode", "crt", "crt on train-mode features of augmented images (as Breadcrumb's snapshots)"),
    ("crt-capped-train-mode", "crt", "crt with both of breadcrumb-weak's differences"),
    ("breadcrumb-weak", "crt-capped-train-mode", "what the back-tracked history adds on top of both"),
    ("cam-fusion", "cam-fusion-real", "fused features against real images of the same tail class"),
    ("cam-fusion-real", "crt", "CAM fusion's Phase II on real images against crt"),
    ("cb-focal", "cb-focal (default bias)", "Cui et al.'s prior bias initialisation against PyTorch's default"),
    ("cb-focal (default bias)", "ce", "the board's earlier cb-focal row, without the prior bias"),
    ("ldam", "ldam [max_margin=1e-06]", "LDAM's margins over its cosine classifier (s = 30) alone"),
    ("ldam [max_margin=1e-06]", "ce", "the cosine classifier without margins against ce's linear head"),
]


def default_bias(record: dict[str, Any]) -> dict[str, Any]:
    """cb-focal's records from before the prior bias option (kept in the ablations), under their own label."""
    opts = record["config"]["methods"].get("cb-focal")
    if record["method"] == "cb-focal" and opts is not None and "prior" not in opts:
        return {**record, "variant": "cb-focal (default bias)"}
    return record


def by_method(records: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """The completed records of a board row (method or variant label) on the board's dataset and budget."""
    return sorted((r for r in records if r.get("variant", r["method"]) == name and r["status"] == "completed"
                   and r["dataset"] == DATASET and r["budget"] == BUDGET), key=lambda r: r["seed"])


def complete(records: list[dict[str, Any]], name: str) -> int:
    return len({r["seed"] for r in by_method(records, name)})


def print_comparisons(records: list[dict[str, Any]], comparisons=COMPARISONS, title: str = "Comparisons") -> None:
    print(f"## {title} (A - B, paired by seed and test image, 95 % bootstrap interval)\n")
    for a, b, why in comparisons:
        if complete(records, a) < SEEDS or complete(records, b) < SEEDS:
            print(f"{a} vs {b}: pending ({complete(records, a)} and {complete(records, b)} of {SEEDS} seeds)\n")
            continue
        result = summary.compare(records, a, b, dataset=DATASET, budget=BUDGET)
        print(f"{why}")
        print(summary.render_comparison(result), "\n")


def extra(rec: dict[str, Any], method: str) -> dict[str, Any]:
    return (rec.get("extra") or {}).get(method) or {}


def print_breadcrumb(records: list[dict[str, Any]]) -> None:
    for name in ("breadcrumb", "breadcrumb-weak"):
        runs = by_method(records, name)
        if not runs:
            continue
        print(f"## {name}: the aligned history at the end of stage 1, by snapshot age (mean over {len(runs)} seeds)")
        print("spread_ratio: a class's aligned old block's spread over its newest block's (1 = as spread as the"
              " current features)")
        print("nearest_mean_accuracy: share of aligned rows nearest their own class's newest mean\n")
        ages: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for r in runs:
            for row in extra(r, name).get("history_by_age", []):
                ages[row["age"]].append(row)
        print("age  classes  spread_ratio  nearest_mean_accuracy")
        for age in sorted(ages):
            rows = ages[age]
            print(f"{age:>3}  {np.mean([x['classes'] for x in rows]):>7.0f}  "
                  f"{np.mean([x['spread_ratio'] for x in rows]):>12.3f}  "
                  f"{np.mean([x['nearest_mean_accuracy'] for x in rows]):>21.3f}")
        ready = [extra(r, name).get("full_history_after_epoch") for r in runs]
        print(f"full history after epoch: {ready}; k_max {[extra(r, name).get('k_max') for r in runs]}\n")


SAFA_FIELDS = ("modules_start_epoch", "start_epoch", "generated", "head_direction_spread_last_batch")
# (row, the plugin whose recorded fields to show, the fields, what they say)
MECHANISMS = [
    ("safa", "safa", SAFA_FIELDS, "SAFA's modules and generated tail features"),
    ("ldam-drw+safa", "safa", SAFA_FIELDS, "SAFA's modules and generated tail features"),
    ("blt", "blt", ("hallucinated", "batches_with_tail", "skipped_no_confusion", "forward_passes"),
     "BLT's hallucinated tail images"),
    ("cam-fusion", "cam-fusion", ("head_classes", "tail_classes", "fused_samples"), "CAM fusion's Phase II"),
]


def print_mechanisms(records: list[dict[str, Any]]) -> None:
    for name, plugin, keys, what in MECHANISMS:
        runs = by_method(records, name)
        if not runs:
            continue
        fields = [extra(r, plugin) for r in runs]
        print(f"## {name}: {what} (seeds {[r['seed'] for r in runs]})")
        for key in keys:
            print(f"{key}: {[f.get(key) for f in fields]}")
        print()


def print_cam_fusion_sets(records: list[dict[str, Any]], baseline: str = "crt") -> None:
    """CAM fusion against ``baseline`` per shot group, the groups split by CAM fusion's own head/tail sets
    (its tail classes are the ones whose Phase-II batches hold fused samples)."""
    runs = {r["seed"]: r for r in by_method(records, "cam-fusion")}
    base = {r["seed"]: r for r in by_method(records, baseline)}
    seeds = sorted(set(runs) & set(base))
    if not seeds:
        return
    print(f"## cam-fusion - {baseline}, per class and averaged, by shot group and CAM fusion's head/tail set "
          f"(seeds {seeds})\n")
    print("group   set   classes  cam-fusion  " + f"{baseline:>10}  difference")
    for group in ("many", "medium", "few"):
        for part in ("head", "tail"):
            rows = []
            for s in seeds:
                r = runs[s]
                in_group = shot_groups(np.asarray(r["train_counts"]), **r["group_thresholds"]) == group
                tail = np.zeros(len(in_group), bool)
                tail[[int(c) for c in extra(r, "cam-fusion")["confusing"]]] = True
                mask = in_group & (tail if part == "tail" else ~tail)
                if mask.any():
                    a, b = np.array(r["per_class_accuracy"]), np.array(base[s]["per_class_accuracy"])
                    rows.append((mask.sum(), a[mask].mean(), b[mask].mean()))
            if rows:
                n, a, b = np.mean(rows, axis=0)
                print(f"{group:<7} {part:<5} {n:>7.0f}  {a:>10.2f}  {b:>10.2f}  {a - b:>+10.2f}")
    print()


def main(argv: list[str]) -> int:
    records_dir = Path(argv[0] if argv else "leaderboards/records")
    ablations_dir = Path(argv[1] if len(argv) > 1 else "leaderboards/ablations")
    records = summary.load_records(records_dir)
    print_comparisons(records)
    print_breadcrumb(records)
    print_mechanisms(records)
    print_cam_fusion_sets(records)
    if ablations_dir.exists():  # the ablations' own crt copy is the board's: the board's rows are used
        ablations = [default_bias(r) for r in summary.load_records(ablations_dir)
                     if r.get("variant", r["method"]) != "crt"]
        print_comparisons(records + ablations, ABLATIONS, "Ablations")
        print_cam_fusion_sets(records + ablations, "cam-fusion-real")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
