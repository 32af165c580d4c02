"""MiSLAS's second stage is its own at every budget (issue 37, item 4): the official CIFAR stage 2, 10 epochs at lr
0.1 with a cosine to 0 and batch 128, never the budget's stage-2 recipe (the paper budget's is BagofTricks' cRT:
30 epochs, warm-up, steps at 10 and 20)."""

from __future__ import annotations

import inspect
import math
import types

import pytest

from ltbench.api import build_catalog
from ltbench.grid.config import resolve
from ltbench.training.schedules import stage2_schedule


def resolved(budget: str, method: str):
    """(epochs, lr, batch size, the lr multiple at each epoch) of ``method``'s stage 2 at ``budget`` on CIFAR-100-LT."""
    catalog = build_catalog()
    cls = catalog.method(method).cls
    config = resolve(catalog.dataset("cifar100-lt"), budget, [cls])  # the budget as a run resolves it (no data)
    hook = cls().ltbench_second_stage  # called as pluggy calls it: with the arguments it takes
    plan = hook(**({"run": types.SimpleNamespace(config=config)} if "run" in inspect.signature(hook).parameters else {}))
    epochs = config["stage2_epochs"] if plan.epochs is None else plan.epochs
    lr = config["stage2_lr"] if plan.lr is None else plan.lr
    batch = plan.batch_size or config["stage2_batch_size"]
    factor = stage2_schedule(config, plan)
    return epochs, lr, batch, [factor(e, epochs) for e in range(epochs)]


@pytest.mark.parametrize("budget", ["paper", "cpu"])
def test_mislas_stage_two_is_ten_cosine_epochs_at_every_budget(budget):
    epochs, lr, batch, factors = resolved(budget, "mislas")
    assert (epochs, lr, batch) == (10, 0.1, 128)
    assert factors == pytest.approx([0.5 * (1 + math.cos(math.pi * e / 10)) for e in range(10)])


def test_the_paper_budgets_own_stage_two_recipe_is_not_mislas():
    epochs, _, _, factors = resolved("paper", "crt")
    assert epochs == 30 and factors[0] < 1 and factors[25] == pytest.approx(0.01)
