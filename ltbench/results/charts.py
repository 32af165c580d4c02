"""The web leaderboard's charts, drawn as inline SVG (no library, nothing fetched): elements carry the row's
``data-family`` and ``data-method`` so that the page's filters hide and re-lay them out, as they do rows.

The board charts take the site's rows (anything with ``name``, ``family``, ``mean`` per shot group,
``backbone_epochs`` and ``macs``); the per-method charts take records.
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


def pareto_chart(rows: list[Any], key: str) -> str:
    use_macs = all(r.macs for r in rows)
    cost = {r.name: float(f"{r.backbone_epochs * (r.macs / 1e9 if use_macs else 1.0):.3g}") for r in rows}  # MACs
    # differ in their last digits between heads of the same backbone: 3 digits keep those rows level
    xlabel = ("training compute: backbone epochs × GMACs per image" if use_macs else "backbone epochs")
    spread = max(cost.values()) / max(min(cost.values()), 1e-12)
    chart = Chart(640, 380, list(cost.values()), [r.mean["overall"] for r in rows if r.mean["overall"] is not None],
                  xlog=spread > 3)
    chart.axes(xlabel, "overall accuracy (%)")
    points, front, best = [], [], -math.inf
    for r in sorted(rows, key=lambda r: (cost[r.name], -(r.mean["overall"] or 0))):
        if r.mean["overall"] is None:
            continue
        x, y = chart.x(cost[r.name]), chart.y(r.mean["overall"])
        points.append(f'<circle class="point" data-family="{html.escape(r.family)}" data-method="{html.escape(r.name)}" '
                      f'cx="{x}" cy="{y}" r="4"><title>{html.escape(r.name)}: {r.mean["overall"]:.2f} at '
                      f'{cost[r.name]:.3g}</title></circle>')
        if r.mean["overall"] > best:
            best = r.mean["overall"]
            front.append(f"{x},{y}")
    chart.parts.append(f'<polyline class="front" points="{" ".join(front)}"/>')
    chart.parts.extend(points)
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
