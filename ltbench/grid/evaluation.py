"""``ltbench eval``: evaluate a trained run's model again, on its own test set or another dataset's with the same
classes, and write a record of it.

A completed run keeps ``model.pt`` beside its record (:data:`ltbench.results.records.MODEL_FILE`): the model's and
the methods' states once training was over. Evaluation rebuilds the run from its ``config.json`` (the
backbone and the heads the methods add, and for a two-stage run the stage-2 classifier its methods build),
loads those states and runs the same evaluation a run ends with, methods' prediction hooks included. Nothing
trains. The run is rebuilt on its *own* training split, so that what a method derives from it (class priors,
the many/medium/few groups) is what the model was trained with; only the evaluated images change.

The record is the run's, with the evaluation's fields replaced (metrics, per-class accuracy, calibration,
validation metrics, the evaluated dataset) and an ``evaluation`` entry saying what was evaluated, where and
when; it is written where a run of that dataset would be, under ``--output``, with its ``predictions.npz``.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ltbench.errors import ConfigError

DEFAULT_OUTPUT = "evals"


def _source(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(record, config, model state) of the completed run in ``run_dir``; a clear error when it is not one."""
    from ltbench.results.records import MODEL_FILE
    from ltbench.results.records import RESULT_FILE, load_result
    from ltbench.training import checkpoints

    if not run_dir.is_dir():
        raise ConfigError(f"ltbench eval: {run_dir} is not a directory; give a run directory, "
                          f"e.g. runs/cifar100-lt-if100/cpu/ce/<config-id>/seed0")
    record = load_result(run_dir / RESULT_FILE)
    if record is None:
        raise ConfigError(f"ltbench eval: {run_dir} holds no readable {RESULT_FILE}: give the directory of a "
                          f"completed run (the one holding its result.json)")
    if record["status"] != "completed":
        raise ConfigError(f"ltbench eval: the run in {run_dir} is {record['status']}, not completed: there is no "
                          f"trained model to evaluate")
    config_path, model_path = run_dir / "config.json", run_dir / MODEL_FILE
    if not model_path.exists():
        raise ConfigError(f"ltbench eval: {run_dir} has no {MODEL_FILE}: runs keep their trained model from "
                          f"ltbench 0.2 on (records and checkpoints only before); retrain it with `ltbench run "
                          f"... --rerun` to evaluate it")
    config = json.loads(config_path.read_text()) if config_path.exists() else record["config"]
    state = checkpoints.load(model_path)  # a corrupt file is a CheckpointError naming it
    from ltbench.grid.config import config_id

    if config_id(config) != record["config_id"] or state.get("config_id") != record["config_id"]:
        raise ConfigError(f"ltbench eval: {run_dir}: its config.json, {MODEL_FILE} and {RESULT_FILE} belong to "
                          f"different runs (config ids {config_id(config)}, {state.get('config_id')}, "
                          f"{record['config_id']}); they were copied or left there")
    return record, config, state


def evaluate_run(run_dir: str | Path, dataset: str | None = None, imbalance_factor: float | None = None,
                 data_root: str | None = None, output: str | Path = DEFAULT_OUTPUT, device: str = "auto",
                 log=print) -> dict[str, Any]:
    """Evaluate the completed run in ``run_dir`` on ``dataset`` (default: its own) and return the record written
    under ``output``."""
    from ltbench.data.split import load_checked
    from ltbench.grid.plan import resolve_device, run_dir as run_dir_of
    from ltbench.grid.runner import device_model, save_predictions
    from ltbench.plugins.catalog import get_catalog
    from ltbench.results.records import MODEL_FILE, PREDICTIONS_FILE, RESULT_FILE, atomic_write_json, compute
    from ltbench.training.evaluate import evaluate
    from ltbench.training.hooks import build_classifier
    from ltbench.training.run import build_run

    run_dir, output = Path(run_dir), Path(output)
    record, config, state = _source(run_dir)
    catalog = get_catalog()
    device_ = resolve_device(device)
    spec = catalog.dataset(record["dataset_name"])
    trained_on = load_checked(spec, data_root, config["imbalance_factor"])
    if trained_on.fingerprint != record["split_fingerprint"]:
        raise ConfigError(f"ltbench eval: the {record['dataset']} split found at {data_root or 'the default root'} "
                          f"(fingerprint {trained_on.fingerprint}) is not the one the run trained on "
                          f"({record['split_fingerprint']}): point --data-root at the run's data")
    target_spec = catalog.dataset(dataset) if dataset else spec
    target_if = imbalance_factor if imbalance_factor is not None else (
        config["imbalance_factor"] if target_spec is spec else target_spec.default_imbalance_factor)
    target = trained_on if (target_spec is spec and target_if == config["imbalance_factor"]) else load_checked(
        target_spec, data_root, target_if)
    shapes = [tuple(d.x_test.shape[1:]) if hasattr(d.x_test, "shape") else None for d in (target, trained_on)]
    if None not in shapes and shapes[0] != shapes[1]:  # (file-backed datasets resize as their transform says)
        raise ConfigError(f"ltbench eval: {target_spec.key(target_if)}'s images are {shapes[0]}, the model was "
                          f"trained on {shapes[1]}: evaluate on a dataset with the same classes and image size")
    if target.num_classes != trained_on.num_classes or (
            target.class_names and trained_on.class_names and list(target.class_names) != list(trained_on.class_names)):
        raise ConfigError(f"ltbench eval: {target_spec.key(target_if)} has {target.num_classes} classes "
                          f"({', '.join(list(target.class_names)[:3])}, ...), the model was trained on "
                          f"{trained_on.num_classes} ({', '.join(list(trained_on.class_names)[:3])}, ...): "
                          f"evaluate on a dataset with the same classes")
    target_key = target_spec.key(target_if)
    out = run_dir_of(output, target_key, record["budget"], record["method"], record["config_id"], record["seed"])
    if out.resolve() == run_dir.resolve():
        raise ConfigError(f"ltbench eval: the evaluation's record would replace the run's own ({run_dir}); give "
                          f"another --output (default {DEFAULT_OUTPUT}/)")

    built = {**config, "pretrained": False, "pretrained_path": ""}  # the weights come from model.pt
    started = datetime.now(timezone.utc)
    log(f"ltbench eval: rebuilding {record['variant']} seed {record['seed']} from {run_dir}")
    run = build_run(catalog, spec, trained_on, built, record["seed"], device_, out, log=log)
    for method in run.methods:
        method.load_state_dict(state["methods"].get(method.name, {}))
    if state["stages"] == 2:  # the stage-2 classifier, built as the run built it
        run.stage = 2
        run.model.classifier = build_classifier(run, 2, run.model.num_features, run.model.classifier).to(device_)
    try:
        run.model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ConfigError(f"ltbench eval: {run_dir / 'model.pt'} does not fit the model this ltbench builds for "
                          f"{record['variant']} (the method's code changed since?): {exc}") from None
    run.stage, run.epoch = 0, 0
    t0 = time.perf_counter()
    log(f"ltbench eval: evaluating on {target_key}: {len(target.y_val)} validation and {len(target.y_test)} "
        f"test images")
    val = evaluate(run, target.x_val, target.y_val) if len(target.y_val) else None
    test = evaluate(run, target.x_test, target.y_test)
    seconds = time.perf_counter() - t0
    reproduced = None
    if target is trained_on and val is not None and record.get("val_metrics"):
        # the rebuilt model must predict as the trained one did: its validation accuracy is in the record
        reproduced = val.metrics() == record["val_metrics"]
        if not reproduced:
            said = (f"ltbench eval: the model rebuilt from {run_dir} does not reproduce the run's validation "
                    f"accuracy (overall {val.metrics()['overall']:.2f}, the record "
                    f"{record['val_metrics']['overall']:.2f})")
            if device_.type == str(record.get("device", "")).split(":")[0].split(" ")[0]:
                raise ConfigError(f"{said} on the same kind of device: {MODEL_FILE} or the methods' state_dict() "
                                  f"misses something the model predicts with; nothing written")
            log(f"warning: {said}; it trained on {record['device']} and is evaluated on {device_}, whose "
                f"rounding differs")

    evaluated = dict(record)
    evaluated.update({
        "dataset": target_key, "dataset_name": target_spec.name, "imbalance_factor": target_if,
        "metrics": test.metrics(), "calibration": test.calibration(target.y_test),
        "val_metrics": val.metrics() if val else None, "per_class_accuracy": test.per_class_accuracy,
        "group_sizes": test.group_sizes, "val_size": int(len(target.y_val)), "test_size": int(len(target.y_test)),
        "files": {"predictions": PREDICTIONS_FILE},
        "evaluation": {
            "of": str(run_dir), "trained_on": record["dataset"], "split_fingerprint": target.fingerprint,
            "device": str(device_), "device_model": device_model(device_), "seconds": round(seconds, 3),
            "images_per_s": round((len(target.y_val) + len(target.y_test)) / seconds, 1) if seconds > 0 else None,
            "started_at": started.isoformat(timespec="seconds"), "validation_reproduced": reproduced,
        },
    })
    evaluated["compute"] = compute(evaluated)
    out.mkdir(parents=True, exist_ok=True)
    save_predictions(out / PREDICTIONS_FILE, test, target.y_test)
    atomic_write_json(out / RESULT_FILE, evaluated)
    m = evaluated["metrics"]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    log(f"ltbench eval: {record['variant']} seed {record['seed']} on {target_key}: overall {fmt(m['overall'])} "
        f"many {fmt(m['many'])} medium {fmt(m['medium'])} few {fmt(m['few'])}; record in {out}")
    return evaluated
