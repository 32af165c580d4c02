"""A grid beyond one sequential process (issue 11): worker processes (--jobs), the submitit launcher
(--launcher local), shards (--shard), and ``ltbench status``. Each mode must give the records a sequential run
gives, train a shared stage 1 once, and lose nothing when a worker dies."""

import functools
import os
import json
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from ltbench.cli import main
from ltbench.grid import launch, status
from ltbench.grid.plan import plan_grid, stage1_dir
from ltbench.plugins.testing import catalog_with
from ltbench.results.records import RESULT_FILE

import toy_methods as toy


def _records(out: Path) -> dict[tuple[str, int], dict]:
    found = {}
    for path in out.rglob(RESULT_FILE):
        rec = json.loads(path.read_text())
        found[(rec["variant"], rec["seed"])] = rec
    return found


@pytest.mark.slow
def test_jobs_2_gives_the_records_of_jobs_1_and_trains_each_shared_stage_1_once(tmp_path, capsys):
    """The issue's acceptance grid on the default dataset. Thread count changes CPU rounding, so the
    sequential run uses the workers' one thread per run."""
    grid = ["run", "--methods", "ce,cb-sampling,crt,lws", "--seeds", "0,1", "--budget", "smoke", "--quiet"]
    assert main(grid + ["--jobs", "2", "--output", str(tmp_path / "jobs2")]) == 0
    assert "8 of 8 runs completed" in capsys.readouterr().out
    assert main(grid + ["--jobs", "1", "--threads", "1", "--output", str(tmp_path / "jobs1")]) == 0
    parallel, sequential = _records(tmp_path / "jobs2"), _records(tmp_path / "jobs1")
    assert sorted(parallel) == sorted(sequential) and len(parallel) == 8
    for key, rec in parallel.items():
        assert rec["status"] == "completed" and "1 threads" in rec["device_model"]
        assert rec["per_class_accuracy"] == sequential[key]["per_class_accuracy"], key
    for seed in (0, 1):  # ce, crt and lws share one stage 1 per seed: one of them trained it, the others reused it
        sharing = [parallel[(m, seed)]["stage1"] for m in ("ce", "crt", "lws")]
        assert len({s["source"] for s in sharing}) == 1
        assert sorted(s["reused"] for s in sharing) == [False, True, True]


@pytest.mark.slow
def test_a_worker_that_dies_fails_only_its_run_and_the_same_command_resumes_it(tmp_path, monkeypatch):
    monkeypatch.setenv("LTBENCH_TEST_DIE_MARKER", str(tmp_path / "died"))
    factory = functools.partial(catalog_with, *toy.ALL)
    catalog = factory()
    cells = plan_grid(["dies-at-epoch-2", "ce"], ["synthetic-lt"], [0, 1], "smoke", epochs=3, catalog=catalog)
    out = tmp_path / "runs"
    records = launch.run_parallel(cells, out, torch.device("cpu"), jobs=2, log=lambda m: None,
                                  catalog_factory=factory)
    by_key = {(r["variant"], r["seed"]): r for r in records}
    dead = [r for r in records if r["status"] == "failed"]
    assert len(dead) == 1 and "killed by signal 9" in dead[0]["error"] and dead[0]["epochs_completed"] == 1
    assert all(r["status"] == "completed" for r in records if r is not dead[0])
    ce_finished = {s: by_key[("ce", s)]["finished_at"] for s in (0, 1)}

    again = launch.run_parallel(cells, out, torch.device("cpu"), jobs=2, log=lambda m: None, catalog_factory=factory)
    assert [r["status"] for r in again] == ["completed"] * 4
    resumed = next(r for r in again if (r["variant"], r["seed"]) == (dead[0]["variant"], dead[0]["seed"]))
    assert resumed["epochs_completed"] == 3  # epoch 1 came from the checkpoint, not retrained from scratch
    history = [json.loads(line) for line in (cells[0].out_dir(out).parent / f"seed{resumed['seed']}"
                                             / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in history] == [1, 2, 3]
    assert {s: r["finished_at"] for r in again if r["variant"] == "ce" for s in [r["seed"]]} == ce_finished


def test_shards_are_disjoint_cover_the_grid_and_keep_a_shared_stage_1_in_one_shard(tmp_path):
    catalog = catalog_with()
    cells = plan_grid(["ce", "crt", "focal", "lws"], ["synthetic-lt"], [0, 1, 2], "smoke", catalog=catalog)
    parts = [launch.shard(cells, f"{i}/3", tmp_path, catalog) for i in (1, 2, 3)]
    ids = [[(c.method, c.seed) for c in part] for part in parts]
    assert sorted(sum(ids, [])) == sorted((c.method, c.seed) for c in cells)  # a partition of the grid
    for part in parts:
        for cell in part:
            shared = stage1_dir(cell, tmp_path, catalog)
            if shared is not None:  # every cell with this stage 1 is in this shard
                assert all(c in part for c in cells if stage1_dir(c, tmp_path, catalog) == shared)
    with pytest.raises(Exception, match=r"--shard 4/3: I must be between 1 and N=3"):
        launch.shard(cells, "4/3", tmp_path, catalog)
    with pytest.raises(Exception, match=r"--shard expects I/N"):
        launch.shard(cells, "two", tmp_path, catalog)


def test_shards_run_end_to_end_and_status_follows_them(tmp_path, capsys):
    out = tmp_path / "runs"
    grid = ["run", "--methods", "ce,crt", "--datasets", "synthetic-lt", "--seeds", "0,1", "--budget", "smoke",
            "--quiet", "--output", str(out), "--threads", "1"]
    assert main(grid + ["--shard", "1/2"]) == 0
    capsys.readouterr()
    assert main(["status", str(out)]) == 1  # the other shard's runs are missing
    rows = status.collect(out)
    assert {(r["state"], r["seed"]) for r in rows} == {("completed", 0), ("missing", 1)} and len(rows) == 4
    # seed 0's ce and crt share a stage 1, so they are one shard's
    assert main(grid + ["--shard", "2/2"]) == 0
    capsys.readouterr()
    assert main(["status", str(out)]) == 0
    assert "4 completed" in capsys.readouterr().out


def test_status_tells_running_interrupted_failed_and_missing_apart(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["run", "--methods", "ce,focal,cb-sampling", "--datasets", "synthetic-lt", "--budget", "smoke",
                 "--quiet", "--output", str(out)]) == 0
    capsys.readouterr()
    runs = {p.parent.parts[-3]: p.parent for p in out.rglob(RESULT_FILE)}
    assert not [run for run in runs.values() if Path(str(run) + ".lock").exists()]  # finished: no lock file left
    (runs["focal"] / RESULT_FILE).unlink()  # started, never finished: interrupted
    rec = json.loads((runs["cb-sampling"] / RESULT_FILE).read_text())
    (runs["cb-sampling"] / RESULT_FILE).write_text(json.dumps({**rec, "status": "failed", "error": "boom\ntrace"}))
    cells = plan_grid(["ce", "ldam-drw"], ["synthetic-lt"], [0], "smoke")
    launch.write_manifest(cells, out, how="test")
    with FileLock(str(runs["ce"]) + ".lock"):  # another process works on ce
        rows = {r["variant"]: r for r in status.collect(out)}
        assert main(["status", str(out), "--json"]) == 1
    assert {v: r["state"] for v, r in rows.items()} == {
        "ce": "running", "focal": "interrupted", "cb-sampling": "failed", "ldam-drw": "missing"}
    assert rows["cb-sampling"]["detail"] == "boom"
    counts = json.loads(capsys.readouterr().out)["counts"]
    assert counts["running"] == counts["interrupted"] == counts["failed"] == counts["missing"] == 1
    assert {r["variant"]: r["state"] for r in status.collect(out)}["ce"] == "completed"  # the lock is gone


def test_the_local_launcher_submits_runs_and_collects_the_in_process_records(tmp_path, capsys):
    pytest.importorskip("submitit")
    grid = ["run", "--methods", "ce,crt,focal", "--datasets", "synthetic-lt", "--seeds", "0", "--budget", "smoke",
            "--quiet", "--threads", "1"]
    assert main(grid + ["--launcher", "local", "--output", str(tmp_path / "submitted")]) == 0
    said = capsys.readouterr().out
    assert "submitted 3 runs as 2 local jobs" in said and "3 of 3 runs completed" in said  # ce+crt: one job
    assert list((tmp_path / "submitted" / launch.SUBMITIT_DIR).glob("*_log.err"))
    assert main(grid + ["--output", str(tmp_path / "in-process")]) == 0
    submitted, in_process = _records(tmp_path / "submitted"), _records(tmp_path / "in-process")
    assert sorted(submitted) == sorted(in_process)
    for key, rec in submitted.items():
        assert rec["per_class_accuracy"] == in_process[key]["per_class_accuracy"], key


@pytest.mark.parametrize("argv, message", [
    (["--jobs", "0"], "--jobs must be a positive integer, got 0"),
    (["--threads", "0"], "--threads must be a positive integer, got 0"),
    (["--launcher", "pbs"], "--launcher must be one of slurm, local, got 'pbs'"),
    (["--launcher", "local", "--jobs", "2"], "--jobs and --launcher do not combine"),
    (["--shard", "0/2"], "--shard 0/2: I must be between 1 and N=2"),
])
def test_bad_scale_options_are_refused_before_anything_runs(argv, message, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["run", "--methods", "ce", "--datasets", "synthetic-lt", "--budget", "smoke", "--output", str(out)]
                + argv) == 2
    assert message in capsys.readouterr().err
    assert not any(out.rglob(RESULT_FILE))


@pytest.mark.parametrize("argv, message", [
    (["--nproc", "0"], "--nproc must be a positive integer, got 0"),
    (["--nproc", "2", "--jobs", "2"], "--jobs, --launcher and --shard do not combine with it"),
])
def test_bad_nproc_options_are_refused_before_anything_runs(argv, message, tmp_path, capsys):
    assert main(["run", "--methods", "ce", "--datasets", "synthetic-lt", "--budget", "smoke",
                 "--output", str(tmp_path)] + argv) == 2
    assert message in capsys.readouterr().err


def test_the_slurm_launcher_submits_one_array_task_per_stage_1_group(tmp_path, monkeypatch, capsys):
    """No cluster here: a stand-in ``srun`` lets submitit build its SLURM executor, and the array submission
    itself is captured instead of calling ``sbatch``."""
    submitit = pytest.importorskip("submitit")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    submitted = {}

    class Job:
        def __init__(self, i):
            self.job_id = f"4242_{i}"

    def map_array(self, fn, *columns):
        submitted.update(fn=fn, columns=columns, parameters=dict(self._executor.parameters))
        return [Job(i) for i in range(len(columns[0]))]

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", map_array)
    out = tmp_path / "runs"
    assert main(["run", "--methods", "ce,crt,lws,focal", "--datasets", "synthetic-lt", "--seeds", "0,1",
                 "--budget", "smoke", "--output", str(out), "--launcher", "slurm", "--slurm-partition", "gpu",
                 "--slurm-gpus-per-job", "1", "--slurm-time", "240", "--slurm-array-parallelism", "3"]) == 0
    said = capsys.readouterr().out
    assert "submitted 8 runs as 4 slurm jobs: 4242_0, 4242_1, 4242_2, 4242_3" in said
    groups = submitted["columns"][0]  # per task: the requests of its runs
    assert sorted(len(g) for g in groups) == [1, 1, 3, 3]  # ce, crt and lws of a seed share one task
    assert {r["methods"][0] for g in groups if len(g) == 3 for r in g} == {"ce", "crt", "lws"}
    assert submitted["parameters"]["partition"] == "gpu" and submitted["parameters"]["gpus_per_node"] == 1
    assert submitted["parameters"]["time"] == 240 and submitted["parameters"]["array_parallelism"] == 3
    assert status.summary(status.collect(out))["missing"] == 8  # planned, not started: status knows them


def test_the_slurm_launcher_off_a_cluster_says_so(tmp_path, monkeypatch, capsys):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert main(["run", "--methods", "ce", "--datasets", "synthetic-lt", "--budget", "smoke", "--output",
                 str(tmp_path), "--launcher", "slurm"]) == 2
    assert "are you indeed on a slurm cluster" in capsys.readouterr().err
