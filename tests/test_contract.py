"""The hook contract holds without surprises (issue 13, problem 4): each of these was silent before."""

import json
import sys

import pytest
import torch

from ltbench import Method, MethodMetadata, hookimpl
from ltbench.plugins.catalog import PluginInfo, build_catalog
from ltbench.plugins.testing import catalog_with, run_methods

META = MethodMetadata(title="contract test method")


def _term(name: str, value=lambda output: output.logits.sum() * 0.0):
    class Extra(Method):
        metadata = META

        @hookimpl
        def ltbench_extra_losses(self, output):
            return {name: value(output)} if isinstance(name, str) else name(output)

    return Extra


def _method(name: str, cls: type) -> type:
    return type(name.replace("-", "_"), (cls,), {"name": name})


def test_two_methods_returning_one_loss_name_is_an_error_naming_both(tmp_path):
    a, b = _method("term-a", _term("reg")), _method("term-b", _term("reg"))
    (rec,) = run_methods(catalog_with(a, b), ["term-a+term-b"], tmp_path)
    assert rec["status"] == "failed"
    assert "'term-b'" in rec["error"] and "'term-a'" in rec["error"] and "'reg'" in rec["error"]


def test_a_loss_term_named_task_is_refused(tmp_path):
    (rec,) = run_methods(catalog_with(_method("steals-task", _term("task"))), ["steals-task"], tmp_path)
    assert rec["status"] == "failed" and "a term named 'task'" in rec["error"]


@pytest.mark.parametrize("returned, expected", [
    (lambda output: output.logits.sum() * 0.0, "returned Tensor; the hook specification expects a dict"),
    (lambda output: output.logits.sum() + 1.0, "returned Tensor; the hook specification expects a dict"),
    (lambda output: {"vec": output.logits.mean(0)}, "'vec' = Tensor(10,); the hook specification expects a scalar"),
])
def test_a_wrong_type_from_extra_losses_is_a_contract_error_naming_method_and_hook(returned, expected, tmp_path):
    (rec,) = run_methods(catalog_with(_method("bad-extra", _term(returned))), ["bad-extra"], tmp_path)
    assert rec["status"] == "failed"
    assert "PluginContractError" in rec["error"] and "method 'bad-extra': ltbench_extra_losses" in rec["error"]
    assert expected in rec["error"]


def _register_broken(cls):
    """A catalog that ``cls``'s plugin tried to join, and its broken plugins."""
    catalog = build_catalog()

    class Plugin:
        @hookimpl
        def ltbench_register_methods(self, register):
            register(cls)

    catalog.add_plugin(Plugin(), PluginInfo("a-plugin", __name__, "a-plugin-dist", "0"))
    return catalog, catalog.broken


def test_a_hook_without_the_marker_is_refused_at_registration():
    class Forgot(Method):
        name = "forgot-marker"
        metadata = META

        def ltbench_build_loss(self):  # no @hookimpl: would silently train plain CE
            return lambda logits, targets: logits.sum()

    catalog, (broken,) = _register_broken(Forgot)
    assert "ltbench_build_loss lack the @ltbench.hookimpl marker" in broken.error
    assert "forgot-marker" not in catalog.methods


def test_an_option_named_like_a_core_key_is_refused_at_registration():
    class Collides(Method):
        name = "heavy-ball"
        metadata = META
        options = {"momentum": 0.5, "beta": 0.9}  # `--set momentum=` sets the optimizer's, never this one

    catalog, (broken,) = _register_broken(Collides)
    assert "method 'heavy-ball': option 'momentum' is a core configuration key" in broken.error
    assert "heavy-ball" not in catalog.methods


def test_a_renamed_option_keeps_its_former_name_working_with_a_warning_and_its_runs_identity():
    # blt's `epochs` and cam-fusion's `lr` were core-key names; they are `finetune_epochs` and `phase2_lr` now
    from ltbench.grid import config as config_mod
    from ltbench_builtin.blt import BLT

    with pytest.warns(DeprecationWarning, match="blt.epochs is now blt.finetune_epochs"):
        assert BLT(epochs=4).opts["finetune_epochs"] == 4
    new = {"epochs": 30, "methods": {"blt": {"finetune_epochs": 4}, "cam-fusion": {"phase2_lr": 0.01}}}
    old = {"epochs": 30, "methods": {"blt": {"epochs": 4}, "cam-fusion": {"lr": 0.01}}}
    assert config_mod.config_id(new) == config_mod.config_id(old)  # records made before the rename keep their dirs
    assert config_mod.config_id(new) != config_mod.config_id({**new, "methods": {"blt": {"finetune_epochs": 5},
                                                                                 "cam-fusion": {"phase2_lr": 0.01}}})


def test_a_runs_identity_with_a_renamed_option_does_not_depend_on_what_the_process_imported_first():
    # `ltbench eval` computed a config's id before any plugin was imported, so the renamed options were unknown:
    # the shipped cam-fusion model was refused as "belonging to another run". A fresh interpreter shows it.
    import subprocess

    from ltbench.grid import config as config_mod

    config = {"epochs": 30, "methods": {"cam-fusion": {"phase2_lr": 0.01}}}
    script = ("import json, sys; from ltbench.grid.config import config_id; "
              "print(config_id(json.loads(sys.argv[1])))")
    fresh = subprocess.run([sys.executable, "-c", script, json.dumps(config)], capture_output=True, text=True,
                           check=True).stdout.strip()
    assert fresh == config_mod.config_id(config) == config_mod.config_id(
        {"epochs": 30, "methods": {"cam-fusion": {"lr": 0.01}}})


def test_broadcast_hooks_run_in_the_order_the_run_names_the_methods(tmp_path):
    calls: list[str] = []

    def recorder(name):
        class Records(Method):
            metadata = META

            @hookimpl
            def ltbench_epoch_end(self, stage, epoch):
                calls.append(name)

        return _method(name, Records)

    first, second = recorder("first"), recorder("second")
    run_methods(catalog_with(first, second), ["first+second"], tmp_path, epochs=1)
    assert calls == ["first", "second"]
    calls.clear()
    run_methods(catalog_with(first, second), ["second+first"], tmp_path / "other", epochs=1)
    assert calls == ["second", "first"]


def test_a_composition_whose_order_cannot_matter_is_one_run_and_one_whose_order_can_keeps_both(tmp_path):
    from ltbench.grid.plan import plan_grid

    a, b = _method("term-a", _term("reg_a")), _method("term-b", _term("reg_b"))  # both add an extra loss
    catalog = catalog_with(a, b)
    # focal answers the loss, term-a adds a term: no run hook is implemented by both, so b+a is a+b
    cells = plan_grid(["term-a+focal", "focal+term-a"], ["synthetic-lt"], [0], "smoke", catalog=catalog)
    assert [c.method for c in cells] == ["focal+term-a"]
    recs = run_methods(catalog, ["term-a+focal"], tmp_path) + run_methods(catalog, ["focal+term-a"], tmp_path)
    assert recs[0]["finished_at"] == recs[1]["finished_at"]  # the second was the first's record: trained once
    assert recs[0]["methods"] == ["focal", "term-a"]
    # both return extra losses: the order of the sum can change the numbers, so each order is its own run
    cells = plan_grid(["term-b+term-a", "term-a+term-b"], ["synthetic-lt"], [0], "smoke", catalog=catalog)
    assert [c.method for c in cells] == ["term-b+term-a", "term-a+term-b"]
    assert len({c.config_id for c in cells}) == 2
    (rec,) = run_methods(catalog, ["term-b+term-a"], tmp_path)
    assert rec["methods"] == ["term-b", "term-a"]


class SecondHead(Method):
    """A second classifier on the pooled features, trained beside the first and averaged in at evaluation."""

    name = "second-head"
    metadata = META

    @hookimpl
    def ltbench_configure_model(self, run, model):
        model.heads["second"] = torch.nn.Linear(model.num_features, run.num_classes)

    @hookimpl
    def ltbench_extra_losses(self, model, batch, output):
        logits = model.heads["second"](output.features)
        return {"second_head": torch.nn.functional.cross_entropy(logits, batch.labels)}

    @hookimpl
    def ltbench_eval_logits(self, model, output):
        return (output.logits + model.heads["second"](output.features)) / 2


def test_a_second_head_takes_part_in_evaluation(tmp_path):
    from ltbench.training.run import build_run
    from ltbench.training.evaluate import predict_logits
    from ltbench.grid.plan import plan_grid

    catalog = catalog_with(SecondHead)
    (cell,) = plan_grid(["second-head"], ["synthetic-lt"], [0], "smoke", catalog=catalog)
    run = build_run(catalog, cell.dataset, cell.data, cell.config, 0, torch.device("cpu"), tmp_path,
                    log=lambda m: None)
    x = run.image_store(cell.data.x_val).get(torch.arange(len(cell.data.y_val)), augment=False)
    run.model.eval()
    with torch.no_grad():
        out = run.model.forward_all(x)
        expected = (out.logits + run.model.heads["second"](out.features)) / 2
    got = predict_logits(run, cell.data.x_val)
    assert torch.allclose(got, expected, atol=1e-6) and not torch.allclose(got, out.logits, atol=1e-3)
    (rec,) = run_methods(catalog, ["second-head+crt"], tmp_path / "runs")  # stage-2 feature caching still works
    assert rec["status"] == "completed"


def test_evaluation_logits_of_the_wrong_shape_are_a_contract_error(tmp_path):
    class WrongShape(SecondHead):
        name = "wrong-shape"

        @hookimpl
        def ltbench_eval_logits(self, output):
            return output.logits[:, :3]

    (rec,) = run_methods(catalog_with(WrongShape), ["wrong-shape"], tmp_path)
    assert rec["status"] == "failed" and "method 'wrong-shape': ltbench_eval_logits returned Tensor" in rec["error"]
