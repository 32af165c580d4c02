"""Training compute, measured: each record states the FLOPs its training took (``compute.training_flops``),
counted by torch's flop counter on the first step of every epoch (every forward and backward pass the step runs:
all views, extra losses and their encoders, a step owner's closure) times the images of the epoch. A method that
trains with more passes is more compute: SAM (a second forward and backward each step) about twice ce, BCL (three
views) about three times, PaCo (two views and a momentum key encoder) more than ce. The counter only observes: a
run computes the same with it off. Records that predate counting are estimated, and the boards say so."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from ltbench.plugins.testing import catalog_with, run_methods
from ltbench.results.records import (MODEL_FILE, PREDICTIONS_FILE, TRAINING_FLOPS_COUNTED_BY, compute,
                                     training_compute)
from ltbench.training import checkpoints, loop

#: the training views each method asks for in stage 1 (``ltbench_train_views``)
VIEWS = {"ce": 1, "sam": 1, "bcl": 3, "paco": 2, "crt": 1}


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    recs = run_methods(catalog_with(), list(VIEWS), tmp_path_factory.mktemp("flops"))
    assert all(r["status"] == "completed" for r in recs), [r["error"] for r in recs]
    return {r["method"]: r for r in recs}


def _samples(record, stage=1):
    """The training rows the stage drew (each with its views)."""
    return sum(e["images"] for e in record["history"] if e["stage"] == stage) // VIEWS[record["method"]]


def _per_sample(record):
    """Stage 1's FLOPs per training row drawn: every view and pass of it."""
    return record["compute"]["stages"]["1"]["training_flops"] / _samples(record)


def test_every_record_states_its_training_flops_per_stage(records):
    for name, record in records.items():
        block = record["compute"]
        assert block == compute(record), name  # derived from the record: the boards read the same
        assert isinstance(block["training_flops"], int) and block["training_flops"] > 0, name
        assert block["counted_by"] == TRAINING_FLOPS_COUNTED_BY
        for stage in block["stages"].values():
            assert stage["flops_per_image"] > 0 and stage["training_flops"] > 0
        # each epoch's history entry carries the count of its first step
        assert all(e["train_flops_per_image"] > 0 for e in record["history"]), name
    crt = records["crt"]["compute"]["stages"]
    # BagofTricks' stage 2: the frozen backbone's forward pass (no backward, about a third of a training step)
    assert set(crt) == {"1", "2"} and crt["1"]["flops_per_image"] / 4 < crt["2"]["flops_per_image"] < \
        crt["1"]["flops_per_image"] / 2


def test_the_total_is_the_per_image_count_times_the_images_seen(records):
    for name, record in records.items():
        block = record["compute"]
        for key, stage in block["stages"].items():
            entries = [e for e in record["history"] if e["stage"] == int(key)]
            assert stage["images"] == sum(e["images"] for e in entries)
            assert stage["training_flops"] == pytest.approx(stage["flops_per_image"] * stage["images"], abs=1), name
            assert stage["training_flops"] == round(sum(e["train_flops_per_image"] * e["images"] for e in entries))
        assert block["training_flops"] == sum(s["training_flops"] for s in block["stages"].values())


def test_a_step_that_runs_more_passes_counts_more(records):
    ce = _per_sample(records["ce"])
    assert _samples(records["sam"]) == _samples(records["bcl"]) == _samples(records["paco"]) == _samples(records["ce"])
    # SAM: its closure runs the forward and backward a second time each step
    assert _per_sample(records["sam"]) == pytest.approx(2 * ce, rel=0.1)
    # BCL: three views through the backbone, forward and backward; its projection heads add a little
    assert 3 * ce <= _per_sample(records["bcl"]) <= 3.3 * ce
    # PaCo: more than ce, and per image processed too: its momentum key encoder encodes a view of every row
    assert _per_sample(records["paco"]) > ce
    assert records["paco"]["compute"]["stages"]["1"]["flops_per_image"] > \
        1.12 * records["ce"]["compute"]["stages"]["1"]["flops_per_image"]
    # ce's one forward and backward: about three forward passes of the evaluation path (2 FLOPs a MAC), a little
    # less (the first convolution has no input gradient)
    forward = 2 * records["ce"]["cost"]["inference_macs_per_image"]
    assert 2.5 * forward < records["ce"]["compute"]["stages"]["1"]["flops_per_image"] <= 3 * forward


def _arrays(path):
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


@pytest.mark.parametrize("method", ["ce", "sam"])
def test_counting_changes_nothing_a_run_computes(tmp_path, monkeypatch, method):
    counted = run_methods(catalog_with(), [method], tmp_path / "counted")[0]
    monkeypatch.setattr(loop, "COUNT_TRAINING_FLOPS", False)
    plain = run_methods(catalog_with(), [method], tmp_path / "plain")[0]
    assert counted["status"] == plain["status"] == "completed"
    losses = lambda r: [{k: v for k, v in e.items() if k.startswith("loss_")} for e in r["history"]]  # noqa: E731
    assert losses(counted) == losses(plain)  # bit for bit
    assert counted["per_class_accuracy"] == plain["per_class_accuracy"]
    a, b = (next((tmp_path / d).rglob(PREDICTIONS_FILE)) for d in ("counted", "plain"))
    one, other = _arrays(a), _arrays(b)
    assert one.keys() == other.keys() and all(np.array_equal(one[k], other[k]) for k in one)
    m1, m2 = (checkpoints.load(next((tmp_path / d).rglob(MODEL_FILE)))["model"] for d in ("counted", "plain"))
    assert m1.keys() == m2.keys() and all(torch.equal(m1[k], m2[k]) for k in m1)
    # uncounted, the record says so: no count, and the boards estimate
    assert counted["compute"]["training_flops"] > 0 and plain["compute"]["training_flops"] is None
    assert training_compute(plain)[1] is True and training_compute(counted) == (counted["compute"]["training_flops"],
                                                                               False)


def test_where_the_counter_cannot_run_the_record_says_null(tmp_path, monkeypatch):
    import torch.utils.flop_counter

    class Unavailable:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("no flop counter on this device")

    monkeypatch.setattr(torch.utils.flop_counter, "FlopCounterMode", Unavailable)
    (record,) = run_methods(catalog_with(), ["ce"], tmp_path)
    assert record["status"] == "completed"
    assert all("train_flops_per_image" in e and e["train_flops_per_image"] is None for e in record["history"])
    assert record["compute"]["training_flops"] is None and record["compute"]["counted_by"] is None
    assert record["compute"]["stages"]["1"]["flops_per_image"] is None


def _predating(record):
    """``record`` as written before training was counted: no count in its history."""
    history = [{k: v for k, v in e.items() if k != "train_flops_per_image"} for e in record["history"]]
    old = {**record, "history": history}
    old["compute"] = compute(old)
    return old


def test_a_record_that_predates_counting_is_estimated_and_the_board_says_so(records):
    from ltbench.results.leaderboard import render

    old = _predating(records["sam"])
    assert old["compute"]["training_flops"] is None
    estimate, estimated = training_compute(old)
    macs, images = old["cost"]["inference_macs_per_image"], old["compute"]["stages"]["1"]["images"]
    assert estimated and estimate == 6 * macs * images  # one forward and backward of the evaluation path
    page = next(iter(render([records["ce"], old]).values()))
    assert "training PFLOPs" in page
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in page.splitlines() if line.startswith("| ") and "---" not in line}
    column = rows["method"].index("training PFLOPs")
    assert rows["ce"][column] == f"{records['ce']['compute']['training_flops'] / 1e15:.3g}"
    assert rows["sam"][column] == f"~{estimate / 1e15:.3g}"  # marked, never mixed silently


def test_the_compute_chart_plots_counted_flops_labels_its_points_and_marks_estimates(records):
    from ltbench.results.charts import pareto_chart
    from ltbench.results.site import Row

    rows = [Row(name, [records[name]], {}) for name in ("ce", "sam", "bcl", "paco")]
    svg = pareto_chart(rows, "board")
    points = {m: float(x) for m, x in re.findall(r'<circle class="point" [^>]*data-method="([^"]+)" cx="([\d.]+)"',
                                                 svg)}
    assert set(points) == {"ce", "sam", "bcl", "paco"}
    assert points["ce"] < points["sam"] < points["paco"] < points["bcl"]  # no longer one x for every method
    for name in points:  # each point has its label
        assert re.search(rf'<g class="label" [^>]*data-method="{name}"[^>]*>.*?<text [^>]*>{name}</text>', svg)
    assert "training compute (" in svg and "estimated" not in svg

    mixed = pareto_chart([Row("ce", [records["ce"]], {}), Row("sam", [_predating(records["sam"])], {})], "board")
    assert re.search(r'<circle class="point estimated" [^>]*data-method="sam"', mixed)
    assert re.search(r'<circle class="point" [^>]*data-method="ce"', mixed)
    assert "hollow: estimated" in mixed and "6 × inference MACs" in mixed


def test_labels_of_points_at_one_place_do_not_overlap():
    from types import SimpleNamespace

    from ltbench.results.charts import Chart, LABEL_SIZE, _labels

    chart = Chart(760, 440, [1.0, 10.0], [0.0, 100.0], xlog=True)
    rows = [SimpleNamespace(name=f"method-{i}", family="f") for i in range(6)]
    points = [(chart.x(3.0), chart.y(50.0 + i), row) for i, row in enumerate(rows)]  # six rows, one computation
    svg = "".join(_labels(chart, points))
    spots = [(float(x), float(y), a, t) for x, y, a, t in
             re.findall(r'<text x="([\d.-]+)" y="([\d.-]+)" text-anchor="(\w+)"[^>]*>([^<]+)</text>', svg)]
    assert len(spots) == 6
    boxes = []
    for x, y, anchor, label in spots:
        width = 0.58 * LABEL_SIZE * len(label) + 2
        x0 = x - {"start": 0, "end": width, "middle": width / 2}[anchor]
        boxes.append((x0, y - LABEL_SIZE + 1, x0 + width, y + 2))
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert min(a[2], b[2]) <= max(a[0], b[0]) or min(a[3], b[3]) <= max(a[1], b[1]), (a, b)
    assert math.isfinite(sum(b[0] for b in boxes))

