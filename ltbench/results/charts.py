"""The web leaderboard's charts, drawn as inline SVG (no library, nothing fetched): elements carry the row's
``data-family`` and ``data-method`` so that the page's filters hide and re-lay them out, as they do rows.

The board charts take the site's rows (anything with ``name``, ``family``, ``mean`` per shot group and
``backbone_epochs``; the compute chart reads the training FLOPs of the row's ``recs``); the per-method charts take
records.
"""

from __future__ import annotations

import html
import math
from typing import Any

import numpy as np

from ltbench.results.summary import GROUPS


class Chart:
    """A plot area in SVG coordinates with linear or log axes, ticks and labels."""

    def __init__(self, width: int, height: int, xs: list[float], ys: list[float], xlog: bool = False,
                 ylog: bool = False, margin: tuple[int, int, int, int] = (20, 20, 45, 55)) -> None:
        self.w, self.h, self.xlog, self.ylog = width, height, xlog, ylog
        self.top, self.right, self.bottom, self.left = margin
        self.x0, self.x1 = self._range(xs, xlog)
        self.y0, self.y1 = self._range(ys, ylog)
        self.parts: list[str] = []

    @staticmethod
    def _range(values: list[float], log: bool) -> tuple[float, float]:
        values = [v for v in values if v is not None and math.isfinite(v) and (v > 0 or not log)] or [1.0]
        low, high = min(values), max(values)
        if log:
            return math.log10(low) - 0.05, math.log10(high) + 0.05
        pad = (high - low) * 0.06 or max(abs(high) * 0.1, 1.0)
        return low - pad, high + pad

    def x(self, v: float) -> float:
        v = math.log10(v) if self.xlog else v
        return round(self.left + (v - self.x0) / (self.x1 - self.x0) * (self.w - self.left - self.right), 2)

    def y(self, v: float) -> float:
        v = math.log10(v) if self.ylog else v
        return round(self.h - self.bottom - (v - self.y0) / (self.y1 - self.y0) * (self.h - self.top - self.bottom), 2)

    def axes(self, xlabel: str, ylabel: str, xticks: bool = True) -> None:
        bottom, left = self.h - self.bottom, self.left
        for v in self._ticks(self.x0, self.x1, self.xlog) if xticks else []:
            x = self.x(v)
            self.parts.append(f'<line class="tick" x1="{x}" x2="{x}" y1="{self.top}" y2="{bottom}"/>'
                              f'<text x="{x}" y="{bottom + 14}" text-anchor="middle">{v:g}</text>')
        for v in self._ticks(self.y0, self.y1, self.ylog):
            y = self.y(v)
            self.parts.append(f'<line class="tick" x1="{left}" x2="{self.w - self.right}" y1="{y}" y2="{y}"/>'
                              f'<text x="{left - 4}" y="{y + 4}" text-anchor="end">{v:g}</text>')
        self.parts.append(f'<line class="axis" x1="{left}" x2="{self.w - self.right}" y1="{bottom}" y2="{bottom}"/>'
                          f'<line class="axis" x1="{left}" x2="{left}" y1="{self.top}" y2="{bottom}"/>'
                          f'<text x="{(left + self.w - self.right) / 2}" y="{self.h - 8}" text-anchor="middle">'
                          f'{html.escape(xlabel)}</text><text transform="translate(14,{(self.top + bottom) / 2}) '
                          f'rotate(-90)" text-anchor="middle">{html.escape(ylabel)}</text>')

    @staticmethod
    def _ticks(low: float, high: float, log: bool) -> list[float]:
        if log:
            return [10.0 ** k * m for k in range(math.floor(low), math.ceil(high) + 1) for m in (1, 2, 3, 5)
                    if low <= math.log10(10.0 ** k * m) <= high]
        step = 10 ** math.floor(math.log10((high - low) / 4 or 1))
        for m in (1, 2, 5, 10):
            if (high - low) / (step * m) <= 6:
                step *= m
                break
        return [round(v, 10) for v in np.arange(math.ceil(low / step) * step, high, step)]

    def svg(self, cls: str, label: str, extra: str = "") -> str:
        return (f'<svg class="{cls}" viewBox="0 0 {self.w} {self.h}" width="{self.w}" height="{self.h}" role="img" '
                f'aria-label="{html.escape(label)}"{extra}>{"".join(self.parts)}</svg>')


#: (dx, dy, anchor) of a point's label, tried in turn: right, left, above and below by it, then further out (with a
#: line to the point), for rows crowded at one computation
LABEL_SPOTS = [(7, 4, "start"), (-7, 4, "end"), (7, -8, "start"), (7, 16, "start"), (-7, -8, "end"),
               (-7, 16, "end"), (0, -9, "middle"), (0, 19, "middle")] + [
    (dx, dy, "start" if dx > 0 else "end") for dy in (-20, 28, -32, 40, -44, 52, -56, 64, -68, 76)
    for dx in (7, -7, 40, -40, 80, -80)]
LABEL_SIZE = 10  # px; a character is about 0.58 of it wide


def row_training_compute(row: Any) -> tuple[float | None, bool]:
    """A row's training FLOPs (the mean over its records of :func:`ltbench.results.records.training_compute`)
    and whether any of them is estimated; ``(None, True)`` where a record has neither a count nor an estimate."""
    from ltbench.results.records import training_compute

    found = [training_compute(r) for r in getattr(row, "recs", None) or []]
    if not found or any(v is None for v, _ in found):
        return None, True
    return sum(v for v, _ in found) / len(found), any(e for _, e in found)


def _flops_unit(values: list[float]) -> tuple[float, str]:
    top = max(values)
    return next(((scale, name) for scale, name in ((1e18, "EFLOPs"), (1e15, "PFLOPs"), (1e12, "TFLOPs"),
                                                    (1e9, "GFLOPs")) if top >= scale), (1.0, "FLOPs"))


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    w, h = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def _labels(chart: Chart, points: list[tuple[float, float, Any]]) -> list[str]:
    """A label by each point (the row's name), at the first of :data:`LABEL_SPOTS` that overlaps no other label
    and no point and stays in the plot, else at the one that overlaps least; a label set apart from its point gets
    a thin line to it. Each carries its row's ``data-family``/``data-method``, so that the filters hide it too."""
    taken = [(x - 4, y - 4, x + 4, y + 4) for x, y, _ in points]
    left, right, top, bottom = chart.left, chart.w - chart.right, chart.top, chart.h - chart.bottom
    parts = []
    for x, y, row in sorted(points, key=lambda p: (p[1], p[0])):  # top to bottom
        width, height = 0.58 * LABEL_SIZE * len(row.name) + 2, LABEL_SIZE + 1
        best = None
        for dx, dy, anchor in LABEL_SPOTS:
            x0 = x + dx - {"start": 0, "end": width, "middle": width / 2}[anchor]
            box = (x0, y + dy - height + 2, x0 + width, y + dy + 2)
            outside = box[0] < left or box[2] > right or box[1] < top or box[3] > bottom
            cost = sum(_overlap(box, t) for t in taken) + (1e6 if outside else 0)
            if best is None or cost < best[0]:
                best = (cost, dx, dy, anchor, box)
            if cost == 0:
                break
        _, dx, dy, anchor, box = best
        taken.append(box)
        attrs = f'data-family="{html.escape(row.family)}" data-method="{html.escape(row.name)}"'
        leader = (f'<line x1="{x}" y1="{y}" x2="{round(x + dx - (2 if dx > 0 else -2 if dx < 0 else 0), 2)}" '
                  f'y2="{round(y + dy - 4, 2)}" stroke="#999" stroke-width="0.6"/>' if abs(dy) > 10 or abs(dx) > 10
                  else "")
        parts.append(f'<g class="label" {attrs}>{leader}<text x="{round(x + dx, 2)}" y="{round(y + dy, 2)}" '
                     f'text-anchor="{anchor}" font-size="{LABEL_SIZE}" fill="#333">{html.escape(row.name)}</text></g>')
    return parts


def pareto_chart(rows: list[Any], key: str) -> str:
    """Overall accuracy against training compute, a labelled point per row and the Pareto front. The compute is
    the training FLOPs each record counted (:func:`row_training_compute`); a row whose records predate counting is
    estimated from its inference MACs and drawn hollow, said in its tooltip and a legend (never mixed silently).
    Rows without either fall back, for the whole chart, to backbone epochs."""
    measured = {r.name: row_training_compute(r) for r in rows}
    use_flops = bool(rows) and all(v is not None for v, _ in measured.values())
    if use_flops:
        scale, unit = _flops_unit([v for v, _ in measured.values()])
        cost = {name: float(f"{v / scale:.3g}") for name, (v, _) in measured.items()}  # 3 digits keep rows of
        # one computation level (MACs of heads of one backbone differ in their last digits)
        estimated = {name for name, (_, e) in measured.items() if e}
        xlabel = f"training compute ({unit}" + ("; hollow: estimated)" if estimated else ", counted)")
    else:
        cost = {r.name: float(r.backbone_epochs) for r in rows}
        estimated, unit, xlabel = set(), "backbone epochs", "backbone epochs"
    spread = max(cost.values()) / max(min(cost.values()), 1e-12) if cost else 1.0
    chart = Chart(760, 440, list(cost.values()), [r.mean["overall"] for r in rows if r.mean["overall"] is not None],
                  xlog=spread > 3, margin=(30, 20, 45, 55))
    chart.axes(xlabel, "overall accuracy (%)")
    points, front, best, placed = [], [], -math.inf, []
    for r in sorted(rows, key=lambda r: (cost[r.name], -(r.mean["overall"] or 0))):
        if r.mean["overall"] is None:
            continue
        x, y = chart.x(cost[r.name]), chart.y(r.mean["overall"])
        guess = r.name in estimated
        how = (" (estimated: 6 × inference MACs × images trained on; extra passes, views and encoders missed)"
               if guess else "")
        style = ' style="fill:#fff;stroke:#1f77b4;stroke-width:1.5"' if guess else ""
        points.append(f'<circle class="point{" estimated" if guess else ""}" data-family="{html.escape(r.family)}" '
                      f'data-method="{html.escape(r.name)}" cx="{x}" cy="{y}" r="4"{style}><title>'
                      f'{html.escape(r.name)}: {r.mean["overall"]:.2f} at {cost[r.name]:.3g} {unit}{how}</title>'
                      f'</circle>')
        placed.append((x, y, r))
        if r.mean["overall"] > best:
            best = r.mean["overall"]
            front.append(f"{x},{y}")
    chart.parts.append(f'<polyline class="front" points="{" ".join(front)}"/>')
    chart.parts.extend(_labels(chart, placed))
    chart.parts.extend(points)
    if estimated:
        chart.parts.append(f'<circle cx="{chart.left + 8}" cy="12" r="4" class="legend-point" fill="#1f77b4"/>'
                           f'<text x="{chart.left + 16}" y="16">counted by torch.utils.flop_counter</text>'
                           f'<circle cx="{chart.left + 228}" cy="12" r="4" style="fill:#fff;stroke:#1f77b4;'
                           f'stroke-width:1.5"/><text x="{chart.left + 236}" y="16">estimated (record predates '
                           f'counting): 6 × inference MACs × images</text>')
    return chart.svg("pareto", f"overall accuracy against {xlabel} for {key}, Pareto front in red")


GROUP_COLOURS = {"many": "#1f77b4", "medium": "#ff7f0e", "few": "#2ca02c", "overall": "#444444"}


def bars_chart(rows: list[Any], key: str) -> str:
    step, left, height, bottom = 26, 50, 370, 150
    values = [r.mean[g] for r in rows for g in GROUPS if r.mean[g] is not None]
    chart = Chart(left + step * len(rows) + 20, height, [0.0], [0.0, max(values or [1.0])],
                  margin=(20, 20, bottom, left))
    chart.axes("", "test accuracy (%)", xticks=False)
    width = (step - 6) / len(GROUPS)
    for i, r in enumerate(rows):
        bars = []
        for j, g in enumerate(GROUPS):
            if r.mean[g] is None:
                continue
            y = chart.y(r.mean[g])
            bars.append(f'<rect x="{3 + j * width:.1f}" y="{y}" width="{width:.1f}" height="{round(chart.y(0) - y, 2)}" '
                        f'fill="{GROUP_COLOURS[g]}"><title>{html.escape(r.name)} {g}: {r.mean[g]:.2f}</title></rect>')
        label_y = height - bottom + 8
        chart.parts.append(f'<g class="method" data-family="{html.escape(r.family)}" data-method="{html.escape(r.name)}" '
                           f'transform="translate({left + step * i},0)">{"".join(bars)}<text transform="translate('
                           f'{step / 2},{label_y}) rotate(60)" font-size="10">{html.escape(r.name)}</text></g>')
    legend = "".join(f'<rect x="{left + 10 + 80 * k}" y="4" width="10" height="10" fill="{c}"/><text x="'
                     f'{left + 24 + 80 * k}" y="13">{g}</text>' for k, (g, c) in enumerate(GROUP_COLOURS.items()))
    chart.parts.append(legend)
    return chart.svg("bars", f"accuracy per shot group and method for {key}",
                     f' data-step="{step}" data-left="{left}"')


def per_class_chart(rows_recs: list[dict[str, Any]]) -> str:
    counts = np.asarray(rows_recs[0]["train_counts"], float)
    acc = np.array([[np.nan if v is None else v for v in r["per_class_accuracy"]] for r in rows_recs])
    mean = np.nanmean(acc, 0)
    chart = Chart(640, 360, list(counts[counts > 0]), [0.0, 100.0], xlog=True)
    chart.axes("training images of the class (log scale)", "test accuracy of the class (%), mean over seeds")
    chart.parts.extend(f'<circle class="point" cx="{chart.x(c)}" cy="{chart.y(a)}" r="2.5"><title>{int(c)} images: '
                       f'{a:.1f} %</title></circle>' for c, a in zip(counts, mean) if c > 0 and not np.isnan(a))
    return chart.svg("per-class", "per-class test accuracy against training images")


def learning_chart(history: list[dict[str, Any]]) -> str:
    steps = list(range(1, len(history) + 1))
    loss = [e.get("loss_task") for e in history]
    positive = all(v is None or v > 0 for v in loss)
    chart = Chart(640, 320, steps, [v for v in loss if v is not None], ylog=positive)
    chart.axes("epoch (stage 1, then stage 2 after the dashed line)",
               "training loss, task term" + (" (log)" if positive else ""))
    points = [f"{chart.x(k)},{chart.y(v)}" for k, v in zip(steps, loss) if v is not None and (v > 0 or not positive)]
    chart.parts.append(f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{" ".join(points)}"/>')
    chart.parts.extend(f'<circle class="point" cx="{p.split(",")[0]}" cy="{p.split(",")[1]}" r="2"/>' for p in points)
    for k, e in zip(steps, history):
        if e.get("stage") == 2 and (k == 1 or history[k - 2].get("stage") != 2):
            chart.parts.append(f'<line class="stage2" x1="{chart.x(k - 0.5)}" x2="{chart.x(k - 0.5)}" y1="{chart.top}" '
                               f'y2="{chart.h - chart.bottom}"/>')
    val = [(k, e["val_overall"]) for k, e in zip(steps, history) if e.get("val_overall") is not None]
    curve = ""
    if val:
        vchart = Chart(640, 260, steps, [v for _, v in val])
        vchart.axes("epoch", "validation accuracy (%)")
        vchart.parts.append(f'<polyline fill="none" stroke="#ff7f0e" stroke-width="1.5" points="'
                            f'{" ".join(f"{vchart.x(k)},{vchart.y(v)}" for k, v in val)}"/>')
        vchart.parts.extend(f'<circle class="point" cx="{vchart.x(k)}" cy="{vchart.y(v)}" r="2.5"/>' for k, v in val)
        curve = vchart.svg("validation", "validation accuracy per epoch")
    return chart.svg("learning", "training loss per epoch") + curve
