"""The web board's stylesheet (written as ``style.css``) and its script (inline in ``index.html``): sorting by a
header, the board switcher, the family filters and the search box by name, which also redraw the charts' Pareto
front and bars over the rows shown. Plain CSS and JavaScript, nothing fetched: the site works offline from its
folder alone (:mod:`ltbench.results.site`)."""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 80rem; color: #222; padding: 0 1rem; }
table { border-collapse: collapse; width: 100%; font-size: 0.85rem; }
th, td { padding: 0.3rem 0.45rem; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child, th.text, td.text { text-align: left; }
th { cursor: pointer; user-select: none; background: #f4f4f4; position: sticky; top: 0; }
th[aria-sort="ascending"]::after { content: " \\25B2"; } th[aria-sort="descending"]::after { content: " \\25BC"; }
.sd { color: #888; font-size: 0.8em; } .filters label { margin-right: 1rem; } img { max-width: 100%; }
td:not(.text), .sd { white-space: nowrap; }  /* a value and its ± spread stay on one line */
.best { font-weight: 600; } .mark, .more { color: #b15c00; } figure { margin: 1rem 0; }
.note { color: #555; font-size: 0.9rem; }
#search { min-width: 16rem; } .downloads { font-size: 0.85rem; }
dl.columns { font-size: 0.85rem; color: #444; display: grid; grid-template-columns: max-content auto; gap: 0.2rem 1rem; }
dl.columns dt { font-weight: 600; } svg { max-width: 100%; height: auto; font-size: 11px; }
svg .axis { stroke: #444; } svg .tick { stroke: #ccc; } svg .front { fill: none; stroke: #d62728; stroke-width: 1.5; }
svg .point { fill: #1f77b4; fill-opacity: 0.8; } svg .stage2 { stroke: #888; stroke-dasharray: 3 3; }
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
function drawFront(svg) {  // the Pareto front of the points shown: less compute, higher accuracy
  const pts = Array.from(svg.querySelectorAll('.point')).filter(p => p.style.display !== 'none')
    .map(p => [parseFloat(p.getAttribute('cx')), parseFloat(p.getAttribute('cy'))]).sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let best = Infinity; const front = [];
  pts.forEach(([x, y]) => { if (y < best) { best = y; front.push(x + ',' + y); } });
  svg.querySelector('.front').setAttribute('points', front.join(' '));
}
function layoutBars(svg) {  // the groups shown, side by side
  const step = parseFloat(svg.dataset.step), left = parseFloat(svg.dataset.left); let i = 0;
  svg.querySelectorAll('g.method').forEach(g => { if (g.style.display !== 'none') {
    g.setAttribute('transform', 'translate(' + (left + step * i++) + ',0)'); } });
}
function applyFilters() {  // the families ticked, and the names that contain the search box's text
  const on = new Set(Array.from(document.querySelectorAll('.filters input:checked')).map(i => i.value));
  const query = document.getElementById('search').value.trim().toLowerCase();
  document.querySelectorAll('[data-family]').forEach(e => {
    const name = (e.dataset.name || e.dataset.method || '').toLowerCase();
    const shown = e.dataset.family.split('|').some(f => on.has(f)) && name.includes(query);
    if (e.tagName === 'TR') { e.hidden = !shown; } else { e.style.display = shown ? '' : 'none'; } });
  document.querySelectorAll('svg.pareto').forEach(drawFront);
  document.querySelectorAll('svg.bars').forEach(layoutBars);
}
function showBoard(key) {
  document.querySelectorAll('section.board').forEach(s => { s.hidden = s.id !== 'board-' + key; });
  document.getElementById('board-switch').value = key;
}
document.querySelectorAll('th').forEach(th => th.addEventListener('click', () => sortTable(th)));
document.querySelectorAll('.filters input').forEach(i => i.addEventListener('change', applyFilters));
document.getElementById('search').addEventListener('input', applyFilters);
const switcher = document.getElementById('board-switch');
switcher.addEventListener('change', () => { showBoard(switcher.value); history.replaceState(null, '', '#' + switcher.value); });
showBoard(location.hash.slice(1) && document.getElementById('board-' + location.hash.slice(1)) ? location.hash.slice(1) : switcher.value);
"""
