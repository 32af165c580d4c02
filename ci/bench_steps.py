"""What the benchmark scripts share: one cell's run, built as ``ltbench run`` builds it, and a function that trains
it for a number of steps through ltbench's own step loop (:func:`ltbench.training.loop.run_steps`)."""

from __future__ import annotations

from typing import Any, Callable

import torch

from ltbench.grid.plan import Cell, plan_grid
from ltbench.plugins.catalog import get_catalog
from ltbench.training.hooks import build_loss
from ltbench.training.loop import image_batch, run_steps
from ltbench.training.run import Run, build_run


def ltbench_stepper(method: str, dataset: str, budget: str, settings: dict[str, str], data_root: str | None,
                    device: torch.device, steps: int) -> tuple[Cell, Run, Callable[[], None]]:
    """The cell, its run (in train mode) and ``train()``, which runs ``steps`` steps of the budget's batch size on
    rows drawn at random (a seeded generator) and reads the loss once, as an epoch does."""
    catalog = get_catalog()
    (cell,) = plan_grid([method], [dataset], [0], budget, settings=settings, data_root=data_root, catalog=catalog)
    run = build_run(catalog, cell.dataset, cell.data, cell.config, 0, device, out_dir=None, log=lambda m: None)
    cfg: dict[str, Any] = cell.config
    optimizer = torch.optim.SGD([p for p in run.model.parameters() if p.requires_grad], lr=cfg["lr"],
                                momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
    loss_fn, make_batch = build_loss(run, 1), image_batch(run, run.train_labels)
    rng, batch = torch.Generator().manual_seed(0), cfg["batch_size"]

    def train() -> None:
        order = torch.randint(0, len(run.train_labels), (steps * batch,), generator=rng)
        sums, _ = run_steps(run, optimizer, loss_fn, order, batch, make_batch)
        float(sums["task"])  # the per-epoch read, here once per call

    run.model.train()
    return cell, run, train
