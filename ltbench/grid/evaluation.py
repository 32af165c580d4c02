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
``trained_on`` and ``evaluated_on`` state both settings (dataset key, imbalance factor, split fingerprint); the
record's ``data_sha256`` (and ``evaluated_on``'s) is the contents of every split of the evaluated data, its test
images and labels included. A run whose training or validation contents changed since it trained (its record's
``data_sha256``) is refused. On a setting other than the one it trained in, the record's ``variant`` says
``(trained on <dataset key>)``, so that every table and board labels the row as such.
"""

from __future__ import annotations

import math
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from ltbench.errors import ConfigError, LtbenchError

DEFAULT_OUTPUT = "evals"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _one_line(exc: BaseException, limit: int = 400) -> str:
    """An exception's message on one line, cut at ``limit`` characters."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def _trained_elsewhere(variant: str, trained_key: str) -> str:
    """``variant`` labelled as a model trained on ``trained_key`` (the variant cut where the label would be longer
    than a record's labels may be)."""
    from ltbench.results.reader import MAX_LABEL

    suffix = f" (trained on {trained_key})"
    room = MAX_LABEL - len(suffix)
    return (variant if len(variant) <= room else variant[:room - 3] + "...") + suffix


def _source(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(record, config, model state) of the completed run in ``run_dir``; a clear error when it is not one.
    Each file is read as :mod:`ltbench.results.reader` reads any: a regular file (never a link or a FIFO), the
    record schema-checked, the config and the model's state checked for what evaluation uses."""
    from ltbench.results.reader import Unreadable, read_json, read_record, regular_file
    from ltbench.results.records import MODEL_FILE, RESULT_FILE
    from ltbench.training import checkpoints

    if not run_dir.is_dir():
        raise ConfigError(f"ltbench eval: {run_dir} is not a directory; give a run directory, "
                          f"e.g. runs/cifar100-lt-if100/cpu/ce/<config-id>/seed0")
    if not os.path.lexists(run_dir / RESULT_FILE):
        raise ConfigError(f"ltbench eval: {run_dir} holds no readable {RESULT_FILE}: give the directory of a "
                          f"completed run (the one holding its result.json)")
    record, problem = read_record(run_dir / RESULT_FILE)
    if problem:
        raise ConfigError(f"ltbench eval: not a record it can read: {problem}")
    if record["status"] != "completed":
        raise ConfigError(f"ltbench eval: the run in {run_dir} is {record['status']}, not completed: there is no "
                          f"trained model to evaluate")
    config_path, model_path = run_dir / "config.json", run_dir / MODEL_FILE
    if not os.path.lexists(model_path):
        raise ConfigError(f"ltbench eval: {run_dir} has no {MODEL_FILE}: runs keep their trained model from "
                          f"ltbench 0.2 on (records and checkpoints only before); retrain it with `ltbench run "
                          f"... --rerun` to evaluate it")
    try:
        config = read_json(config_path) if os.path.lexists(config_path) else record["config"]
    except Unreadable as exc:
        raise ConfigError(f"ltbench eval: {exc}") from None
    problem = regular_file(model_path)
    if problem:
        raise ConfigError(f"ltbench eval: {problem}")
    state = checkpoints.load(model_path)  # a corrupt file is a CheckpointError naming it
    from ltbench.grid.config import config_id

    if not (isinstance(config, dict) and isinstance(config.get("methods"), dict)
            and all(isinstance(options, dict) for options in config["methods"].values())):
        raise ConfigError(f"ltbench eval: {config_path}: not a run's configuration (an object with its methods "
                          f"and their options)")
    if not (isinstance(state, dict) and isinstance(state.get("model"), dict) and isinstance(state.get("methods"), dict)
            and state.get("stages") in (1, 2)):
        raise ConfigError(f"ltbench eval: {model_path}: not a trained model as ltbench writes it (model and method "
                          f"states, and 1 or 2 stages)")
    if config_id(config) != record["config_id"] or state.get("config_id") != record["config_id"]:
        raise ConfigError(f"ltbench eval: {run_dir}: its config.json, {MODEL_FILE} and {RESULT_FILE} belong to "
                          f"different runs (config ids {config_id(config)}, {state.get('config_id')!r:.40}, "
                          f"{record['config_id']}); they were copied or left there")
    return record, config, state


def _check_config(config: dict[str, Any], spec: Any, record: dict[str, Any], catalog: Any, run_dir: Path) -> None:
    """``config`` (a run's config.json) holds values of the types the budget and the methods' options have, in
    the ranges a run checks, and the record's methods: a crafted one is a named error, never a traceback."""
    import dataclasses

    from ltbench.grid.config import check_core

    def wanted(default: Any) -> tuple[str, Callable[[Any], bool]]:
        """What a value of ``default``'s type is called, and a test for one."""
        if isinstance(default, bool):
            return "true or false", lambda v: isinstance(v, bool)
        if isinstance(default, int):
            return "an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)
        if isinstance(default, float):
            return "a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if isinstance(default, str):
            return "a string", lambda v: isinstance(v, str)
        if isinstance(default, (tuple, list)):
            return "a list of numbers", lambda v: isinstance(v, list) and all(wanted(0.0)[1](x) for x in v)
        return "anything", lambda v: True

    def check(key: str, value: Any, default: Any) -> None:
        want, ok = wanted(default)
        if not ok(value):
            raise ConfigError(f"{where}: {key}: expected {want}, got {value!r:.60}")

    where = f"ltbench eval: {run_dir / 'config.json'}"
    budget = spec.budgets.get(record["budget"]) or next(iter(spec.budgets.values()))
    defaults = {**dataclasses.asdict(budget), "imbalance_factor": 1.0}
    defaults.pop("description", None)
    for key, default in defaults.items():
        if key in config:
            check(key, config[key], default)
    if list(config["methods"]) != record["methods"]:
        raise ConfigError(f"{where}: its methods {list(config['methods'])!r:.200} are not the record's "
                          f"{record['methods']}")
    for method, options in config["methods"].items():
        known = catalog.method(method).cls.options
        for key, value in options.items():
            if key in known:
                check(f"methods.{method}.{key}", value, known[key])
    try:
        check_core({**defaults, **config})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {type(exc).__name__}: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


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

    if isinstance(output, str) and not output.strip():  # Path("") is the working directory
        raise ConfigError(f"ltbench eval: --output is empty, which would write into the working directory; give a "
                          f"directory for the evaluation's record, e.g. --output {DEFAULT_OUTPUT} (or --output . if "
                          f"the working directory is meant)")
    run_dir, output = Path(run_dir), Path(output)
    record, config, state = _source(run_dir)
    catalog = get_catalog()
    device_ = resolve_device(device)
    spec = catalog.dataset(record.get("dataset_name") or record["dataset"].rsplit("-", 1)[0])
    _check_config(config, spec, record, catalog, run_dir)
    trained_on = load_checked(spec, data_root, config["imbalance_factor"])
    if trained_on.fingerprint != record.get("split_fingerprint"):
        raise ConfigError(f"ltbench eval: the {record['dataset']} split found at {data_root or 'the default root'} "
                          f"(fingerprint {trained_on.fingerprint}) is not the one the run trained on "
                          f"({record.get('split_fingerprint')}): point --data-root at the run's data")
    # ... and its contents: the images and labels the model trained and selected on (its test set may be another)
    then, now = record.get("data_sha256") or {}, trained_on.content_fingerprint  # (none in records before it)
    changed = [s for s in ("train", "val") if then and then.get(s) != now[s]]
    if changed:
        raise ConfigError(f"ltbench eval: the {' and '.join(changed)} images or labels of the {record['dataset']} data "
                          f"found at {data_root or 'the default root'} changed since the run trained on them "
                          f"(data_sha256 {'; '.join(f'{s}: {then.get(s)} then, {now[s]} now' for s in changed)}): "
                          f"point --data-root at the run's data")
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
    if output.resolve() not in out.resolve().parents:  # the record's names are checked; this is the last word
        raise ConfigError(f"ltbench eval: the evaluation's record would be written to {out.resolve()}, outside "
                          f"--output {output}; nothing written")

    built = {**config, "pretrained": False, "pretrained_path": ""}  # the weights come from model.pt
    started = datetime.now(timezone.utc)
    log(f"ltbench eval: rebuilding {record['variant']} seed {record['seed']} from {run_dir}")
    try:  # from files anyone may hand over: whatever fails to rebuild or evaluate is named, never a traceback
        run = build_run(catalog, spec, trained_on, built, record["seed"], device_, out, log=log)
        for method in run.methods:
            method.load_state_dict(state["methods"].get(method.name, {}))
        if state["stages"] == 2:  # the stage-2 classifier, built as the run built it
            run.stage = 2
            run.model.classifier = build_classifier(run, 2, run.model.num_features, run.model.classifier).to(device_)
        try:
            run.model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise ConfigError(f"ltbench eval: {run_dir / MODEL_FILE} does not fit the model this ltbench builds for "
                              f"{record['variant']} (the method's code changed since?): {_one_line(exc)}") from None
        run.stage, run.epoch = 0, 0
        t0 = time.perf_counter()
        log(f"ltbench eval: evaluating on {target_key}: {len(target.y_val)} validation and {len(target.y_test)} "
            f"test images")
        val = evaluate(run, target.x_val, target.y_val) if len(target.y_val) else None
        test = evaluate(run, target.x_test, target.y_test)
    except LtbenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - a crafted config.json or model.pt
        raise ConfigError(f"ltbench eval: the run in {run_dir} cannot be rebuilt and evaluated from its config.json "
                          f"and {MODEL_FILE}: {type(exc).__name__}: {_one_line(exc)}") from None
    seconds = time.perf_counter() - t0
    reproduced = None
    if target is trained_on and val is not None and record.get("val_metrics"):
        # the rebuilt model must predict as the trained one did: its validation accuracy is in the record
        reproduced = val.metrics() == record["val_metrics"]
        if not reproduced:
            said = (f"ltbench eval: the model rebuilt from {run_dir} does not reproduce the run's validation "
                    f"accuracy (overall {_fmt(val.metrics()['overall'])}, the record "
                    f"{_fmt(record['val_metrics'].get('overall'))})")
            if device_.type == str(record.get("device", "")).split(":")[0].split(" ")[0]:
                raise ConfigError(f"{said} on the same kind of device: {MODEL_FILE} or the methods' state_dict() "
                                  f"misses something the model predicts with; nothing written")
            log(f"warning: {said}; it trained on {record.get('device')} and is evaluated on {device_}, whose "
                f"rounding differs")

    evaluated = dict(record)
    # the setting the model was trained in beside the one it is evaluated in; on another one, the row's label says
    # so (``show``, the boards and the plots name a row by its variant), so that an IF100 model evaluated on the
    # IF10 test set is never read as a model trained on IF10
    trained_key = record["dataset"]
    elsewhere = target_key != trained_key
    evaluated.update({
        "variant": _trained_elsewhere(record["variant"], trained_key) if elsewhere else record["variant"],
        "trained_on": {"dataset": trained_key, "dataset_name": spec.name,
                       "imbalance_factor": config["imbalance_factor"], "split_fingerprint": trained_on.fingerprint,
                       "variant": record["variant"]},
        "evaluated_on": {"dataset": target_key, "dataset_name": target_spec.name, "imbalance_factor": target_if,
                         "split_fingerprint": target.fingerprint, "data_sha256": target.content_fingerprint},
        # what the record's numbers were measured on: every split's contents, the test images and labels included
        "data_sha256": target.content_fingerprint,
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
    log(f"ltbench eval: {record['variant']} seed {record['seed']} on {target_key}: overall {_fmt(m['overall'])} "
        f"many {_fmt(m['many'])} medium {_fmt(m['medium'])} few {_fmt(m['few'])}; record in {out}")
    return evaluated
