"""Shaping the optimiser (issue 38, item 2): ``ltbench_param_groups`` gives parameter groups their own weight decay
and learning-rate multiple per stage, two methods compose where their groups select different parameters, and
the record states the optimiser each stage actually used.

Weight Balancing (Alshammari et al., CVPR 2022) is the issue's case: a stage-1 weight decay of 5e-3 on every
parameter, composable with ``+sam`` (which owns the optimisation step)."""

from __future__ import annotations

import pytest
import torch

from ltbench.api import CompositionError, Method, MethodMetadata, ParamGroup, SecondStage, hookimpl
from ltbench.plugins.testing import catalog_with, run_methods

META = MethodMetadata(title="an optimiser-shaping probe")


class WeightBalancing(Method):
    """Weight Balancing's first stage: weight decay ``wd`` on every parameter in stage 1."""

    name = "wb-stage1"
    metadata = META
    options = {"wd": 5e-3}

    @hookimpl
    def ltbench_param_groups(self, stage):
        return [ParamGroup(("",), weight_decay=self.opts["wd"], label="weight balancing")] if stage == 1 else None


class FrozenHead(Method):
    """The classifier at learning rate x0 in stage 1 (a group's lr multiple must hold at every epoch)."""

    name = "frozen-head"
    metadata = META

    def __init__(self, **options):
        super().__init__(**options)
        self.start: dict[str, torch.Tensor] = {}
        self.end: dict[str, torch.Tensor] = {}

    @hookimpl
    def ltbench_param_groups(self, stage, model):
        self.start = {k: v.detach().clone() for k, v in model.classifier.state_dict().items()}
        return [ParamGroup(("classifier.",), lr_factor=0.0, weight_decay=0.0, label="frozen head")]

    @hookimpl
    def ltbench_stage_end(self, run, stage):
        if stage == 1:
            self.end = {k: v.detach().clone() for k, v in run.model.classifier.state_dict().items()}

    @hookimpl
    def ltbench_record(self):
        moved = max((self.end[k] - self.start[k]).abs().max().item() for k in self.start)
        return {"head_moved": moved}


class AlsoShapesHead(Method):
    name = "also-shapes-head"
    metadata = META

    @hookimpl
    def ltbench_param_groups(self):
        return [ParamGroup(("classifier.weight",), weight_decay=1e-2)]


class ShapesBackbone(Method):
    name = "shapes-backbone"
    metadata = META

    @hookimpl
    def ltbench_param_groups(self, stage):
        return [ParamGroup(("backbone.",), lr_factor=0.5, label="slow backbone")] if stage == 1 else None


class HeadDecayInStageTwo(Method):
    """A second stage whose classifier has its own weight decay."""

    name = "head-decay-stage2"
    metadata = META
    options = {"wd": 0.0}

    @hookimpl
    def ltbench_second_stage(self):
        return SecondStage(epochs=2, lr=0.5)

    @hookimpl
    def ltbench_param_groups(self, stage):
        return [ParamGroup(("classifier.",), weight_decay=self.opts["wd"])] if stage == 2 else None

    @hookimpl
    def ltbench_record(self, run):
        return {"head_norm": run.model.classifier.weight.norm().item()}


def make_bad(value, plain=False):
    class Bad(Method):
        name = "bad-groups"
        metadata = META
        plain_stage1 = plain

        @hookimpl
        def ltbench_param_groups(self, stage):
            return value if stage == 1 else None

        @hookimpl
        def ltbench_second_stage(self):
            return SecondStage() if plain else None

    return Bad


CATALOG = catalog_with(WeightBalancing, FrozenHead, AlsoShapesHead, ShapesBackbone, HeadDecayInStageTwo)


def groups(record, stage):
    return record["optimizer"][str(stage)]["groups"]


def test_weight_balancing_stage1_decay_is_used_and_recorded(tmp_path):
    (rec,) = run_methods(CATALOG, ["wb-stage1"], tmp_path, epochs=1)
    assert rec["status"] == "completed", rec["error"]
    (group,) = groups(rec, 1)
    assert group["weight_decay"] == 5e-3 and group["method"] == "wb-stage1"
    assert group["parameters"] > 0 and group["tensors"] > 0
    assert rec["config"]["weight_decay"] != 5e-3  # the budget's value stays as it was; the optimiser says what ran
    (plain,) = run_methods(CATALOG, ["ce"], tmp_path, epochs=1)
    assert [g["weight_decay"] for g in groups(plain, 1)] == [plain["config"]["weight_decay"]]
    assert groups(plain, 1)[0]["method"] is None and groups(plain, 1)[0]["parameters"] == group["parameters"]


def test_a_groups_lr_factor_holds_at_every_epoch(tmp_path):
    (rec,) = run_methods(CATALOG, ["frozen-head"], tmp_path, epochs=2)
    assert rec["status"] == "completed", rec["error"]
    assert rec["extra"]["frozen-head"]["head_moved"] == 0.0
    labels = [g["label"] for g in groups(rec, 1)]
    assert labels == ["stage 1", "stage 1: frozen head"]
    assert [g["lr_factor"] for g in groups(rec, 1)] == [1.0, 0.0]


def test_a_stage_two_group_changes_what_stage_two_trains(tmp_path):
    decays = {}
    for wd in (0.0, 0.5):
        (rec,) = run_methods(CATALOG, ["head-decay-stage2"], tmp_path / str(wd), epochs=1,
                             settings={"head-decay-stage2.wd": str(wd)})
        assert rec["status"] == "completed", rec["error"]
        assert [g["weight_decay"] for g in groups(rec, 2)] == [wd]
        decays[wd] = rec["extra"]["head-decay-stage2"]["head_norm"]
    assert decays[0.5] < decays[0.0]


def test_groups_on_different_parameters_compose_with_each_other_and_with_sam(tmp_path):
    (rec,) = run_methods(CATALOG, ["frozen-head+shapes-backbone"], tmp_path, epochs=1)
    assert rec["status"] == "completed", rec["error"]
    by_label = {g["label"]: g for g in groups(rec, 1)}
    assert by_label["stage 1: slow backbone"]["lr_factor"] == 0.5
    assert by_label["stage 1: frozen head"]["lr_factor"] == 0.0
    assert "stage 1" not in by_label  # every parameter is in a method's group
    (sam,) = run_methods(CATALOG, ["wb-stage1+sam"], tmp_path, epochs=1)
    assert sam["status"] == "completed", sam["error"]
    assert [g["weight_decay"] for g in groups(sam, 1)] == [5e-3]


def test_two_methods_shaping_one_parameter_is_a_composition_error_naming_the_stage(tmp_path):
    (rec,) = run_methods(CATALOG, ["frozen-head+also-shapes-head"], tmp_path, epochs=1)
    assert rec["status"] == "failed"
    assert "CompositionError" in rec["error"] or "both shape" in rec["error"]
    assert "'classifier.weight'" in rec["error"] and "stage 1" in rec["error"]
    assert "frozen-head" in rec["error"] and "also-shapes-head" in rec["error"]
    with pytest.raises(CompositionError):  # the same error, raised where the groups are made
        from ltbench.plugins.testing import build_tiny_run
        from ltbench.training.hooks import param_groups

        run = build_tiny_run(tmp_path / "direct", "frozen-head+also-shapes-head", catalog=CATALOG)
        params = list(run.model.parameters())
        param_groups(run, 1, [{"params": params, "lr": 0.1, "weight_decay": 0.0, "label": "stage 1"}])


@pytest.mark.parametrize("value, message", [
    ([ParamGroup(("clasifier.",), weight_decay=0.0)], "selects no trainable parameter"),
    (["classifier."], "expects ltbench.api.ParamGroup items"),
    ({"classifier.": 0.0}, "expects a list of ltbench.api.ParamGroup"),
    ([ParamGroup("classifier.", weight_decay=0.0)], "non-empty tuple of parameter-name prefixes"),
    ([ParamGroup(("classifier.",), lr_factor=-1.0)], "lr_factor=-1.0"),
    ([ParamGroup(("classifier.",), weight_decay=float("nan"))], "weight_decay=nan"),
])
def test_a_malformed_answer_is_a_contract_error_naming_the_method(tmp_path, value, message):
    catalog = catalog_with(make_bad(value))
    (rec,) = run_methods(catalog, ["bad-groups"], tmp_path, epochs=1)
    assert rec["status"] == "failed"
    assert "bad-groups" in rec["error"] and message in rec["error"]


def test_a_plain_stage1_method_may_not_shape_stage_one(tmp_path):
    catalog = catalog_with(make_bad([ParamGroup(("",), weight_decay=0.0)], plain=True))
    (rec,) = run_methods(catalog, ["bad-groups"], tmp_path, epochs=1)
    assert rec["status"] == "failed" and "plain_stage1" in rec["error"]


def test_a_shaping_method_passes_the_kit_resume_included(tmp_path):
    from ltbench.api import check_method

    check_method(WeightBalancing, tmp_path / "wb")
    check_method(FrozenHead, tmp_path / "frozen")
