"""Plots of run records (matplotlib; PNG and SVG): ``ltbench plot RUNS --out DIR``, and the web leaderboard.

Per dataset and budget:

- ``<key>-per-class``: test accuracy of the classes against their training-image count (log x; a running
  mean over a tenth of the classes, since single classes are noisy), one line per method (the mean over
  seeds) with a band of ± one standard deviation; one panel per method family, on a shared scale;
- ``<key>-groups``: many/medium/few-shot and overall accuracy per method, bars with ± std error bars;
- ``<key>-learning``: training loss (log scale) and validation accuracy per epoch, per method, with a dotted
  line where stage 2 begins (from the records' history; records older than schema 3 have none and are left out);
  one row of panels per method family, each loss panel on its own scale.

A board has 30+ rows, too many for one axis: the per-class and learning figures are small multiples, one panel
(or row of panels) per method family (:func:`families`: the installed method's family, as the web board's
filters), each with its own legend, and no axis holds methods of two families. Within a panel every method keeps
one style (:func:`styles`: colour, line style and marker, distinct for 40 methods) and the legend sits outside
the axes. Every text that comes from a record or an option (method and variant names, datasets, budgets) goes
through :func:`plain`, so that matplotlib shows it as written: a ``$x^$`` in a variant is text, not mathtext
to parse.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

GROUPS = ("many", "medium", "few", "overall")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plain(text: object) -> str:
    """``text`` as matplotlib shows it literally: every ``$`` escaped, so that nothing is parsed as mathtext."""
    return str(text).replace("$", r"\$")


def by_place(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, list[dict[str, Any]]]]:
    """Completed records grouped by (dataset, budget), then by method or variant."""
    places: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {}
    for rec in records:
        if rec["status"] == "completed":
            places.setdefault((rec["dataset"], rec["budget"]), {}).setdefault(
                rec.get("variant", rec["method"]), []).append(rec)
    return places


def _save(fig, out: Path, name: str) -> list[Path]:
    paths = [out / f"{name}.png", out / f"{name}.svg"]
    fig.savefig(paths[0], dpi=110, bbox_inches="tight", metadata={"Software": None})
    with _pyplot().rc_context({"svg.hashsalt": name}):  # stable clip-path ids: a rebuild changes no byte
        fig.savefig(paths[1], bbox_inches="tight", metadata={"Date": None, "Creator": None})
    _pyplot().close(fig)
    return paths


LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def styles(n: int) -> list[dict[str, Any]]:
    """``n`` distinct line styles: tab10's colours, then the same colours dashed, dash-dotted, dotted, each with
    its own marker, so that 40 methods never share a (colour, line style) pair (tab20 repeats look-alikes)."""
    plt = _pyplot()
    colours = plt.get_cmap("tab10").colors
    return [{"color": colours[i % 10], "linestyle": LINESTYLES[(i // 10) % len(LINESTYLES)],
             "marker": MARKERS[(i + i // 10) % len(MARKERS)]} for i in range(n)]


def _legend_outside(ax, **kwargs) -> None:
    """The legend to the right of the axes, never over the data."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False, **kwargs)


def _order(methods: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Methods by mean overall accuracy, best first (the leaderboard's order)."""
    return sorted(methods, key=lambda m: -np.mean([r["metrics"]["overall"] for r in methods[m]]))


#: where a family's panel goes: the baseline first, then the families by name, compositions and the rest last
FIRST, LAST = ("baseline",), ("composed", "other")


def installed_families() -> dict[str, str]:
    """{method: its family} of the installed methods (plugin metadata; "other" where a method names none)."""
    from ltbench.plugins.catalog import get_catalog

    return {name: entry.cls.metadata.family or "other" for name, entry in get_catalog().methods.items()}


def families(records_by_method: dict[str, list[dict[str, Any]]],
             known: dict[str, str] | None = None) -> dict[str, str]:
    """{row (method or variant): its family}, from the installed methods (``known``: {method: family}, the
    catalog's when None), never from metadata frozen in a record: a composition's family is the one its methods
    share, else "composed"; a method that is not installed is "other" (as the web board's filters)."""
    known = installed_families() if known is None else known
    out = {}
    for row, recs in records_by_method.items():
        parts = [known.get(part) or "other" for part in recs[0]["method"].split("+")]
        out[row] = parts[0] if len(set(parts)) == 1 else "composed"
    return out


def by_family(records_by_method: dict[str, list[dict[str, Any]]],
              known: dict[str, str] | None = None) -> list[tuple[str, list[str]]]:
    """[(family, its rows best first)], one entry per family present: the panels of a small-multiples figure."""
    family = families(records_by_method, known)
    panels: dict[str, list[str]] = {}
    for method in _order(records_by_method):
        panels.setdefault(family[method], []).append(method)
    return sorted(panels.items(), key=lambda kv: _panel_order(kv[0]))


def _panel_order(family: str) -> tuple[int, str]:
    return (0, family) if family in FIRST else (2 + LAST.index(family), family) if family in LAST else (1, family)


#: tick positions within a decade: dense for a loss within one decade; 1-2-5 for class sizes and wider losses
DENSE, SPARSE = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.0), (1.0, 2.0, 5.0)


def _plain_log_ticks(axis, subs: tuple[float, ...] = DENSE) -> None:
    """A log axis labelled in plain numbers (2, 3, 5, 10, 20, ...), not powers of ten: a loss within one decade
    still gets labels."""
    from matplotlib import ticker

    axis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def _grid(plt, panels: int, ncols: int, width: float, height: float, **kwargs):
    """A grid of ``panels`` axes (``ncols`` a row; the unused cells of the last row removed), constrained layout
    so that each panel's outside legend keeps its room."""
    nrows = math.ceil(panels / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows + 0.7), squeeze=False,
                             layout="constrained", **kwargs)
    flat = [ax for row in axes for ax in row]
    for ax in flat[panels:]:
        fig.delaxes(ax)
    return fig, axes, flat[:panels]


def per_class_fig(records_by_method: dict[str, list[dict[str, Any]]], title: str,
                  known: dict[str, str] | None = None):
    """Per-class test accuracy against training count: one panel per method family (``known``: {method: family},
    the installed methods' when None), every panel on the same scales, each with its legend to its right."""
    plt = _pyplot()
    panels = by_family(records_by_method, known)
    ncols = 1 if len(panels) == 1 else 2
    fig, _, axes = _grid(plt, len(panels), ncols, 9 if ncols == 1 else 7.5, 5.5 if len(panels) == 1 else 3.4,
                         sharex=True, sharey=True)
    window = 1
    for ax, (family, methods) in zip(axes, panels):
        for method, style in zip(methods, styles(len(methods))):
            recs = records_by_method[method]
            counts = np.asarray(recs[0]["train_counts"])
            order = np.argsort(-counts, kind="stable")
            acc = np.array([[np.nan if v is None else v for v in r["per_class_accuracy"]] for r in recs])[:, order]
            window = max(1, len(counts) // 10)
            acc = np.stack([_rolling(a, window) for a in acc])  # per-class numbers are noisy: a running mean
            mean, std = np.nanmean(acc, 0), np.nanstd(acc, 0)
            ax.plot(counts[order], mean, lw=1.2, ms=4, markevery=max(1, len(counts) // 8), **style,
                    label=plain(f"{method} ({len(recs)} seeds)"))
            if len(recs) > 1:
                ax.fill_between(counts[order], mean - std, mean + std, color=style["color"], alpha=0.08, lw=0)
        ax.set_xscale("log")
        _plain_log_ticks(ax.xaxis, SPARSE)
        ax.set_title(plain(family), loc="left", fontsize=10)
        ax.tick_params(labelbottom=True, labelleft=True)
        ax.grid(alpha=0.3)
        _legend_outside(ax, fontsize=7, ncol=1 if len(methods) <= 20 else 2)
    axes[0].invert_xaxis()  # shared: every panel's head classes on the left
    fig.supxlabel("training images of the class (log scale; head classes left)", fontsize=10)
    fig.supylabel(f"test accuracy (%), running mean over {window} classes", fontsize=10)
    fig.suptitle(plain(f"{title}, one panel per method family"))
    return fig


def per_class(records_by_method: dict[str, list[dict[str, Any]]], title: str, out: Path, name: str) -> list[Path]:
    return _save(per_class_fig(records_by_method, title), out, name)


def _rolling(values: np.ndarray, window: int) -> np.ndarray:
    """Centred running mean (NaN-aware), the same length as ``values``."""
    half = window // 2
    return np.array([np.nanmean(values[max(0, i - half) : i + half + 1]) for i in range(len(values))])


def groups(records_by_method: dict[str, list[dict[str, Any]]], title: str, out: Path, name: str) -> list[Path]:
    plt = _pyplot()
    methods = _order(records_by_method)
    fig, ax = plt.subplots(figsize=(max(7, 0.55 * len(methods) + 2), 4.8))
    width = 0.8 / len(GROUPS)
    x = np.arange(len(methods))
    for j, g in enumerate(GROUPS):
        values = [[r["metrics"][g] for r in records_by_method[m] if r["metrics"][g] is not None] for m in methods]
        mean = [np.mean(v) if v else np.nan for v in values]
        std = [np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values]
        ax.bar(x + (j - 1.5) * width, mean, width, yerr=std, capsize=2, label=g, error_kw={"lw": 0.8})
    ax.set_xticks(x, [plain(m) for m in methods], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    ax.set_title(plain(title))
    ax.grid(axis="y", alpha=0.3)
    _legend_outside(ax, fontsize=8)
    return _save(fig, out, name)


#: two methods' losses further apart than this factor (their medians) are drawn against separate y axes
SCALE_RATIO = 3.0


def _loss_curve(history: list[dict[str, Any]]) -> tuple[np.ndarray, str]:
    """The training loss to draw and what it is: the task term; where a method records its loss elsewhere (a task
    term of 0 at every epoch, as PaCo's), the sum of its own ``loss_*`` terms, named."""
    task = np.array([np.nan if e.get("loss_task") is None else e["loss_task"] for e in history], dtype=float)
    if np.any(task[~np.isnan(task)] != 0) or np.all(np.isnan(task)):
        return task, ""
    own = sorted({k for e in history for k in e if k.startswith("loss_") and k != "loss_task"})
    if not own:
        return task, ""
    total = np.array([sum(e[k] for k in own if e.get(k) is not None) if any(e.get(k) is not None for k in own)
                      else np.nan for e in history], dtype=float)
    return total, " + ".join(own)


def _scales(losses: dict[str, np.ndarray]) -> tuple[list[str], list[str]]:
    """The methods whose losses go on the panel's left axis and those on a right one: split at the widest gap
    between the methods' median losses where the losses span more than :data:`SCALE_RATIO` (LDAM's margin loss,
    about 10, beside a softmax cross-entropy's 2), else all on the left."""
    medians = {m: float(np.nanmedian(v)) for m, v in losses.items() if np.any(v[~np.isnan(v)] > 0)}
    ranked = sorted((m for m in medians if medians[m] > 0), key=medians.get)
    if len(ranked) < 2 or medians[ranked[-1]] / medians[ranked[0]] <= SCALE_RATIO:
        return list(losses), []
    gaps = [medians[b] / medians[a] for a, b in zip(ranked, ranked[1:])]
    cut = int(np.argmax(gaps)) + 1
    right = ranked[cut:]
    return [m for m in losses if m not in right], [m for m in losses if m in right]


def learning_fig(records_by_method: dict[str, list[dict[str, Any]]], title: str,
                 known: dict[str, str] | None = None):
    """Training loss and validation accuracy per epoch (None when no record has a history): one row per method
    family (``known``: {method: family}, the installed methods' when None), its loss panel and its validation
    panel side by side with one legend to their right. Each loss panel has its own y axis, on a log scale where
    its losses are positive, and where a family's losses differ in scale (LDAM's about 10, a cross-entropy's
    about 2) the larger ones go on a second axis on the right, said in the legend; the validation panels share
    one scale. A dotted line where stage 2 begins; a validation column only when the records hold validation
    points."""
    with_history = {m: rs for m, rs in records_by_method.items() if any(r.get("history") for r in rs)}
    if not with_history:
        return None
    plt = _pyplot()
    panels = by_family(with_history, known)
    histories = {m: next(r for r in sorted(with_history[m], key=lambda r: r["seed"]) if r.get("history"))["history"]
                 for m in with_history}
    has_val = any(e.get("val_overall") is not None for h in histories.values() for e in h)
    ncols = 2 if has_val else 1
    fig, grid, _ = _grid(plt, len(panels) * ncols, ncols, 5.2, 2.9 if len(panels) > 1 else 4.2, sharex=True)
    val_axes = [row[1] for row in grid] if has_val else []
    for other in val_axes[1:]:
        other.sharey(val_axes[0])
    stage2 = False
    for row, (family, methods) in zip(grid, panels):
        loss_ax, val_ax = row[0], (row[1] if has_val else None)
        curves = {m: _loss_curve(histories[m]) for m in methods}
        left, right = _scales({m: curve for m, (curve, _) in curves.items()})
        twin = loss_ax.twinx() if right else None
        handles, starts = [], set()
        for method, style in zip(methods, styles(len(methods))):
            history = histories[method]
            steps = np.arange(1, len(history) + 1)
            loss, terms = curves[method]
            every = max(1, len(history) // 10)
            label = plain(method + (f" ({terms})" if terms else "") + (" (loss: right axis)" if method in right
                                                                        else ""))
            ax = twin if method in right else loss_ax
            (line,) = ax.plot(steps, loss, lw=1.2, ms=4, markevery=every, **style, label=label)
            handles.append(line)
            starts |= {k for k, e in zip(steps, history)
                       if e.get("stage") == 2 and (k == 1 or history[k - 2].get("stage") != 2)}
            val = [(k, e["val_overall"]) for k, e in zip(steps, history) if e.get("val_overall") is not None]
            if val and val_ax is not None:
                val_ax.plot(*zip(*val), lw=1.2, ms=4, **{**style, "label": label})
        for ax in (loss_ax, twin):
            if ax is None:
                continue
            drawn = np.concatenate([np.asarray(line.get_ydata(), float) for line in ax.get_lines()] or [[]])
            drawn = drawn[~np.isnan(drawn)]
            if drawn.size and np.all(drawn > 0):
                ax.set_yscale("log")
                _plain_log_ticks(ax.yaxis, DENSE if drawn.max() < 10 * drawn.min() else SPARSE)
        scale = " (log)" if loss_ax.get_yscale() == "log" else ""
        loss_ax.set_ylabel("training loss" + scale, fontsize=8)
        if twin is not None:
            twin.set_ylabel("training loss, right axis" + (" (log)" if twin.get_yscale() == "log" else ""), fontsize=8)
        loss_ax.set_title(plain(f"{family}: training loss, task term"), loc="left", fontsize=9)
        if val_ax is not None:
            val_ax.set_title(plain(f"{family}: validation accuracy (%)"), loc="left", fontsize=9)
        for ax in row:
            for start in sorted(starts):
                ax.axvline(start - 0.5, color="0.4", lw=0.8, ls=":")
            ax.tick_params(labelbottom=True)
            ax.grid(alpha=0.3)
        stage2 |= bool(starts)
        (val_ax if val_ax is not None else (twin or loss_ax)).legend(
            handles=handles, loc="upper left", bbox_to_anchor=(1.12 if val_ax is None and twin else 1.01, 1.0),
            borderaxespad=0.0, frameon=False, fontsize=7, ncol=1 if len(methods) <= 20 else 2)
    fig.supxlabel("epoch (stage 1, then stage 2" + (": dotted line)" if stage2 else ")"), fontsize=10)
    fig.suptitle(plain(f"{title}: one row per method family (per method, its lowest seed that recorded a "
                       f"history)"))
    return fig


def learning(records_by_method: dict[str, list[dict[str, Any]]], title: str, out: Path, name: str) -> list[Path]:
    fig = learning_fig(records_by_method, title)
    return [] if fig is None else _save(fig, out, name)


def per_class_figure(record: dict[str, Any]):
    """Test accuracy of each class against its training count (log x), for one run."""
    plt = _pyplot()
    counts = np.asarray(record["train_counts"])
    acc = np.array([np.nan if v is None else v for v in record["per_class_accuracy"]])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(counts, acc, s=10)
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class (log)")
    ax.set_ylabel("test accuracy of the class (%)")
    ax.set_title(plain(f"{record['variant']}, seed {record['seed']}: overall {record['metrics']['overall']:.2f}"))
    ax.grid(alpha=0.3)
    return fig


def plot_records(records: list[dict[str, Any]], out: Path) -> list[Path]:
    """Every plot of ``records`` into ``out``; returns the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for (dataset, budget), by_method in sorted(by_place(records).items()):
        key, title = f"{dataset}-{budget}", f"{dataset}, budget {budget}"
        written += per_class(by_method, title, out, f"{key}-per-class")
        written += groups(by_method, title, out, f"{key}-groups")
        written += learning(by_method, title, out, f"{key}-learning")
    return written


def run_plots(out: Path, record: dict[str, Any], tag: str = "") -> list[str]:
    """``per-class.png`` in the run's directory, for reporters (a completed run only). A plot is a courtesy to
    the reporters: one that fails is left out with a line saying why, and the run and the grid go on."""
    if record["status"] != "completed":
        return []
    path = out / "per-class.png"
    try:
        fig = per_class_figure(record)
        try:
            fig.savefig(path, dpi=100, bbox_inches="tight")
        finally:
            _pyplot().close(fig)
    except Exception as exc:  # noqa: BLE001 - the record is written; only the plot is missing
        print(f"warning: {tag} per-class plot for the reporters not made: {type(exc).__name__}: {str(exc)[:200]}",
              file=sys.stderr, flush=True)
        return []
    return [str(path)]
