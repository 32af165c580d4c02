"""Loss terms over the global batch under torchrun (issue 38, item 4): ``ltbench.api.gather_batch`` and
``sum_over_ranks`` are differentiable, and a term computed on gathered rows, after the core's per-rank loss scale
and gradient average, has the single-process gradient, on uneven shards too."""

from __future__ import annotations

import json

import torch
from torch import nn
from torch.nn import functional as F

from ltbench.api import gather_batch, shard_rows, sum_over_ranks
from ltbench.training import distributed as D

from test_distributed import in_ranks


class _Run:  # what gather_batch reads of a run
    shard_batches = True


def _model_and_batch(rows: int):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = torch.randn(rows, 4), torch.randint(0, 3, (rows,))
    return model, x, y


def _global_terms(logits: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Terms that do not split into rows: a batch-level logit variance and a count-weighted class-mean logit."""
    one_hot = F.one_hot(labels, 3).float()
    means = (one_hot.T @ logits) / counts.clamp(min=1)[:, None]
    return logits.var(0).sum() + 0.1 * means.diag().sum()


def _step(model, x, y, run, world_scale: float) -> None:
    """One core step: this rank's mean task loss plus the global terms, scaled as run_steps scales, backward, and
    the average over ranks."""
    logits = model(x)
    all_logits, all_labels = gather_batch(run, logits), gather_batch(run, y)
    counts = sum_over_ranks(torch.bincount(y, minlength=3).float())
    total = F.cross_entropy(logits, y) + _global_terms(all_logits, all_labels, counts)
    model.zero_grad()
    (total * world_scale).backward()
    D.average_gradients(list(model.parameters()))


def _in_rank(rank: int, out, rows: int) -> None:
    model, x, y = _model_and_batch(rows)
    mine = shard_rows(rows)
    _step(model, x[mine], y[mine], _Run(), (mine.stop - mine.start) * D.world_size() / rows)
    labels = gather_batch(_Run(), y[mine])
    (out / f"rank{rank}.json").write_text(json.dumps({
        "grad": [p.grad.tolist() for p in model.parameters()], "labels": labels.tolist()}))


def test_a_global_batch_term_has_the_single_process_gradient_on_uneven_shards(tmp_path):
    rows = 7  # 4 rows and 3: the core's per-rank loss scale is not 1
    in_ranks(_in_rank, tmp_path, rows)
    model, x, y = _model_and_batch(rows)
    _step(model, x, y, _Run(), 1.0)  # one process: every helper is the identity
    for r in (0, 1):
        got = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert got["labels"] == y.tolist()
        for mine, want in zip(got["grad"], model.parameters()):
            assert torch.allclose(torch.tensor(mine), want.grad, atol=1e-5), (mine, want.grad)


def test_a_stage_that_does_not_shard_gathers_nothing():
    class Whole:
        shard_batches = False

    x = torch.randn(3, 2, requires_grad=True)
    assert gather_batch(Whole(), x) is x and sum_over_ranks(x) is x


def _guide_namespace() -> dict:
    import re
    from pathlib import Path

    guide = (Path(__file__).resolve().parents[1] / "docs" / "writing-a-method.md").read_text()
    namespace: dict = {}
    for block in re.findall(r"```python\n(.*?)```", guide, flags=re.S):
        exec(compile(block, "writing-a-method.md", "exec"), namespace)
    return namespace


def test_the_guides_global_batch_method_learns_on_two_ranks_what_it_learns_in_one(tmp_path, monkeypatch):
    import importlib
    import re
    import sys
    from pathlib import Path

    from ltbench.api import check_distributed

    # the guide's code as a module of its own, so that the ranks' processes can import its class
    guide = (Path(__file__).resolve().parents[1] / "docs" / "writing-a-method.md").read_text()
    (tmp_path / "guide_methods.py").write_text("\n".join(re.findall(r"```python\n(.*?)```", guide, flags=re.S)))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("guide_methods")
    try:
        check_distributed(module.BatchCentres, tmp_path / "out")
    finally:
        sys.modules.pop("guide_methods", None)


def test_the_guides_optimiser_shaping_method_trains_with_its_decay_and_composes_with_sam(tmp_path):
    from ltbench.plugins.testing import catalog_with, run_methods

    namespace = _guide_namespace()
    catalog = catalog_with(namespace["StrongDecay"], namespace["BatchCentres"])
    for name in ("strong-decay+sam", "batch-centres"):
        (rec,) = run_methods(catalog, [name], tmp_path, epochs=1)
        assert rec["status"] == "completed", rec["error"]
    (rec,) = run_methods(catalog, ["strong-decay+sam"], tmp_path, epochs=1)
    assert [g["weight_decay"] for g in rec["optimizer"]["1"]["groups"]] == [5e-3]


def _bn1d_in_rank(rank: int, out) -> None:
    torch.manual_seed(0)
    x = torch.randn(7, 5)
    synced = D.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm1d(5)))[0]
    mine = shard_rows(len(x))
    xs = x[mine].clone().requires_grad_(True)
    (synced(xs) * torch.arange(5.0)).pow(2).sum().backward()
    (out / f"bn{rank}.json").write_text(json.dumps({"grad": xs.grad.tolist(), "var": synced.running_var.tolist()}))


def test_a_projection_heads_batchnorm1d_uses_the_global_batch_under_sync_bn(tmp_path):
    in_ranks(_bn1d_in_rank, tmp_path)
    torch.manual_seed(0)
    x = torch.randn(7, 5).requires_grad_(True)
    bn = nn.BatchNorm1d(5)
    (bn(x) * torch.arange(5.0)).pow(2).sum().backward()
    ranks = [json.loads((tmp_path / f"bn{r}.json").read_text()) for r in (0, 1)]
    assert torch.allclose(torch.cat([torch.tensor(r["grad"]) for r in ranks]), x.grad, atol=1e-4)
    assert all(torch.allclose(torch.tensor(r["var"]), bn.running_var, atol=1e-5) for r in ranks)


def test_cb_loss_normalises_over_the_global_batch_under_two_ranks(tmp_path):
    """Issue 37, item 6: cb-loss's class-weighted mean divided each rank's sum by its own weight sum, 1.2e-3 from one
    process; ``global_normaliser`` makes it the global batch's."""
    from ltbench.api import build_catalog, check_distributed

    check_distributed(build_catalog().method("cb-loss").cls, tmp_path)
