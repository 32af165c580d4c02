"""The web leaderboard: a static site written by ``ltbench leaderboard build`` into ``<out>/site/``. Nothing is
fetched from elsewhere and every link stays inside the folder (the records it links to are copied in), so it
opens from disk or from any static host that serves the folder alone.

``index.html`` holds every board (one per dataset and budget) behind a switcher, under a last-updated line
(:mod:`ltbench.results.downloads`). Each board's heading says its dataset, budget, backbones and epochs; its table
has a rank, the accuracy per shot group, Δ vs ce with its paired interval, seeds, backbone epochs (▲ more than
ce's), ECE, parameters, MACs, wall time and images per second as ratios to ce on the same machine (each header
explains itself on hover and in the notes below; the hardware line and the footnote of the ratios under it) and
the paper's numbers where the source gives them; rows that are one computation are one row with both names
(:mod:`ltbench.results.reading`). A search box filters rows and charts by name, and every table is written beside
the page as CSV and JSON and linked under it. A board that compares with the papers (the ``paper``
budget, as the markdown board's paper section) has a section of its own under its table: each row's overall against
its paper's, "ours − paper" where the paper measured the same setting, the setting and source of each published
number (:mod:`ltbench.results.references`, from the installed methods), the seeds behind each row, and a link to the
docs' paper-budget page. The best mean of each accuracy column among the rows with the same backbone epochs
is marked ★, and a row whose difference from that best is not distinguishable from noise by ltbench's paired
bootstrap over seeds and test images (:func:`ltbench.results.summary.compare`) is marked ≈. Two charts follow,
drawn as inline SVG so that the family filters apply to them as to the rows: accuracy against training compute with
the Pareto front of the rows shown, and the shot groups per method. Every row links to a page of its own
(``methods/<board>/<method>.html``: per-class accuracy against training count, learning curves, the method's
paper and interpretations, its configuration and records). The matplotlib figures of
:mod:`ltbench.results.plots`, which draw every row at once, are on a page of their own per board
(``figures/<board>.html``), linked under the charts: everything on the index follows the filters.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ltbench.results import charts, downloads, plots, reading
from ltbench.results.records import compute
from ltbench.results.references import reference_description, reference_result, reference_setting
from ltbench.results.site_assets import SCRIPT, STYLE
from ltbench.results.summary import GROUPS, seeds_note

SITE = "site"
#: the docs site from the board's root: the leaderboard workflow publishes the board at the root of its pages and
#: the docs (``mkdocs build --site-dir _pages/docs``) under ``docs/`` (.github/workflows/leaderboard.yml)
DOCS = "docs/"
#: the docs page that gives the paper budget's recipe and reads its differences (docs/paper-budget.md)
PAPER_BUDGET_PAGE = DOCS + "paper-budget/"
#: bootstrap draws for the within-noise marks (seeded: a rebuild marks the same rows)
NOISE_DRAWS = 1000

COLUMNS = {  # header -> what it means (the header's tooltip, and the notes under each table)
    "rank": "the row's place by overall mean on this board (equal means share a place)",
    "method": "the method, or a variant of it with the options that differ from its defaults; links to its page. "
              "Names joined by = are one computation under several names (the same accuracy on every class at "
              "every seed)",
    "family": "the method's family (plugin metadata); the filters above select families",
    "overall": "mean of the per-class test accuracies (%): the mean over the row's seeds, ± their standard deviation "
               "where the row has two or more",
    "many": "mean accuracy of the many-shot classes (more than 100 training images)",
    "medium": "mean accuracy of the medium-shot classes (20 to 100 training images)",
    "few": "mean accuracy of the few-shot classes (fewer than 20 training images)",
    "Δ vs ce": "overall minus ce's, paired by seed, with the 95 % bootstrap interval over seeds and test images "
               "(ltbench compare); – where the row has no seed in common with ce",
    "seeds": "how many seeds (subset draws and initialisations) the mean is over",
    "backbone epochs": "epochs that trained the backbone's weights: stage 1, plus a stage 2 that fine-tunes it; "
                       "▲ more than ce's: more compute than the baseline, and not ranked for ★ against it",
    "ECE (%)": "expected calibration error of the test predictions (15 bins; lower is better), the mean over seeds; "
               "– where a record predates it",
    "params (M)": "parameters the trained model evaluates with, heads a method adds included (e.g. RIDE's "
                  "experts); modules only training uses (SAFA's generator, projection heads) are not counted",
    "MACs (M)": "multiply-accumulates to classify one test image along the method's evaluation path",
    "training PFLOPs": "the FLOPs training took (10^15), counted on every pass of each epoch's step times its images; "
                       "~ estimated (6 × MACs × images) for records that predate counting",
    "wall × ce": "wall time over ce's on the same machine (CPU model and threads, or GPU) at this dataset and budget, "
                 "a reused stage 1 counted at what it cost to train; – where no ce ran on the row's machine",
    "img/s × ce": "stage-1 training images per second over ce's on the same machine; – where no ce ran there",
    "paper overall": "the paper's number; † where it comes from another setting (hover it: backbone, epochs), "
                     "so that it orients rather than compares",
    "paper many": "the paper's many-shot number, where its source gives one",
    "paper medium": "the paper's medium-shot number, where its source gives one",
    "paper few": "the paper's few-shot number, where its source gives one",
    "config": "the resolved configuration (every option, defaults included); its hash names the run",
    "records (seed)": "each seed's result.json",
}
TEXT_COLUMNS = ("method", "family", "config", "records (seed)")
SAFE = re.compile(r"[^A-Za-z0-9._+=-]+")


def _families() -> dict[str, str]:
    from ltbench.plugins.catalog import get_catalog

    return {name: entry.cls.metadata.family or "other" for name, entry in get_catalog().methods.items()}


def _family(method: str, families: dict[str, str]) -> str:
    parts = [families.get(p, "other") for p in method.split("+")]
    return parts[0] if len(set(parts)) == 1 else "composed"


def _finite(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _num(value: float | None, sd: float | None = None, mark: str = "", digits: int = 2) -> str:
    if value is None or np.isnan(value):
        return '<td data-value="">–</td>'
    spread = sd is not None and not np.isnan(sd)  # joined by non-breaking spaces: one line, as the CSS keeps it
    shown = f"{value:.{digits}f}" + (f'&nbsp;<span class="sd">±&nbsp;{sd:.2f}</span>' if spread else "")
    cls = ' class="best"' if mark == "★" else ""
    label = {"★": "best of the column", "≈": "not distinguishable from the best (paired bootstrap)"}.get(mark, "")
    badge = f'&nbsp;<span class="mark" title="{label}">{mark}</span>' if mark else ""
    return f'<td{cls} data-value="{value:.6f}">{shown}{badge}</td>'


def _slug(name: str) -> str:
    """A file name for a row's page; a long variant's is cut and told apart by a hash of its name, so that it
    stays under the 255 bytes a file name may have."""
    slug = SAFE.sub("-", name).strip("-") or "method"
    return slug if len(slug) <= 100 else f"{slug[:80]}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"


def _unique_slugs(rows: list[Any]) -> None:
    """Tell apart the rows of a board whose names make one page name (``ce [tag=a b]`` and ``ce [tag=a-b]``; or
    ``CE`` and ``ce`` on a file system that ignores case): each of them gets a hash of its name after the slug, the
    same whatever the order of the rows, so that no row's page overwrites another's."""
    taken: dict[str, int] = {}
    for row in rows:
        taken[row.slug.lower()] = taken.get(row.slug.lower(), 0) + 1
    for row in rows:
        if taken[row.slug.lower()] > 1:
            row.slug = f"{row.slug[:80]}-{hashlib.sha256(row.name.encode()).hexdigest()[:12]}"


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


class Row:
    """One row of a board: a method (or variant) with its records, sorted by seed."""

    def __init__(self, name: str, recs: list[dict[str, Any]], families: dict[str, str]) -> None:
        self.name, self.recs = name, sorted(recs, key=lambda r: r["seed"])
        first = self.recs[0]
        self.family = _family(first["method"], families)
        self.slug = _slug(name)
        self.mean, self.sd, self.seeds_with = {}, {}, {}
        for g in GROUPS:
            values = [r["metrics"][g] for r in self.recs if r["metrics"][g] is not None]
            self.mean[g] = float(np.mean(values)) if values else None
            self.sd[g] = float(np.std(values, ddof=1)) if len(values) > 1 else None
            self.seeds_with[g] = len(values)  # fewer than the row's seeds: the cell says so (summary.seeds_note)
        costs = [compute(r) for r in self.recs]  # from the record's cost, as the markdown board
        self.backbone_epochs = costs[0]["backbone_epochs"]
        self.params = _mean([c.get("parameters") for c in costs])
        self.macs = _mean([c.get("inference_macs_per_image") for c in costs])
        eces = [_finite(r["calibration"].get("ece")) if isinstance(r.get("calibration"), dict) else None
                for r in self.recs]
        self.ece = float(np.mean(eces)) if None not in eces else None  # every seed's, or none (as `show`)
        self.paper = reference_result(first)
        self.setting = reference_setting(first) if self.paper else "no published number"

    def paper_number(self, group: str) -> float | None:
        return _finite(self.paper.get(group))


# -- pages ------------------------------------------------------------------------------------------------------


def _record_path(rec: dict[str, Any]) -> str:
    return f"records/{rec['dataset']}/{rec['budget']}/{rec['method']}/{rec['config_id']}/seed{rec['seed']}.json"


def _page(title: str, body: str, root: str = "") -> str:
    """A page of the site; ``root`` leads from the page's folder back to the site's (for ``style.css``)."""
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
            f'<link rel="stylesheet" href="{root}style.css"></head>\n<body>{body}</body></html>\n')


def _metadata(record: dict[str, Any], method: str) -> dict[str, Any]:
    """``method``'s metadata: the installed method's current one (as the references, so that a corrected title or
    link reaches every record), the record's own copy only for a method that is not installed."""
    from ltbench.plugins.catalog import get_catalog

    entry = get_catalog().methods.get(method)
    if entry is not None:
        return entry.cls.metadata.to_dict()
    meta = (record.get("method_metadata") or {}).get(method)
    return meta if isinstance(meta, dict) else {}


def _code_link(code: Any) -> str:
    """`` · code`` linking a method's code, where its ``code_url`` is an https URL; words after the URL (an old
    record's ``"https://... (unofficial)"``) are shown after the link, never made part of it."""
    url, _, note = str(code).strip().partition(" ") if isinstance(code, str) else ("", "", "")
    if not url.startswith("https://"):
        return ""
    return f' · <a href="{html.escape(url)}">code</a>' + (f" {html.escape(note.strip())}" if note.strip() else "")


def _method_page(row: Row, key: str, heading: str) -> str:
    first = row.recs[0]
    about = []
    for name in first.get("methods", [first["method"]]):
        meta = _metadata(first, name)
        paper, links = meta.get("paper"), _code_link(meta.get("code_url"))
        about.append(f"<h3>{html.escape(name)}: {html.escape(str(meta.get('title', '')))}</h3>"
                     f"<p>{html.escape(str(paper or ''))} ({html.escape(str(meta.get('venue', '')))} "
                     f"{html.escape(str(meta.get('year', '')))}){links}</p>"
                     f"<p>{html.escape(str(meta.get('summary', '')))}</p>")
        interpretations = meta.get("interpretations") or []
        if interpretations:
            about.append("<p><b>Where ltbench interprets the paper:</b></p><ul>" + "".join(
                f"<li>{html.escape(str(i))}</li>" for i in interpretations) + "</ul>")
    table = "<table><thead><tr><th class=\"text\">seed</th>" + "".join(f"<th>{g}</th>" for g in GROUPS) + \
        "<th class=\"text\">record</th></tr></thead><tbody>"
    for rec in row.recs:
        table += f"<tr><td class=\"text\">{rec['seed']}</td>" + "".join(
            _num(rec["metrics"][g]) for g in GROUPS) + (f'<td class="text"><a href="../../{_record_path(rec)}">'
                                                       f"result.json</a></td></tr>")
    table += "<tr><td class=\"text\">paper</td>" + "".join(_num(row.paper_number(g)) for g in GROUPS) + \
        f'<td class="text">{html.escape(row.setting or str(row.paper.get("source", "")))}</td></tr></tbody></table>'
    history = next((r["history"] for r in row.recs if r.get("history")), [])
    body = (f'<p><a href="../../index.html#{html.escape(key)}">← {html.escape(heading)}</a></p>'
            f"<h1>{html.escape(row.name)}</h1>{''.join(about)}<h2>Accuracy</h2>{table}"
            f'<p>Configuration: <a href="../../configs/{html.escape(first["config_id"])}.json">'
            f'{html.escape(first["config_id"])}</a> · backbone epochs {row.backbone_epochs}</p>'
            f"<h2>Per-class accuracy against training count</h2>{charts.per_class_chart(row.recs)}"
            + (f"<h2>Learning curves (seed {next(r['seed'] for r in row.recs if r.get('history'))})</h2>"
               f"{charts.learning_chart(history)}" if history else ""))
    return _page(f"{row.name} — {heading}", body, root="../../")


def _heading(dataset: str, budget: str, recs: list[dict[str, Any]], rows: list[Row]) -> str:
    backbones = sorted({str(r["config"].get("backbone")) for r in recs})
    epochs = sorted({r.backbone_epochs for r in rows})
    return (f"{dataset} · budget {budget} · {', '.join(backbones)} · "
            f"{', '.join(map(str, epochs))} backbone epochs")


def _seeds_note(rows: list[Row]) -> str:
    """What a board's numbers are over: one seed (no spread shown), or the mean over the seeds each row has."""
    counts = sorted({len(row.recs) for row in rows})
    if counts == [1]:
        seeds = sorted({row.recs[0]["seed"] for row in rows})
        return (f"Every row is a single run (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}): no "
                f"spread over seeds is shown, and how far another seed would move a number is not measured on this "
                f"board.")
    many = f"{counts[0]} to {counts[-1]}" if len(counts) > 1 else str(counts[0])
    return (f"Each row is the mean over its seeds ({many}; the seeds column), ± their standard deviation where it "
            f"has two or more.")


#: the paper section's columns: header -> what it means (the header's tooltip)
PAPER_COLUMNS = {
    "method": "the method, or a variant of it; links to its page",
    "seeds": "how many seeds our number is the mean of; with one, how far another seed would move it is not measured",
    "ours overall": "our overall accuracy (%): the mean over the row's seeds",
    "paper overall": "the overall accuracy the method's source reports for this dataset",
    "ours − paper": "our overall minus the paper's, where the paper measured this setting (dataset, backbone, "
                    "epochs and the method options it names); otherwise what keeps the two apart",
    "paper's setting": "the setting the paper's number was measured in: backbone, epochs, augmentation, options",
    "source": "where the paper's number comes from",
}


def _compares(rows: list[Row], budget: str) -> bool:
    """Whether a board has a paper section: the ``paper`` budget always, another where a row is in its paper's
    setting (as the markdown board's "ours − paper" column)."""
    return budget == "paper" or any(row.setting == "" for row in rows)


def _paper_section(rows: list[Row], key: str, dataset: str, budget: str) -> tuple[str, list[dict[str, Any]]]:
    """The board's rows against their papers: "ours − paper" where the paper measured the row's setting (the same
    number as the markdown board's), else what keeps them apart; each published number's setting and source.
    With the table's rows as data, for its CSV and JSON."""
    body, data = [], []
    for row in rows:
        paper = row.paper_number("overall")
        ours = row.mean["overall"]
        diff = None
        if row.setting == "" and paper is not None and ours is not None:
            diff = ours - float(f"{paper:.2f}")  # against the number as printed, as the markdown board
            gap = f'<td data-value="{diff:.6f}">{diff:+.2f}</td>'
        else:
            gap = f'<td class="text" data-value="">{html.escape(row.setting or "no published number")}</td>'
        described = reference_description(row.paper) if paper is not None else "–"
        source = str(row.paper.get("source") or ("not stated" if paper is not None else "–"))
        data.append({"method": row.name, "seeds": len(row.recs), "ours_overall": ours, "paper_overall": paper,
                     "ours_minus_paper": diff, "not_compared": "" if diff is not None else
                     row.setting or "no published number", "paper_setting": described, "source": source})
        name, family = html.escape(row.name), html.escape(row.family)
        body.append(f'<tr data-family="{family}" data-name="{name}"><td class="text" data-value="{name}">'
                    f'<a href="methods/{html.escape(key)}/{row.slug}.html">{name}</a></td>'
                    f'<td data-value="{len(row.recs)}">{len(row.recs)}</td>{_num(ours)}{_num(paper)}{gap}'
                    f'<td class="text" data-value="{html.escape(described)}">{html.escape(described)}</td>'
                    f'<td class="text" data-value="{html.escape(source)}">{html.escape(source)}</td></tr>')
    text = ("method", "paper's setting", "source")
    head = "".join(f'<th class="{"text" if h in text else ""}" '
                   f'title="{html.escape(t)}">{html.escape(h)}</th>' for h, t in PAPER_COLUMNS.items())
    backbones = ", ".join(sorted({str(r["config"].get("backbone")) for row in rows for r in row.recs}))
    epochs = ", ".join(str(e) for e in sorted({r["config"].get("epochs") for row in rows for r in row.recs}))
    recipe = ("This board trains each method with its paper's recipe. " if budget == "paper" else "")
    return (f'<section class="paper" id="paper-{html.escape(key)}">'
            f"<h3>Against the papers: {html.escape(dataset)} · budget {html.escape(budget)} · "
            f"{html.escape(backbones)} · {html.escape(epochs)} epochs</h3>"
            f'<p class="note">{recipe}"ours − paper" is our overall mean minus the number the method\'s source '
            f"reports, where that number was measured in the same setting (dataset, backbone, epochs and the method "
            f"options it names); a row whose number comes from another setting says so instead of a difference. "
            f"A composition's number is the one its methods' papers report for the composition. "
            f"{html.escape(_seeds_note(rows))} "
            f'The recipe and what each difference means: <a class="docs" href="{PAPER_BUDGET_PAGE}">the paper '
            f"budget</a> (docs).</p>"
            f'<table class="paper"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
            f"{downloads.links(f'papers/{key}')}</section>", data)


def _merged(rows: list[Row]) -> list[tuple[Row, list[Row]]]:
    """The table's rows: each row with the rows that are one computation with it (the markdown board's rule,
    :func:`ltbench.results.reading.identical_groups`), merged into one under the first name (``ce`` where it is
    one of them); rows in the given order."""
    groups = reading.identical_groups({row.name: [(r["seed"], tuple(r.get("per_class_accuracy") or ()))
                                                  for r in row.recs] for row in rows})
    by_name = {row.name: row for row in rows}
    same = {name: group for group in groups for name in group}
    out = []
    for row in rows:
        group = same.get(row.name, [row.name])
        first = reading.BASELINE if reading.BASELINE in group else group[0]
        if row.name == first:
            out.append((row, [by_name[n] for n in group if n != first]))
    return out


def _table_row(row: Row, aliases: list[Row], key: str, rank: int | None, marks: dict[tuple[str, str], str],
               delta: dict[str, Any] | None, cost: dict[str, float | None],
               more: bool) -> tuple[str, dict[str, Any]]:
    """One row of a board's table as HTML (with its aliases: the names of the same computation) and as data for
    the table's CSV and JSON."""
    names = [row, *aliases]
    family = "|".join(sorted({r.family for r in names}))
    label = " = ".join(r.name for r in names)
    links = " = ".join(f'<a href="methods/{html.escape(key)}/{r.slug}.html">{html.escape(r.name)}</a>' for r in names)
    same = (f' title="one computation under {len(names)} names: the same accuracy on every class at every seed"'
            if aliases else "")
    cells = [f'<td data-value="{rank if rank is not None else ""}">{rank if rank is not None else "–"}</td>',
             f'<td class="text" data-value="{html.escape(label)}"{same}>{links}</td>',
             f'<td class="text" data-value="{html.escape(family)}">{html.escape(family.replace("|", ", "))}</td>']
    cells += [_num(row.mean[g], row.sd[g], marks.get((row.name, g), "")).replace(
        "</td>", f"{html.escape(seeds_note(row.seeds_with[g], len(row.recs)))}</td>") for g in GROUPS]
    if row.name == reading.BASELINE:
        cells.append('<td data-value="0" title="the baseline">baseline</td>')
    elif delta is None:
        cells.append(f'<td data-value="" title="no seed in common with {reading.BASELINE}">–</td>')
    else:
        (low, high), noise = delta["ci95"], "" if delta["distinguishable"] else " (within noise)"
        cells.append(f'<td data-value="{delta["difference"]:.6f}" title="95 % paired bootstrap interval{noise}">'
                     f'{delta["difference"]:+.2f}&nbsp;<span class="sd">[{low:+.2f},&nbsp;{high:+.2f}]</span></td>')
    cells.append(f'<td data-value="{len(row.recs)}">{len(row.recs)}</td>')
    badge = (f'&nbsp;<span class="more" title="more backbone epochs than {reading.BASELINE}: more compute than the '
             f'baseline">▲</span>' if more else "")
    cells.append(f'<td data-value="{row.backbone_epochs}">{row.backbone_epochs}{badge}</td>')
    cells += [_num(row.ece), _num(row.params / 1e6 if row.params else None, digits=3),
              _num(row.macs / 1e6 if row.macs else None)]
    flops, estimated = charts.row_training_compute(row)
    cells.append(_num(None) if flops is None else f'<td data-value="{flops:.6g}">{"~" * estimated}{flops / 1e15:.3g}</td>')
    for value in (cost["wall"], cost["ips1"]):
        cells.append(f'<td data-value="{value:.6f}">{reading.ratio_text(value)}</td>' if value is not None
                     else '<td data-value="">–</td>')
    paper = [_num(row.paper_number(g)) for g in GROUPS]
    if row.setting and row.paper_number("overall") is not None:  # another setting: said, not compared
        paper[0] = paper[0].replace("</td>", f' <span class="mark" title="{html.escape(row.setting)}">†</span></td>')
    cells += paper
    config_id = html.escape(row.recs[0]["config_id"])
    cells.append(f'<td class="text" data-value="{config_id}"><a href="configs/{config_id}.json">{config_id}</a></td>')
    records = " ".join(f'<a href="{_record_path(r)}">{r["seed"]}</a>' for r in row.recs)
    cells.append(f'<td class="text" data-value="">{records}</td>')
    data = {"rank": rank, "method": label, "family": family.replace("|", ", "),
            **{k: v for g in GROUPS for k, v in ((g, row.mean[g]), (f"{g}_sd", row.sd[g]))},
            "delta_vs_ce": delta["difference"] if delta else None,
            "delta_vs_ce_ci95_low": delta["ci95"][0] if delta else None,
            "delta_vs_ce_ci95_high": delta["ci95"][1] if delta else None, "seeds": len(row.recs),
            "backbone_epochs": row.backbone_epochs, "more_backbone_epochs_than_ce": more, "ece": row.ece,
            "params_m": row.params / 1e6 if row.params else None, "macs_m": row.macs / 1e6 if row.macs else None,
            "training_pflops": flops / 1e15 if flops is not None else None, "training_flops_estimated": estimated,
            "wall_x_ce": cost["wall"], "img_per_s_x_ce": cost["ips1"],
            **{f"paper_{g}": row.paper_number(g) for g in GROUPS}, "paper_setting": row.setting,
            "config": row.recs[0]["config_id"], "records": [_record_path(r) for r in row.recs]}
    return f'<tr data-family="{html.escape(family)}" data-name="{html.escape(label)}">{"".join(cells)}</tr>', data


def build(records: list[dict[str, Any]], site: Path) -> list[Path]:
    """Write the site for ``records`` (each with its ``_path``) into ``site``; return the files written."""
    site = Path(site)
    for generated in ("configs", "records", "methods", "figures", downloads.TABLES):  # nothing a record no longer names
        shutil.rmtree(site / generated, ignore_errors=True)
        (site / generated).mkdir(parents=True)
    written = plots.plot_records(records, site / "plots")
    families = _families()
    updated = downloads.last_updated(records, downloads.build_commit(site))
    sections, options, all_families = [], [], set()
    for (dataset, budget), by_method in sorted(plots.by_place(records).items()):
        key = f"{dataset}-{budget}"
        rows = sorted((Row(name, recs, families) for name, recs in by_method.items()),
                      key=lambda r: -(r.mean["overall"] if r.mean["overall"] is not None else -1))
        _unique_slugs(rows)  # two rows never share (and overwrite) one page
        board_recs = [r for row in rows for r in row.recs]
        shown = _merged(rows)
        marks = reading.best_marks([row for row, _ in shown], board_recs, dataset, budget, NOISE_DRAWS)
        deltas = reading.deltas([row for row, _ in shown], board_recs, dataset, budget, NOISE_DRAWS)
        ranks = reading.ranks([row.mean["overall"] for row, _ in shown])
        base, base_epochs = reading.baselines(board_recs), reading.baseline_epochs(rows)
        heading = _heading(dataset, budget, board_recs, rows)
        (site / "methods" / key).mkdir(parents=True, exist_ok=True)
        for row in rows:
            all_families.add(row.family)
            for rec in row.recs:
                target = site / _record_path(rec)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(rec["_path"], target)  # linked from the site, so served with it
                written.append(target)
            config = site / "configs" / f"{row.recs[0]['config_id']}.json"
            config.write_text(json.dumps(row.recs[0]["config"], indent=2, sort_keys=True) + "\n")
            page = site / "methods" / key / f"{row.slug}.html"
            page.write_text(_method_page(row, key, heading))
            written += [config, page]
        body_rows, data = [], []
        for (row, aliases), rank in zip(shown, ranks):
            cost = reading.row_cost([r for x in (row, *aliases) for r in x.recs], base)
            more = base_epochs is not None and row.backbone_epochs > base_epochs
            line, datum = _table_row(row, aliases, key, rank, marks, deltas[row.name], cost, more)
            body_rows.append(line)
            data.append(datum)
        head = "".join(f'<th class="{"text" if h in TEXT_COLUMNS else ""}" title="{html.escape(t)}">{html.escape(h)}'
                       f"</th>" for h, t in COLUMNS.items())
        notes = "".join(f"<dt>{html.escape(h)}</dt><dd>{html.escape(t)}</dd>" for h, t in COLUMNS.items())
        figures = "".join(f'<figure><img src="../plots/{html.escape(key)}-{kind}.png" alt="{kind} plot for '
                          f'{html.escape(key)} (all rows)"></figure>' for kind in ("groups", "per-class", "learning")
                          if (site / "plots" / f"{key}-{kind}.png").exists())
        figures_page = site / "figures" / f"{key}.html"
        figures_page.parent.mkdir(exist_ok=True)
        figures_page.write_text(_page(f"{heading}: figures", f'<p><a href="../index.html#{html.escape(key)}">← '
                                      f"{html.escape(heading)}</a></p><h1>Every row, in one figure each</h1>"
                                      f"{figures}", root="../"))
        written.append(figures_page)
        hardware, cost_note = reading.measured_on(board_recs), reading.cost_note(board_recs, base)
        about = {"board": key, "dataset": dataset, "budget": budget, "heading": heading, "measured_on": hardware,
                 "cost_note": cost_note, "updated": updated}
        written += downloads.write_table(site, key, data, {**about, "columns": COLUMNS})
        against = ""
        if _compares(rows, budget):
            against, paper_data = _paper_section(rows, key, dataset, budget)
            written += downloads.write_table(site, f"papers/{key}", paper_data, {**about, "columns": PAPER_COLUMNS})
        sections.append(
            f'<section class="board" id="board-{html.escape(key)}"><h2>{html.escape(heading)}</h2>'
            f'<p class="note seeds">{html.escape(_seeds_note(rows))}</p>'
            f'<table class="board"><thead><tr>{head}</tr></thead><tbody>{"".join(body_rows)}</tbody></table>'
            f"{downloads.links(key)}"
            + (f'<p class="note cost">{html.escape(cost_note)}</p>' if cost_note else "")
            + f'<p class="note hardware">Measured on: {html.escape(hardware)}</p>'
            f'<p class="note">★ the best mean of the column among rows with the same backbone epochs (two or more); '
            f"▲ more backbone epochs than {reading.BASELINE}, so more compute than the baseline; ≈ not "
            f"distinguishable from the ★ (ltbench's paired bootstrap over seeds and test images, {NOISE_DRAWS} "
            f"draws, 95 %). Hover a header for what it "
            f'means:</p><dl class="columns">{notes}</dl>{against}'
            f"<h3>Accuracy against training compute</h3>{charts.pareto_chart(rows, key)}"
            f'<p class="note">The red line joins the rows no other row beats with less compute (the Pareto front '
            f"of the rows shown).</p><h3>Shot groups per method</h3>{charts.bars_chart(rows, key)}"
            f'<p><a href="figures/{html.escape(key)}.html">Every row in one figure each</a> (per-class accuracy, '
            f"shot groups and learning curves, unfiltered).</p></section>")
        options.append(f'<option value="{html.escape(key)}">{html.escape(heading)}</option>')
    filters = "".join(f'<label><input type="checkbox" value="{html.escape(f)}" checked> {html.escape(f)}</label>'
                      for f in sorted(all_families))
    body = (f"<h1>ltbench leaderboard</h1>"
            f'<p class="note">Top-1 accuracy (%) on the balanced test set at the final epoch: each row the mean over '
            f"its seeds (the seeds column; each board says how many), ± their standard deviation where it has two or "
            f"more. "
            f"A paper's number marked † comes from another setting (hover it): it orients, it does not compare. "
            f"Click a header to sort.</p>"
            f'<p class="note">What the columns mean and why each row sits where it does: <a class="docs" '
            f'href="{DOCS}board/">Reading the board</a>, in the documentation.</p>'
            f'<p class="note updated">{html.escape(updated)}</p>'
            f'<p><label>Board: <select id="board-switch">{"".join(options)}</select></label></p>'
            f'<p class="filters">Method families: {filters}</p>'
            f'<p><label>Search by name: <input type="search" id="search" placeholder="e.g. ldam"></label></p>'
            f'{"".join(sections)}<script>{SCRIPT}</script>')
    index, style = site / "index.html", site / "style.css"
    index.write_text(_page("ltbench leaderboard", body))
    style.write_text(STYLE.lstrip())
    return [index, style, *written]
