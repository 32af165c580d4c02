"""Print the measurements behind the reading of the committed CIFAR-100-LT board.

    python ci/board_findings.py [RECORDS_DIR [ABLATIONS_DIR [BUDGET_STUDY_DIR]]]
    # defaults: leaderboards/records, leaderboards/ablations, leaderboards/budget-study

Every number docs/board.md ("Reading the board") quotes from the committed records comes from here, computed from
those records alone (result.json and predictions.npz), so anyone can check it (tests/test_board_findings.py checks
that each quoted number is printed, as quoted):

1. each comparison the section makes, method A minus method B per shot group, paired by seed and test image,
   with ltbench's 95 % bootstrap interval (the same numbers as `ltbench compare`);
2. what each seed method's mechanism did in those runs, from the fields its plugin records: Breadcrumb's
   aligned history by snapshot age, SAFA's head directions, BLT's hallucinations, CAM fusion's head and tail
   sets;
3. how the rows trained: the last epoch's training loss, the final validation accuracy and the learning rate,
   from each record's history; wall time, parameters and MACs, seeds' spread; the schedule SAFA and DRW act in;
4. the ablations behind it (ci/breadcrumb_ablation.py, ci/cam_fusion_ablation.py), against the board's rows, and
   the 45-epoch comparisons of the budget study (ci/budget_study.sh);
5. the settings (method options) and the papers' numbers the records carry, so that a setting the page quotes
   can be read next to the measurements.

A comparison whose rows are not complete yet (fewer than 3 seeds of either) is reported as pending.
"""
from __future__ import annotations

import sys
from collections import defaultdict
from fractions import Fraction
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
    ("ldam-drw+safa", "ldam-drw", "SAFA on LDAM-DRW (the pairing of supplementary Table 4, which reports IF 200 and 50"
     " only; this is IF 100 at the cpu budget)"),
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
    ("sam", "ce", "SAM (rho 0.2) on ce's loss"),
    ("ldam-drw+sam [sam.rho=0.8]", "ldam-drw", "SAM at rho 0.8 on LDAM-DRW, Rangwani et al.'s pairing"),
    ("bcl", "logit-adjust", "BCL against its own classification term (logit adjustment)"),
    ("bcl", "ce", "BCL against plain training"),
    ("paco", "ce", "PaCo against plain training"),
    ("paco", "balanced-softmax", "PaCo against balanced softmax (its centres carry the same log-prior correction)"),
]

# the budget study's 45-epoch rows (leaderboards/budget-study, ci/budget_study.sh)
BUDGET_STUDY = [
    ("ldam [epochs=45]", "ce [epochs=45]", "LDAM's margins alone at 45 epochs"),
    ("ldam-drw [epochs=45]", "ldam [epochs=45]", "what DRW adds to the margins at 45 epochs"),
]

#: crt and lws on features cached once from the eval-mode backbone, with a cosine: the board's stage 2 until it took
#: BagofTricks-LT's (issue 37); their records are kept in the ablations under these labels
CACHED_CRT, CACHED_LWS = "crt (cached stage 2)", "lws (cached stage 2)"
ABLATIONS = [
    ("crt", CACHED_CRT, "the board's crt (BagofTricks-LT's stage 2) against crt on cached features"),
    ("lws", CACHED_LWS, "the board's lws (BagofTricks-LT's stage 2) against lws on cached features"),
    ("breadcrumb", CACHED_CRT, "breadcrumb against crt on cached features"),
    ("breadcrumb-weak", CACHED_CRT, "the final EMANATE set against crt on cached features"),
    ("cam-fusion", CACHED_CRT, "cam-fusion against crt on cached features"),
    ("mislas", CACHED_CRT, "MiSLAS's stage 2 against crt on cached features"),
    ("crt-capped", CACHED_CRT, "crt with classes cut to n_B rows"),
    ("crt-train-mode", CACHED_CRT, "crt on train-mode features of augmented images (as Breadcrumb's snapshots)"),
    ("crt-capped-train-mode", CACHED_CRT, "crt with both of breadcrumb-weak's differences"),
    ("breadcrumb-weak", "crt-capped-train-mode", "what the back-tracked history adds on top of both"),
    ("cam-fusion", "cam-fusion-real", "fused features against real images of the same tail class"),
    ("cam-fusion-real", CACHED_CRT, "CAM fusion's Phase II on real images against crt on cached features"),
    ("safa [start=0.5]", "safa", "SAFA's generated samples from half the epochs (at the full learning rate) against "
     "its start at 80 %, after the decay"),
    ("safa [start=0.5]", "ce", "SAFA with samples from half the epochs against plain training"),
    ("cb-focal", "cb-focal (default bias)", "Cui et al.'s prior bias initialisation against PyTorch's default"),
    ("cb-focal", "cb-focal (prior 0.1)", "Cui et al.'s prior 1/C, bias not decayed, against ltbench's earlier 0.1, decayed"),
    ("cb-focal (prior 0.1)", "cb-focal (default bias)", "the earlier prior of 0.1 against PyTorch's default bias"),
    ("cb-focal (default bias)", "ce", "the board's first cb-focal row, without the prior bias"),
    ("ldam", "ldam [max_margin=1e-06]", "LDAM's margins over its cosine classifier (s = 30) alone"),
    ("ldam [max_margin=1e-06]", "ce", "the cosine classifier without margins against ce's linear head"),
]


def ablation_label(record: dict[str, Any]) -> dict[str, Any]:
    """An ablation record under the label its findings use: cb-focal's earlier ones (``cb_focal_label``), and crt's
    and lws's on cached features (those from before the ``stage2`` option trained that way)."""
    opts = record["config"]["methods"].get(record["method"])
    # before the option, a budget with stage-2 milestones gave BagofTricks-LT's stage 2 and any other the cached one
    before = "bagoftricks" if record["config"].get("stage2_lr_milestones") else "cached"
    if record["method"] in ("crt", "lws") and opts is not None and opts.get("stage2", before) == "cached":
        return {**record, "variant": f"{record['method']} (cached stage 2)"}
    return cb_focal_label(record)


def cb_focal_label(record: dict[str, Any]) -> dict[str, Any]:
    """cb-focal's earlier records (kept in the ablations) under their own labels: those from before the prior bias
    option (PyTorch's default bias) and those at ltbench's earlier prior of 0.1 (bias decayed)."""
    opts = record["config"]["methods"].get("cb-focal")
    if record["method"] == "cb-focal" and opts is not None and "prior" not in opts:
        return {**record, "variant": "cb-focal (default bias)"}
    if record["method"] == "cb-focal" and opts is not None and opts.get("prior") == 0.1:
        return {**record, "variant": "cb-focal (prior 0.1)"}
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
        old_ages = [age for age in sorted(ages) if age > 0]
        if old_ages:
            spread = [np.mean([x["spread_ratio"] for x in ages[age]]) for age in old_ages]
            nearest = [np.mean([x["nearest_mean_accuracy"] for x in ages[age]]) for age in old_ages]
            print(f"aligned snapshots of ages {old_ages[0]}-{old_ages[-1]}: spread_ratio {span(spread, 2)}, "
                  f"nearest_mean_accuracy {span(nearest, 2)}; the newest block (age 0): nearest_mean_accuracy "
                  f"{np.mean([x['nearest_mean_accuracy'] for x in ages.get(0, [])]):.2f}")
        ready = [extra(r, name).get("full_history_after_epoch") for r in runs]
        print(f"full history after epoch: {ready}; k_max {[extra(r, name).get('k_max') for r in runs]}; "
              f"n_B {sorted({extra(r, name).get('n_b') for r in runs}, key=str)}\n")


SAFA_FIELDS = ("modules_start_epoch", "start_epoch", "generated", "head_direction_spread_last_batch")
# (row, the plugin whose recorded fields to show, the fields, what they say)
MECHANISMS = [
    ("safa", "safa", SAFA_FIELDS, "SAFA's modules and generated tail features"),
    ("ldam-drw+safa", "safa", SAFA_FIELDS, "SAFA's modules and generated tail features"),
    ("blt", "blt", ("hallucinated", "batches_with_tail", "skipped_no_confusion", "forward_passes",
                    "stage2_time_ratio_vs_no_hallucination"), "BLT's hallucinated tail images"),
    ("cam-fusion", "cam-fusion", ("head_classes", "tail_classes", "fused_samples"), "CAM fusion's Phase II"),
]


def span(values: list[float], digits: int) -> str:
    """``min-max`` of ``values`` at ``digits`` decimals (one number when they round alike), as the page quotes a
    range over seeds."""
    low, high = f"{min(values):.{digits}f}", f"{max(values):.{digits}f}"
    return low if low == high else f"{low}-{high}"


def print_mechanisms(records: list[dict[str, Any]]) -> None:
    for name, plugin, keys, what in MECHANISMS:
        runs = by_method(records, name)
        if not runs:
            continue
        fields = [extra(r, plugin) for r in runs]
        print(f"## {name}: {what} (seeds {[r['seed'] for r in runs]})")
        for key in keys:
            print(f"{key}: {[f.get(key) for f in fields]}")
        if plugin == "safa":
            print(f"head_direction_spread_last_batch, over seeds: "
                  f"{span([f['head_direction_spread_last_batch'] for f in fields], 2)}")
        if plugin == "blt":
            per_batch = [f["hallucinated"] / f["batches_with_tail"] for f in fields]
            print(f"hallucinated per stage-2 batch with tail images: {span(per_batch, 1)} "
                  f"(batches of {runs[0]['config']['stage2_batch_size']}); stage 2 with hallucination over stage 2 "
                  f"without, in-run time ratio: "
                  f"{span([f['stage2_time_ratio_vs_no_hallucination'] for f in fields], 1)}")
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


# (row, how its task loss is read from the history: the loss_task column over this factor, over a loss weight of
# the record's options, or every loss column; the decimals of the loss range the page quotes)
TRAINING = [
    ("ce", 1.0, 2), ("sam", 1.0, 2), ("ldam-drw", 1.0, 1), ("ldam-drw+sam [sam.rho=0.8]", 1.0, 1),
    ("logit-adjust", 1.0, 2), ("bcl", "bcl.alpha", 2), ("balanced-softmax", 1.0, 2), ("paco", "all", 2),
]


def epoch_loss(entry: dict[str, Any], how: float | str, rec: dict[str, Any]) -> float:
    if how == "all":  # a method whose loss is all its own (PaCo: loss_task is 0): the sum of the logged terms
        return sum(v for k, v in entry.items() if k.startswith("loss_"))
    if isinstance(how, str):  # the task loss over a loss weight the record's config holds ("bcl.alpha")
        method, option = how.split(".")
        return entry["loss_task"] / record_options(rec)[method][option]
    return entry["loss_task"] / how


def record_options(rec: dict[str, Any]) -> dict[str, Any]:
    return rec["config"]["methods"]


def print_training(records: list[dict[str, Any]]) -> None:
    """What the history of each row says about fitting: the last epoch's training loss, the last validation
    accuracy, the final learning rate, and the losses of the last three epochs (flat or not)."""
    print("## How the rows trained (each record's history; ranges over seeds)\n")
    for name, how, digits in TRAINING:
        runs = by_method(records, name)
        if not runs:
            continue
        stage1 = [[h for h in r["history"] if h.get("stage", 1) == 1] for r in runs]
        last = [epoch_loss(h[-1], how, r) for h, r in zip(stage1, runs)]
        val = [[e["val_overall"] for e in h if "val_overall" in e][-1] for h in stage1]
        tail = [[round(epoch_loss(e, how, r), 3) for e in h[-3:]] for h, r in zip(stage1, runs)]
        what = {1.0: "loss_task", "all": "sum of the loss terms"}.get(how, f"loss_task / {how}")
        print(f"{name} (seeds {[r['seed'] for r in runs]}): last-epoch training loss ({what}) "
              f"{[round(x, 3) for x in last]}, {span(last, digits)}; final validation accuracy "
              f"{[round(x, 2) for x in val]}, {span(val, 1)}; last three epochs' loss {tail}; final lr "
              f"{sorted({h[-1]['lr'] for h in stage1})}")
    print()


COST_ROWS = ["ce", "ce [epochs=40]", "blt", "blt-finetune", "ride", "ride [reduce_width=True]", "bcl",
             "logit-adjust", "paco", "sam"]


def print_calibration(records: list[dict[str, Any]]) -> None:
    """The expected calibration error (%, 15 bins) of every row whose records all carry one, mean over seeds (the
    board's ECE column); records made before calibration was recorded have none."""
    print("## Calibration (ECE %, 15 bins, mean over seeds; rows whose records carry it)\n")
    rows = sorted({r.get("variant", r["method"]) for r in records if r["dataset"] == DATASET and r["budget"] == BUDGET})
    for name in rows:
        runs = by_method(records, name)
        eces = [(r.get("calibration") or {}).get("ece") for r in runs]
        if runs and None not in eces:
            print(f"{name}: ECE {sum(eces) / len(eces):.2f} ({', '.join(f'{e:.2f}' for e in eces)})")
    print()


def print_costs(records: list[dict[str, Any]]) -> None:
    """Backbone epochs, parameters and MACs against ce's, and the mean wall time of each row (the board's columns);
    the spread over seeds of the board's noisiest row; how many runs the board holds."""
    base = by_method(records, "ce")[0]["cost"]
    print("## Cost and spread (the board's columns)\n")
    for name in COST_ROWS:
        runs = by_method(records, name)
        if not runs:
            continue
        cost = runs[0]["cost"]
        print(f"{name}: backbone epochs {runs[0]['compute']['backbone_epochs']}, parameters {cost['parameters']} "
              f"({cost['parameters'] / base['parameters']:.2f} times ce's), MACs {cost['inference_macs_per_image']} "
              f"({cost['inference_macs_per_image'] / base['inference_macs_per_image']:.2f} times ce's), mean wall "
              f"time {np.mean([r['wall_time_s'] for r in runs]):.0f} s")
        widths = {extra(r, "ride").get("expert_width") for r in runs} - {None}
        full = {extra(r, "ride").get("expert_width") for r in by_method(records, "ride")} - {None}
        if len(widths) == 1 and len(full) == 1:
            width, of = widths.pop(), full.pop()
            print(f"  expert width {width} of the full-width rows' {of} ({Fraction(width, of)})")
    table = summary.summarise([r for r in records if r["dataset"] == DATASET and r["budget"] == BUDGET])
    noisiest = table.loc[table["overall_std"].idxmax()]
    print(f"largest spread over seeds (overall std): {noisiest['method']} {noisiest['overall']:.2f} ± "
          f"{noisiest['overall_std']:.2f}")
    board = [r for r in records if r["dataset"] == DATASET and r["budget"] == BUDGET and r["status"] == "completed"]
    seeds = {len({r["seed"] for r in by_method(records, name)}) for name in table["method"]}
    print(f"the board: {len(board)} completed runs, {len(table)} rows, seeds per row {sorted(seeds)}\n")


def print_schedule(records: list[dict[str, Any]]) -> None:
    """The schedule SAFA and DRW act in: the shot groups' class sizes, SAFA's head and non-head classes and how
    many features it generates, the learning rate by epoch, and DRW's class weights."""
    rec = by_method(records, "ce")[0]
    counts = np.asarray(rec["train_counts"])
    groups = shot_groups(counts, **rec["group_thresholds"])
    print("## The schedule and the class sizes\n")
    for g in ("many", "medium", "few"):
        print(f"{g}-shot classes: {int((groups == g).sum())}, {counts[groups == g].min()}-{counts[groups == g].max()}"
              f" training images each")
    history = [h for h in rec["history"] if h.get("stage", 1) == 1]
    base_lr = rec["config"]["lr"]
    changes = [(h["epoch"], h["lr"] / base_lr) for i, h in enumerate(history)
               if i == 0 or h["lr"] != history[i - 1]["lr"]]
    print(f"lr relative to {base_lr}, from epoch (1-based): {', '.join(f'x{f:g} from epoch {e}' for e, f in changes)}"
          f" of {rec['config']['epochs']} (milestones {rec['config']['lr_milestones']} of the epochs)")
    for name in ("safa", "ldam-drw+safa"):
        runs = by_method(records, name)
        if not runs:
            continue
        opts, fields = record_options(runs[0])["safa"], extra(runs[0], "safa")
        n_head = max(1, int(round(opts["head_ratio"] * len(counts))))
        order = np.argsort(-counts, kind="stable")
        non_head = int(counts[order[n_head:]].sum())
        epochs = runs[0]["config"]["epochs"] - fields["start_epoch"]
        print(f"{name}: head classes {n_head} (head_ratio {opts['head_ratio']}), non-head classes "
              f"{len(counts) - n_head} with {non_head} training images; generation from epoch {fields['start_epoch'] + 1} (1-based, start "
              f"{opts['start']}) for {epochs} epochs: {non_head} x {epochs} = {non_head * epochs}, recorded "
              f"{sorted({extra(r, 'safa')['generated'] for r in runs})}")
    runs = by_method(records, "ldam-drw")
    if runs:
        beta = record_options(runs[0])["ldam-drw"]["beta"]
        weight = lambda n: (1 - beta) / (1 - beta ** n)  # noqa: E731 (DRW's class weight, before normalising)
        print(f"ldam-drw: DRW from epoch {extra(runs[0], 'ldam-drw')['drw_epoch'] + 1} (1-based), beta {beta}; the "
              f"weight of a {counts.min()}-image class over a {counts.max()}-image one: "
              f"{weight(counts.min()) / weight(counts.max()):.1f}")
    print()


SETTING_ROWS = ["cam-fusion", "blt", "safa", "ride", "ride [reduce_width=True]", "cb-focal", "ldam", "ldam-drw",
                "ldam [max_margin=1e-06]", "sam", "ldam-drw+sam [sam.rho=0.8]", "bcl", "paco", "mislas", "mixup"]


def print_settings(records: list[dict[str, Any]]) -> None:
    """The options each row ran with and the papers' numbers its record carries (its methods' metadata)."""
    print("## Settings and the papers' numbers the records carry\n")
    for name in SETTING_ROWS:
        runs = by_method(records, name)
        if not runs:
            continue
        rec = runs[0]
        stage2_epochs = len([h for h in rec["history"] if h.get("stage") == 2])
        stage2 = f", stage 2 {stage2_epochs} epochs (its history)" if stage2_epochs else ""
        print(f"{name}: options {record_options(rec)}; epochs {rec['config']['epochs']}{stage2}")
        for method, meta in (rec.get("method_metadata") or {}).items():
            ref = (meta.get("reference_results") or {}).get(DATASET)
            if ref:  # the numbers and their setting (the source's wording is the plugin's, as of the record)
                print(f"  {method}'s reference on {DATASET}: {({k: v for k, v in ref.items() if k != 'source'})}")
    print()


def main(argv: list[str]) -> int:
    records_dir = Path(argv[0] if argv else "leaderboards/records")
    ablations_dir = Path(argv[1] if len(argv) > 1 else "leaderboards/ablations")
    study_dir = Path(argv[2] if len(argv) > 2 else "leaderboards/budget-study")
    records = summary.load_records(records_dir)
    print_comparisons(records)
    print_breadcrumb(records)
    print_mechanisms(records)
    print_cam_fusion_sets(records)
    print_training(records)
    print_costs(records)
    print_calibration(records)
    print_schedule(records)
    print_settings(records)
    if ablations_dir.exists():  # where an ablation row has a board row's label, the board's records are used
        rows = {r.get("variant", r["method"]) for r in records}
        ablations = [r for r in map(ablation_label, summary.load_records(ablations_dir))
                     if r.get("variant", r["method"]) not in rows]
        print_comparisons(records + ablations, ABLATIONS, "Ablations")
        print_cam_fusion_sets(records + ablations, "cam-fusion-real")
        print_cam_fusion_sets(records + ablations, CACHED_CRT)
    if study_dir.exists():
        print_comparisons(summary.load_records(study_dir), BUDGET_STUDY, "Budget study, 45 epochs")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
