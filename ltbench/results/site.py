"""The web leaderboard: a static site (``index.html``, plots, configurations) written by
``ltbench leaderboard build`` into ``<out>/site/``. Nothing is fetched from elsewhere: the page's script and
style are inline, the plots and configurations are files beside it, so it opens from disk or any static host.

Per dataset and budget, a table (click a column header to sort by it, again to reverse; checkboxes filter by
method family) with the paper's number beside ours, each row linking to its resolved configuration and to
its records, and the plots of :mod:`ltbench.results.plots`.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ltbench.results import plots
from ltbench.results.records import reference_result
from ltbench.results.summary import GROUPS

SITE = "site"

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; color: #222; }
table { border-collapse: collapse; width: 100%; font-size: 0.9rem; }
th, td { padding: 0.3rem 0.5rem; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child, th.text, td.text { text-align: left; }
th { cursor: pointer; user-select: none; background: #f4f4f4; position: sticky; top: 0; }
th[aria-sort="ascending"]::after { content: " \\25B2"; } th[aria-sort="descending"]::after { content: " \\25BC"; }
.sd { color: #888; font-size: 0.8em; } .filters label { margin-right: 1rem; } img { max-width: 100%; }
figure { margin: 1rem 0; } .note { color: #555; font-size: 0.9rem; }
"""

SCRIPT = """
function sortTable(th) {
  const table = th.closest('table'), body = table.tBodies[0], col = th.cellIndex;
  const dir = th.getAttribute('aria-sort') === 'descending' ? 'ascending' : 'descending';
  table.querySelectorAll('th').forEach(h => h.removeAttribute('aria-sort'));
  th.setAttribute('aria-sort', dir);
  const key = row => { const v = row.cells[col].dataset.value; const n = parseFloat(v);
                       return isNaN(n) ? (v || '') : n; };
  const rows = Array.from(body.rows);
  rows.sort((a, b) => { const x = key(a), y = key(b);
    const c = (typeof x === 'number' && typeof y === 'number') ? x - y : String(x).localeCompare(String(y));
    return dir === 'ascending' ? c : -c; });
  rows.forEach(r => body.appendChild(r));
}
function applyFilters() {
  const on = new Set(Array.from(document.querySelectorAll('.filters input:checked')).map(i => i.value));
  document.querySelectorAll('tbody tr').forEach(r => { r.hidden = !on.has(r.dataset.family); });
}
document.querySelectorAll('th').forEach(th => th.addEventListener('click', () => sortTable(th)));
document.querySelectorAll('.filters input').forEach(i => i.addEventListener('change', applyFilters));
"""


def _families() -> dict[str, str]:
    from ltbench.plugins.catalog import get_catalog

    return {name: entry.cls.metadata.family or "other" for name, entry in get_catalog().methods.items()}


def _family(method: str, families: dict[str, str]) -> str:
    parts = [families.get(p, "other") for p in method.split("+")]
    return parts[0] if len(set(parts)) == 1 else "composed"


def _paper(rec: dict[str, Any]) -> float | None:
    return reference_result(rec).get("overall")


def _num(value: float | None, sd: float | None = None) -> str:
    if value is None or np.isnan(value):
        return '<td data-value="">–</td>'
    shown = f"{value:.2f}" + (f' <span class="sd">± {sd:.2f}</span>' if sd is not None and not np.isnan(sd) else "")
    return f'<td data-value="{value:.6f}">{shown}</td>'


def build(records: list[dict[str, Any]], site: Path) -> list[Path]:
    """Write the site for ``records`` (each with its ``_path``) into ``site``; return the files written."""
    site = Path(site)
    (site / "configs").mkdir(parents=True, exist_ok=True)
    for stale in (site / "configs").glob("*.json"):  # generated: a configuration no record has any more goes
        stale.unlink()
    written = plots.plot_records(records, site / "plots")
    families = _families()
    sections, all_families = [], set()
    for (dataset, budget), by_method in sorted(plots.by_place(records).items()):
        rows = []
        for method, recs in by_method.items():
            recs = sorted(recs, key=lambda r: r["seed"])
            config = site / "configs" / f"{recs[0]['config_id']}.json"
            config.write_text(json.dumps(recs[0]["config"], indent=2, sort_keys=True) + "\n")
            written.append(config)
            family = html.escape(_family(recs[0]["method"], families))  # plugin metadata: escaped as record text
            all_families.add(family)
            cells = [f'<td class="text" data-value="{html.escape(method)}">{html.escape(method)}</td>',
                     f'<td class="text" data-value="{family}">{family}</td>']
            for g in GROUPS:
                values = [r["metrics"][g] for r in recs if r["metrics"][g] is not None]
                cells.append(_num(float(np.mean(values)) if values else None,
                                  float(np.std(values, ddof=1)) if len(values) > 1 else None))
            cells.append(f'<td data-value="{len(recs)}">{len(recs)}</td>')
            cells.append(_num(_paper(recs[0])))
            links = " ".join(f'<a href="{html.escape(os.path.relpath(r["_path"], site))}">{html.escape(str(r["seed"]))}'
                             f'</a>' for r in recs)
            config_id = html.escape(recs[0]["config_id"])
            cells.append(f'<td class="text" data-value="{config_id}"><a href="configs/{config_id}.json">{config_id}'
                         f'</a></td>')
            cells.append(f'<td class="text" data-value="">{links}</td>')
            rows.append(f'<tr data-family="{family}">{"".join(cells)}</tr>')
        headers = ["method", "family", *GROUPS, "seeds", "paper overall", "config", "records (seed)"]
        head = "".join(f'<th class="{"text" if h in ("method", "family", "config", "records (seed)") else ""}">'
                       f"{h}</th>" for h in headers)
        key = f"{dataset}-{budget}"
        figures = "".join(f'<figure><img src="plots/{html.escape(key)}-{kind}.png" alt="{kind} plot for '
                          f'{html.escape(key)}"></figure>' for kind in ("groups", "per-class", "learning")
                          if (site / "plots" / f"{key}-{kind}.png").exists())
        sections.append(f'<section id="{html.escape(key)}"><h2>{html.escape(dataset)}, budget <code>{html.escape(budget)}'
                        f'</code></h2><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
                        f"{figures}</section>")
    filters = "".join(f'<label><input type="checkbox" value="{f}" checked> {f}</label>' for f in sorted(all_families))
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ltbench leaderboard</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>
<body><h1>ltbench leaderboard</h1>
<p class="note">Top-1 accuracy (%) on the balanced test set, mean ± std over seeds; many-shot, medium-shot and
few-shot classes as the dataset defines them. The paper's number is the paper's own setting (other backbones
and budgets): for orientation, not comparison. Click a column header to sort.</p>
<p class="filters">Method families: {filters}</p>
{"".join(sections)}
<script>{SCRIPT}</script></body></html>
"""
    index = site / "index.html"
    index.write_text(page)
    return [index, *written]
