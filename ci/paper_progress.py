"""Carry unfinished paper-budget runs from one machine to the next, through git.

A 200-epoch ResNet-32 stage 1 takes hours on a CPU, longer than a working session; the run directories are
not committed (only records are). So the files a later start resumes from are kept, committed, in
``leaderboards/in-progress/``, at the same paths relative to ``leaderboards/records/``:

- for each planned run of the experiment file whose record has not landed: its latest checkpoint
  (``checkpoint-stage1.pt`` / ``checkpoint-stage2.pt``; once its own stage 1 is finished, ``stage1.pt`` and
  ``stage1.json``, which replace that stage's checkpoint), the ``*-progress.json`` with the seconds it has
  trained so far, its ``config.json`` and ``data.json``;
- for the shared stage 1 such a run reuses: its latest checkpoint while it trains, its final ``stage1.pt``
  and ``stage1.json`` once it is done (the second stages still to come start from it).

::

    python ci/paper_progress.py save      # refresh the carried files: newer ones replace older, landed runs go
    python ci/paper_progress.py restore   # on a fresh checkout: put them back where `ltbench run` resumes

``save`` replaces a carried checkpoint as its run advances and deletes the files of a run whose record has
landed, so the folder only ever holds what an unfinished run needs (a few MB a run). ``restore`` never
replaces a run directory's own files with older ones (it compares the trained seconds).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "leaderboards" / "records"
CARRIED = REPO / "leaderboards" / "in-progress"
#: every paper-budget experiment file (one per dataset and imbalance factor, ``<key>-paper.toml``, and any that adds
#: seeds to one, ``<key>-paper-seeds.toml``); ``save`` carries the runs of all of them
EXPERIMENTS = sorted((REPO / "leaderboards").glob("*-paper*.toml"))
#: what a run directory or a shared stage 1 needs to resume, or to be reused once finished
RESUME_FILES = ("checkpoint-stage1.pt", "checkpoint-stage2.pt", "stage1-progress.json", "stage2-progress.json",
                "config.json", "data.json")
FINAL_STAGE1 = ("stage1.pt", "stage1.json")


def needed(records: Path, experiment: Path, data_root: str | None) -> dict[Path, tuple[str, ...]]:
    """{directory under ``records``: the file names to carry} for the experiment's unfinished runs."""
    from ltbench.cli import build_parser
    from ltbench.grid.orchestrate import plan_cells, run_options
    from ltbench.results.records import RESULT_FILE, load_result
    from ltbench.grid.plan import stage1_dir

    flags = ["run", "--config", str(experiment), "--output", str(records)] + (
        ["--data-root", data_root] if data_root else [])
    args = run_options(build_parser().parse_args(flags))
    out: dict[Path, tuple[str, ...]] = {}
    for cell in plan_cells(args):
        own = cell.out_dir(records)
        record = load_result(own / RESULT_FILE)
        if record and record["status"] in ("completed", "diverged"):
            continue
        out[own] = RESUME_FILES + FINAL_STAGE1  # a finished own stage 1 keeps stage1.pt, not its checkpoint
        shared = stage1_dir(cell, records)
        if shared is not None:
            done = all((shared / f).exists() for f in FINAL_STAGE1)
            out[shared] = FINAL_STAGE1 if done else RESUME_FILES
    return out


def _seconds(directory: Path) -> float:
    """How long the run in ``directory`` has trained (its progress files), 0 when it has not started."""
    total = 0.0
    for name in ("stage1-progress.json", "stage2-progress.json"):
        path = directory / name
        if path.exists():
            total += json.loads(path.read_text())["seconds"]
    if (directory / "stage1.json").exists():
        total = max(total, float("inf"))  # a finished stage 1 is ahead of any checkpoint
    return total


def save(records: Path, carried: Path, experiments: Path | list[Path], data_root: str | None) -> list[str]:
    """Carry what the unfinished runs of ``experiments`` (one experiment file or several) need; drop the rest."""
    keep: set[Path] = set()
    said = []
    wanted: dict[Path, tuple[str, ...]] = {}
    for experiment in [experiments] if isinstance(experiments, Path) else experiments:
        for directory, names in needed(records, experiment, data_root).items():
            wanted[directory] = tuple(dict.fromkeys(wanted.get(directory, ()) + names))
    for directory, names in wanted.items():
        present = [n for n in names if (directory / n).exists()]
        if not any(n.endswith(".pt") for n in present):
            # nothing trained here: what an earlier machine carried for it stays (it was not restored here)
            keep.update(p for p in (carried / directory.relative_to(records)).glob("*") if p.is_file())
            continue
        target = carried / directory.relative_to(records)
        target.mkdir(parents=True, exist_ok=True)
        for name in present:
            shutil.copyfile(directory / name, target / name)
            keep.add(target / name)
        said.append(f"carried {directory.relative_to(records)} ({', '.join(present)})")
    for path in sorted(carried.rglob("*"), reverse=True):  # files of landed runs go, then empty folders
        if path.is_file() and path not in keep:
            path.unlink()
            said.append(f"dropped {path.relative_to(carried)}")
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    return said


def restore(records: Path, carried: Path) -> list[str]:
    said = []
    directories = sorted({p.parent for p in carried.rglob("*") if p.is_file()})
    for source in directories:
        target = records / source.relative_to(carried)
        if _seconds(target) >= _seconds(source) and any(target.glob("*.pt")):
            said.append(f"kept {target.relative_to(records)}: it is as far as the carried copy or further")
            continue
        target.mkdir(parents=True, exist_ok=True)
        for path in source.iterdir():
            shutil.copyfile(path, target / path.name)
        said.append(f"restored {target.relative_to(records)}")
    return said


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("save", "restore"))
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"),
                        help="where cifar100.npz is (save plans the experiment file, which loads the split)")
    parser.add_argument("--experiment", action="append", default=None,
                        help="an experiment file whose unfinished runs are carried (repeat it; default: every "
                        "leaderboards/*-paper*.toml)")
    parser.add_argument("--records", default=str(RECORDS))
    parser.add_argument("--carried", default=str(CARRIED))
    args = parser.parse_args(argv)
    records, carried = Path(args.records), Path(args.carried)
    if args.action == "save":
        experiments = [Path(e) for e in args.experiment] if args.experiment else EXPERIMENTS
        said = save(records, carried, experiments, args.data_root)
    else:
        said = restore(records, carried) if carried.exists() else []
    print("\n".join(said) or "nothing to do")
    return 0


if __name__ == "__main__":
    sys.exit(main())
