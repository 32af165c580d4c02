"""Give committed records that predate ``cost`` their parameters and multiply-accumulates (or, with
``--recount``, recount every record's, where the way they are counted changed).

Neither depends on the trained weights, only on the model's structure, so each is measured exactly on the
model rebuilt from the record's own config (its dataset, backbone and every method option) with
:func:`ltbench.training.evaluate.model_cost`, the function a new run uses; where the record has a second stage, the
stage-2 classifier is built by the method's own ``ltbench_build_classifier`` first. The record gains
``cost`` with ``"derived"`` saying so; nothing else in it changes.

    python ci/backfill_cost.py --data-root ../shared/data [RECORDS_DIR]   # default leaderboards/records
    python ci/backfill_cost.py --data-root ../shared/data --recount        # rewrites only the costs that change

``--recount`` was first run when ``parameters`` became what the evaluation path reads (SAFA's generator, BCL's and
PaCo's projection heads and Breadcrumb's class-mean snapshots are used only in training and had been counted).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from ltbench.data.split import load_checked
from ltbench.plugins.catalog import build_catalog
from ltbench.results.reader import read_record
from ltbench.results.records import atomic_write_json
from ltbench.training.evaluate import extract_features, model_cost
from ltbench.training.hooks import build_classifier
from ltbench.training.run import build_run

DERIVED = ("rebuilt from the record's config by ci/backfill_cost.py (counts depend on the model's structure, "
           "not its weights)")


def measure(record: dict, catalog, data_root: str, cache: dict) -> dict:
    spec = catalog.dataset(record["dataset_name"])
    key = (record["dataset_name"], record["imbalance_factor"])
    if key not in cache:
        cache[key] = load_checked(spec, data_root, record["imbalance_factor"])
    with tempfile.TemporaryDirectory() as tmp:
        run = build_run(catalog, spec, cache[key], record["config"], record["seed"], torch.device("cpu"), Path(tmp),
                        log=lambda m: None)
        if record.get("second_stage"):
            run.stage = 2
            try:
                head = build_classifier(run, 2, run.model.num_features, run.model.classifier)
            except Exception:  # noqa: BLE001 - a head built from the training features (NCM): give it some
                run.train_features = extract_features(run)
                head = build_classifier(run, 2, run.model.num_features, run.model.classifier)
            run.model.classifier = head
        run.stage = 0
        return {**model_cost(run), "derived": DERIVED}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("records", nargs="?", default="leaderboards/records")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--recount", action="store_true",
                        help="measure records that have a cost too, and rewrite those whose numbers differ")
    args = parser.parse_args()
    catalog, cache = build_catalog(), {}
    done = failed = 0
    for path in sorted(Path(args.records).rglob("result.json")):
        record, problem = read_record(path)
        if record is None or record["status"] != "completed" or (record.get("cost") and not args.recount):
            continue
        try:
            cost = measure(record, catalog, args.data_root, cache)
        except Exception as exc:  # noqa: BLE001 - a record we cannot rebuild keeps no cost, and says why here
            print(f"{path}: not derived: {type(exc).__name__}: {exc}", file=sys.stderr)
            failed += 1
            continue
        raw = json.loads(path.read_text())
        old = raw.get("cost") or {}
        if all(old.get(k) == cost[k] for k in ("parameters", "inference_macs_per_image")):
            continue  # --recount: unchanged, left as the run wrote it
        raw["cost"] = cost
        atomic_write_json(path, raw)
        done += 1
        was = f" (was {old['parameters']}, {old['inference_macs_per_image']})" if old else ""
        print(f"{path}: {cost['parameters']} parameters, {cost['inference_macs_per_image']} MACs per image{was}")
    print(f"{done} records given their cost, {failed} not", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
