"""Cost on the board: every record carries the model's parameters and multiply-accumulates per image, and
``ci/backfill_cost.py`` derives the same numbers for records that predate them; and the board marks rows that
are one computation under two names."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from ltbench.plugins.catalog import build_catalog
from ltbench.plugins.testing import catalog_with, run_methods
from ltbench.results.leaderboard import render
from ltbench.training.evaluate import model_cost

ROOT = Path(__file__).resolve().parents[1]


def test_macs_are_the_convolutions_and_the_classifier_of_one_image(ltbench_tiny_run):
    model = ltbench_tiny_run.model
    size = ltbench_tiny_run.data.x_val.shape[1]
    macs, side = 0, size
    x = torch.zeros(1, 3, size, size)
    for conv in [m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d)]:
        x = conv(x)  # each output value: in_channels x kernel area multiply-accumulates
        macs += x.numel() * conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    macs += model.classifier.in_features * model.classifier.out_features
    cost = model_cost(ltbench_tiny_run)
    assert cost["inference_macs_per_image"] == macs
    assert cost["parameters"] == sum(p.numel() for p in model.parameters())


def test_parameters_count_buffers_that_stand_in_for_weights_but_not_batch_norm_statistics(ltbench_tiny_run):
    from ltbench_builtin.decoupling import TauNormHead

    linear = ltbench_tiny_run.model.classifier
    before = model_cost(ltbench_tiny_run)["parameters"]
    ltbench_tiny_run.model.classifier = TauNormHead(linear)  # the weight becomes a buffer, the bias goes
    assert model_cost(ltbench_tiny_run)["parameters"] == before - linear.out_features


def test_parameters_count_what_evaluation_reads_not_the_modules_only_training_uses(ltbench_tiny_run):
    model = ltbench_tiny_run.model
    before = model_cost(ltbench_tiny_run)["parameters"]
    model.projection = torch.nn.Linear(model.num_features, 32)  # a training-only head (BCL's, PaCo's)
    model.register_buffer("class_means", torch.zeros(10, model.num_features))  # a training-only statistic (SAFA)
    try:
        assert model_cost(ltbench_tiny_run)["parameters"] == before
    finally:
        del model.projection, model.class_means


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    out = tmp_path_factory.mktemp("cost")
    recs = run_methods(catalog_with(), ["ce", "ride", "ncm", "lws"], out)
    assert all(r["status"] == "completed" for r in recs), [r["error"] for r in recs]
    return {r["method"]: r for r in recs}


def test_records_carry_their_cost_and_the_board_shows_it(records):
    ce, ride = records["ce"]["cost"], records["ride"]["cost"]
    assert ride["parameters"] > 2 * ce["parameters"]  # three experts' own stages and classifiers
    assert ride["inference_macs_per_image"] > ce["inference_macs_per_image"]  # evaluation runs every expert
    page = next(iter(render(list(records.values())).values()))
    assert "params (M)" in page and "MACs (M)" in page
    ride_row = next(line for line in page.splitlines() if line.startswith("| ride "))
    assert f"{ride['parameters'] / 1e6:.3f}" in ride_row and f"{ride['inference_macs_per_image'] / 1e6:.1f}" in ride_row


def test_a_record_without_cost_shows_a_dash(records):
    old = {**records["ce"], "cost": None}
    ce_row = next(line for line in next(iter(render([old]).values())).splitlines() if line.startswith("| ce "))
    cells = [c.strip() for c in ce_row.strip("|").split("|")]
    assert cells[7:9] == ["–", "–"]


def test_the_backfill_derives_exactly_what_a_run_measures(records):
    spec = importlib.util.spec_from_file_location("backfill_cost", ROOT / "ci" / "backfill_cost.py")
    backfill = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = backfill
    spec.loader.exec_module(backfill)
    catalog = build_catalog()
    for name, record in records.items():  # ride: experts in heads; ncm and lws: their stage-2 heads
        derived = backfill.measure({**record, "cost": None}, catalog, None, {})
        assert {k: derived[k] for k in record["cost"]} == record["cost"], name
        assert "rebuilt from the record's config" in derived["derived"]


def test_rows_with_the_same_result_at_every_seed_are_marked_identical(records):
    ce = records["ce"]
    twin = {**ce, "method": "ce-twin", "variant": "ce-twin"}
    page = next(iter(render([ce, twin, records["lws"]]).values()))
    assert "Identical results: `ce` and `ce-twin` score the same accuracy on every class" in page
    other = {**twin, "per_class_accuracy": [a + (i == 0) for i, a in enumerate(ce["per_class_accuracy"])]}
    assert "Identical results" not in next(iter(render([ce, other]).values()))


def test_a_cost_the_counter_cannot_take_leaves_the_run_standing(tmp_path, monkeypatch):
    from ltbench.grid import runner

    def broken(run):
        raise RuntimeError("an operator the counter does not know")

    monkeypatch.setattr(runner, "model_cost", broken)
    (record,) = run_methods(catalog_with(), ["ce"], tmp_path)
    assert record["status"] == "completed" and record["cost"] is None
