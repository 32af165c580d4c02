"""Reporters (issue 17): each tracker's own reader gets back the per-epoch numbers and the final
overall/many/medium/few of the record; a reporter that raises never changes a run; a resumed run continues
its tracker run."""

import json
import struct
from pathlib import Path

import pytest
import torch

from ltbench import hookimpl
from ltbench.cli import main
from ltbench.grid.plan import plan_grid
from ltbench.grid.runner import run_grid
from ltbench.plugins.reporter import Reporter
from ltbench.plugins.reporting import Reporting
from ltbench.plugins.testing import catalog_with
from ltbench.results.records import RESULT_FILE

import toy_methods as toy

GRID = ["run", "--methods", "ce,crt", "--datasets", "synthetic-lt", "--budget", "smoke", "--quiet"]
GROUPS = ("overall", "many", "medium", "few")


def _runs(out: Path) -> dict[str, tuple[dict, list[dict]]]:
    """method -> (record, the metrics.jsonl entries of the epochs this run trained: a stage 1 reused from
    another run (crt reuses ce's) was reported by that run)"""
    found = {}
    for path in out.glob(f"*/*/*/*/seed*/{RESULT_FILE}"):  # run directories (trackers keep copies elsewhere)
        rec = json.loads(path.read_text())
        history = [json.loads(line) for line in (path.parent / "metrics.jsonl").read_text().splitlines()]
        found[rec["method"]] = (rec, [e for e in history if e["stage"] == 2 or not rec["stage1"]["reused"]])
    assert found["crt"][0]["stage1"]["reused"] and {e["stage"] for e in found["crt"][1]} == {2}
    return found


def _step(rec, entry):
    return entry["epoch"] if entry["stage"] == 1 else rec["config"]["epochs"] + entry["epoch"]


def test_the_jsonl_reporter_streams_every_event_of_the_grid(tmp_path):
    assert main(GRID + ["--output", str(tmp_path), "--report", "jsonl"]) == 0
    (stream,) = (tmp_path / "_reports").glob("*.jsonl")
    events = [json.loads(line) for line in stream.read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "grid_start" and kinds[-1] == "grid_end" and kinds.count("run_start") == 2
    assert len(events[0]["grid"]["runs"]) == 2
    for method, (rec, history) in _runs(tmp_path).items():
        mine = [e for e in events if e.get("run_dir", (e.get("run") or {}).get("run_dir", "")).endswith(
            f"{method}/{rec['config_id']}/seed0")]
        assert [e["entry"] for e in mine if e["event"] == "epoch_end"] == history
        (end,) = [e for e in mine if e["event"] == "run_end"]
        assert end["record"]["metrics"] == rec["metrics"] and end["plots"][0].endswith("per-class.png")


def test_the_tensorboard_reporter_writes_what_tensorboards_reader_reads_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(GRID + ["--output", str(tmp_path), "--report", "tensorboard"]) == 0
    for method, (rec, history) in _runs(tmp_path).items():
        events = EventAccumulator(str(next(tmp_path.rglob(f"{method}/*/seed0/tensorboard")))).Reload()
        losses = {e.step: e.value for e in events.Scalars("train/loss_task")}
        assert losses == pytest.approx({_step(rec, e): e["loss_task"] for e in history}, rel=1e-6)
        vals = {e.step: e.value for e in events.Scalars("val/overall")}
        assert vals == pytest.approx({_step(rec, e): e["val_overall"] for e in history if "val_overall" in e})
        for g in GROUPS:
            assert events.Scalars(f"test/{g}")[-1].value == pytest.approx(rec["metrics"][g])
        assert "per_class_accuracy" in events.Tags()["images"]
        # the HParams view lists the run with its hyper-parameters and final metrics
        from tensorboard.plugins.hparams import plugin_data_pb2

        hp = events.PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(hp["_hparams_/session_start_info"]).session_start_info
        assert start.hparams["lr"].number_value == pytest.approx(rec["config"]["lr"])
        assert start.hparams["method"].string_value == rec["variant"]
        experiment = plugin_data_pb2.HParamsPluginData.FromString(hp["_hparams_/experiment"]).experiment
        assert {m.name.tag for m in experiment.metric_infos} >= {f"test/{g}" for g in GROUPS}
        # stage 2 is marked where it begins on the shared epoch axis
        stages = {e.step: e.value for e in events.Scalars("stage")}
        assert stages == {_step(rec, e): e["stage"] for e in history}
        if method == "crt":
            assert min(s for s, v in stages.items() if v == 2) == rec["config"]["epochs"] + 1
            assert "stage/text_summary" in events.Tags()["tensors"]


def test_the_mlflow_reporter_logs_one_run_per_run_to_a_local_store(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    assert main(GRID + ["--output", str(tmp_path), "--report", "mlflow"]) == 0
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "ltbench"]
    runs = {r.data.tags["method"]: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["ce", "crt"]
    for method, (rec, history) in _runs(tmp_path).items():
        run = runs[method]
        assert run.info.status == "FINISHED"
        assert {k: run.data.tags[k] for k in ("dataset", "seed", "budget")} == {
            "dataset": rec["dataset"], "seed": "0", "budget": "smoke"}
        assert float(run.data.params["lr"]) == rec["config"]["lr"]
        losses = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/loss_task")}
        assert losses == pytest.approx({_step(rec, e): e["loss_task"] for e in history})
        for g in GROUPS:
            assert run.data.metrics[f"test/{g}"] == pytest.approx(rec["metrics"][g])
        artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
        assert "result.json" in artifacts and "plots" in artifacts


def _wandb_records(path: Path):
    """The records of an offline W&B run file (LevelDB log format of protobuf Records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, pending = path.read_bytes(), 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        payload, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            yield pb.Record.FromString(payload)
        elif kind in (2, 3):
            pending = payload if kind == 2 else pending + payload
        elif kind == 4:
            yield pb.Record.FromString(pending + payload)


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)  # "train/loss_task" may be stored as a nested key


def test_the_wandb_reporter_works_offline_and_its_run_file_holds_the_numbers(tmp_path, monkeypatch, capfd):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_SILENT", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert main(GRID + ["--output", str(tmp_path), "--report", "wandb"]) == 0
    said = capfd.readouterr()
    assert not [line for line in (said.out + said.err).splitlines() if line.startswith("wandb:")]  # quiet
    for method, (rec, history) in _runs(tmp_path).items():
        (run_file,) = tmp_path.rglob(f"{method}/*/seed0/wandb/offline-run-*/run-*.wandb")
        assert json.loads((run_file.parent / "files" / "result.json").read_text())["metrics"] == rec["metrics"]
        assert (run_file.parent / "files" / "per-class.png").exists()  # synced with the run
        logged, summary = [], {}
        for r in _wandb_records(run_file):
            if r.WhichOneof("record_type") == "history":
                logged.append({_key(i): json.loads(i.value_json) for i in r.history.item})
            elif r.WhichOneof("record_type") == "summary":
                summary.update({_key(i): json.loads(i.value_json) for i in r.summary.update})
        losses = {e["epoch"]: e["train/loss_task"] for e in logged if "train/loss_task" in e}
        assert losses == pytest.approx({_step(rec, e): e["loss_task"] for e in history})
        for g in GROUPS:
            assert summary[f"test/{g}"] == pytest.approx(rec["metrics"][g])


class Raises(Reporter):
    name = "raises"
    calls = 0

    @hookimpl
    def ltbench_report_epoch_end(self, run, entry):
        Raises.calls += 1
        raise RuntimeError("tracker is down")


def test_a_reporter_that_raises_is_disabled_once_and_changes_nothing(tmp_path):
    catalog = catalog_with(reporters=(Raises,))
    warnings = []
    reporting = Reporting(["raises", "jsonl"], tmp_path / "with", catalog, warn=warnings.append)
    cells = plan_grid(["ce", "crt"], ["synthetic-lt"], [0], "smoke", catalog=catalog)
    with_reporter = run_grid(cells, tmp_path / "with", torch.device("cpu"), log=lambda m: None, catalog=catalog,
                             reporting=reporting)
    without = run_grid(cells, tmp_path / "without", torch.device("cpu"), log=lambda m: None, catalog=catalog)
    assert Raises.calls == 1 and len(warnings) == 1
    assert "'raises'" in warnings[0] and "ltbench_report_epoch_end" in warnings[0] and "tracker is down" in warnings[0]
    assert reporting.active == ["jsonl"]  # the others go on
    for a, b in zip(with_reporter, without):
        assert a["status"] == b["status"] == "completed"
        assert a["per_class_accuracy"] == b["per_class_accuracy"] and a["metrics"] == b["metrics"]
        assert [e["loss_task"] for e in a["history"]] == [e["loss_task"] for e in b["history"]]


class Exits(Reporter):
    name = "exits"

    @hookimpl
    def ltbench_report_run_start(self, run):
        raise SystemExit(2)


def test_a_reporter_that_calls_sys_exit_is_disabled_and_the_grid_goes_on(tmp_path):
    catalog = catalog_with(reporters=(Exits,))
    warnings = []
    reporting = Reporting(["exits"], tmp_path, catalog, warn=warnings.append)
    cells = plan_grid(["ce", "crt"], ["synthetic-lt"], [0], "smoke", catalog=catalog)
    records = run_grid(cells, tmp_path, torch.device("cpu"), log=lambda m: None, catalog=catalog,
                       reporting=reporting)
    assert [r["status"] for r in records] == ["completed", "completed"]
    assert len(warnings) == 1 and "'exits'" in warnings[0] and "SystemExit" in warnings[0]


def test_a_resumed_run_continues_its_tracker_run(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    catalog = catalog_with(*toy.ALL)
    cells = plan_grid(["ce+interrupter"], ["synthetic-lt"], [0], "smoke", epochs=4, catalog=catalog)
    toy.Interrupter.armed = True
    with pytest.raises(KeyboardInterrupt):
        run_grid(cells, tmp_path, torch.device("cpu"), log=lambda m: None, catalog=catalog,
                 reporting=Reporting(["mlflow"], tmp_path, catalog))
    (record,) = run_grid(cells, tmp_path, torch.device("cpu"), log=lambda m: None, catalog=catalog,
                         reporting=Reporting(["mlflow"], tmp_path, catalog))
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "ltbench"]
    (run,) = client.search_runs([experiment.experiment_id])  # one MLflow run, not two
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss_task"))
    assert steps == [1, 2, 3, 4] and record["status"] == "completed" and run.info.status == "FINISHED"


def test_an_unknown_or_unavailable_reporter_is_refused_before_anything_runs(tmp_path, capsys):
    assert main(GRID + ["--output", str(tmp_path), "--report", "tensorbored"]) == 2
    assert "unknown reporter 'tensorbored'. Did you mean 'tensorboard'?" in capsys.readouterr().err
    assert not list(tmp_path.rglob(RESULT_FILE))


@pytest.mark.slow
def test_worker_processes_report_into_the_grids_one_stream(tmp_path):
    assert main(["run", "--methods", "ce,focal", "--datasets", "synthetic-lt", "--budget", "smoke", "--quiet",
                 "--output", str(tmp_path), "--report", "jsonl", "--jobs", "2"]) == 0
    (stream,) = (tmp_path / "_reports").glob("*.jsonl")
    kinds = [json.loads(line)["event"] for line in stream.read_text().splitlines()]
    assert kinds[0] == "grid_start" and kinds[-1] == "grid_end"
    assert kinds.count("run_start") == kinds.count("run_end") == 2 and kinds.count("epoch_end") == 6


@pytest.mark.slow
def test_cluster_jobs_report_their_runs_into_the_grids_stream(tmp_path):
    pytest.importorskip("submitit")
    assert main(["run", "--methods", "ce,focal", "--datasets", "synthetic-lt", "--budget", "smoke", "--quiet",
                 "--output", str(tmp_path), "--report", "jsonl", "--launcher", "local"]) == 0
    (stream,) = (tmp_path / "_reports").glob("*.jsonl")
    kinds = [json.loads(line)["event"] for line in stream.read_text().splitlines()]
    assert kinds.count("run_start") == kinds.count("run_end") == 2 and kinds.count("epoch_end") == 6
