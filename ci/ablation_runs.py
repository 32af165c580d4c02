"""Running an ablation's methods on the committed board's stage 1s (used by ci/*_ablation.py)."""
from __future__ import annotations

from pathlib import Path

import torch

from ltbench.grid.plan import plan_grid, stage1_dir
from ltbench.grid.runner import execute
from ltbench.plugins.catalog import Catalog

ROOT = Path(__file__).resolve().parent.parent
BOARD, OUT = ROOT / "leaderboards" / "records", ROOT / "leaderboards" / "ablations"


def run_ablation(catalog: Catalog, methods: list[str], seeds: list[int], data_root: str,
                 settings: dict[str, str] | None = None) -> None:
    """Train ``methods`` (with ``settings``, as ``--set``) on CIFAR-100-LT at the cpu budget into
    leaderboards/ablations, reusing the board's shared stage 1s where leaderboards/records has them (stage 1 is
    deterministic: the same models)."""
    cells = plan_grid(methods, ["cifar100-lt"], seeds, "cpu", settings=settings, data_root=data_root,
                      catalog=catalog)
    for cell in cells:
        mine, board = stage1_dir(cell, OUT, catalog), stage1_dir(cell, BOARD, catalog)
        if mine is not None and not mine.exists() and (board / "stage1.pt").exists():
            mine.parent.mkdir(parents=True, exist_ok=True)
            mine.symlink_to(board.resolve(), target_is_directory=True)
    for cell in cells:
        record = execute(cell, OUT, torch.device("cpu"), log=print, catalog=catalog)
        print(f"{cell.method} seed {cell.seed}: " + ", ".join(f"{k} {record['metrics'][k]:.2f}"
                                                               for k in ("overall", "many", "medium", "few")))
