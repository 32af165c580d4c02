"""One run over two processes (issue 11, torchrun; gloo on CPU): the global batch is the single process's,
so with synced BatchNorm two ranks at 64 rows each follow the single-process batch-128 trajectory; method
state that must stay global is gathered or reduced; only rank 0 writes; a run resumes with another number of
ranks."""

import json
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from ltbench.results.records import RESULT_FILE
from ltbench.training import distributed as D

import toy_methods as toy

SMOKE = ["--datasets", "synthetic-lt", "--budget", "smoke", "--quiet", "--threads", "1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_entry(rank: int, world: int, port: int, fn, args, timeout: float = 1800) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=timeout))
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()


def in_ranks(fn, *args, world: int = 2, timeout: float = 1800) -> None:
    """``fn(rank, *args)`` in ``world`` processes joined in a gloo group (collectives time out after ``timeout``
    seconds)."""
    torch.multiprocessing.spawn(_rank_entry, args=(world, _free_port(), fn, args, timeout), nprocs=world, join=True)


def _ltbench(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ltbench", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def _history(out: Path, method: str) -> list[dict]:
    (path,) = [p for p in out.rglob("metrics.jsonl") if p.parts[-4] == method]
    return [json.loads(line) for line in path.read_text().splitlines()]


def _losses(history: list[dict]) -> np.ndarray:
    return np.array([[e["stage"], e["epoch"], e["loss_task"]] for e in history])


# ---------------------------------------------------------------------------------------------------------------
# the building blocks, each against its single-process meaning


def _building_blocks(rank: int, out: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 3, 5, 5)  # the global batch; every rank knows it, and keeps its rows
    mine = D.shard_rows(len(x))
    results = {"rows": [mine.start, mine.stop]}

    # SyncBatchNorm on each rank's rows = BatchNorm2d on the global batch, forward and backward
    bn = nn.BatchNorm2d(3)
    synced = D.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3)))[0]
    xs = x[mine].clone().requires_grad_(True)
    (synced(xs) * torch.arange(75.0).view(3, 5, 5)).sum().backward()
    results["sync_out"] = synced(x[mine]).detach().tolist()
    results["sync_grad"] = xs.grad.tolist()
    results["sync_running_var"] = synced.running_var.tolist()
    results["sync_weight_grad"] = synced.weight.grad.tolist()

    # average_gradients: the mean over ranks; a parameter no rank touched keeps no gradient
    used, unused = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    used.grad = torch.full((2,), float(rank + 1))
    D.average_gradients([used, unused])
    results["avg"] = used.grad.tolist()
    results["unused_is_none"] = unused.grad is None

    # gather_rows: every rank's rows of consecutive steps, in single-process order
    steps = [torch.arange(0, 5), torch.arange(5, 8)]  # two global batches of 5 and 3 rows
    chunks = [s[D.shard_rows(len(s))] for s in steps]
    results["gathered"] = D.gather_rows(chunks).tolist()
    (out / f"rank{rank}.json").write_text(json.dumps(results))
    del bn


def test_the_building_blocks_compute_what_one_process_computes(tmp_path):
    in_ranks(_building_blocks, tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rows"] for r in ranks] == [[0, 4], [4, 8]]

    torch.manual_seed(0)
    x = torch.randn(8, 3, 5, 5)
    bn = nn.BatchNorm2d(3)
    xg = x.clone().requires_grad_(True)
    (bn(xg) * torch.arange(75.0).view(3, 5, 5)).sum().backward()
    reference = bn(x).detach()  # (the second call updates the running statistics again, as on the ranks)
    out = torch.cat([torch.tensor(r["sync_out"]) for r in ranks])
    grad = torch.cat([torch.tensor(r["sync_grad"]) for r in ranks])
    assert torch.allclose(out, reference, atol=1e-5)
    assert torch.allclose(grad, xg.grad, atol=1e-4)
    for r in ranks:
        assert torch.allclose(torch.tensor(r["sync_running_var"]), bn.running_var, atol=1e-5)
        # each rank's loss covers its rows only; the averaged gradient is the global batch's
    summed = torch.tensor(ranks[0]["sync_weight_grad"]) + torch.tensor(ranks[1]["sync_weight_grad"])
    assert torch.allclose(summed, bn.weight.grad, atol=1e-3)

    assert ranks[0]["avg"] == ranks[1]["avg"] == [1.5, 1.5]
    assert ranks[0]["unused_is_none"] and ranks[1]["unused_is_none"]
    assert ranks[0]["gathered"] == ranks[1]["gathered"] == list(range(8))


def _safa_means(rank: int, out: Path) -> None:
    from types import SimpleNamespace

    from ltbench_builtin.safa import SAFAModule

    torch.manual_seed(1)
    feats, labels = torch.randn(12, 4, 2, 2), torch.tensor([0, 1, 1, 2, 0, 0, 3, 1, 2, 2, 0, 1])
    module = SAFAModule((4, 2, 2), 5)
    run = SimpleNamespace(shard_batches=True)
    for _ in range(2):  # the second update is an exponential average with the first
        rows = D.shard_rows(len(labels))
        # as SAFA's stage does under torchrun: the global batch's stage output and labels, gathered
        module.update_means(D.gather_batch(run, feats[rows]), D.gather_batch(run, labels[rows]))
    torch.save({"means": module.class_means, "seen": module.seen}, out / f"safa{rank}.pt")


def test_safa_class_means_are_those_of_the_global_batch_on_every_rank(tmp_path):
    from ltbench_builtin.safa import SAFAModule

    in_ranks(_safa_means, tmp_path)
    torch.manual_seed(1)
    feats, labels = torch.randn(12, 4, 2, 2), torch.tensor([0, 1, 1, 2, 0, 0, 3, 1, 2, 2, 0, 1])
    single = SAFAModule((4, 2, 2), 5)
    for _ in range(2):
        single.update_means(feats, labels)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"safa{rank}.pt")
        assert torch.allclose(got["means"], single.class_means, atol=1e-6)
        assert torch.equal(got["seen"], single.seen)


# ---------------------------------------------------------------------------------------------------------------
# whole runs under torchrun


@pytest.mark.slow
def test_two_ranks_at_64_follow_the_single_process_batch_128_trajectory(tmp_path):
    grid = ["run", "--methods", "ce,crt", *SMOKE, "--epochs", "4", "--set", "batch_size=128",
            "--set", "stage2_batch_size=128", "--set", "sync_bn=true"]
    one = _ltbench(*grid, "--output", "one", cwd=tmp_path)
    two = _ltbench(*grid, "--output", "two", "--nproc", "2", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr[-3000:]
    for method in ("ce", "crt"):
        single, ranks = _history(tmp_path / "one", method), _history(tmp_path / "two", method)
        assert len(single) == len(ranks) and {e["stage"] for e in single} == ({1} if method == "ce" else {1, 2})
        assert np.allclose(_losses(single), _losses(ranks), rtol=1e-5, atol=1e-6), (single, ranks)
        (record,) = [json.loads(p.read_text()) for p in (tmp_path / "two").rglob(RESULT_FILE)
                     if p.parts[-4] == method]
        assert record["world_size"] == 2 and record["status"] == "completed"
    # only rank 0 wrote: one record per run, and no stray files from rank 1
    assert len(list((tmp_path / "two").rglob(RESULT_FILE))) == 2


@pytest.mark.slow
def test_every_seed_method_trains_to_completion_under_two_ranks_with_its_state_global(tmp_path):
    grid = ["run", "--methods", "breadcrumb,breadcrumb-weak,cam-fusion,safa,blt", *SMOKE, "--set", "backbone=resnet8"]
    two = _ltbench(*grid, "--output", "two", "--nproc", "2", cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    one = _ltbench("run", "--methods", "breadcrumb", *SMOKE, "--set", "backbone=resnet8", "--output", "one",
                   cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    records = {json.loads(p.read_text())["method"]: json.loads(p.read_text())
               for p in (tmp_path / "two").rglob(RESULT_FILE)}
    assert sorted(records) == ["blt", "breadcrumb", "breadcrumb-weak", "cam-fusion", "safa"]
    assert all(r["status"] == "completed" and r["world_size"] == 2 for r in records.values())
    (single,) = [json.loads(p.read_text()) for p in (tmp_path / "one").rglob(RESULT_FILE)]
    # Breadcrumb's bank holds every rank's features: as many rows as a single process keeps
    assert records["breadcrumb"]["extra"]["breadcrumb"]["bank_peak_rows"] == \
        single["extra"]["breadcrumb"]["bank_peak_rows"]
    assert records["safa"]["extra"]["safa"]["generated"] > 0
    assert records["blt"]["extra"]["blt"]["hallucinated"] > 0
    assert records["cam-fusion"]["extra"]["cam-fusion"]["fused_samples"] > 0


def _interrupted_two_ranks(rank: int, out: Path) -> None:
    from ltbench.plugins.testing import catalog_with, run_methods

    toy.Interrupter.armed = True
    try:
        run_methods(catalog_with(*toy.ALL), ["ce+interrupter"], out, epochs=4,
                    settings={"sync_bn": "true", "batch_size": "64"})
    except KeyboardInterrupt:
        (out / f"interrupted{rank}").write_text("yes")


def test_a_run_interrupted_under_two_ranks_resumes_in_one_process(tmp_path):
    from ltbench.plugins.testing import catalog_with, run_methods

    torch.set_num_threads(1)
    in_ranks(_interrupted_two_ranks, tmp_path / "runs")
    assert (tmp_path / "runs" / "interrupted0").exists() and (tmp_path / "runs" / "interrupted1").exists()
    settings = {"sync_bn": "true", "batch_size": "64"}
    (resumed,) = run_methods(catalog_with(*toy.ALL), ["ce+interrupter"], tmp_path / "runs", epochs=4,
                             settings=settings)
    (plain,) = run_methods(catalog_with(*toy.ALL), ["ce+interrupter"], tmp_path / "plain", epochs=4,
                           settings=settings)
    assert resumed["status"] == "completed" and resumed["world_size"] == 1
    history = _history(tmp_path / "runs", "ce+interrupter")
    assert [e["epoch"] for e in history] == [1, 2, 3, 4]
    # epoch 1 by two ranks, 2-4 by one process: the single process's trajectory all the same
    assert np.allclose(_losses(history), _losses(_history(tmp_path / "plain", "ce+interrupter")), rtol=1e-5)
    assert resumed["per_class_accuracy"] == pytest.approx(plain["per_class_accuracy"], abs=1e-9)


# ---------------------------------------------------------------------------------------------------------------
# a failure or a stop on one rank ends the job with a record, instead of a silent hang


def _one_rank_fails(rank: int, out: Path, method: str) -> None:
    from ltbench.errors import LtbenchError
    from ltbench.grid.runner import RANKS_DIR
    from ltbench.plugins.testing import catalog_with, run_methods

    D.start_heartbeat(out / RANKS_DIR)
    try:
        run_methods(catalog_with(*toy.ALL), [f"ce+{method}", "ce"], out, epochs=3)
    except LtbenchError as exc:
        (out / f"ended{rank}").write_text(str(exc))
        raise


@pytest.mark.parametrize("method, said", [("raises-on-rank-1", "only rank 1 blew up"),
                                          ("stops-rank-1", "rank(s) 1 stopped answering")])
@pytest.mark.slow
def test_a_failure_or_a_stop_on_one_rank_ends_the_job_within_minutes_with_a_record(method, said, tmp_path,
                                                                                    monkeypatch):
    monkeypatch.setenv("LTBENCH_RANK_TIMEOUT_S", "40")
    out = tmp_path / "runs"
    t0 = time.monotonic()
    with pytest.raises(Exception):  # the job ends: the failing rank leaves, and the other one with it
        in_ranks(_one_rank_fails, out, method, timeout=D.rank_timeout())
    assert time.monotonic() - t0 < 150  # not the 30 minutes it used to wait, silent
    [record] = [json.loads(p.read_text()) for p in out.rglob("result.json")]
    assert record["status"] == "failed" and said in record["error"]
    assert record["method"] == f"ce+{method}"  # and the grid stopped there: plain ce did not run half-joined
