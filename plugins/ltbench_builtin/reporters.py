"""The built-in reporters (``ltbench run --report ...``): jsonl, tensorboard, mlflow, wandb.

Each tracker's library is an optional extra (``pip install "ltbench[tensorboard]"``, ``[mlflow]``,
``[wandb]``) imported only when its reporter is selected. Every reporter keeps what it needs to continue a
resumed run in the run's directory (the tracker's run id), so a resumed ltbench run continues its tracker run
instead of starting a second one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from ltbench.api import ConfigError, Reporter, epoch_scalars, final_metrics, flat_config, hookimpl, per_class_figure


def _need(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"--report {extra} needs {module}: pip install \"ltbench[{extra}]\"") from None


def _step(run: dict[str, Any], entry: dict[str, Any]) -> int:
    """The epoch's index over both stages (stage-1 epochs, then stage-2 epochs): the trackers' x axis."""
    if entry["stage"] == 1:
        return entry["epoch"]
    return run["config"]["epochs"] + entry["epoch"]


class JsonlReporter(Reporter):
    name = "jsonl"
    description = "every event as one JSON line in <output>/_reports/<grid id>.jsonl (no extra dependency)"

    def _write(self, event: str, grid_id: str | None, **payload: Any) -> None:
        # one file per grid: worker processes (--jobs) append to the file of the grid they serve
        path = self.output / "_reports" / f"{grid_id or 'grid-' + time.strftime('%Y%m%d-%H%M%S')}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"event": event, "time": time.time(), **payload}, default=str)
        with open(path, "a") as f:  # one write per line, flushed at close: safe to tail
            f.write(line + "\n")

    @hookimpl
    def ltbench_report_grid_start(self, grid):
        self._write("grid_start", grid["grid_id"], grid=grid)

    @hookimpl
    def ltbench_report_run_start(self, run):
        self._write("run_start", run["grid_id"], run=run)

    @hookimpl
    def ltbench_report_epoch_end(self, run, entry):
        self._write("epoch_end", run["grid_id"], run_dir=run["run_dir"], entry=entry)

    @hookimpl
    def ltbench_report_run_end(self, run, record, plots):
        self._write("run_end", run["grid_id"], run_dir=run["run_dir"], record=record, plots=plots)

    @hookimpl
    def ltbench_report_grid_end(self, grid, records, summary):
        self._write("grid_end", grid["grid_id"], runs=len(records), summary=summary)


class TensorBoardReporter(Reporter):
    name = "tensorboard"
    description = "one TensorBoard event directory per run, <run dir>/tensorboard (pip install \"ltbench[tensorboard]\")"

    def __init__(self, output: Path) -> None:
        super().__init__(output)
        _need("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.SummaryWriter = SummaryWriter
        self.writers: dict[str, Any] = {}

    @hookimpl
    def ltbench_report_run_start(self, run):
        # a resumed run appends to its directory; purge_step drops what a crash left after the checkpoint
        self.writers[run["run_dir"]] = self.SummaryWriter(log_dir=str(Path(run["run_dir"]) / "tensorboard"),
                                                          purge_step=run["resumed"] + 1 if run["resumed"] else None)
        self.writers[run["run_dir"]].add_text("config", f"```\n{json.dumps(run['config'], indent=2)}\n```", 0)

    @hookimpl
    def ltbench_report_epoch_end(self, run, entry):
        writer = self.writers[run["run_dir"]]
        for key, value in epoch_scalars(entry).items():
            writer.add_scalar(key, value, _step(run, entry))
        if entry["stage"] == 2 and entry["epoch"] == 1:  # marked where it begins on the shared epoch axis
            writer.add_text("stage", f"stage 2 begins: step {_step(run, entry)} is its epoch 1 (stage 1 trained "
                            f"{run['config']['epochs']} epochs)", _step(run, entry))
        writer.flush()

    @hookimpl
    def ltbench_report_run_end(self, run, record, plots):
        writer = self.writers.pop(run["run_dir"])
        step = len(record.get("history") or [])
        # the final metrics, written with the run's hyper-parameters so that the HParams view lists the run
        hparams = {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
                   for k, v in flat_config(record["config"]).items()}
        writer.add_hparams({**hparams, "method": record["variant"], "seed": record["seed"]},
                           final_metrics(record) or {"test/overall": float("nan")}, run_name=".", global_step=step)
        if record["status"] == "completed":
            writer.add_figure("per_class_accuracy", per_class_figure(record), step)
        writer.close()


class MlflowReporter(Reporter):
    name = "mlflow"
    description = ("one MLflow run per run: params, metrics per epoch, record and plot as artifacts; a local store "
                   "<output>/mlflow.db (+ mlartifacts/) unless MLFLOW_TRACKING_URI is set (pip install \"ltbench[mlflow]\")")

    def __init__(self, output: Path) -> None:
        super().__init__(output)
        mlflow = _need("mlflow", "mlflow")
        from mlflow.tracking import MlflowClient

        self.output.mkdir(parents=True, exist_ok=True)
        local = self.output.resolve()
        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{local / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=self.uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "ltbench")
        found = self.client.get_experiment_by_name(name)
        self.experiment = found.experiment_id if found else self.client.create_experiment(
            name, artifact_location=None if os.environ.get("MLFLOW_TRACKING_URI") else (local / "mlartifacts").as_uri())
        self.runs: dict[str, str] = {}
        del mlflow

    @hookimpl
    def ltbench_report_run_start(self, run):
        id_file = Path(run["run_dir"]) / "mlflow-run-id"
        if id_file.exists():  # a resumed run continues its MLflow run
            run_id = id_file.read_text().strip()
            self.client.update_run(run_id, status="RUNNING")
        else:
            tags = {"dataset": run["dataset"], "method": run["method"], "variant": run["variant"],
                    "seed": str(run["seed"]), "budget": run["budget"], "config_id": run["config_id"],
                    "grid_id": str(run["grid_id"]), "mlflow.runName": f"{run['variant']} seed {run['seed']}"}
            run_id = self.client.create_run(self.experiment, tags=tags).info.run_id
            from mlflow.entities import Param

            params = [Param(k, str(v)[:6000]) for k, v in flat_config(run["config"]).items()]
            for i in range(0, len(params), 100):
                self.client.log_batch(run_id, params=params[i : i + 100])
            id_file.parent.mkdir(parents=True, exist_ok=True)
            id_file.write_text(run_id)
        self.runs[run["run_dir"]] = run_id

    @hookimpl
    def ltbench_report_epoch_end(self, run, entry):
        from mlflow.entities import Metric

        step, now = _step(run, entry), int(time.time() * 1000)
        self.client.log_batch(self.runs[run["run_dir"]],
                              metrics=[Metric(k, v, now, step) for k, v in epoch_scalars(entry).items()])

    @hookimpl
    def ltbench_report_run_end(self, run, record, plots):
        from mlflow.entities import Metric

        run_id = self.runs.pop(run["run_dir"])
        now, step = int(time.time() * 1000), len(record.get("history") or [])
        self.client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in final_metrics(record).items()])
        self.client.log_artifact(run_id, str(Path(run["run_dir"]) / "result.json"))
        for path in plots:
            self.client.log_artifact(run_id, path, "plots")
        self.client.set_terminated(run_id, "FINISHED" if record["status"] == "completed" else "FAILED")


class WandbReporter(Reporter):
    name = "wandb"
    description = ("one W&B run per run, grouped by grid; offline unless WANDB_MODE says otherwise; WANDB_PROJECT, "
                   "WANDB_ENTITY and WANDB_DIR are honoured (pip install \"ltbench[wandb]\")")

    def __init__(self, output: Path) -> None:
        super().__init__(output)
        self.wandb = _need("wandb", "wandb")
        self.runs: dict[str, Any] = {}

    @hookimpl
    def ltbench_report_run_start(self, run):
        id_file = Path(run["run_dir"]) / "wandb-run-id"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(run_id)
        self.runs[run["run_dir"]] = self.wandb.init(
            id=run_id, resume="allow", mode=os.environ.get("WANDB_MODE", "offline"),
            project=os.environ.get("WANDB_PROJECT", "ltbench"), entity=os.environ.get("WANDB_ENTITY"),
            dir=os.environ.get("WANDB_DIR", str(run["run_dir"])), group=str(run["grid_id"]),
            name=f"{run['variant']} seed {run['seed']}", config=run["config"], reinit="create_new",
            tags=[run["dataset"], run["method"], run["budget"], f"seed{run['seed']}"],
            # W&B's own banner and sync hints (about 30 lines a run) stay out of ltbench's output; WANDB_SILENT=false
            # brings them back
            settings=self.wandb.Settings(silent=os.environ.get("WANDB_SILENT", "true").lower() != "false"))

    @hookimpl
    def ltbench_report_epoch_end(self, run, entry):
        self.runs[run["run_dir"]].log({**epoch_scalars(entry), "epoch": _step(run, entry)})

    @hookimpl
    def ltbench_report_run_end(self, run, record, plots):
        wb = self.runs.pop(run["run_dir"])
        wb.summary.update({**final_metrics(record), "status": record["status"]})
        if record["status"] == "completed":
            wb.log({"per_class_accuracy": self.wandb.Image(per_class_figure(record))})
        # files in the run's own directory are synced when it finishes (wandb.save would link them, and say so)
        for path in [Path(run["run_dir"]) / "result.json", *map(Path, plots)]:
            shutil.copyfile(path, Path(wb.dir) / path.name)
        wb.finish(exit_code=0 if record["status"] == "completed" else 1)


@hookimpl
def ltbench_register_reporters(register):
    for cls in (JsonlReporter, TensorBoardReporter, MlflowReporter, WandbReporter):
        register(cls)
