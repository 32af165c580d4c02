"""Plots a researcher can read with 30+ methods: distinct styles, legends outside the axes, losses of different
families on one readable scale, stage 2 marked, no empty panel. Records are made up here: the properties are
about drawing, not learning."""

import numpy as np
import pytest

from ltbench.results import plots


def _record(method: str, seed: int = 0, loss: float = 2.0, epochs=(3, 0), val: bool = True) -> dict:
    counts = [500, 200, 100, 50, 20, 10, 5, 5, 5, 5]
    history = [{"stage": 1, "epoch": e + 1, "loss_task": loss / (e + 1), **({"val_overall": 10.0 + e} if val else {})}
               for e in range(epochs[0])]
    history += [{"stage": 2, "epoch": e + 1, "loss_task": loss / 10, **({"val_overall": 20.0} if val else {})}
                for e in range(epochs[1])]
    acc = list(np.linspace(80, 10, len(counts)))
    return {"status": "completed", "method": method, "variant": method, "dataset": "d", "budget": "b",
            "seed": seed, "train_counts": counts, "per_class_accuracy": acc, "history": history,
            "metrics": {"overall": float(np.mean(acc)) - len(method) / 100, "many": 1.0, "medium": 1.0, "few": 1.0}}


@pytest.fixture
def plt():
    pyplot = plots._pyplot()
    yield pyplot
    pyplot.close("all")


def _legend_is_right_of_the_axes(fig, ax, legend) -> bool:
    fig.canvas.draw()
    return legend.get_window_extent().x0 >= ax.get_window_extent().x1


def test_thirty_methods_get_thirty_distinct_styles_and_the_legend_stays_off_the_data(plt):
    by_method = {f"method-{i:02d}": [_record(f"method-{i:02d}")] for i in range(30)}
    fig = plots.per_class_fig(by_method, "thirty")
    (ax,) = fig.axes
    lines = [line for line in ax.get_lines() if line.get_label().startswith("method-")]
    assert len(lines) == 30
    assert len({(tuple(line.get_color()), line.get_linestyle()) for line in lines}) == 30
    assert _legend_is_right_of_the_axes(fig, ax, ax.get_legend())


def test_the_learning_curves_mark_stage_two_and_put_loss_families_on_a_log_scale(plt):
    by_method = {"ldam-drw": [_record("ldam-drw", loss=12.0, epochs=(4, 0))],
                 "ce": [_record("ce", loss=2.5, epochs=(4, 0))],
                 "crt": [_record("crt", loss=2.5, epochs=(4, 2))]}
    fig = plots.learning_fig(by_method, "families")
    loss_ax, val_ax = fig.axes[:2]
    assert loss_ax.get_yscale() == "log"
    boundaries = [line.get_xdata()[0] for line in loss_ax.get_lines() if line.get_linestyle() == ":"
                  and line.get_label().startswith("_")]
    assert boundaries == [4.5]  # crt's stage 2 starts at its fifth epoch
    assert {line.get_label() for line in loss_ax.get_lines()} >= {"ldam-drw", "ce", "crt"}  # the loss panel too
    assert _legend_is_right_of_the_axes(fig, val_ax, val_ax.get_legend())


def test_a_one_epoch_run_is_a_visible_point_and_no_panel_is_left_empty(plt):
    fig = plots.learning_fig({"ce": [_record("ce", epochs=(1, 0), val=False)]}, "one epoch")
    assert len(fig.axes) == 1  # no validation points: no validation panel
    (line,) = [line for line in fig.axes[0].get_lines() if line.get_label() == "ce"]
    assert len(line.get_xdata()) == 1 and line.get_marker() not in (None, "None", "", " ")
    assert plots.learning_fig({"ce": [{**_record("ce"), "history": []}]}, "none") is None
