"""The rules that make a board's table readable at a glance (issue 39, items 2 and 5), shared by the markdown board
(:mod:`ltbench.results.leaderboard`) and the web board (:mod:`ltbench.results.site`):

- **cost that compares**: wall time and images per second only as ratios to :data:`BASELINE` (``ce``) measured on
  the same machine (the record's ``device_model``, which names the CPU model, generation and threads, or the GPU; a
  run trained on several machines, its ``machines``, has no ratio), at the
  same dataset and budget; never raw seconds from different machines side by side;
- **identical computations**: rows whose every seed scores the same accuracy on every class are one computation
  under several names (balanced-softmax and logit-adjust at tau 1);
- **rank**, **Δ vs ce** with ltbench's paired bootstrap interval (:func:`ltbench.results.summary.compare`, seeded),
  and **★ among equals**: the best of a column only among rows with the same backbone epochs, rows with more
  backbone epochs than ``ce`` marked as having had more compute.
"""

from __future__ import annotations

import math
from typing import Any

from ltbench.results.summary import GROUPS

#: the row every ratio and difference is taken against
BASELINE = "ce"
#: the relative cost of a run: its wall time, its stage 2's seconds, and its stages' training images per second
COST_KEYS = ("wall", "stage2", "ips1", "ips2")


#: what :func:`machine` says of a run whose epochs were trained on more than one machine (or partly on one not
#: stated): its seconds are a sum over machines, so they compare with no baseline's
SEVERAL = "several machines"


def machine(rec: dict[str, Any]) -> str:
    """What a record was measured on, as the boards print it: ``"AMD EPYC (family 25 model 1, AVX2), 2 threads"``
    (``"AMD EPYC, 2 threads"`` before ltbench named the generation), a GPU's name, the device (``"cpu"``) for
    records that predate ``device_model``, or :data:`SEVERAL` where its ``machines`` name any machine but the one
    it finished on, or one not stated (a run carried between machines, a stage 1 trained elsewhere)."""
    stretches = rec.get("machines") if isinstance(rec.get("machines"), list) else []
    named = {m.get("device_model") for m in stretches if isinstance(m, dict)}
    if named and named != {rec.get("device_model")}:
        return SEVERAL
    return str(rec.get("device_model") or rec.get("device", "?"))


def _positive(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    return float(value) if ok else None


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def baselines(board: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """{machine: ``{"wall": s, "ips1": img/s}``}: the mean wall time and stage-1 images per second of the
    :data:`BASELINE` runs of one board (one dataset and budget) on each machine they were measured on."""
    by_machine: dict[str, list[dict[str, Any]]] = {}
    for rec in board:
        if rec.get("variant", rec["method"]) == BASELINE and machine(rec) != SEVERAL:
            by_machine.setdefault(machine(rec), []).append(rec)
    return {m: {"wall": _mean([_positive(r.get("wall_time_s")) for r in recs]),
                "ips1": _mean([_positive((r.get("throughput_img_per_s") or {}).get("stage1")) for r in recs])}
            for m, recs in by_machine.items()}


def relative_cost(rec: dict[str, Any], base: dict[str, dict[str, float | None]]) -> dict[str, float | None]:
    """``rec``'s cost against the same machine's :data:`BASELINE` (``base`` from :func:`baselines` of its board):
    ``wall`` (its wall time over ce's), ``stage2`` (its stage 2's seconds over ce's wall time), ``ips1`` and ``ips2``
    (each stage's training images per second over ce's stage-1 images per second). ``None`` wherever the record
    lacks the number or no baseline run was measured on its machine."""
    ref = base.get(machine(rec)) or {}
    stages, speed = rec.get("stage_wall_time_s") or {}, rec.get("throughput_img_per_s") or {}
    ours = {"wall": rec.get("wall_time_s"), "stage2": stages.get("stage2"), "ips1": speed.get("stage1"),
            "ips2": speed.get("stage2")}
    against = {"wall": ref.get("wall"), "stage2": ref.get("wall"), "ips1": ref.get("ips1"), "ips2": ref.get("ips1")}
    out: dict[str, float | None] = {}
    for key in COST_KEYS:
        value, unit = _positive(ours[key]), against[key]
        out[key] = value / unit if value is not None and unit else None
    return out


def row_cost(recs: list[dict[str, Any]], base: dict[str, dict[str, float | None]]) -> dict[str, float | None]:
    """A row's relative cost: the mean of :func:`relative_cost` over its runs that have a same-machine baseline."""
    each = [relative_cost(r, base) for r in recs]
    return {key: _mean([c[key] for c in each]) for key in COST_KEYS}


def unmatched(board: list[dict[str, Any]], base: dict[str, dict[str, float | None]]) -> dict[str, list[str]]:
    """{machine: the rows with runs on it}: the machines of a board on which no baseline run was measured, so that
    the rows' runs there have no ratio (the footnote under a table)."""
    out: dict[str, set[str]] = {}
    for rec in board:
        if machine(rec) not in base:
            out.setdefault(machine(rec), set()).add(rec.get("variant", rec["method"]))
    return {m: sorted(names) for m, names in sorted(out.items())}


def ratio_text(value: float | None) -> str:
    """A ratio as the tables print it: ``"1.00"``, ``"0.004"``, ``"120"``; ``"–"`` for none."""
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.0f}" if value >= 100 else f"{value:.2f}" if value >= 0.1 else f"{value:.2g}"


def cost_note(board: list[dict[str, Any]], base: dict[str, dict[str, float | None]]) -> str:
    """The footnote of a board's cost ratios: on which machines no ``ce`` ran, and whose runs that leaves out, and
    whose runs trained on several machines (:data:`SEVERAL`); ``""`` where every run has a same-machine baseline."""
    missing = unmatched(board, base)
    several = missing.pop(SEVERAL, None)
    said = [f"no {BASELINE} run of this board was measured on "
            + "; ".join(f"{m} ({', '.join(names)})" for m, names in missing.items())] if missing else []
    if several:
        said.append(f"the runs of {', '.join(several)} trained on several machines, so their seconds compare with "
                    f"none")
    if not said:
        return ""
    return (f"– in the cost ratios: {'; '.join(said)}; a row's ratio leaves out its runs there, and is – where it "
            f"has no other. Raw seconds from different machines are not compared.")


def measured_on(board: list[dict[str, Any]]) -> str:
    """The hardware line: ``"AMD EPYC, 2 threads (12 runs); Intel(R) Xeon(R) Processor, 2 threads (3 runs)"``, with
    :data:`SEVERAL` for the runs trained on more than one machine."""
    counts: dict[str, int] = {}
    for rec in board:
        counts[machine(rec)] = counts.get(machine(rec), 0) + 1
    return "; ".join(f"{m} ({n} runs)" for m, n in sorted(counts.items()))


def identical_groups(results: dict[str, list[tuple[int, tuple[float, ...]]]]) -> list[list[str]]:
    """Groups of row names whose every seed has the same per-class accuracies (``results``: {row: [(seed,
    per-class accuracies)]}), e.g. balanced-softmax and logit-adjust at tau 1, the same arithmetic: one
    computation under several names. A row with a seed that has no per-class accuracies is in no group."""
    by_result: dict[tuple, list[str]] = {}
    for name in sorted(results):
        if results[name] and all(len(pc) for _, pc in results[name]):
            by_result.setdefault(tuple(sorted(results[name])), []).append(name)
    return [names for names in by_result.values() if len(names) > 1]


def ranks(means: list[float | None]) -> list[int | None]:
    """Each mean's rank, highest first; equal means share a rank and the next rank skips (1, 2, 2, 4); ``None``
    for a row without a mean."""
    scored = [m for m in means if m is not None]
    return [None if m is None else 1 + sum(other > m for other in scored) for m in means]


def baseline_epochs(rows: list[Any]) -> int | None:
    """The backbone epochs of the :data:`BASELINE` row (rows with ``name`` and ``backbone_epochs``), or None."""
    return next((row.backbone_epochs for row in rows if row.name == BASELINE), None)


def best_marks(rows: list[Any], records: list[dict[str, Any]], dataset: str, budget: str,
               draws: int) -> dict[tuple[str, str], str]:
    """{(row, group): "★" for the best mean of the group's column among the rows with the same backbone epochs
    (two or more of them: a row alone with its compute is the best of nothing), "≈" for a row of those not
    distinguishable from it by the paired bootstrap over seeds and test images (:func:`summary.compare`,
    ``draws`` draws, seeded)}. ``rows`` have ``name``, ``recs``, ``mean`` and ``backbone_epochs``."""
    from ltbench.results.summary import compare

    marks: dict[tuple[str, str], str] = {}
    verdicts: dict[tuple[str, str], dict[str, Any]] = {}
    peers: dict[int, list[Any]] = {}
    for row in rows:
        peers.setdefault(row.backbone_epochs, []).append(row)
    for group in peers.values():
        for g in GROUPS:
            scored = [r for r in group if r.mean[g] is not None]
            if len(scored) < 2:
                continue
            best = max(scored, key=lambda r: r.mean[g])
            marks[(best.name, g)] = "★"
            for row in scored:
                if row is best:
                    continue
                pair = (row.name, best.name)
                if pair not in verdicts:  # rows without a seed in common cannot be paired: no verdict, no mark
                    verdicts[pair] = compare(records, row.name, best.name, dataset=dataset, budget=budget,
                                             n_boot=draws)["groups"] if _common_seeds(row, best) else {}
                verdict = verdicts[pair].get(g)
                if verdict is not None and not verdict["distinguishable"]:
                    marks[(row.name, g)] = "≈"
    return marks


def _common_seeds(a: Any, b: Any) -> bool:
    return bool({r["seed"] for r in a.recs} & {r["seed"] for r in b.recs})


def deltas(rows: list[Any], records: list[dict[str, Any]], dataset: str, budget: str,
           draws: int) -> dict[str, dict[str, Any] | None]:
    """{row: its overall minus :data:`BASELINE`'s, paired by seed, with the 95 % bootstrap interval
    (:func:`summary.compare`'s ``groups["overall"]``, its fixed bootstrap seed: a rebuild prints the same interval)};
    None for a row with no seed in common with the baseline, and for every row of a board without one."""
    from ltbench.results.summary import compare

    base = next((row for row in rows if row.name == BASELINE), None)
    out: dict[str, dict[str, Any] | None] = {}
    for row in rows:
        if base is None or row is base or not _common_seeds(row, base):
            out[row.name] = None
            continue
        out[row.name] = compare(records, row.name, BASELINE, dataset=dataset, budget=budget,
                                n_boot=draws)["groups"].get("overall")
    return out
