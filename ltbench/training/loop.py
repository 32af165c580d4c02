"""The training loop: steps, epochs and both stages, with checkpoints every epoch.

Stage 1 trains backbone + classifier; an optional stage 2 (asked for by ``ltbench_second_stage``)
retrains the classifier on the frozen backbone, on cached features when it can, or fine-tunes the
whole network. Both call the run hooks of :mod:`ltbench.hookspecs` in the order that module states.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ltbench.errors import CheckpointError, PluginContractError
from ltbench.training import checkpoints, distributed
from ltbench.training.evaluate import _autocast, extract_features
from ltbench.training.hooks import (_expect, _owner, build_classifier, build_loss, build_sampler, compute_loss,
                                    extra_losses, param_groups, stage_hook, train_views)
from ltbench.training.model import ModelOutput
from ltbench.training.progress import Heartbeat, _progress
from ltbench.training.run import Batch
from ltbench.training.schedules import _check_own_steps, head_lr_factor, lr_at, stage2_schedule

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ltbench.training.run import Run, SecondStage


class Diverged(Exception):
    """A non-finite loss: the run stops and is recorded as ``diverged``."""


def _rng_state(run: Run) -> dict[str, Any]:
    state = {"generator": run.generator.get_state(), "torch": torch.get_rng_state(),
             "numpy": np.random.get_state(), "python": random.getstate()}
    if run.aug_generator is not None and run.aug_generator is not run.generator:
        state["aug_generator"] = run.aug_generator.get_state()
    return state


def _set_rng_state(run: Run, state: dict[str, Any]) -> None:
    run.generator.set_state(state["generator"])
    if "aug_generator" in state and run.aug_generator is not None and run.aug_generator is not run.generator:
        run.aug_generator.set_state(state["aug_generator"])
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def method_states(run: Run) -> dict[str, Any]:
    """Each method's ``state_dict``, checked and made safe to load (see :mod:`ltbench.training.checkpoints`)."""
    return {m.name: checkpoints.to_safe(m.state_dict(), f"method {m.name!r}: state_dict()") for m in run.methods}


def _checkpoint(run: Run, path: Path, optimizer: torch.optim.Optimizer) -> None:
    checkpoints.save({
        "stage": run.stage, "epoch": run.epoch, "model": run.model.state_dict(), "optimizer": optimizer.state_dict(),
        "methods": method_states(run), "rng": _rng_state(run), "history": run.history,
        "identity": run.checkpoint_identity, "machines": run.machines,
    }, path)


def unstated_machine(stage: int, epochs: int) -> list[dict[str, Any]]:
    """The stretch of a stage's first ``epochs`` epochs trained before ltbench noted machines (a checkpoint or a
    finished stage 1 written then): on a machine not stated; none where it trained no epoch."""
    return [{"stage": stage, "first_epoch": 1, "last_epoch": epochs, "device_model": None}] if epochs else []


def note_machine(run: Run, stage: int, epoch: int) -> None:
    """Add ``epoch`` (1-based) of ``stage`` to :attr:`Run.machines`: it extends the last stretch when it follows
    it on the same machine, else it starts one."""
    if not run.machine:
        return
    last = run.machines[-1] if run.machines else None
    if last and (last["stage"], last["device_model"], last["last_epoch"]) == (stage, run.machine, epoch - 1):
        last["last_epoch"] = epoch
    else:
        run.machines.append({"stage": stage, "first_epoch": epoch, "last_epoch": epoch, "device_model": run.machine})


def check_identity(run: Run, path: Path, ckpt: Any, stated_only: bool = False) -> None:
    """Refuse a checkpoint that is not this run's: its ``identity`` (what :func:`_checkpoint` and a finished stage 1
    write: the run's configuration, or the shared stage 1's key) names another run, or it names none, so that a
    checkpoint copied or left there is never resumed from or reused as if it were this run's. ``stated_only``: one
    that names no identity is taken (a finished ``stage1.pt`` written before ltbench wrote identities into them,
    such as the shipped paper-budget stage 1s), with a line saying so."""
    if not run.checkpoint_identity:  # a run outside a grid (the testing kit): nothing to compare with
        return
    written_for = ckpt.get("identity") if isinstance(ckpt, dict) else None
    if written_for is None and stated_only:
        if distributed.is_main():  # said even under --quiet: what a run is built on is never silent
            print(f"note: {path} names no run it belongs to (written before ltbench recorded one); it is used as "
                  f"this run's ({run.checkpoint_identity}); pass --rerun if it was copied from elsewhere",
                  file=sys.stderr, flush=True)
        return
    if written_for != run.checkpoint_identity:
        whose = (f"belongs to another configuration ({written_for}; " if written_for else
                 "names no run it belongs to (")
        raise CheckpointError(f"checkpoint {path} {whose}this run is {run.checkpoint_identity}): it was copied or "
                              f"left there; refused, never resumed from or reused. Pass --rerun to retrain the run, "
                              f"or remove the file")


def _restore(run: Run, ckpt: dict[str, Any], optimizer: torch.optim.Optimizer) -> int:
    run.model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    for m in run.methods:
        m.load_state_dict(ckpt["methods"].get(m.name, {}))
    _set_rng_state(run, ckpt["rng"])
    run.history = ckpt["history"]
    run.machines = list(ckpt["machines"]) if "machines" in ckpt else [
        *run.machines, *unstated_machine(ckpt["stage"], ckpt["epoch"] + 1)]
    run.log(f"resuming stage {ckpt['stage']} after epoch {ckpt['epoch'] + 1}")
    return ckpt["epoch"] + 1


def task_logits(batch: Batch, logits: torch.Tensor) -> torch.Tensor:
    """The rows the task loss trains on: the first view's, and any a module appended after the views."""
    if not batch.extra_views:
        return logits
    first, after = batch.view_rows(0), batch.view_rows(batch.views - 1).stop
    return torch.cat([logits[first], logits[after:]])


def row_weights_for(batch: Batch, rows: int) -> torch.Tensor | None:
    """``batch.row_weights``, with weight 1 for rows a module appended after the batch's own."""
    w = batch.row_weights
    if w is None or len(w) >= rows or batch.images is None or len(w) != len(batch.images):
        return w
    return torch.cat([w, w.new_ones(rows - len(w))])


def _train_step(run: Run, optimizer: torch.optim.Optimizer, loss_fn, batch: Batch,
                scale: float = 1.0) -> dict[str, torch.Tensor]:
    """One optimisation step: augmentation hooks, forward, task loss plus extra losses, backward.

    Returns the detached loss terms, still on the device: nothing here waits for the device
    (no ``float()``/``item()``/``bool()`` on a device tensor), so a GPU queue never stalls mid-epoch."""
    model = run.model
    run.pm.hook.ltbench_augment_batch(run=run, model=model, batch=batch)

    def loss_and_gradients() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        with _autocast(run.device):
            if batch.images is None:  # a classifier-only stage on features
                output = ModelOutput(model.classifier(batch.features), batch.features, batch.features)
            elif batch.extra_views:  # every view in one forward pass, view by view
                output = model.forward_all(torch.cat([batch.images, *batch.extra_views]))
            else:
                output = model.forward_all(batch.images)
            targets = batch.loss_targets(run.num_classes)
            terms = {"task": compute_loss(run, loss_fn, task_logits(batch, output.logits).float(), targets,
                                          row_weights_for(batch, len(targets)))}
            terms.update(extra_losses(run, model, batch, output))
            total = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        (total * scale if scale != 1.0 else total).backward()
        distributed.average_gradients(model.parameters())  # under torchrun: the gradient of the global batch
        return terms, total

    terms, _ = loss_and_gradients()
    step_hook = stage_hook(run, "ltbench_optimizer_step", run.stage)
    if step_hook.get_hookimpls():  # a method owns the step in this stage
        def closure() -> torch.Tensor:
            run.reevaluating = True
            try:
                return loss_and_gradients()[1].detach()
            finally:
                run.reevaluating = False

        stepped = step_hook(run=run, model=model, optimizer=optimizer, closure=closure)
        _expect(run, "ltbench_optimizer_step", stepped, lambda v: v is None or v is True,
                "True (the method stepped) or None (the core steps)", run.stage)
        if stepped is None:
            optimizer.step()
    else:
        optimizer.step()
    return {k: v.detach() for k, v in terms.items()}


#: count the first training step of every epoch with torch's flop counter (the history's
#: ``train_flops_per_image``, the record's ``compute.training_flops``). The counter only observes: a run's losses
#: and predictions are the same with it off (tests/test_training_flops.py)
COUNT_TRAINING_FLOPS = True


def _flop_counter():
    """torch's ``FlopCounterMode`` counting globally, without its per-module tracker: the tracker's backward
    hooks refuse an ``autograd.grad`` call inside the step (BLT's adversarial ascent), and ltbench needs the
    total only. Where torch's internals differ, the plain counter."""
    from torch.utils import flop_counter

    inner = getattr(flop_counter, "_FlopCounterMode", None)
    if inner is None:
        return flop_counter.FlopCounterMode(display=False)

    class GlobalFlopCounter(flop_counter.FlopCounterMode):
        def __enter__(self):
            self.flop_counts.clear()
            self.mode = inner(self)
            self.mode.__enter__()
            return self

        def __exit__(self, *args):
            mode, self.mode = self.mode, None
            return mode.__exit__(*args)

    return GlobalFlopCounter(display=False)


def _counted_step(run: Run, optimizer: torch.optim.Optimizer, loss_fn, batch: Batch,
                  scale: float = 1.0) -> tuple[dict[str, torch.Tensor], float | None]:
    """:func:`_train_step` under ``torch.utils.flop_counter.FlopCounterMode``: its loss terms, and the FLOPs of
    the whole step per image it trained on (each view one image, as the history's ``images`` counts them), or
    ``None`` where the counter cannot run here. Everything the step runs is counted: the augmentation hooks
    (generated samples), the forward pass of every view, the task and extra losses (a key encoder, projection
    heads), the backward pass, and a step owner's closure (SAM's second forward and backward); the optimiser's
    element-wise update is not (torch's counter counts matrix products and convolutions)."""
    images = len(batch.labels) * run.views  # the rows sampled, before a hook appends any of its own
    try:
        counter = _flop_counter()
        counter.__enter__()
    except Exception:  # noqa: BLE001 - no counter on this device: the step runs uncounted, the record says null
        return _train_step(run, optimizer, loss_fn, batch, scale), None
    counted = True
    try:
        terms = _train_step(run, optimizer, loss_fn, batch, scale)
    finally:
        try:
            counter.__exit__(None, None, None)
        except Exception:  # noqa: BLE001 - as above
            counted = False
    flops = counter.get_total_flops() if counted else 0
    return terms, (flops / images if flops > 0 and images else None)


def run_steps(run: Run, optimizer: torch.optim.Optimizer, loss_fn, order: torch.Tensor, batch_size: int,
              make_batch: Callable[[torch.Tensor], Batch], bar=None,
              flops: dict[str, Any] | None = None) -> tuple[dict[str, torch.Tensor], int]:
    """The steps of one epoch over ``order`` (indices): per-term loss sums on the device, and the step count.
    With ``flops`` (a dict), the first step is counted (:func:`_counted_step`) and ``flops["per_image"]`` set.

    A non-finite loss is not checked per step (that would wait for the device every step): it makes its
    term's sum non-finite, which :func:`check_finite` reads once at the end of the epoch."""
    sums: dict[str, torch.Tensor] = {}
    steps = 0
    shard = distributed.is_distributed() and run.shard_batches
    beat = Heartbeat(run, f"stage {run.stage} epoch {run.epoch + 1} steps", -(-len(order) // batch_size))
    for start in range(0, len(order), batch_size):
        batch, scale = make_batch(order[start : start + batch_size]), 1.0
        if shard:  # the global batch (sampled and augmented alike on every rank), then this rank's rows
            rows = distributed.shard_rows(len(batch.labels))
            scale = (rows.stop - rows.start) * distributed.world_size() / len(batch.labels)
            batch = batch.rows(rows)
        if flops is not None and steps == 0 and COUNT_TRAINING_FLOPS:
            terms, flops["per_image"] = _counted_step(run, optimizer, loss_fn, batch, scale)
        else:
            terms = _train_step(run, optimizer, loss_fn, batch, scale)
        for k, v in terms.items():
            sums[k] = sums[k] + v.double() if k in sums else v.double()
        steps += 1
        if bar:
            bar.update(1)
        else:
            beat(steps)
    return sums, steps


def epoch_losses(entry: dict[str, Any]) -> str:
    """The epoch line's losses: the task loss, then every extra term by name, e.g.
    ``loss 2.3012 (+ diversity -0.0130, supcon 0.4410)``."""
    extra = ", ".join(f"{k[len('loss_'):]} {v:.4f}" for k, v in entry.items()
                      if k.startswith("loss_") and k != "loss_task")
    return f"loss {entry.get('loss_task', float('nan')):.4f}" + (f" (+ {extra})" if extra else "")


def _mean_over_ranks(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    """The epoch's loss sums as floats; under torchrun, the mean over ranks (every rank gets the same, so a
    NaN on one rank stops them all)."""
    if not distributed.is_distributed():
        return {k: float(v) for k, v in sums.items()}
    keys: list[list[str]] = [[] for _ in range(distributed.world_size())]
    torch.distributed.all_gather_object(keys, sorted(sums))
    names = sorted(set().union(*keys))
    if not names:
        return {}
    device = next(iter(sums.values())).device  # every rank ran the same steps, so each has some term
    vector = torch.stack([sums[k] if k in sums else torch.zeros((), dtype=torch.float64, device=device)
                          for k in names])
    distributed.all_reduce_sum(vector)
    return {k: float(v) / distributed.world_size() for k, v in zip(names, vector.tolist())}


def check_finite(run: Run, sums: dict[str, float]) -> None:
    """Raise :class:`Diverged` when an epoch's loss went non-finite, naming the stage, epoch and terms."""
    bad = [k for k, v in sums.items() if not math.isfinite(v)]
    if bad:
        raise Diverged(f"non-finite loss at stage {run.stage}, epoch {run.epoch + 1} (terms: {', '.join(bad)})")


def _train_epochs(run: Run, stage: int, epochs: int, optimizer: torch.optim.Optimizer, set_lr: Callable[[int], None],
                  labels: np.ndarray, make_batch: Callable[[torch.Tensor], Batch], batch_size: int, ckpt_path: Path,
                  on_epoch_end: Callable[[], None] | None, frozen_backbone: bool = False) -> None:
    """The epoch loop both stages share: hooks, batches from the stage's sampler over ``labels``, history,
    checkpoints."""
    model = run.model
    sampler = build_sampler(run, stage, labels)
    loss_fn = build_loss(run, stage)
    run.views = train_views(run, stage, on_features=not hasattr(make_batch, "prefetch"))
    start = 0
    if distributed.agree(ckpt_path.exists()):
        ckpt = checkpoints.load(ckpt_path)
        check_identity(run, ckpt_path, ckpt)
        start = _restore(run, ckpt, optimizer)
    for epoch in range(start, epochs):
        run.epoch = epoch
        set_lr(epoch)
        run.pm.hook.ltbench_epoch_start(run=run, stage=stage, epoch=epoch)
        model.train()
        if frozen_backbone:
            model.backbone.eval()  # frozen: batch-norm statistics stay as stage 1 left them
        order = torch.as_tensor(list(iter(sampler)), dtype=torch.long)
        if hasattr(make_batch, "prefetch"):  # a streaming store decodes the epoch's image batches ahead
            make_batch.prefetch(order, batch_size)
        bar = _progress(run, math.ceil(len(order) / batch_size), f"stage {stage} epoch {epoch + 1}/{epochs}")
        t0 = time.perf_counter()
        counted: dict[str, Any] = {}  # the epoch's first step, counted: its FLOPs per image
        device_sums, steps = run_steps(run, optimizer, loss_fn, order, batch_size, make_batch, bar, flops=counted)
        sums = _mean_over_ranks(device_sums)  # the one wait for the device per epoch
        distributed.broadcast_state(model, buffers_only=True)  # rank 0's running statistics everywhere
        seconds = time.perf_counter() - t0
        if bar:
            bar.close()
        check_finite(run, sums)
        entry = {"stage": stage, "epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
                 "seconds": round(seconds, 3), "images": len(order) * run.views,  # every view is an image processed
                 "images_per_s": round(len(order) * run.views / seconds, 1) if seconds > 0 else None,
                 **({"train_flops_per_image": counted["per_image"]} if "per_image" in counted else {}),
                 **{f"loss_{k}": v / max(steps, 1) for k, v in sums.items()}}
        run.pm.hook.ltbench_epoch_end(run=run, stage=stage, epoch=epoch)
        every = run.config.get("val_every", 0)
        if every and ((epoch + 1) % every == 0 or epoch + 1 == epochs):
            run.validation()  # a learning curve: cheap (the validation split is small), and never the test split
        if run._validation_cache and run._validation_cache[0] == (stage, epoch):
            entry["val_overall"] = run._validation_cache[1].overall
        run.history.append(entry)
        note_machine(run, stage, epoch + 1)
        if run.on_epoch_entry is not None:
            run.on_epoch_entry(entry)
        run.log(f"[{run.method_name} seed {run.seed}] stage {stage} epoch {epoch + 1}/{epochs} "
                f"{epoch_losses(entry)} ({entry['seconds']:.1f}s)")
        if distributed.is_main():
            _checkpoint(run, ckpt_path, optimizer)
        if on_epoch_end:
            on_epoch_end()
    run.pm.hook.ltbench_stage_end(run=run, stage=stage)


def image_batch(run: Run, labels: np.ndarray) -> Callable[[torch.Tensor], Batch]:
    """Batches of augmented training images: labels and images gathered on the device."""
    on_device = torch.as_tensor(np.asarray(labels), device=run.device)

    # Under torchrun every rank builds the global batch and keeps its rows (run_steps). The store is told
    # which rows those are, so that a streaming store decodes this rank's share of the image files only.
    def local_rows() -> Callable[[int], slice] | None:
        return distributed.shard_rows if distributed.is_distributed() and run.shard_batches else None

    def make_images(idx: torch.Tensor) -> Batch:
        where = idx.to(run.device, non_blocking=True)
        rows = local_rows()
        images = run.train_images.get(where, augment=True, generator=run.aug_generator,
                                      local=rows(len(idx)) if rows else None, views=run.views)
        first, *extra = images.chunk(run.views)
        return Batch(labels=on_device[where], indices=idx, images=first, extra_views=tuple(extra))

    def prefetch(order: torch.Tensor, batch_size: int) -> None:
        run.train_images.prefetch(order, batch_size, run.aug_generator, local_rows=local_rows(), views=run.views)

    make_images.prefetch = prefetch
    return make_images


def make_optimizer(run: Run, stage: int, groups: list[dict[str, Any]], momentum: float,
                   nesterov: bool = False) -> torch.optim.SGD:
    """The stage's SGD over the core's ``groups``, shaped by the methods' ``ltbench_param_groups``; what it is
    goes into ``run.optimizers`` (the record's ``optimizer``)."""
    shaped, described = param_groups(run, stage, groups)
    run.optimizers[str(stage)] = {"name": "SGD", "momentum": momentum, "nesterov": nesterov, "groups": described}
    return torch.optim.SGD(shaped, lr=shaped[0]["lr"], momentum=momentum, nesterov=nesterov)


def train_stage1(run: Run, ckpt_path: Path, on_epoch_end: Callable[[], None] | None = None) -> None:
    config = run.config
    params = [p for p in run.model.parameters() if p.requires_grad]
    optimizer = make_optimizer(run, 1, [{"params": params, "lr": config["lr"], "weight_decay": config["weight_decay"],
                                         "label": "stage 1"}], momentum=config["momentum"])

    def set_lr(epoch: int) -> None:
        for group in optimizer.param_groups:  # (a checkpoint from before lr_factor existed has one group of x1)
            group["lr"] = lr_at(config, epoch) * group.get("lr_factor", 1.0)

    _train_epochs(run, 1, config["epochs"], optimizer, set_lr, run.train_labels, image_batch(run, run.train_labels),
                  config["batch_size"], ckpt_path, on_epoch_end)


def prepare_stage2(run: Run, plan: SecondStage) -> None:
    """Freeze the backbone (unless the plan trains it) and build the stage-2 head."""
    run.stage = 2
    if not plan.train_backbone:
        for p in run.model.backbone.parameters():
            p.requires_grad_(False)
        if plan.features is not None:
            if plan.labels is None or len(plan.labels) != len(plan.features):
                raise PluginContractError(f"{_owner(run, 'ltbench_second_stage')}: SecondStage.features needs "
                                          f"labels of the same length")
            run.train_features = plan.features.to(run.device)
        elif plan.cached_features and not plan.update_bn_statistics:
            t0 = time.perf_counter()
            run.log(f"[{run.method_name} seed {run.seed}] stage 2: extracting the features of "
                    f"{len(run.train_labels)} training images")
            run.train_features = extract_features(run)
            run.log(f"[{run.method_name} seed {run.seed}] features extracted ({time.perf_counter() - t0:.1f}s)")
    run.model.classifier = build_classifier(run, 2, run.model.num_features, run.model.classifier).to(run.device)
    distributed.broadcast_state(run.model.classifier)  # a new head starts the same on every rank


def train_stage2(run: Run, plan: SecondStage, ckpt_path: Path, on_epoch_end: Callable[[], None] | None = None) -> None:
    config, model = run.config, run.model
    epochs = config["stage2_epochs"] if plan.epochs is None else plan.epochs
    lr = config["stage2_lr"] if plan.lr is None else plan.lr

    head = [(n, p) for n, p in model.classifier.named_parameters() if p.requires_grad]
    factors = {n: head_lr_factor(plan, n) for n, _ in head}
    groups = [{"params": [p for n, p in head if factors[n] == f], "lr": lr * f, "lr_factor": f,
               "weight_decay": plan.weight_decay, "label": "classifier" + (f" x{f:g}" if f != 1 else "")}
              for f in sorted(set(factors.values()))]
    if plan.train_backbone:
        backbone_lr = plan.backbone_lr if plan.backbone_lr is not None else lr
        groups.append({"params": [p for p in model.backbone.parameters() if p.requires_grad], "lr": backbone_lr,
                       "lr_factor": backbone_lr / lr if lr else 1.0, "weight_decay": plan.weight_decay,
                       "label": "backbone"})
    groups = [g for g in groups if g["params"]]
    if not groups or epochs == 0:
        run.pm.hook.ltbench_stage_end(run=run, stage=2)
        return
    optimizer = make_optimizer(run, 2, groups, momentum=plan.momentum, nesterov=plan.nesterov)
    base_lrs = [g["lr"] for g in optimizer.param_groups]

    _check_own_steps(run, plan, epochs)
    schedule = stage2_schedule(config, plan)

    def set_lr(epoch: int) -> None:
        factor = schedule(epoch, epochs)
        for g, base in zip(optimizer.param_groups, base_lrs):
            g["lr"] = base * factor

    labels = run.train_labels if plan.labels is None else np.asarray(plan.labels)
    run.shard_batches = plan.data_parallel
    features = run.train_features
    if features is not None:
        on_device = torch.as_tensor(labels, device=run.device)

        def make_batch(idx: torch.Tensor) -> Batch:
            where = idx.to(run.device, non_blocking=True)
            return Batch(labels=on_device[where], features=features[where.to(features.device)], indices=idx)
    else:
        make_batch = image_batch(run, labels)
    _train_epochs(run, 2, epochs, optimizer, set_lr, labels, make_batch, plan.batch_size or config["stage2_batch_size"],
                  ckpt_path, on_epoch_end, frozen_backbone=not (plan.train_backbone or plan.update_bn_statistics))
