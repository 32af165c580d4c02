"""Plots of run records (matplotlib; PNG and SVG): ``ltbench plot RUNS --out DIR``, and the web leaderboard.

Per dataset and budget:

- ``<key>-per-class``: test accuracy of the classes against their training-image count (log x; a running
  mean over a tenth of the classes, since single classes are noisy), one line per method (the mean over
  seeds) with a band of ± one standard deviation;
- ``<key>-groups``: many/medium/few-shot and overall accuracy per method, bars with ± std error bars;
- ``<key>-learning``: training loss (log scale) and validation accuracy per epoch, per method, with a dotted
  line where stage 2 begins (from the records' history; records older than schema 3 have none and are left out).

Every method keeps one style (:func:`styles`: colour, line style and marker, distinct for 40 methods) and the
legend sits outside the axes. Every text that comes from a record or an option (method and variant names,
datasets, budgets) goes through :func:`plain`, so that matplotlib shows it as written: a ``$x^$`` in a variant
is text, not mathtext to parse.
"""

from __future__ import annotations

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


def per_class_fig(records_by_method: dict[str, list[dict[str, Any]]], title: str):
    plt = _pyplot()
    methods = _order(records_by_method)
    fig, ax = plt.subplots(figsize=(9, 5.5))
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
    ax.invert_xaxis()
    ax.set_xlabel("training images of the class (log scale; head classes left)")
    ax.set_ylabel(f"test accuracy (%), running mean over {max(1, len(counts) // 10)} classes")
    ax.set_title(plain(title))
    ax.grid(alpha=0.3)
    _legend_outside(ax, fontsize=7, ncol=1 if len(methods) <= 20 else 2)
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


def learning_fig(records_by_method: dict[str, list[dict[str, Any]]], title: str):
    """Training loss and validation accuracy per epoch (None when no record has a history). One style per
    method across both panels and one legend outside them; the loss on a log scale (losses of different
    families differ by an order of magnitude: LDAM's about 10, CE's about 2); a dotted line where stage 2
    begins; a panel only for what the records hold (no validation points, no validation panel)."""
    with_history = {m: rs for m, rs in records_by_method.items() if any(r.get("history") for r in rs)}
    if not with_history:
        return None
    plt = _pyplot()
    methods = _order(with_history)
    histories = {m: next(r for r in sorted(with_history[m], key=lambda r: r["seed"]) if r.get("history"))["history"]
                 for m in methods}
    has_val = any(e.get("val_overall") is not None for h in histories.values() for e in h)
    fig, axes = plt.subplots(1, 2 if has_val else 1, figsize=(12 if has_val else 7.5, 4.5), squeeze=False)
    loss_ax, val_ax = axes[0][0], (axes[0][1] if has_val else None)
    starts, positive = set(), True
    for method, style in zip(methods, styles(len(methods))):
        history = histories[method]
        steps = np.arange(1, len(history) + 1)
        loss = np.array([np.nan if e.get("loss_task") is None else e["loss_task"] for e in history], dtype=float)
        positive &= bool(np.all(loss[~np.isnan(loss)] > 0))
        every = max(1, len(history) // 10)
        loss_ax.plot(steps, loss, lw=1.2, ms=4, markevery=every, **style, label=plain(method))
        starts |= {k for k, e in zip(steps, history)
                   if e.get("stage") == 2 and (k == 1 or history[k - 2].get("stage") != 2)}
        val = [(k, e["val_overall"]) for k, e in zip(steps, history) if e.get("val_overall") is not None]
        if val and val_ax is not None:
            val_ax.plot(*zip(*val), lw=1.2, ms=4, **{**style, "label": plain(method)})
    if positive:
        loss_ax.set_yscale("log")
    for ax, label in ((loss_ax, "training loss, task term" + (" (log scale)" if positive else "")),
                      (val_ax, "validation accuracy (%)")):
        if ax is None:
            continue
        for start in sorted(starts):
            ax.axvline(start - 0.5, color="0.4", lw=0.8, ls=":")
        ax.set_xlabel("epoch (stage 1, then stage 2" + (": dotted line)" if starts else ")"))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    _legend_outside(val_ax if val_ax is not None else loss_ax, fontsize=7, ncol=1 if len(methods) <= 20 else 2)
    fig.suptitle(plain(f"{title} (per method, its lowest seed that recorded a history)"))
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
