import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ltbench.data.augment import random_crop_flip
from ltbench.data.samplers import class_balanced, class_share_sampler
from ltbench.plugins.testing import catalog_with, run_methods

import toy_methods as toy

REQUIRED = {"method", "dataset", "budget", "seed", "status", "metrics", "per_class_accuracy", "train_counts",
            "group_thresholds", "wall_time_s", "peak_memory_mb", "config", "versions", "device"}


@pytest.fixture(scope="module")
def catalog():
    return catalog_with(*toy.ALL)


def test_a_run_writes_its_config_metrics_checkpoint_and_result(catalog, tmp_path):
    (rec,) = run_methods(catalog, ["cb-sampling"], tmp_path)
    out = tmp_path / "synthetic-lt-if30" / "smoke" / "cb-sampling" / rec["config_id"] / "seed0"
    assert REQUIRED <= set(rec)
    assert rec["status"] == "completed"
    assert set(rec["metrics"]) == {"overall", "many", "medium", "few"}
    assert rec["overall" if False else "metrics"]["overall"] == pytest.approx(np.mean(rec["per_class_accuracy"]))
    assert rec["group_thresholds"] == {"few_below": 20, "many_above": 100}
    assert {"ltbench", "torch", "plugins", "git_commit"} <= set(rec["versions"])
    assert json.loads((out / "result.json").read_text()) == json.loads(json.dumps(rec))
    assert json.loads((out / "config.json").read_text())["epochs"] == 3
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    assert (out / "stage1.pt").exists() and (out / "model.pt").exists()  # the finished stage and the model
    assert not (out / "checkpoint-stage1.pt").exists()  # the resume checkpoint of a finished stage goes


def test_a_record_names_the_cpu_generation_and_kernel_level_it_ran_on(catalog, tmp_path):
    """Machines a virtual machine names alike ("AMD EPYC") train at different speeds and round differently: the record
    tells them apart by the CPU's family and model numbers and the instruction set torch's kernels use."""
    (rec,) = run_methods(catalog, ["ce"], tmp_path, epochs=1)
    said = rec["device_model"]
    assert said.endswith(f", {torch.get_num_threads()} threads")
    assert torch.backends.cpu.get_cpu_capability() in said
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        first = dict((k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in
                                                            cpuinfo.read_text().split("\n\n")[0].splitlines()))
        if "cpu family" in first and "model" in first:
            assert f"family {first['cpu family']} model {first['model']}" in said, said


def test_training_learns_the_synthetic_class_signal(catalog, tmp_path):
    (rec,) = run_methods(catalog, ["cb-sampling"], tmp_path, epochs=6)
    assert rec["metrics"]["overall"] > 50  # 10 classes: chance is 10%


def test_same_seed_repeats_and_finished_runs_are_skipped(catalog, tmp_path):
    (a,) = run_methods(catalog, ["ce"], tmp_path / "a")
    (b,) = run_methods(catalog, ["ce"], tmp_path / "b")
    assert a["per_class_accuracy"] == b["per_class_accuracy"]
    (again,) = run_methods(catalog, ["ce"], tmp_path / "a")
    assert again["finished_at"] == a["finished_at"]  # skipped, not retrained
    (forced,) = run_methods(catalog, ["ce"], tmp_path / "a", rerun=True)
    assert forced["per_class_accuracy"] == a["per_class_accuracy"]


def test_an_interrupted_run_resumes_from_its_last_checkpoint(catalog, tmp_path):
    toy.Interrupter.armed = False
    (reference,) = run_methods(catalog, ["interrupter"], tmp_path / "ref", epochs=4)
    toy.Interrupter.armed = True
    with pytest.raises(KeyboardInterrupt):
        run_methods(catalog, ["interrupter"], tmp_path / "cut", epochs=4)
    (out,) = (tmp_path / "cut" / "synthetic-lt-if30" / "smoke" / "interrupter").glob("*/seed0")
    assert not (out / "result.json").exists()
    # epoch 2 was cut before its checkpoint: epoch 1 is what survives
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert torch.load(out / "checkpoint-stage1.pt", weights_only=True)["epoch"] == 0
    (resumed,) = run_methods(catalog, ["interrupter"], tmp_path / "cut", epochs=4)
    assert resumed["status"] == "completed" and resumed["epochs_completed"] == 4
    assert resumed["per_class_accuracy"] == reference["per_class_accuracy"]  # the same computation


def test_a_run_resumed_on_another_machine_names_each_stretch_and_the_machine_that_trained_it(catalog, tmp_path,
                                                                                              monkeypatch):
    """A run carried between machines says which trained which epochs: CPUs of different generations round a step
    differently, so the record must not name only the last one."""
    import ltbench.grid.runner as runner
    from ltbench.training import checkpoints

    toy.Interrupter.armed = False
    (whole,) = run_methods(catalog, ["interrupter"], tmp_path / "whole", epochs=4)
    assert whole["machines"] == [{"stage": 1, "first_epoch": 1, "last_epoch": 4, "device_model": whole["device_model"]}]
    for name in ("cut", "legacy"):
        monkeypatch.setattr(runner, "device_model", lambda device: "machine A, 1 threads")
        toy.Interrupter.armed = True
        with pytest.raises(KeyboardInterrupt):
            run_methods(catalog, ["interrupter"], tmp_path / name, epochs=4)
        if name == "legacy":  # a checkpoint written before ltbench noted machines
            (ckpt,) = (tmp_path / name).rglob("checkpoint-stage1.pt")
            state = checkpoints.load(ckpt)
            del state["machines"]
            checkpoints.save(state, ckpt)
        monkeypatch.setattr(runner, "device_model", lambda device: "machine B, 2 threads")
        (resumed,) = run_methods(catalog, ["interrupter"], tmp_path / name, epochs=4)
        assert resumed["device_model"] == "machine B, 2 threads"
        assert resumed["machines"] == [
            {"stage": 1, "first_epoch": 1, "last_epoch": 1, "device_model": None if name == "legacy" else "machine A, 1 threads"},
            {"stage": 1, "first_epoch": 2, "last_epoch": 4, "device_model": "machine B, 2 threads"}]


def test_a_second_stage_names_the_machines_of_the_stage_1_it_reuses(catalog, tmp_path):
    (ce,) = run_methods(catalog, ["ce"], tmp_path)
    (dec,) = run_methods(catalog, ["toy-decoupled"], tmp_path)
    assert dec["stage1"]["reused"]
    stage1 = [m for m in dec["machines"] if m["stage"] == 1]
    assert stage1 == ce["machines"] and stage1[0]["first_epoch"] == 1 and stage1[-1]["last_epoch"] == 3
    assert [m["stage"] for m in dec["machines"]][-1] == 2
    # a stage 1 finished before ltbench noted machines (the shipped paper-budget ones): its epochs, not stated
    (info,) = (tmp_path / "synthetic-lt-if30" / "smoke" / "_stage1").rglob("stage1.json")
    old = json.loads(info.read_text())
    del old["machines"]
    info.write_text(json.dumps(old))
    shutil.rmtree(tmp_path / "synthetic-lt-if30" / "smoke" / "toy-decoupled")  # its record, not the stage 1
    (again,) = run_methods(catalog, ["toy-decoupled"], tmp_path)
    assert again["stage1"]["reused"]
    assert again["machines"][0] == {"stage": 1, "first_epoch": 1, "last_epoch": 3, "device_model": None}


def test_a_changed_config_is_another_run_and_never_resumes_the_old_one(catalog, tmp_path):
    toy.Interrupter.armed = True
    with pytest.raises(KeyboardInterrupt):
        run_methods(catalog, ["interrupter"], tmp_path, epochs=4)
    toy.Interrupter.armed = False
    (other,) = run_methods(catalog, ["interrupter"], tmp_path, epochs=5)
    assert other["status"] == "completed" and other["epochs_completed"] == 5 and other["config"]["epochs"] == 5
    (cut,) = [p for p in (tmp_path / "synthetic-lt-if30" / "smoke" / "interrupter").glob("*/seed0")
              if p.parent.name != other["config_id"]]
    assert not (cut / "result.json").exists() and (cut / "checkpoint-stage1.pt").exists()  # still resumable


def test_a_diverging_run_is_recorded_as_diverged(catalog, tmp_path):
    (rec,) = run_methods(catalog, ["nan-at-epoch-2"], tmp_path)
    assert rec["status"] == "diverged"
    assert "non-finite loss" in rec["error"] and "epoch 2" in rec["error"] and "poison" in rec["error"]
    assert rec["metrics"] is None


def test_a_plugin_returning_the_wrong_type_fails_its_run_by_name_and_the_grid_goes_on(catalog, tmp_path):
    recs = run_methods(catalog, ["bad-sampler", "vector-loss", "ce"], tmp_path)
    assert [r["status"] for r in recs] == ["failed", "failed", "completed"]
    assert "method 'bad-sampler'" in recs[0]["error"] and "ltbench_build_sampler returned int" in recs[0]["error"]
    assert "method 'vector-loss'" in recs[1]["error"] and "scalar" in recs[1]["error"]


def test_validation_is_available_at_epoch_end_and_never_the_test_set(catalog, tmp_path):
    (rec,) = run_methods(catalog, ["uses-validation"], tmp_path)
    vals = rec["extra"]["uses-validation"]["val_overall"]
    assert len(vals) == 3 and all(0 <= v <= 100 for v in vals)
    assert rec["val_metrics"]["overall"] == pytest.approx(vals[-1])


def test_posthoc_logit_adjustment_applies_at_evaluation(catalog, tmp_path):
    (rec,) = run_methods(catalog, ["shift-logits"], tmp_path)
    assert rec["per_class_accuracy"][0] == 100.0 and all(a == 0.0 for a in rec["per_class_accuracy"][1:])


def test_second_stage_freezes_the_backbone_and_reuses_a_shared_stage1(catalog, tmp_path):
    (ce,) = run_methods(catalog, ["ce"], tmp_path)
    (dec,) = run_methods(catalog, ["toy-decoupled"], tmp_path)
    (twin,) = run_methods(catalog, ["toy-decoupled-twin"], tmp_path)
    assert dec["stage1"]["reused"] and twin["stage1"]["reused"]
    assert dec["stage1"]["source"] == ce["stage1"]["source"] == twin["stage1"]["source"]
    assert dec["stage_wall_time_s"]["stage1"] == ce["stage_wall_time_s"]["stage1"]
    assert dec["second_stage"]["epochs"] == 2 and dec["stage_wall_time_s"]["stage2"] > 0
    shared = torch.load(tmp_path / dec["stage1"]["source"] / "stage1.pt", weights_only=True)["model"]
    final = torch.load(tmp_path / "synthetic-lt-if30" / "smoke" / "toy-decoupled" / dec["config_id"] / "seed0" / "checkpoint-stage2.pt",
                       weights_only=True)["model"]
    backbone = [k for k in shared if k.startswith("backbone.")]
    assert backbone and all(torch.equal(shared[k], final[k]) for k in backbone)  # incl. batch-norm statistics
    assert not torch.equal(shared["classifier.weight"], final["classifier.weight"])


def test_random_crop_flip_takes_a_shifted_window_of_the_padded_image():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4) + 1
    g = torch.Generator().manual_seed(0)
    out = random_crop_flip(x, padding=2, flip=True, generator=g)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        windows = [padded[i, :, r:r + 4, c:c + 4] for r in range(5) for c in range(5)]
        windows += [w.flip(2) for w in windows]
        assert any(torch.equal(out[i], w) for w in windows)


def test_class_balanced_sampler_draws_every_class_equally():
    labels = np.repeat(np.arange(4), [400, 100, 20, 5])
    sampler = class_balanced(labels, torch.Generator().manual_seed(0), num_samples=40000)
    shares = np.bincount(labels[list(sampler)], minlength=4) / 40000
    assert len(sampler) == 40000
    np.testing.assert_allclose(shares, 0.25, atol=0.01)


def test_class_share_sampler_rejects_bad_shares():
    with pytest.raises(ValueError, match="non-negative"):
        class_share_sampler(np.array([0, 1]), np.array([-1.0, 1.0]), torch.Generator())


def test_the_test_split_cannot_be_read_during_training(catalog, tmp_path):
    (rec,) = run_methods(catalog, ["peeks-at-test"], tmp_path)
    assert rec["status"] == "failed"
    assert "test split is not available during training" in rec["error"]


@pytest.mark.slow
def test_class_balanced_sampling_lifts_few_shot_accuracy_on_real_data(tmp_path):
    """Fashion-MNIST-LT (embedded, real images), smoke budget: re-balancing must reach the few-shot classes."""
    ce, cb = run_methods(catalog_with(), ["ce", "cb-sampling"], tmp_path, dataset="fashion-mnist-lt")
    assert cb["metrics"]["few"] > ce["metrics"]["few"] + 10
    assert ce["metrics"]["many"] > ce["metrics"]["few"]  # the long tail hurts plain training


def test_rerun_retrains_a_shared_stage1_once_per_grid(catalog, tmp_path):
    from ltbench.grid.plan import plan_grid
    from ltbench.grid.runner import run_grid

    first = run_methods(catalog, ["ce", "toy-decoupled"], tmp_path)
    cells = plan_grid(["ce", "toy-decoupled"], ["synthetic-lt"], [0], "smoke", catalog=catalog)
    again = run_grid(cells, tmp_path, torch.device("cpu"), rerun=True, log=lambda m: None, catalog=catalog)
    assert [r["stage1"]["reused"] for r in again] == [False, True]  # retrained by ce, then reused
    assert again[0]["started_at"] >= first[0]["finished_at"]
    assert again[1]["per_class_accuracy"] == first[1]["per_class_accuracy"]  # the same computation


def test_the_cosine_schedule_warms_up_then_falls_to_zero_and_step_is_unchanged():
    from ltbench.training.schedules import lr_at

    config = {"lr": 0.2, "warmup_epochs": 2, "epochs": 10, "lr_milestones": [0.5], "lr_decay": 0.1}
    assert [round(lr_at(config, e), 4) for e in (0, 1, 5, 9)] == [0.1, 0.2, 0.02, 0.02]  # step (the default)
    cosine = {**config, "schedule": "cosine"}
    lrs = [lr_at(cosine, e) for e in range(10)]
    assert lrs[:3] == [0.1, 0.2, 0.2] and all(a > b for a, b in zip(lrs[2:], lrs[3:]))
    assert lrs[6] == pytest.approx(0.1)  # halfway through the 8 epochs after the warm-up
