"""One run trained data-parallel over several processes (``torchrun``; gloo on CPU, NCCL on GPUs).

ltbench does not wrap the model in ``DistributedDataParallel``: methods call the model, its heads and its
backbone in many ways (BLT's gradient ascent, Breadcrumb's second head, CAM fusion's feature maps), and DDP's
hooks would see those too. Instead, every rank runs the same step loop in lockstep and, after each backward,
:func:`average_gradients` averages the gradients in one collective. So:

- every rank draws the same sampler order and the same augmentation for the whole global batch (one seeded
  generator, the same on every rank), then keeps its own contiguous rows (:func:`shard_rows`): the global
  batch is the one a single process draws, whatever the number of ranks;
- BatchNorm can be synced across ranks (``--set sync_bn=true``, :class:`SyncBatchNorm`, which also works on
  CPU with gloo); the buffers (running statistics) are made rank 0's after every epoch either way;
- evaluation and validation run on every rank over the whole split, so decisions taken on them (tau-norm's
  tau, BLT's confusion matrix) are the same everywhere;
- only rank 0 writes records, histories and checkpoints, and takes the run locks; the others follow its
  decisions (:func:`agree`). Nothing in a checkpoint depends on the number of ranks, so a run resumes with
  any number of them.

Method state that must stay global uses the helpers here; each is a no-op in a single process:
:func:`all_reduce_sum`, :func:`gather_rows` (the rows of every rank, in single-process order). Every rank
must call a collective the same number of times, so call them from hooks every rank runs alike.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    """Whether this process is one of several ranks (under torchrun with more than one process)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 in a single process)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """How many ranks run together (1 in a single process)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: torch.device) -> torch.device:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_*``);
    return this rank's device (its own GPU on CUDA)."""
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=rank_timeout()))
    return device


#: seconds a rank waits for the others in a collective before its run fails (``LTBENCH_RANK_TIMEOUT_S``)
DEFAULT_RANK_TIMEOUT_S = 300
#: a rank whose heartbeat is older than this is named as stopped when a collective times out
HEARTBEAT_S = 5


def rank_timeout() -> float:
    return float(os.environ.get("LTBENCH_RANK_TIMEOUT_S", DEFAULT_RANK_TIMEOUT_S))


def start_heartbeat(directory: Path) -> None:
    """Write this rank's time into ``directory/rank<k>`` every few seconds, from a daemon thread, so that a rank
    left waiting can name the one that stopped answering (:func:`stopped_ranks`)."""
    import threading

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"rank{rank()}"

    def beat() -> None:
        while True:
            path.write_text(f"{time.time()}")
            time.sleep(HEARTBEAT_S)

    threading.Thread(target=beat, name="ltbench-heartbeat", daemon=True).start()


def stopped_ranks(directory: Path, stale_s: float = 6 * HEARTBEAT_S) -> list[int]:
    """The ranks whose heartbeat in ``directory`` is older than ``stale_s`` seconds (or missing); [] where no
    heartbeat runs (``directory`` absent)."""
    if not directory.is_dir():
        return []
    now, out = time.time(), []
    for r in range(world_size()):
        try:
            seen = float((directory / f"rank{r}").read_text())
        except (OSError, ValueError):
            seen = 0.0
        if now - seen > stale_s:
            out.append(r)
    return out


def shard_rows(n: int) -> slice:
    """This rank's contiguous rows of a global batch of ``n`` (sizes differ by at most one)."""
    k, r = world_size(), rank()
    base, extra = divmod(n, k)
    start = r * base + min(r, extra)
    return slice(start, start + base + (1 if r < extra else 0))


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place; returns the tensor."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def agree(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (for decisions taken on files only rank 0 writes)."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait until every rank gets here (nothing in a single process)."""
    if is_distributed():
        dist.barrier()


def average_gradients(parameters: list[nn.Parameter]) -> None:
    """Average gradients over ranks in one collective. A parameter no rank gave a gradient keeps ``None`` (so
    that SGD's weight decay leaves it alone, as in a single process); one that some rank did gets the mean."""
    if not is_distributed():
        return
    params = [p for p in parameters if p.requires_grad]
    if not params:
        return
    device = params[0].device
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params]
                     + [has])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size()
    offset = 0
    for p, had in zip(params, flat[-len(params):].tolist()):
        n = p.numel()
        if had > 0:
            p.grad = flat[offset : offset + n].view_as(p).to(p.dtype)
        offset += n


def broadcast_state(module: nn.Module, buffers_only: bool = False) -> None:
    """Rank 0's buffers (and parameters) on every rank."""
    if not is_distributed():
        return
    tensors = list(module.buffers()) if buffers_only else list(module.parameters()) + list(module.buffers())
    for t in tensors:
        dist.broadcast(t.data, src=0)


def gather_rows(chunks: list[torch.Tensor]) -> torch.Tensor:
    """``chunks`` are this rank's rows of consecutive global batches (one chunk per step, as
    :func:`shard_rows` cut them); returns every rank's rows in single-process order: step by step, rank by
    rank."""
    local = torch.cat(chunks) if chunks else torch.zeros(0)
    if not is_distributed():
        return local
    sizes = [len(c) for c in chunks]
    all_sizes: list[list[int]] = [[] for _ in range(world_size())]
    dist.all_gather_object(all_sizes, sizes)
    longest = max(sum(s) for s in all_sizes)
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: len(local)] = local
    gathered = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(gathered, padded)
    pieces = [list(g[: sum(s)].split(s)) for g, s in zip(gathered, all_sizes)]
    steps = max(len(s) for s in all_sizes)
    return torch.cat([p[step] for step in range(steps) for p in pieces if step < len(p)])


class _SumOverRanks(torch.autograd.Function):
    """All-reduce sum whose backward is again an all-reduce sum (each rank's loss depends on every rank's
    statistics)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over ranks, differentiable: its backward is again a sum over ranks (the tensor itself
    in a single process). For statistics of the global batch inside a loss that every rank computes alike, e.g.
    class counts or feature sums; unlike :func:`all_reduce_sum` it returns a new tensor and keeps the graph."""
    return _SumOverRanks.apply(tensor) if is_distributed() else tensor


def global_normaliser(local: torch.Tensor, rows: int) -> torch.Tensor:
    """The normaliser of a weighted mean over the global batch, as this rank's share of it: under torchrun, the
    sum of ``local`` (this rank's normaliser, e.g. its rows' class weights ``sum_i w_{y_i}``) over ranks times
    this rank's share of the batch's rows (``rows`` here over all ranks' rows); ``local`` itself in one process.

    Divide this rank's weighted sum by it: the core multiplies each rank's loss by its share of the rows and
    averages gradients over ranks, so the step's gradient is the single-process weighted mean's (``sum_i w_i l_i /
    sum_i w_i`` over the global batch), not a mean of per-rank weighted means. Without a gradient; every rank
    must call it the same number of times."""
    if not is_distributed():
        return local
    both = torch.stack([local.detach().to(torch.float64), torch.tensor(float(rows), dtype=torch.float64,
                                                                        device=local.device)])
    dist.all_reduce(both, op=dist.ReduceOp.SUM)
    return (both[0] * rows / both[1]).to(local.dtype) if float(both[1]) > 0 else local


class _GatherBatch(torch.autograd.Function):
    """This rank's rows -> the global batch's, in single-process order; backward: the gradient of this rank's
    rows, summed over ranks (see :func:`gather_batch`)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        k, r = world_size(), rank()
        sizes = torch.zeros(k, dtype=torch.long, device=x.device)
        sizes[r] = len(x)
        dist.all_reduce(sizes, op=dist.ReduceOp.SUM)
        counts = sizes.tolist()
        padded = x.new_zeros((max(counts), *x.shape[1:]))
        padded[: len(x)] = x
        gathered = [torch.empty_like(padded) for _ in range(k)]
        dist.all_gather(gathered, padded)
        ctx.start, ctx.stop = sum(counts[:r]), sum(counts[: r + 1])
        return torch.cat([g[:c] for g, c in zip(gathered, counts)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start : ctx.stop]


def gather_batch(run: Any, tensor: torch.Tensor) -> torch.Tensor:
    """The global batch's rows of ``tensor`` (features, logits, labels of this rank's rows of the current step),
    every rank's rows in single-process order, differentiable; ``tensor`` itself in a single process or in a
    stage whose every rank trains on the whole batch (``SecondStage.data_parallel=False``).

    For a loss term over the global batch inside a training step (``ltbench_extra_losses``, a task loss):
    compute it on the gathered rows, the same on every rank. Its backward sends each rank the gradient of its own
    rows summed over ranks. The core multiplies rank r's loss by its share of the rows (``n_r * K / N``; these
    shares sum to ``K``) and then averages gradients over the ``K`` ranks, so the step's gradient of such a term
    is the single-process one, shards even or not (a test checks it on 4 and 3 rows). Every rank must call it
    the same number of times, in the same order."""
    if not (is_distributed() and getattr(run, "shard_batches", True)):
        return tensor
    return _GatherBatch.apply(tensor)


def _sync_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """Batch norm of ``x`` ((B, C) or (B, C, ...)) with the statistics of the global batch over all ranks."""
    c = x.shape[1]
    dims = [0, *range(2, x.dim())]
    shape = [1, c, *[1] * (x.dim() - 2)]
    count = torch.tensor([x.numel() / c], dtype=x.dtype, device=x.device)
    stats = torch.cat([x.sum(dims), (x * x).sum(dims), count])
    stats = _SumOverRanks.apply(stats)
    n = stats[-1]
    mean = stats[:c] / n
    var = stats[c : 2 * c] / n - mean * mean
    if bn.track_running_stats:
        with torch.no_grad():
            momentum = bn.momentum if bn.momentum is not None else 0.1
            bn.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
            bn.running_var.mul_(1 - momentum).add_(momentum * var.detach() * n / max(float(n) - 1, 1))
            bn.num_batches_tracked += 1
    y = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + bn.eps)
    if bn.affine:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    return y


class SyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch, over all ranks, on any device
    (``torch.nn.SyncBatchNorm`` needs a GPU). In a single process or in eval mode it is plain BatchNorm2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        return _sync_batch_norm(self, x)


class SyncBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d (a projection head's) with the global batch's statistics, as :class:`SyncBatchNorm`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        return _sync_batch_norm(self, x)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm2d and BatchNorm1d in ``module`` replaced by :class:`SyncBatchNorm` /
    :class:`SyncBatchNorm1d` with the same state."""
    for plain, synced_cls in ((nn.BatchNorm2d, SyncBatchNorm), (nn.BatchNorm1d, SyncBatchNorm1d)):
        if isinstance(module, plain) and not isinstance(module, (SyncBatchNorm, SyncBatchNorm1d)):
            synced = synced_cls(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
            synced.load_state_dict(module.state_dict())
            return synced
    for name, child in module.named_children():
        setattr(module, name, convert_sync_batchnorm(child))
    return module
