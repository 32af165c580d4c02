"""``ltbench eval``: a completed run's trained model (``model.pt``) evaluated again gives the run's own
predictions, bit for bit, and a record; bad input is refused, naming what is wrong."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import ltbench
from ltbench.cli import main
from ltbench.errors import ConfigError

SMOKE = {"datasets": "synthetic-lt", "budget": "smoke", "quiet": True}


def _run_dir(output: Path, variant: str) -> Path:
    (found,) = [p.parent for p in output.rglob("result.json") if json.loads(p.read_text())["variant"] == variant]
    return found


def _same_predictions(a: Path, b: Path) -> bool:
    x, y = np.load(a / "predictions.npz"), np.load(b / "predictions.npz")
    return set(x.files) == set(y.files) and all(np.array_equal(x[k], y[k]) for k in x.files)


# one method per way a model is built: a shared stage 1 (ce), a retrained head (crt), a wrapped head (lws),
# a head chosen after training (tau-norm's tau), one fitted without training (ncm), a post-hoc prediction hook
# (logit-adjust-posthoc), a cosine classifier (ldam-drw), added experts (ride), a fine-tuned backbone (blt)
METHODS = ["ce", "crt", "lws", "tau-norm", "ncm", "logit-adjust-posthoc", "ldam-drw", "ride", "blt"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "runs"
    records = ltbench.run(methods=METHODS, output=out, **SMOKE)
    assert all(r["status"] == "completed" for r in records)
    return out


@pytest.mark.parametrize("method", METHODS)
def test_eval_reproduces_the_runs_predictions_and_writes_a_record(trained, tmp_path, method, capsys):
    run_dir = _run_dir(trained, method)
    assert main(["eval", str(run_dir), "--output", str(tmp_path / "evals")]) == 0
    target = tmp_path / "evals" / run_dir.relative_to(trained)
    assert _same_predictions(run_dir, target)
    source, evaluated = (json.loads((d / "result.json").read_text()) for d in (run_dir, target))
    assert evaluated["per_class_accuracy"] == source["per_class_accuracy"]
    assert evaluated["metrics"] == source["metrics"] and evaluated["val_metrics"] == source["val_metrics"]
    assert evaluated["evaluation"]["of"] == str(run_dir) and evaluated["evaluation"]["validation_reproduced"] is True
    assert "overall" in capsys.readouterr().out
    assert main(["show", str(tmp_path / "evals")]) == 0  # an evaluation's record reads as any record


def test_eval_on_another_imbalance_factor_uses_the_models_training_split(trained, tmp_path):
    run_dir = _run_dir(trained, "ce")
    record = ltbench.grid.evaluation.evaluate_run(run_dir, imbalance_factor=10, output=tmp_path / "evals",
                                                  log=lambda m: None)
    source = json.loads((run_dir / "result.json").read_text())
    assert record["dataset"] == "synthetic-lt-if10" and record["evaluation"]["trained_on"] == source["dataset"]
    assert record["train_counts"] == source["train_counts"]  # the groups are the trained model's
    assert record["evaluation"]["validation_reproduced"] is None  # another split's validation: nothing to compare


def test_a_model_file_that_does_not_predict_as_the_run_did_is_refused(trained, tmp_path):
    import shutil

    copy = tmp_path / "runs"
    shutil.copytree(trained, copy)
    run_dir = _run_dir(copy, "crt")
    state = torch.load(run_dir / "model.pt", weights_only=True)
    state["model"]["classifier.weight"] = state["model"]["classifier.weight"].flip(0)  # classes swapped
    torch.save(state, run_dir / "model.pt")
    with pytest.raises(ConfigError, match="does not reproduce the run's validation accuracy"):
        ltbench.grid.evaluation.evaluate_run(run_dir, output=tmp_path / "evals", log=lambda m: None)
    assert not (tmp_path / "evals").exists()


def test_bad_input_is_named(trained, tmp_path, capsys):
    import shutil

    run_dir = _run_dir(trained, "ce")
    bare = tmp_path / "bare"
    shutil.copytree(run_dir, bare)
    (bare / "model.pt").unlink()
    for argv, message in [
        ([str(tmp_path / "nowhere")], "is not a directory"),
        ([str(run_dir.parent)], "no readable result.json"),
        ([str(run_dir), "--output", str(trained)], "would replace the run's own"),
        ([str(run_dir), "--dataset", "fashion-mnist-lt", "--output", str(tmp_path / "e")], "images are"),
        ([str(run_dir), "--dataset", "no-such-set", "--output", str(tmp_path / "e")], "no-such-set"),
        ([str(bare), "--output", str(tmp_path / "e")], "--rerun"),
    ]:
        capsys.readouterr()
        assert main(["eval", *argv]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_a_finished_stage_keeps_its_final_state_not_its_resume_checkpoint(trained):
    shared = list(trained.rglob("_stage1/*"))
    assert shared and all((s / "stage1.pt").exists() and not (s / "checkpoint-stage1.pt").exists() for s in shared)
    ce = _run_dir(trained, "ce")
    assert (ce / "model.pt").exists() and not list(ce.glob("checkpoint-*.pt"))
