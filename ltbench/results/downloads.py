"""What the web board offers beside its tables: each table as CSV and JSON, written next to the HTML at build
(``<site>/tables/<board>.csv``, ``.json``; a paper section's as ``tables/papers/<board>.*``) and linked under it, and
the last-updated line (the newest record's date, the build's git commit where there is one, ltbench's version).
"""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
from pathlib import Path
from typing import Any

TABLES = "tables"


def _plain(value: Any) -> Any:
    """A cell as the files hold it: a number at full precision, None (empty in CSV) for a missing or non-finite one."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_table(site: Path, name: str, rows: list[dict[str, Any]], about: dict[str, Any]) -> list[Path]:
    """Write ``rows`` (one dict a row, the same keys in each) as ``<site>/tables/<name>.csv`` and ``.json``
    (``name`` may name a folder: ``papers/<board>``); the JSON also holds ``about`` (the board, its columns'
    meanings, the hardware and last-updated lines). Return the two paths."""
    folder = Path(site) / TABLES
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{k: _plain(v) for k, v in row.items()} for row in rows]
    columns = list(rows[0]) if rows else []
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:  # a list (a row's names, its records) as one cell, joined by spaces
        writer.writerow(["" if v is None else " ".join(map(str, v)) if isinstance(v, list) else v
                         for v in (row[c] for c in columns)])
    paths = [folder / f"{name}.csv", folder / f"{name}.json"]
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    paths[0].write_text(text.getvalue())
    paths[1].write_text(json.dumps({**about, "rows": rows}, indent=2, ensure_ascii=False) + "\n")
    return paths


def links(name: str) -> str:
    """The download links under a table (relative to the index)."""
    return (f'<p class="downloads">Download this table: <a href="{TABLES}/{name}.csv" download>CSV</a> · '
            f'<a href="{TABLES}/{name}.json" download>JSON</a></p>')


def build_commit(folder: Path) -> str | None:
    """The git commit checked out where the site is built (``folder`` lies in the repository that holds the
    records), abbreviated; None outside a repository or without git."""
    try:
        done = subprocess.run(["git", "-C", str(folder), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit.isalnum() else None


def last_updated(records: list[dict[str, Any]], commit: str | None) -> str:
    """``"Last updated: newest record 2026-12-02 · commit 1a2b3c4d5e6f · ltbench 0.9.0"``: the date of the newest
    record (its ``finished_at``), the commit the board was built from where known, and ltbench's version."""
    from ltbench.hookspecs import installed_version

    finished = [str(r["finished_at"]) for r in records if isinstance(r.get("finished_at"), str)]
    parts = [f"newest record {max(finished)[:10]}" if finished else "no record states when it finished"]
    if commit:
        parts.append(f"commit {commit}")
    parts.append(f"ltbench {installed_version()}")
    return "Last updated: " + " · ".join(parts)
