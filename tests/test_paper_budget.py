"""The CIFAR `paper` budget is the published recipe, as the reference code runs it.

Stage 1 is checked against the official LDAM-DRW ``cifar_train.py`` (Cao et al. 2019), whose schedule is
written out here independently of ltbench's (``official_lr``); stage 2 of cRT / LWS against
BagofTricks-LT's ``configs/cao_cifar/two_stage/classifier_balance/{cRT,LWS}/cifar100_im100.yaml``.
"""

from __future__ import annotations

import json
from pathlib import Path

import types

import pytest
import torch

from ltbench.errors import ConfigError
from ltbench.grid.config import resolve
from ltbench.plugins.testing import run_methods
from ltbench.training.schedules import lr_at, stage2_schedule
from ltbench.training.run import SecondStage


def official_lr(epoch: int, base: float = 0.1) -> float:
    """``adjust_learning_rate`` of LDAM-DRW's cifar_train.py, for the 0-based epoch it is called with."""
    epoch = epoch + 1
    if epoch <= 5:
        return base * epoch / 5
    if epoch > 180:
        return base * 0.0001
    if epoch > 160:
        return base * 0.01
    return base


@pytest.fixture
def catalog(ltbench_catalog):
    return ltbench_catalog


@pytest.fixture(params=["cifar100-lt", "cifar10-lt"])
def paper(request, catalog):
    spec = catalog.dataset(request.param)
    methods = [catalog.method(n).cls for n in ("ce", "ldam-drw", "crt", "lws")]
    return {cls.name: resolve(spec, "paper", [cls]) for cls in methods}


def test_stage1_is_the_ldam_drw_recipe(paper):
    config = paper["ce"]
    assert (config["backbone"], config["epochs"], config["batch_size"]) == ("resnet32", 200, 128)
    assert (config["lr"], config["momentum"], config["weight_decay"]) == (0.1, 0.9, 2e-4)
    assert config["imbalance_factor"] == 100.0
    assert [lr_at(config, e) for e in range(200)] == pytest.approx([official_lr(e) for e in range(200)], rel=1e-12)


def test_ldam_drw_reweights_from_epoch_160(paper, catalog):
    config = paper["ldam-drw"]
    method = catalog.method("ldam-drw").cls(**config["methods"]["ldam-drw"])

    class At:  # the two things weight_at reads
        def __init__(self, epoch):
            self.stage, self.epoch, self.config = 1, epoch, config
            self.train_counts = torch.tensor([500, 5]).numpy()

    assert method.drw_epoch(At(0)) == 160
    assert method.weight_at(At(159)) is None and method.weight_at(At(160)) is not None
    assert config["methods"]["ldam-drw"]["beta"] == 0.9999  # LDAM-DRW's betas = [0, 0.9999]


def test_resnet32_has_option_a_shortcuts_and_64_features(catalog):
    net = catalog.backbone("resnet32").build(3)
    assert net.num_features == 64
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 31  # 1 + 3 stages x 5 blocks x 2: the shortcuts are parameter-free (option A)
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(0.46e6, rel=0.02)


def bagoftricks_lr(e: int, base: float = 0.1, warm: int = 5, milestones=(10, 20), gamma: float = 0.1) -> float:
    """BagofTricks-LT's WarmupMultiStepLR (lib/utils/lr_scheduler.py, warmup_factor 1/3, linear) at last_epoch e, as
    main/train.py steps it: scheduler.step() before each 1-based epoch e, so epoch e trains at this rate."""
    import bisect

    factor = (1 / 3) * (1 - e / warm) + e / warm if e < warm else 1.0
    return base * factor * gamma ** bisect.bisect_right(list(milestones), e)


def test_stage2_of_crt_and_lws_is_bagoftricks_cifar_config_as_its_code_runs_it(paper, catalog):
    expected = [bagoftricks_lr(e) for e in range(1, 31)]
    assert expected[0] == pytest.approx(0.1 * 7 / 15) and expected[4] == 0.1 and expected[9] == pytest.approx(0.01)
    for name in ("crt", "lws"):
        config = paper[name]
        assert (config["stage2_epochs"], config["stage2_batch_size"], config["stage2_lr"]) == (30, 128, 0.1)
        plan = catalog.method(name).cls().ltbench_second_stage(run=types.SimpleNamespace(config=config))
        assert (plan.weight_decay, plan.momentum, plan.nesterov) == (5e-4, 0.9, True)
        # the backbone frozen but in train mode, on augmented images: batch-norm statistics re-estimated
        assert plan.update_bn_statistics and not plan.cached_features and not plan.train_backbone
        factor = stage2_schedule(config, plan)
        assert [config["stage2_lr"] * factor(e, 30) for e in range(30)] == pytest.approx(expected, rel=1e-12)


def test_the_cpu_budgets_crt_and_lws_take_bagoftricks_stage2_scaled_to_its_ten_epochs(catalog):
    """The cpu board measured that the cheaper cached stage 2 changes the ranking (issue 37), so its cRT and LWS
    take BagofTricks-LT's: train-mode batch norm on augmented images, Nesterov, and its schedule scaled from 30 to
    10 epochs: a warm-up of 2 from a third of the rate, x0.1 from epochs 3 and 7 (1-based, as its loop steps)."""
    config = resolve(catalog.dataset("cifar100-lt"), "cpu", [catalog.method("crt").cls])
    assert config["stage2_epochs"] == 10 and not config["stage2_lr_milestones"]  # the budget itself has a cosine
    for name in ("crt", "lws"):
        plan = catalog.method(name).cls().ltbench_second_stage(run=types.SimpleNamespace(config=config))
        assert plan.update_bn_statistics and not plan.cached_features and plan.nesterov
        assert (plan.warmup_epochs, plan.lr_milestones) == (2, (3, 7))
        factor = stage2_schedule(config, plan)
        assert [0.1 * factor(e, 10) for e in range(10)] == pytest.approx(
            [bagoftricks_lr(e, 0.1, 2, (3, 7)) for e in range(1, 11)], rel=1e-12)
        cached = catalog.method(name).cls(stage2="cached").ltbench_second_stage(run=types.SimpleNamespace(config=config))
        assert cached.cached_features and not cached.update_bn_statistics and not cached.nesterov
        assert stage2_schedule(config, cached)(5, 10) == pytest.approx(0.5)  # the budget's cosine


def test_bagoftricks_schedule_scales_its_thirty_epochs():
    from ltbench_builtin.decoupling import bagoftricks_schedule

    assert bagoftricks_schedule(30) == (5, (10, 20))
    assert bagoftricks_schedule(10) == (2, (3, 7))
    assert bagoftricks_schedule(2) == (1, (1,)) and bagoftricks_schedule(1) == (1, ())


@pytest.mark.parametrize("steps, warmup", [((3, 2), 0), ((0,), 0), ((4,), 0), ((1.5,), 0), ((2,), 5), ((True,), 0)])
def test_a_second_stage_with_bad_own_steps_is_a_contract_error(catalog, tmp_path, steps, warmup):
    from ltbench.api import Method, MethodMetadata, hookimpl
    from ltbench.plugins.testing import catalog_with

    class BadSteps(Method):
        name = "bad-steps"
        plain_stage1 = True

        metadata = MethodMetadata(title="stage-2 steps outside the stage")

        @hookimpl
        def ltbench_second_stage(self):
            return SecondStage(lr_milestones=steps, warmup_epochs=warmup)

    (rec,) = run_methods(catalog_with(BadSteps), ["bad-steps"], tmp_path, settings={"stage2_epochs": 4})
    assert rec["status"] == "failed" and "PluginContractError" in rec["error"] and "'bad-steps'" in rec["error"]
    assert "SecondStage.lr_milestones must be increasing whole stage-2 epochs from 1 to 3" in rec["error"]


@pytest.mark.parametrize("name", ["crt", "lws"])
def test_an_unknown_stage2_recipe_is_an_error_naming_the_valid_ones(catalog, name):
    with pytest.raises(ConfigError, match=rf"{name}.stage2 must be one of bagoftricks, cached, decoupling, got 'bot'"):
        catalog.method(name).cls(stage2="bot")


def test_a_method_with_its_own_stage2_length_keeps_its_own_schedule(paper):
    config = paper["crt"]
    own = stage2_schedule(config, SecondStage(epochs=6))
    assert own(0, 6) == 1.0 and own(3, 6) == pytest.approx(0.5)  # its cosine, not the budget's steps
    assert stage2_schedule(config, SecondStage(cosine=False))(0, 30) == 1.0


def test_the_cpu_budget_keeps_its_cosine_stage2_and_its_run_identity(catalog):
    config = resolve(catalog.dataset("cifar100-lt"), "cpu", [catalog.method("crt").cls])
    factor = stage2_schedule(config, SecondStage())
    assert factor(0, 10) == 1.0 and factor(5, 10) == pytest.approx(0.5)
    from ltbench.grid.config import identity

    assert not {"stage2_warmup_epochs", "stage2_lr_milestones", "stage2_lr_decay"} & set(identity(config))


def test_stage2_follows_the_budgets_steps_in_a_real_run(catalog, tmp_path):
    [rec] = run_methods(catalog, ["crt"], tmp_path, settings={
        "stage2_epochs": 4, "stage2_warmup_epochs": 2, "stage2_lr_milestones": "3", "stage2_lr": 0.2})
    lrs = [e["lr"] for e in rec["history"] if e["stage"] == 2]
    assert lrs == pytest.approx([bagoftricks_lr(e, 0.2, 2, (3,)) for e in (1, 2, 3, 4)])
    assert lrs == pytest.approx([0.2 * 2 / 3, 0.2, 0.02, 0.02])
    assert rec["optimizer"]["2"]["nesterov"] is True  # BagofTricks' SGD
    assert rec["config"]["stage2_lr_milestones"] == [3]


@pytest.mark.parametrize("milestones", ["0", "4", "3,2", "1.5"])
def test_bad_stage2_milestones_are_an_error_naming_the_key(catalog, milestones):
    with pytest.raises(ConfigError, match="stage2_lr_milestones"):
        resolve(catalog.dataset("synthetic-lt"), "smoke", [catalog.method("crt").cls],
                {"stage2_epochs": 4, "stage2_lr_milestones": milestones})


# ---------------------------------------------------------------------------------------------------------------
# carrying an unfinished run to a fresh machine (ci/paper_progress.py)


def _progress_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "ci" / "paper_progress.py"
    spec = importlib.util.spec_from_file_location("paper_progress", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fresh_checkout(records, to):
    """What a clean clone holds of ``records``: the committed files only (result.json, predictions.npz)."""
    import shutil

    for path in records.rglob("*"):
        if path.is_file() and path.name in ("result.json", "predictions.npz"):
            (to / path.relative_to(records)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, to / path.relative_to(records))


def test_an_interrupted_run_resumes_on_a_fresh_checkout_from_the_carried_checkpoint(tmp_path, monkeypatch):
    from ltbench.cli import main

    progress = _progress_script()
    experiment = tmp_path / "grid.toml"
    experiment.write_text('methods = ["ce", "crt"]\ndatasets = ["synthetic-lt"]\nseeds = [0]\nbudget = "smoke"\n'
                          'epochs = 3\n')
    first = tmp_path / "first"
    real_unlink = Path.unlink

    def keep_stage1_checkpoint(self, missing_ok=False):  # as if the machine went before stage1.pt replaced it
        if self.name != "checkpoint-stage1.pt":
            real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", keep_stage1_checkpoint)
    assert main(["run", "--config", str(experiment), "--output", str(first), "--quiet"]) == 0
    monkeypatch.undo()
    done = {p.parent.parent.parent.name: p for p in first.rglob("result.json")}
    reference = json.loads(done["crt"].read_text())
    # the machine went while crt was in stage 1: its record and the shared stage 1's final model never came to be
    done["crt"].unlink()
    [shared] = [p for p in first.rglob("_stage1/seed0-*") if p.is_dir()]
    for name in ("stage1.pt", "stage1.json"):
        (shared / name).unlink()
    carried = tmp_path / "carried"
    said = progress.save(first, carried, experiment, None)
    assert any("_stage1" in s for s in said) and any("/crt/" in s for s in said)
    assert not any("/ce/" in s for s in said)  # ce's record landed: nothing of it is carried

    fresh = tmp_path / "fresh"
    _fresh_checkout(first, fresh)
    progress.restore(fresh, carried)
    assert main(["run", "--config", str(experiment), "--output", str(fresh), "--quiet"]) == 0
    resumed = json.loads(next(p for p in fresh.rglob("result.json") if "/crt/" in str(p)).read_text())
    assert resumed["per_class_accuracy"] == reference["per_class_accuracy"]  # the same run, continued
    # resumed, not retrained: stage 1's history is the carried one, its measured seconds included
    stage1 = [e for e in resumed["history"] if e["stage"] == 1]
    assert [e["epoch"] for e in stage1] == [1, 2, 3]
    assert stage1 == [e for e in reference["history"] if e["stage"] == 1]
    # landed: the next save drops everything it carried
    progress.save(fresh, carried, experiment, None)
    assert not [p for p in carried.rglob("*") if p.is_file()]


def test_save_carries_the_unfinished_runs_of_every_experiment_file_it_is_given(tmp_path):
    progress = _progress_script()
    records, carried = tmp_path / "records", tmp_path / "carried"
    experiments = []
    for factor in (10, 30):  # one experiment file per imbalance factor, as the boards' paper grids
        experiments.append(tmp_path / f"if{factor}.toml")
        experiments[-1].write_text(f'methods = ["ce"]\ndatasets = ["synthetic-lt"]\nimbalance_factor = {factor}\n'
                                   'seeds = [0]\nbudget = "smoke"\n')
    started = []
    for experiment in experiments:  # each run has trained a little: a checkpoint and its progress
        [run] = [d for d in progress.needed(records, experiment, None) if "_stage1" not in d.parts]
        run.mkdir(parents=True)
        (run / "checkpoint-stage1.pt").write_bytes(b"weights")
        (run / "stage1-progress.json").write_text(json.dumps({"seconds": 5.0}))
        started.append(run.relative_to(records))
    assert started[0] != started[1]
    progress.save(records, carried, experiments, None)
    assert all((carried / run / "checkpoint-stage1.pt").exists() for run in started)
    # a fresh machine that did not restore the carry trains nothing: saving there keeps what was carried
    assert progress.save(tmp_path / "elsewhere", carried, experiments, None) == []
    assert all((carried / run / "checkpoint-stage1.pt").exists() for run in started)
    progress.save(records, carried, experiments[:1], None)  # a file no longer named: its runs are not carried
    assert (carried / started[0] / "checkpoint-stage1.pt").exists()
    assert not (carried / started[1]).exists()


def test_restore_never_puts_an_older_checkpoint_over_a_newer_one(tmp_path):
    progress = _progress_script()
    run, carried = tmp_path / "records" / "d", tmp_path / "carried" / "d"
    for where, seconds, content in ((run, 50.0, b"newer"), (carried, 10.0, b"older")):
        where.mkdir(parents=True)
        (where / "checkpoint-stage1.pt").write_bytes(content)
        (where / "stage1-progress.json").write_text(json.dumps({"seconds": seconds}))
    progress.restore(tmp_path / "records", tmp_path / "carried")
    assert (run / "checkpoint-stage1.pt").read_bytes() == b"newer"


# ---------------------------------------------------------------------------------------------------------------
# the board's paper section


@pytest.fixture(scope="module")
def base_record(tmp_path_factory):
    """One real (smoke) record, the template of the fabricated paper-budget records below."""
    from ltbench.plugins.testing import catalog_with

    [rec] = run_methods(catalog_with(), ["ce"], tmp_path_factory.mktemp("base"))
    return rec


def _installed_metadata(method):
    from ltbench.plugins.catalog import get_catalog

    return get_catalog().method(method).cls.metadata.to_dict()


def _record(base, row, overall, dataset="cifar100-lt-if100", budget="paper", options=None, metadata=None):
    """``base`` as a record of ``row`` (a method or a composition, as spelled: its methods in that order) on
    ``dataset`` at ``budget`` (ResNet-32, 200 epochs at the paper budget), with overall accuracy ``overall``,
    method options ``options`` ({"sam": {"rho": 0.8}}) and, where given, ``metadata`` as the record's own copy of
    its methods' metadata (the installed metadata otherwise, as a run writes it)."""
    methods = row.split("+")
    rec = json.loads(json.dumps(base))
    rec.update(method=row, methods=methods, variant=row, dataset=dataset, budget=budget,
               config_id=f"{row}-{budget}".replace("+", "-"),
               method_metadata=metadata or {m: _installed_metadata(m) for m in methods})
    rec["config"] = {**rec["config"], "backbone": "resnet32" if budget == "paper" else "resnet8",
                     "epochs": 200 if budget == "paper" else 30,
                     "methods": {m: (options or {}).get(m, {}) for m in methods}}
    rec["metrics"] = {**rec["metrics"], "overall": overall}
    return rec


def _write(records, root):
    """Lay ``records`` out as a leaderboard's records directory (records/<dataset>/<budget>/<method>/...)."""
    for rec in records:
        path = root / rec["dataset"] / rec["budget"] / rec["method"] / rec["config_id"] / "seed0" / "result.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(rec))
    return root


def _paper_rows(page):
    """The paper section of a board page, as {row name: its cells}, and the section's text."""
    [_, paper_part] = page.split("## budget `paper`")  # one paper section; the last budget in name order
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in paper_part.splitlines() if line.startswith("| ") and "---" not in line}
    return rows, paper_part


def test_the_paper_section_sets_ours_beside_the_same_setting_number_and_says_when_the_setting_differs(base_record):
    from ltbench.results.leaderboard import render

    page = render([_record(base_record, "ce", 39.0), _record(base_record, "cam-fusion", 41.0),
                   _record(base_record, "blt", 40.0), _record(base_record, "ce", 30.0, budget="cpu")])
    cpu_part = page["cifar100-lt-if100.md"].split("## budget `paper`")[0]  # budgets in name order
    rows, _ = _paper_rows(page["cifar100-lt-if100.md"])
    assert rows["method"][-2:] == ["paper overall", "ours − paper"]
    assert rows["ce"][-2:] == ["38.32", "+0.68"]  # LDAM-DRW Table 2, ResNet-32, 200 epochs
    assert rows["cam-fusion"][-2:] == ["46.57", "other setting: cifar-resnet18, 300 epochs"]
    assert rows["blt"][-2:] == ["–", "no published number"]
    assert "ours − paper" not in cpu_part  # no row of the cpu budget is in a published setting


def test_each_imbalance_factor_has_its_own_paper_section_and_a_composition_finds_its_papers_number(
        base_record, tmp_path):
    from ltbench.results.leaderboard import load_records, render

    safa = {"safa": {"position": "layer2"}}
    stale = {m: _installed_metadata(m) for m in ("ldam-drw", "safa")}
    stale["safa"]["reference_results"] = {"ldam-drw:cifar100-lt-if200": {"overall": 99.0, "backbone": "resnet32",
                                                                          "epochs": 200, "source": "an old copy"}}
    records = _write([
        _record(base_record, "ce", 35.0, "cifar100-lt-if200"),
        _record(base_record, "ldam-drw", 40.0, "cifar100-lt-if200"),
        _record(base_record, "safa", 37.0, "cifar100-lt-if200"),
        _record(base_record, "ldam-drw+safa", 41.0, "cifar100-lt-if200", options=safa, metadata=stale),
        _record(base_record, "safa+ldam-drw", 43.0, "cifar100-lt-if200", options=safa),
        _record(base_record, "ce", 39.0),
        _record(base_record, "ldam-drw+sam", 44.0, options={"sam": {"rho": 0.8}}),
        _record(base_record, "ldam-drw+safa", 41.5, options=safa),  # SAFA reports no imbalance-100 number
    ], tmp_path / "records")
    pages = render(load_records(records))
    assert sorted(pages) == ["cifar100-lt-if100.md", "cifar100-lt-if200.md"]  # a page, so a section, per factor
    rows, section = _paper_rows(pages["cifar100-lt-if200.md"])
    # the installed safa's current reference (supplement Table 4), not the record's own copy of its metadata
    assert rows["ldam-drw+safa"][-2:] == ["42.47", "-1.47"]
    assert rows["safa+ldam-drw"][-2:] == ["42.47", "+0.53"]  # either spelling of the composition
    assert rows["safa"][-2:] == ["38.66", "-1.66"]  # Table 3, CE-SAFA
    assert rows["ce"][-2:] == ["34.84", "+0.16"]  # Cui et al.'s Table 2, softmax
    assert rows["ldam-drw"][-2:] == ["–", "no published number"]
    assert ("- `ldam-drw+safa`: 42.47 (resnet32, 200 epochs, augmentation not stated, safa.position=layer2); "
            "source: supplementary Table 4") in section
    rows, section = _paper_rows(pages["cifar100-lt-if100.md"])
    assert rows["ldam-drw+sam"][-2:] == ["45.40", "-1.40"]  # the Saddle-LongTail README, rho 0.8
    assert rows["ldam-drw+safa"][-2:] == ["–", "no published number"]
    assert rows["ce"][-2:] == ["38.32", "+0.68"]
    assert ("- `ce`: 38.32 (resnet32, 200 epochs, random crop (4-pixel padding) and horizontal flip); source: "
            "LDAM-DRW paper, Table 2") in section


def test_a_published_number_measured_with_other_method_options_is_not_a_difference(base_record):
    from ltbench.results.leaderboard import render

    page = render([_record(base_record, "ldam-drw+sam", 44.0, options={"sam": {"rho": 0.2}})])
    rows, _ = _paper_rows(page["cifar100-lt-if100.md"])
    assert rows["ldam-drw+sam"][-2:] == ["45.40", "other setting: sam.rho=0.8"]


def test_paper_findings_prints_a_section_per_imbalance_factor_with_safas_differences_beside_the_papers(
        base_record, tmp_path, capsys):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "ci" / "paper_findings.py"
    spec = importlib.util.spec_from_file_location("paper_findings", path)
    findings = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(findings)
    records = _write([_record(base_record, "ce", 45.0, "cifar100-lt-if50"),
                      _record(base_record, "safa", 47.0, "cifar100-lt-if50"),
                      _record(base_record, "safa", 37.0, "cifar100-lt-if200"),
                      _record(base_record, "ce", 39.0)], tmp_path / "records")
    findings.main(str(records))
    out = capsys.readouterr().out
    for dataset in ("cifar100-lt-if50", "cifar100-lt-if100", "cifar100-lt-if200"):
        assert f"{dataset}, budget paper" in out
    # Table 3's CE-SAFA 47.69 against BagofTricks-LT's CE 43.85 (both ResNet-32, 200 epochs)
    assert "safa − ce: ours +2.00, paper +3.84" in out
    assert "safa − ce: no record yet of ce (planned)" in out  # imbalance 200: safa alone so far
    assert "ldam-drw+safa − ldam-drw: no record yet of ldam-drw+safa (planned) and ldam-drw (planned)" in out


def test_paper_findings_names_each_machine_a_carried_stage_1_trained_on(base_record):
    """A paper-budget run carried between sessions may train on CPUs of different generations, which round
    differently: the findings name each stretch and its machine, not only the one it finished on."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "ci" / "paper_findings.py"
    spec = importlib.util.spec_from_file_location("paper_findings", path)
    findings = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(findings)
    rec = _record(base_record, "ldam-drw+sam", 45.0)
    rec["device_model"] = "AMD EPYC (family 25 model 1, AVX2), 2 threads"
    rec["machines"] = [{"stage": 1, "first_epoch": 1, "last_epoch": 56, "device_model": None},
                       {"stage": 1, "first_epoch": 57, "last_epoch": 200, "device_model": rec["device_model"]}]
    assert findings.trained_on(rec) == ("epochs 1-56 on a machine not stated; epochs 57-200 on AMD EPYC (family 25 "
                                        "model 1, AVX2), 2 threads")
    rec["machines"] = rec["machines"][1:]
    assert findings.trained_on(rec) == rec["device_model"]  # one machine: named once


def test_paper_findings_says_where_a_plug_in_stops_training_as_its_baseline(base_record):
    """SAFA's reconstruction is inactive until its start epoch, so its run is ce's bit for bit until then: the
    findings name that epoch and the learning rate the plug-in acts at from there (from the histories alone)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "ci" / "paper_findings.py"
    spec = importlib.util.spec_from_file_location("paper_findings", path)
    findings = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(findings)
    lrs = [0.1] * 3 + [0.001] * 2

    def history(losses):
        return [{"stage": 1, "epoch": e + 1, "lr": lr, "loss_task": loss} for e, (lr, loss) in
                enumerate(zip(lrs, losses))]

    ce, safa = _record(base_record, "ce", 30.0), _record(base_record, "safa", 31.0)
    safa["config"]["lr"] = 0.1
    ce["history"], safa["history"] = history([3.0, 2.0, 1.5, 1.0, 0.9]), history([3.0, 2.0, 1.5, 1.2, 0.95])
    assert findings.departures([safa], [ce]) == [
        "seed 0: trains as ce bit for bit through epoch 3 of 5; from epoch 4 at 0.01 of the peak lr, then 0.01"]
    safa["history"] = history([3.0, 2.1, 1.5, 1.2, 0.95])  # active from the second epoch, at the peak lr
    assert findings.departures([safa], [ce])[0].startswith("seed 0: trains as ce bit for bit through epoch 1 of 5; "
                                                           "from epoch 2 at 1 of the peak lr")
    safa["history"] = ce["history"]
    assert findings.departures([safa], [ce]) == ["seed 0: trains as ce bit for bit through all 5 epochs"]
