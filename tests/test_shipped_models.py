"""The paper budget ships its trained models beside their records (docs/paper-budget.md, "Shipped models").

Two promises are tested on the committed files and the real CIFAR-100: ``ltbench eval`` on a shipped model gives
back the row's recorded numbers, and a second stage at the paper budget reuses the shipped stage 1 instead of
training one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ltbench.cli import main

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "leaderboards" / "records"


def _shipped_run(method: str) -> Path:
    """The committed seed-0 paper-budget run of ``method`` on CIFAR-100-LT IF100 that ships its model."""
    found = [p.parent for p in RECORDS.glob(f"cifar100-lt-if100/paper/{method}/*/seed0/model.pt")]
    assert len(found) == 1, f"expected one shipped paper-budget model of {method}, found {found}"
    return found[0]


def _shipped_stage1() -> Path:
    found = [p.parent for p in RECORDS.glob("cifar100-lt-if100/paper/_stage1/seed0-*/stage1.pt")]
    assert found, "no shipped paper-budget stage 1 under leaderboards/records/cifar100-lt-if100/paper/_stage1/"
    return found[0]


def test_every_paper_budget_model_in_the_repository_is_weights_only_and_small():
    from ltbench.training import checkpoints

    shipped = sorted(RECORDS.glob("*/paper/**/model.pt")) + sorted(RECORDS.glob("*/paper/_stage1/*/stage1.pt"))
    assert shipped
    for path in shipped:
        state = checkpoints.load(path)  # the checkpoint loader: tensors and plain types only, no pickle code
        assert "optimizer" not in state, f"{path} ships an optimiser state"
        assert path.stat().st_size < 16e6, f"{path} is {path.stat().st_size / 1e6:.1f} MB"


@pytest.mark.slow
def test_ltbench_eval_on_a_shipped_paper_model_reproduces_its_recorded_numbers(cifar_root, tmp_path):
    run_dir = _shipped_run("ce")
    assert main(["eval", str(run_dir), "--data-root", str(cifar_root), "--output", str(tmp_path)]) == 0
    [evaluated_path] = tmp_path.rglob("result.json")
    recorded, evaluated = (json.loads(p.read_text()) for p in (run_dir / "result.json", evaluated_path))
    assert evaluated["per_class_accuracy"] == recorded["per_class_accuracy"]
    assert evaluated["metrics"] == recorded["metrics"]
    assert evaluated["val_metrics"] == recorded["val_metrics"]


@pytest.mark.slow
def test_a_paper_second_stage_reuses_the_shipped_stage1_instead_of_training_one(cifar_root, tmp_path):
    shipped = _shipped_stage1()
    out = tmp_path / "records"
    copy = out / shipped.relative_to(RECORDS)
    shutil.copytree(shipped, copy)  # what a checkout holds: stage1.pt and stage1.json, no checkpoint
    # the plan must point at the shipped stage 1; were its identity to change, the run below would train 200
    # epochs, so say so at once instead
    from ltbench.grid.orchestrate import plan_cells, run_options
    from ltbench.grid.plan import stage1_dir
    from ltbench.cli import build_parser

    # the paper grid's tau-norm cell, alone (the grid file also plans variants that train their own stage 1)
    flags = ["run", "--methods", "tau-norm", "--datasets", "cifar100-lt", "--budget", "paper", "--seeds", "0",
             "--data-root", str(cifar_root), "--output", str(out)]
    [cell] = plan_cells(run_options(build_parser().parse_args(flags)))
    assert stage1_dir(cell, out) == copy, "the paper budget's stage 1 identity changed: retrain and ship it anew"
    assert main(flags + ["--quiet"]) == 0
    [result] = out.rglob("tau-norm/*/seed0/result.json")
    record = json.loads(result.read_text())
    assert record["status"] == "completed"
    assert record["stage1"]["reused"] is True and record["stage1"]["source"] == str(copy.relative_to(out))
    shipped_history = json.loads((shipped / "stage1.json").read_text())["history"]
    assert [e for e in record["history"] if e["stage"] == 1] == shipped_history  # not one epoch trained here
    assert not list(copy.glob("checkpoint-stage1.pt"))
    committed = json.loads(next(RECORDS.glob("cifar100-lt-if100/paper/tau-norm/*/seed0/result.json")).read_text())
    assert record["config_id"] == committed["config_id"]
    assert record["per_class_accuracy"] == committed["per_class_accuracy"]  # the committed row, reproduced
