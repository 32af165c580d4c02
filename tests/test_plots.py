"""Plots a researcher can read with 30+ methods: small multiples, one panel per method family and no axis that
mixes families, distinct styles, legends outside the axes, losses of different scales on separate axes, stage 2
marked, no empty panel. Records are made up here: the properties are about drawing, not learning."""

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


#: made-up rows of four families; ldam-drw's loss (about 12) is on another scale than the others' (about 2.5)
FAMILIES = {"ce": "baseline", "crt": "decoupling", "lws": "decoupling", "ldam-drw": "loss",
            "balanced-softmax": "loss", "mixup": "augmentation"}


def _methods_on(ax) -> set[str]:
    """The methods an axis draws (a legend label is the method, then its notes in parentheses)."""
    return {line.get_label().split(" (")[0] for line in ax.get_lines() if not line.get_label().startswith("_")}


def _panels(fig, suffix: str = "") -> dict[str, set[str]]:
    """{panel title: the methods drawn on it and on a twin axis that shares its place}."""
    out = {}
    for ax in fig.axes:
        title = ax.get_title(loc="left")
        if title and title.endswith(suffix):
            twins = [t for t in fig.axes if t is not ax and not t.get_title(loc="left")
                     and t.get_position().bounds == ax.get_position().bounds]
            out[title] = _methods_on(ax).union(*map(_methods_on, twins))
    return out


@pytest.mark.parametrize("figure, suffix", [("per_class_fig", ""), ("learning_fig", ": training loss, task term"),
                                            ("learning_fig", ": validation accuracy (%)")])
def test_one_panel_per_family_present_and_no_axis_holds_two_families(plt, figure, suffix):
    """Small multiples: each family of the records gets one panel with all of its methods, and no axis (a twin
    included) draws methods of two families; a figure that overlays every method on one axis fails here."""
    by_method = {m: [_record(m, loss=12.0 if m == "ldam-drw" else 2.5)] for m in FAMILIES}
    fig = getattr(plots, figure)(by_method, "families", FAMILIES)
    for ax in fig.axes:
        assert len({FAMILIES[m] for m in _methods_on(ax)}) <= 1, (ax.get_title(loc="left"), _methods_on(ax))
    panels = _panels(fig, suffix)
    families = sorted(set(FAMILIES.values()))
    assert len(panels) == len(families)  # one panel per family present, no more
    for family in families:
        (title,) = [t for t in panels if t.startswith(family)]
        assert panels[title] == {m for m, f in FAMILIES.items() if f == family}
    for ax in fig.axes:  # each panel's legend (for the learning curves, one per row) to the right of its axes
        if ax.get_legend() is not None:
            assert _legend_is_right_of_the_axes(fig, ax, ax.get_legend())


def test_the_families_are_the_installed_methods_and_a_composition_of_two_is_composed():
    rows = {m: [_record(m)] for m in ("ce", "ldam-drw", "ldam-drw+sam", "not-installed")}
    assert plots.families(rows) == {"ce": "baseline", "ldam-drw": "loss", "ldam-drw+sam": "composed",
                                    "not-installed": "other"}
    assert [family for family, _ in plots.by_family(rows)] == ["baseline", "loss", "composed", "other"]


def test_the_learning_curves_mark_stage_two_and_give_each_loss_scale_its_own_axis(plt):
    by_method = {"ldam-drw": [_record("ldam-drw", loss=12.0, epochs=(4, 0))],
                 "balanced-softmax": [_record("balanced-softmax", loss=2.5, epochs=(4, 0))],
                 "ce": [_record("ce", loss=2.5, epochs=(4, 0))],
                 "crt": [_record("crt", loss=2.5, epochs=(4, 2))]}
    fig = plots.learning_fig(by_method, "families")  # the installed methods' families
    panels = _panels(fig, ": training loss, task term")
    assert sorted(panels) == ["baseline: training loss, task term", "decoupling: training loss, task term",
                              "loss: training loss, task term"]
    axis_of = {m: ax for ax in fig.axes for m in _methods_on(ax) if "training loss" in ax.get_ylabel()}
    assert len({id(axis_of[m]) for m in by_method}) == 4  # LDAM's ~12 and the others' ~2.5: never one axis
    assert all(axis_of[m].get_yscale() == "log" for m in by_method)
    assert "right axis" in axis_of["ldam-drw"].get_ylabel()  # the loss family's second scale, on the right

    def boundaries(ax):
        return [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == ":"
                and line.get_label().startswith("_")]

    assert boundaries(axis_of["crt"]) == [4.5]  # crt's stage 2 starts at its fifth epoch
    assert boundaries(axis_of["ce"]) == [] and boundaries(axis_of["balanced-softmax"]) == []
    legend = next(ax.get_legend() for ax in fig.axes if ax.get_legend() and "loss" in ax.get_title(loc="left"))
    assert "ldam-drw (loss: right axis)" in [t.get_text() for t in legend.get_texts()]


def test_a_task_term_of_zero_draws_the_methods_own_loss_named(plt):
    record = _record("paco", epochs=(3, 0))
    record["history"] = [{**e, "loss_task": 0.0, "loss_paco": 9.0 - e["epoch"]} for e in record["history"]]
    fig = plots.learning_fig({"paco": [record]}, "own loss", {"paco": "contrastive"})
    (line,) = [line for line in fig.axes[0].get_lines() if not line.get_label().startswith("_")]
    assert line.get_label() == "paco (loss_paco)" and list(line.get_ydata()) == [8.0, 7.0, 6.0]


def test_a_one_epoch_run_is_a_visible_point_and_no_panel_is_left_empty(plt):
    fig = plots.learning_fig({"ce": [_record("ce", epochs=(1, 0), val=False)]}, "one epoch")
    assert len(fig.axes) == 1  # no validation points: no validation panel
    (line,) = [line for line in fig.axes[0].get_lines() if line.get_label() == "ce"]
    assert len(line.get_xdata()) == 1 and line.get_marker() not in (None, "None", "", " ")
    assert plots.learning_fig({"ce": [{**_record("ce"), "history": []}]}, "none") is None
