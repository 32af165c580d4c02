"""Learning-rate schedules: stage 1's (warm-up, then steps or a cosine) and stage 2's (the budget's steps as
BagofTricks-LT's ``WarmupMultiStepLR`` runs them, a method's own, or a cosine), and the per-parameter multiples a
second stage asks for."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from typing import Any

from ltbench.errors import PluginContractError
from ltbench.training.hooks import _owner
from ltbench.training.run import Run, SecondStage


def lr_at(config: dict[str, Any], epoch: int) -> float:
    """Linear warm-up, then step decay at the milestone fractions of the epochs (``schedule`` "step"), or a
    cosine from the base rate to 0 over the epochs after the warm-up ("cosine", per epoch)."""
    base, warm = config["lr"], config["warmup_epochs"]
    if epoch < warm:
        return base * (epoch + 1) / warm
    if config.get("schedule", "step") == "cosine":
        return 0.5 * base * (1 + math.cos(math.pi * (epoch - warm) / max(config["epochs"] - warm, 1)))
    passed = sum(epoch >= round(m * config["epochs"]) for m in config["lr_milestones"])
    return base * config["lr_decay"] ** passed


#: BagofTricks-LT's WarmupMultiStepLR starts its warm-up at a third of the rate (warmup_factor 1/3)
BAGOFTRICKS_WARMUP_FACTOR = 1.0 / 3


def stage2_schedule(config: dict[str, Any], plan: SecondStage) -> Callable[[int, int], float]:
    """``factor(epoch, epochs)``: the multiple of stage 2's learning rate at a (0-based) epoch.

    A stage 2 that takes the budget's length (``plan.epochs`` None) with the default ``cosine`` follows the
    budget's stage-2 schedule: with ``stage2_lr_milestones``, BagofTricks-LT's ``WarmupMultiStepLR`` as its
    training loop steps it (``scheduler.step()`` before each 1-based epoch ``e = epoch + 1``): a warm-up from a
    third of the rate, ``1/3 (1 - e/w) + e/w`` while ``e < w`` (``w`` = ``stage2_warmup_epochs``), and
    x ``stage2_lr_decay`` for each milestone ``<= e``; without, a cosine to 0. A method that sets its own length
    keeps its own: a cosine, or a constant rate with ``cosine=False``. A method that sets ``plan.lr_milestones``
    gets those steps and ``plan.warmup_epochs``, whatever the budget's."""
    if plan.lr_milestones is not None:
        milestones, warm = list(plan.lr_milestones), plan.warmup_epochs
    elif plan.epochs is None and plan.cosine:
        milestones, warm = config.get("stage2_lr_milestones", []), config.get("stage2_warmup_epochs", 0)
    else:
        milestones, warm = [], 0
    if milestones or plan.lr_milestones is not None:
        decay = config.get("stage2_lr_decay", 0.1)

        def step(epoch: int, epochs: int) -> float:
            e = epoch + 1  # the scheduler's last_epoch while this epoch trains
            factor = BAGOFTRICKS_WARMUP_FACTOR * (1 - e / warm) + e / warm if e < warm else 1.0
            return factor * decay ** bisect.bisect_right(sorted(milestones), e)
        return step
    if plan.cosine:
        return lambda epoch, epochs: 0.5 * (1 + math.cos(math.pi * epoch / epochs))
    return lambda epoch, epochs: 1.0


def _check_own_steps(run: Run, plan: SecondStage, epochs: int) -> None:
    """A method's own stage-2 steps are whole, increasing stage-2 epochs inside the stage."""
    if plan.lr_milestones is None:
        return
    steps, warm = list(plan.lr_milestones), plan.warmup_epochs
    whole = all(isinstance(m, int) and not isinstance(m, bool) for m in [*steps, warm])
    if not (whole and steps == sorted(set(steps)) and all(1 <= m < epochs for m in steps) and 0 <= warm <= epochs):
        raise PluginContractError(f"{_owner(run, 'ltbench_second_stage')}: SecondStage.lr_milestones must be "
                                  f"increasing whole stage-2 epochs from 1 to {epochs - 1} and warmup_epochs a whole "
                                  f"number from 0 to {epochs}, got {plan.lr_milestones!r} and {plan.warmup_epochs!r}")


def head_lr_factor(plan: SecondStage, name: str) -> float:
    """The stage-2 learning-rate multiplier of the classifier parameter ``name``: the first of
    ``plan.head_lr_factors`` whose prefix it starts with, else 1."""
    return next((f for prefix, f in plan.head_lr_factors.items() if name.startswith(prefix)), 1.0)
