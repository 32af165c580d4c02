"""ltbench_optimizer_step (issue 27's step hook): a method may own the optimisation step, re-evaluating the
batch through a closure, and composes with any loss method."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ltbench.api import Method, MethodMetadata, hookimpl
from ltbench.errors import CompositionError
from ltbench.plugins.testing import catalog_with, run_methods

META = MethodMetadata(title="a step-hook probe")


def _frozen_bn(model: nn.Module):
    """Momentum 0 on every batch norm: a forward in train mode leaves the running statistics alone."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    return lambda: [setattr(m, "momentum", v) for m, v in zip(norms, saved)]


class ReEvaluate(Method):
    """Calls the closure at unchanged weights, then steps: must train exactly as the core's own step."""

    name = "re-evaluate"
    metadata = META

    def __init__(self, **options):
        super().__init__(**options)
        self.same = []

    @hookimpl
    def ltbench_optimizer_step(self, model, optimizer, closure):
        first = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        restore = _frozen_bn(model)
        closure()
        restore()
        again = [p.grad for p in model.parameters() if p.grad is not None]
        self.same.append(len(first) == len(again) and all(torch.equal(a, b) for a, b in zip(first, again)))
        optimizer.step()
        return True

    @hookimpl
    def ltbench_record(self):
        return {"steps": len(self.same), "same_gradients": all(self.same)}


class SkipStep(Method):
    """Owns the step and takes none: the weights must stay where they started."""

    name = "skip-step"
    metadata = META

    @hookimpl
    def ltbench_configure_model(self, model):
        self.start = {k: v.detach().clone() for k, v in model.named_parameters()}

    @hookimpl
    def ltbench_optimizer_step(self):
        return True

    @hookimpl
    def ltbench_record(self, run):
        moved = max(float((p.detach().cpu() - self.start[k]).abs().max()) for k, p in run.model.named_parameters()
                    if k in self.start)
        return {"moved": moved}


class AnswersYes(Method):
    name = "answers-yes"
    metadata = META

    @hookimpl
    def ltbench_optimizer_step(self):
        return "yes"


def test_the_closure_re_evaluates_the_same_batch_and_a_step_owner_trains_as_the_core(tmp_path):
    catalog = catalog_with(ReEvaluate)
    (ce,) = run_methods(catalog, ["ce"], tmp_path / "ce")
    (owned,) = run_methods(catalog, ["re-evaluate"], tmp_path / "owned")
    assert owned["status"] == "completed", owned["error"]
    assert owned["extra"]["re-evaluate"]["steps"] > 0 and owned["extra"]["re-evaluate"]["same_gradients"]
    assert [e["loss_task"] for e in owned["history"]] == [e["loss_task"] for e in ce["history"]]
    assert owned["per_class_accuracy"] == ce["per_class_accuracy"]


def test_a_step_owner_decides_whether_the_weights_move(tmp_path):
    (skipped,) = run_methods(catalog_with(SkipStep), ["skip-step"], tmp_path)
    assert skipped["status"] == "completed" and skipped["extra"]["skip-step"]["moved"] == 0.0


def test_a_step_owner_composes_with_a_loss_method_and_not_with_another_step_owner(tmp_path):
    catalog = catalog_with(ReEvaluate, SkipStep)
    (composed,) = run_methods(catalog, ["re-evaluate+ldam-drw"], tmp_path)
    assert composed["status"] == "completed" and composed["extra"]["re-evaluate"]["same_gradients"]
    with pytest.raises(CompositionError, match="both implement ltbench_optimizer_step"):
        run_methods(catalog, ["re-evaluate+skip-step"], tmp_path)


def test_a_step_hook_answer_other_than_true_or_none_is_a_contract_error(tmp_path):
    (rec,) = run_methods(catalog_with(AnswersYes), ["answers-yes"], tmp_path)
    assert rec["status"] == "failed" and "PluginContractError" in rec["error"]
    assert "method 'answers-yes': ltbench_optimizer_step" in rec["error"] and "True (the method stepped)" in rec["error"]
