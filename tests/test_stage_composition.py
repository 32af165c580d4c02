"""Composition judged per stage (issue 38, item 3): two composed methods conflict only where they answer the same
first-result hook in the same stage. A method states the stages it answers a stage hook in with
``Method.hook_stages``; the core asks it in those stages only, and a method that states nothing answers (and
conflicts) in every stage, as before."""

from __future__ import annotations

import pytest

from ltbench.api import CompositionError, Method, MethodMetadata, SecondStage, cross_entropy, hookimpl
from ltbench.grid.plan import plan_grid
from ltbench.plugins.catalog import PluginInfo, build_catalog
from ltbench.plugins.testing import catalog_with, run_methods

META = MethodMetadata(title="a per-stage composition probe")


class StageTwoLoss(Method):
    """The issue's method: a second stage whose loss is its own, stage 1 left to the others. Its loss hook does not
    look at the stage: ``hook_stages`` alone keeps it out of stage 1."""

    name = "stage-two-loss"
    metadata = META
    hook_stages = {"ltbench_build_loss": (2,)}

    def __init__(self, **options):
        super().__init__(**options)
        self.loss_stages: set[int] = set()

    @hookimpl
    def ltbench_second_stage(self):
        return SecondStage()

    @hookimpl
    def ltbench_build_loss(self, run):
        def loss(logits, targets, row_weights=None):
            self.loss_stages.add(run.stage)
            return cross_entropy(logits, targets, row_weights=row_weights)

        return loss

    @hookimpl
    def ltbench_record(self):
        return {"loss_stages": sorted(self.loss_stages)}


class AlsoStageTwoLoss(StageTwoLoss):
    name = "also-stage-two-loss"


class StageTwoStep(Method):
    """Owns the optimisation step in stage 2 only (and says so); counts the stages it was asked in."""

    name = "stage-two-step"
    metadata = META
    hook_stages = {"ltbench_optimizer_step": (2,)}

    def __init__(self, **options):
        super().__init__(**options)
        self.asked: set[int] = set()

    @hookimpl
    def ltbench_second_stage(self):
        return SecondStage()

    @hookimpl
    def ltbench_optimizer_step(self, run):
        self.asked.add(run.stage)
        return None  # the core steps

    @hookimpl
    def ltbench_record(self):
        return {"asked": sorted(self.asked)}


def ldam_drw_in_stage_one() -> type[Method]:
    """The built-in ldam-drw as a method that states its classifier and loss are stage 1's (the built-in states
    nothing, so its loss answers in every stage), recording the stages its loss ran in."""
    base = build_catalog().method("ldam-drw").cls

    class LDAMDRWStageOne(base):
        name = "ldam-drw-stage1"
        hook_stages = {"ltbench_build_classifier": (1,), "ltbench_build_loss": (1,)}

        def __init__(self, **options):
            super().__init__(**options)
            self.loss_stages: set[int] = set()

        def weight_at(self, run):  # LDAM's loss asks for its class weights at every step
            self.loss_stages.add(run.stage)
            return super().weight_at(run)

        @hookimpl
        def ltbench_record(self, run):
            return {**super().ltbench_record(run), "loss_stages": sorted(self.loss_stages)}

    return LDAMDRWStageOne


def test_a_stage_two_loss_composes_with_a_stage_one_loss_and_each_acts_in_its_own_stage(tmp_path):
    catalog = catalog_with(StageTwoLoss, ldam_drw_in_stage_one())
    (rec,) = run_methods(catalog, ["stage-two-loss+ldam-drw-stage1"], tmp_path)
    assert rec["status"] == "completed", rec.get("error")
    assert rec["extra"]["ldam-drw-stage1"]["loss_stages"] == [1]
    assert rec["extra"]["stage-two-loss"]["loss_stages"] == [2]


def test_a_method_that_states_no_stages_still_conflicts_in_every_stage_and_the_error_names_the_stage(tmp_path):
    # ldam-drw as built in states nothing: its loss answers in stage 2 too, where stage-two-loss answers
    with pytest.raises(CompositionError, match=r"'stage-two-loss' and 'ldam-drw' both implement ltbench_build_loss "
                                               r"in stage 2.*'ldam-drw' answers it in every stage.*in different stages"):
        run_methods(catalog_with(StageTwoLoss), ["stage-two-loss+ldam-drw"], tmp_path)
    with pytest.raises(CompositionError, match="'ldam' and 'focal' both implement ltbench_build_loss in stage 1"):
        plan_grid(["ldam+focal"], ["synthetic-lt"], [0], "smoke", catalog=catalog_with())
    assert not list(tmp_path.iterdir())  # refused before anything ran


def test_two_methods_answering_one_hook_in_one_stage_are_refused_naming_the_stage(tmp_path):
    catalog = catalog_with(StageTwoLoss, AlsoStageTwoLoss)
    with pytest.raises(CompositionError, match=r"'stage-two-loss' and 'also-stage-two-loss' both implement "
                                               r"ltbench_build_loss in stage 2.*declares stage 2 for it"):
        plan_grid(["stage-two-loss+also-stage-two-loss"], ["synthetic-lt"], [0], "smoke", catalog=catalog)


def test_a_hook_that_is_not_asked_per_stage_conflicts_whatever_the_stages(tmp_path):
    catalog = catalog_with(StageTwoLoss, StageTwoStep)  # both add a stage 2 (ltbench_second_stage)
    with pytest.raises(CompositionError, match="both implement ltbench_second_stage, which only one method .* "
                                               "asked once per run"):
        plan_grid(["stage-two-loss+stage-two-step"], ["synthetic-lt"], [0], "smoke", catalog=catalog)


def test_a_step_owner_of_stage_two_is_asked_in_stage_two_only(tmp_path):
    (rec,) = run_methods(catalog_with(StageTwoStep), ["stage-two-step"], tmp_path)
    assert rec["status"] == "completed", rec.get("error")
    assert rec["extra"]["stage-two-step"]["asked"] == [2]


class _Declares(Method):
    metadata = META

    @hookimpl
    def ltbench_build_loss(self):
        return None


@pytest.mark.parametrize("declared, message", [
    ({"ltbench_second_stage": (2,)}, "names 'ltbench_second_stage', which is not asked per stage"),
    ({"ltbench_build_sampler": (2,)}, "names ltbench_build_sampler, which the class does not implement"),
    ({"ltbench_build_loss": (3,)}, "must be a non-empty tuple of stages (1, 2)"),
    ({"ltbench_build_loss": ()}, "must be a non-empty tuple of stages (1, 2)"),
    ({"ltbench_build_loss": 2}, "must be a non-empty tuple of stages (1, 2)"),
])
def test_a_wrong_stage_declaration_breaks_the_plugin_at_registration(declared, message):
    cls = type("Wrong", (_Declares,), {"name": "wrong-stages", "hook_stages": declared})
    catalog = build_catalog()

    class Plugin:
        @hookimpl
        def ltbench_register_methods(self, register):
            register(cls)

    catalog.add_plugin(Plugin(), PluginInfo("wrong-plugin", "x", "wrong-dist", "1"))
    assert [b.name for b in catalog.broken] == ["wrong-plugin"]
    assert message in catalog.broken[0].error and "wrong-stages" in catalog.broken[0].error
    assert "wrong-stages" not in catalog.methods
