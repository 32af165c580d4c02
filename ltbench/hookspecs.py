"""The one contract between ltbench and its plugins.

There are two kinds of hooks, called at two different times.

**Registration hooks** (``ltbench_register_*``) are implemented by plugin
*modules* found through the ``ltbench`` entry-point group. They are called
once per process, when ltbench builds its catalog of methods, datasets and
backbones::

    [project.entry-points.ltbench]
    my-method = "my_package.plugin"

**Run hooks** are implemented by :class:`ltbench.api.Method` subclasses. Each run
creates a fresh plugin manager holding the core defaults (plain CE,
instance-balanced sampling, one stage) and
one new instance of every method the run selected (``a+b`` selects two). Only
those take part in that run, and their state lives on those instances.

Hooks marked *first result* return a value; the first non-``None`` answer wins
and the core defaults answer last. Two composed methods may not answer the
same first-result hook in the same stage: such a run fails before training
with a :class:`ltbench.api.CompositionError` naming the hook and the stage;
ltbench never picks one silently. A method that answers a stage's hook
(``ltbench_build_classifier``, ``ltbench_build_sampler``,
``ltbench_build_loss``, ``ltbench_optimizer_step``) in some stages only
declares them in ``Method.hook_stages`` (``{"ltbench_build_loss": (2,)}``):
the core asks it in those stages only, so it composes with a method that
answers the same hook in the other stage. A method that declares nothing for
a hook answers it in every stage. The other first-result hooks
(``ltbench_second_stage``, ``ltbench_eval_logits``,
``ltbench_adjust_logits``) are not asked per stage: one method of a run at
most implements each. The other run hooks are broadcast to every method of
the run, in the order the run names them: ``a+b`` calls ``a``'s
implementation, then ``b``'s.

A hook implementation may accept fewer arguments than the specification
lists (pluggy's opt-in arguments); it may not accept others. An exception
from any run hook fails that run only: its record says ``failed`` and names
the method and hook, and the grid goes on. A method's ``state_dict`` goes
into checkpoints loaded with ``torch.load(weights_only=True)``: tensors,
numpy arrays, numbers, strings, ``None`` and dicts/lists/tuples of them.

Under ``torchrun`` (``ltbench run --nproc K``) every rank runs every hook, in
lockstep, on its own rows of each global batch.
A method whose state must cover the whole batch or epoch (a feature bank,
class statistics, counters in its record) combines it with
``ltbench.api.gather_rows`` or ``ltbench.api.all_reduce_sum``, which do nothing
in a single process; every rank must make the same collective calls. The core
multiplies each rank's loss by its share of the global batch's rows and
averages gradients over ranks, so a mean over rows needs nothing more; a loss
term over the global batch takes ``ltbench.api.gather_batch`` and
``ltbench.api.sum_over_ranks``, which are differentiable (``docs/writing-a-method.md``,
section 7). Draw
from ``run.generator`` only for what every rank draws alike (samplers); keep
per-rank randomness on the method's own generator.

Stages: stage 1 trains backbone and classifier. A method that answers
:func:`ltbench_second_stage` adds stage 2, which starts from the stage-1
model and retrains the classifier on the frozen backbone (on cached features
when it needs no image augmentation), or fine-tunes the whole network. A
method that leaves stage 1 as the core defaults train it sets
``Method.plain_stage1``; its stage 1 is then trained once per (dataset,
budget, seed) and shared with every such method.

**Order of calls in a run** (every method's implementation of a broadcast
hook, in the order the run names the methods, before the next hook):

1. *Building the run*, once: the backbone is built, then
   :func:`ltbench_build_classifier` (stage 1) makes the head, ``run.train_images``
   is made, then :func:`ltbench_configure_model`. The model is still on the
   CPU at that point; after it, BatchNorm becomes SyncBatchNorm (``sync_bn``),
   the model moves to ``run.device``, to channels-last and is compiled (when
   the config says so). A resumed run loads its checkpoint later, into the
   configured model: modules a method adds here must be added the same way on
   every build, and their weights come from the checkpoint.
2. *Each stage*, at its start: :func:`ltbench_build_sampler`, then
   :func:`ltbench_build_loss`, then :func:`ltbench_train_views` (a resumed stage calls them again, then restores
   the model, optimizer, method states and random generators).
3. *Each epoch*: :func:`ltbench_epoch_start`; then for every step
   :func:`ltbench_augment_batch` (in place on the ``Batch``), the forward pass
   (``model.forward_all``), the task loss, :func:`ltbench_extra_losses` (given
   the forward's ``ModelOutput``), one backward pass through their sum, then
   :func:`ltbench_optimizer_step` (else the optimizer's own step); after the epoch's last step :func:`ltbench_epoch_end`, then
   validation when ``val_every`` asks for it, the epoch's history entry (the
   console line, the reporters' :func:`ltbench_report_epoch_end`) and the
   checkpoint. After the stage's last epoch: :func:`ltbench_stage_end`.
4. *After stage 1*: :func:`ltbench_second_stage`. When a method answers, stage
   2 is prepared (the backbone frozen unless the plan trains it, the training
   features extracted when the plan caches them, then
   :func:`ltbench_build_classifier` for stage 2 with the stage-1 head as
   ``previous``) and runs steps 2 and 3 as stage 2.
5. *Evaluation* (validation and test, in eval mode, per batch):
   :func:`ltbench_eval_logits` when a method implements it (else the model's
   logits), then :func:`ltbench_adjust_logits`.
6. *At the end*: :func:`ltbench_record`, each method's fields under its name.

A stage 1 that is already complete (a run resumed in stage 2, or the shared
stage 1 of a ``plain_stage1`` method) is loaded with the method states saved
with it, not trained: that run calls no stage-1 hook of steps 2 and 3.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from ltbench.training.backbones import BackboneSpec
    from ltbench.data.split import DatasetSpec
    from ltbench.training.run import Batch, ParamGroup, Run, SecondStage
    from ltbench.training.model import ModelOutput
    from ltbench.plugins.method import Method
    from ltbench.training.model import LTModel

    LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

hookspec = pluggy.HookspecMarker("ltbench")
#: Marker for hook implementations, in plugin modules and on Method classes (``ltbench.hookimpl`` and
#: ``ltbench.api.hookimpl`` are this one).
hookimpl = pluggy.HookimplMarker("ltbench")


def installed_version() -> str:
    """The installed distribution's version (pyproject.toml is the one place it is written)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ltbench")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


# --------------------------------------------------------------------------
# Registration: called once per process on every discovered plugin module.
# --------------------------------------------------------------------------


@hookspec
def ltbench_register_methods(register: Callable[[type[Method]], None]) -> None:
    """Add method classes to the catalog.

    :param register: call it with each :class:`ltbench.api.Method` subclass the
        plugin provides. A name already taken is an error that names both
        plugins.
    """


@hookspec
def ltbench_register_reporters(register: Callable[[type], None]) -> None:
    """Add reporters: :class:`ltbench.api.Reporter` subclasses that observe runs (the reporting hooks
    below) for an experiment tracker or a log. ``ltbench run --report NAME,...`` selects them.

    :param register: call it with each reporter class.
    """


@hookspec
def ltbench_register_datasets(register: Callable[[DatasetSpec], None]) -> None:
    """Add datasets (with their long-tailed split and named budgets).

    :param register: call it with each :class:`ltbench.api.DatasetSpec` (``docs/writing-a-dataset.md``).
    """


@hookspec
def ltbench_register_backbones(register: Callable[[BackboneSpec], None]) -> None:
    """Add backbones.

    :param register: call it with each :class:`ltbench.api.BackboneSpec` (``docs/writing-a-backbone.md``).
    """


# --------------------------------------------------------------------------
# Building the model.
# --------------------------------------------------------------------------


@hookspec(firstresult=True)
def ltbench_build_classifier(
    run: Run, in_features: int, num_classes: int, stage: int, previous: nn.Module | None
) -> nn.Module | None:
    """Return the classifier head that maps pooled features to logits.

    First result. Called once per stage. In stage 1 ``previous`` is ``None``;
    in stage 2 it is the trained stage-1 head, which a method may wrap (LWS,
    tau-norm) or replace (cRT). The core default is a fresh ``nn.Linear`` in
    stage 1 and ``previous`` itself in stage 2. In stage 2 with cached
    features, ``run.train_features`` already holds them (class means for NCM).

    :param run: the run being built.
    :param in_features: width of the pooled embedding.
    :param num_classes: number of classes.
    :param stage: 1 or 2.
    :param previous: the stage-1 head in stage 2, else ``None``.
    """


@hookspec
def ltbench_configure_model(run: Run, model: LTModel) -> None:
    """Change the model in place after it is built, before training.

    Broadcast. Use it to insert a training-only module into the backbone or
    to add an auxiliary head. Modules added here are trained by the stage-1
    optimizer.
    """


# --------------------------------------------------------------------------
# Per stage: sampler and loss.
# --------------------------------------------------------------------------


@hookspec(firstresult=True)
def ltbench_build_sampler(run: Run, stage: int, labels: np.ndarray) -> torch.utils.data.Sampler | None:
    """Return the sampler that orders training indices for one stage.

    First result. The sampler yields indices into ``labels`` (the training
    labels) and is iterated once per epoch; ``len(sampler)`` is the epoch
    length. Use ``run.generator`` for randomness so that seeds repeat. The core
    default is instance-balanced (each image once per epoch, shuffled).
    """


@hookspec(firstresult=True)
def ltbench_build_loss(run: Run, stage: int) -> LossFn | None:
    """Return the task loss ``loss(logits, targets) -> scalar`` for one stage.

    First result. ``targets`` are hard labels ``(B,)`` or, when a method
    mixed them (mixup, cutmix, remix), soft targets ``(B, C)``: a loss must
    handle both (``ltbench.api.cross_entropy`` and ``soft_cross_entropy``
    do, as does every loss of the zoo). The loss may read ``run.epoch`` to change over time
    (deferred re-weighting). The core default is plain cross-entropy
    (``F.cross_entropy``, which takes both forms).

    When a method set per-row weights (``batch.row_weights``) the loss is called as
    ``loss(logits, targets, row_weights=r)``: accept the keyword to compose with re-weighting methods (the
    core default, ``ltbench.api.cross_entropy``, ``soft_cross_entropy`` and every loss of the zoo take it); a loss
    without it fails such a run with an error naming the loss's method.
    """


@hookspec
def ltbench_train_views(run: Run, stage: int) -> int | None:
    """Ask for ``k`` augmented views of every training row in a stage (contrastive methods).

    Broadcast; the stage uses the largest ``k`` any method of the run answers (1 without an answer). Each
    view is a new draw of the core augmentation of the same image (in memory and from image files alike;
    the streaming store decodes an image once and crops it ``k`` times, or decodes it ``k`` times for the
    ``imagenet`` transform, ahead in its workers). The batch carries views 2..k as ``batch.extra_views``;
    the forward pass runs on all views at once (``batch.view_rows(v)`` is where view ``v`` lies in its
    output), the task loss trains on the first view's rows, and images/s and the record's image counts count
    every view. Asked for in a stage that trains on cached features, it is a contract error.
    """


# --------------------------------------------------------------------------
# The training loop.
# --------------------------------------------------------------------------


@hookspec
def ltbench_epoch_start(run: Run, stage: int, epoch: int) -> None:
    """Called before each training epoch (0-based ``epoch``) of a stage."""


@hookspec
def ltbench_augment_batch(run: Run, model: LTModel, batch: Batch) -> None:
    """Change a training batch in place before the forward pass.

    Broadcast, in plugin order. ``batch.images`` are normalised, augmented
    tensors on the training device. A method that mixes images sets
    ``batch.targets`` to soft targets (``ltbench.api.mix_pairs``) and
    leaves ``batch.labels`` as the rows' own labels; the task loss then
    trains toward the targets. A method may replace or extend
    ``batch.images`` and ``batch.labels`` (keep them the same length, unless
    a module the method inserted into the model appends samples in its
    forward pass: then extend ``batch.labels`` by their labels, as SAFA
    does; the engine checks that logits and labels agree). In a
    stage that trains only the classifier it may instead set
    ``batch.features`` (pooled embeddings) and ``batch.images = None``; the
    classifier is then applied to the features. It may run the model, but
    must leave its parameters, gradients and batch-norm statistics as they
    were.
    """


@hookspec
def ltbench_extra_losses(run: Run, model: LTModel, batch: Batch, output: ModelOutput) -> dict[str, torch.Tensor] | None:
    """Return extra loss terms to add to the task loss for this batch.

    Broadcast. Each value is a scalar tensor; the engine adds them all to the
    task loss before the backward pass and logs each by name. Names are the
    method's own: ``"task"`` is reserved, and two composed methods returning
    one name is a :class:`ltbench.api.PluginContractError` naming both (as
    is anything but a dict of scalar tensors, or ``None``). ``output`` holds
    the logits and the pooled features of the forward pass training already
    did; reuse them rather than running the backbone again. A term that
    trains toward the batch's classes takes ``batch.loss_targets(C)``: the
    hard labels, or the mixed targets when a composed method mixed them.
    When ``run.reevaluating`` is true (a step-owning method such as ``sam``
    evaluates the batch again), return the same terms without advancing state.
    """


@hookspec
def ltbench_param_groups(run: Run, stage: int, model: LTModel) -> list[ParamGroup] | None:
    """Shape a stage's optimiser: parameter groups with their own weight decay or learning-rate multiple.

    Broadcast, once at the start of each stage, before the optimiser is made (a resumed stage asks again and
    must answer the same). Return a list of :class:`ltbench.api.ParamGroup`, or ``None`` to leave the stage
    as the budget sets it. A group selects parameters by name prefix in ``model.named_parameters()``; within
    one method's list the first group that matches a parameter takes it; a group that selects no trainable
    parameter is a contract error (a mistyped prefix). Parameters no group selects keep the stage's learning
    rate and weight decay. Two methods of a run compose when their groups select different parameters; a
    parameter that two methods select in one stage is a :class:`ltbench.api.CompositionError` naming both,
    the parameter and the stage. The record's ``optimizer`` states each stage's groups as used (their
    parameter counts, learning-rate factor and weight decay). A ``plain_stage1`` method must answer ``None``
    in stage 1 (its stage 1 is the core's, shared).

    Example, Weight Balancing's stage-1 weight decay on every parameter::

        @hookimpl
        def ltbench_param_groups(self, stage):
            return [ParamGroup(("",), weight_decay=5e-3, label="weight balancing")] if stage == 1 else None
    """


@hookspec(firstresult=True)
def ltbench_optimizer_step(run: Run, model: LTModel, optimizer: torch.optim.Optimizer,
                           closure: Callable[[], torch.Tensor]) -> bool | None:
    """Take the step's optimisation step yourself; return ``True`` when you did.

    First result; without an answer the core calls ``optimizer.step()``. When
    it is called, the batch's loss terms have been computed and their
    gradients are in the parameters' ``.grad`` (averaged over ranks under
    torchrun). ``closure()`` evaluates the same batch again at the model's
    current weights, as ``torch.optim`` optimisers that re-evaluate do:
    forward, the task loss and every method's extra losses, ``zero_grad``,
    backward and the average over ranks; it returns the total loss
    (detached). The batch is not augmented again. A sharpness-aware method
    perturbs the weights, calls ``closure()``, restores them and steps with
    the gradient it got. Only the first evaluation's loss terms are logged;
    batch-norm statistics move on every forward in train mode (freeze them
    around ``closure()`` if the method's paper does). Under torchrun every
    rank must call ``closure()`` the same number of times. Since the loss is
    inside ``closure()``, a step-owning method composes with any loss method.
    While ``closure()`` runs, ``run.reevaluating`` is true: every hook it calls
    (``ltbench_extra_losses``, the task loss, modules a method inserted) must
    compute the same terms as in the step's first pass without advancing the
    method's state (a queue, a feature bank, running means, counters, a
    generator): keep what the first pass used, and use it again.
    """


@hookspec
def ltbench_epoch_end(run: Run, stage: int, epoch: int) -> None:
    """Called after each training epoch of a stage.

    ``run.validation()`` returns the validation results of the model as it
    is now (computed at most once per epoch, and only when asked for). The
    test split is never available during training.
    """


@hookspec
def ltbench_stage_end(run: Run, stage: int) -> None:
    """Called after a stage's last epoch, e.g. to select a hyper-parameter on
    validation (tau in tau-norm)."""


@hookspec(firstresult=True)
def ltbench_second_stage(run: Run) -> SecondStage | None:
    """Ask for stage 2, which starts from the trained stage-1 model.

    First result. Return a :class:`ltbench.api.SecondStage`. By default
    stage 2 retrains the classifier on the frozen stage-1 backbone; with
    ``cached_features=True`` (the default) the engine computes the training
    features once (eval mode, no augmentation) and stage 2 trains on them.
    ``train_backbone=True`` fine-tunes the whole network instead (BLT's
    stage 2). Stage 2 uses the ``stage=2`` answers of the classifier,
    sampler and loss hooks.
    """


# --------------------------------------------------------------------------
# Evaluation and the record.
# --------------------------------------------------------------------------


@hookspec(firstresult=True)
def ltbench_eval_logits(run: Run, model: LTModel, output: ModelOutput) -> torch.Tensor | None:
    """Return the evaluation logits from all of the model's heads and features (validation and test).

    First result. ``output`` is ``model.forward_all`` of the evaluation batch in eval mode (the classifier's
    logits, the pooled features and the feature map); a method that trains more heads (in ``model.heads``:
    experts, a second classifier) combines them here, e.g. ``(output.logits + model.heads["b"](
    output.features)) / 2``. Must return a tensor of shape ``(batch, num_classes)``. Without an answer the
    logits are ``output.logits``. ``ltbench_adjust_logits`` then applies to what this returns. Not called
    during training; cached stage-2 features are unaffected (they are ``output.features``).
    """


@hookspec(firstresult=True)
def ltbench_adjust_logits(run: Run, logits: torch.Tensor) -> torch.Tensor | None:
    """Return post-hoc adjusted logits for evaluation (validation and test).

    First result. Must return a tensor of the same shape. Not called during
    training.
    """


@hookspec
def ltbench_record(run: Run) -> dict[str, Any] | None:
    """Return extra JSON-serialisable fields for the run's ``result.json``.

    Broadcast; each method's fields are stored under ``extra[method name]``.
    A value JSON cannot hold (or anything but a dict or ``None``) fails the
    run with the method named, as does an exception from any hook.
    """


# --------------------------------------------------------------------------
# Reporting: implemented by Reporter instances (``--report``), which observe
# and never change a run. All broadcast. One reporter instance serves the
# whole grid (process-wide). ``run`` is the same dict for every event of a
# run: its identity (run_dir, variant, method, seed, dataset, budget,
# config_id), resolved config, the split's summary, the grid id, and
# ``resumed`` (epochs already done when it started). A reporter that raises
# is disabled for the rest of the grid with one warning naming it; the run
# and its record are not affected. Under torchrun only rank 0 reports.
# --------------------------------------------------------------------------


@hookspec
def ltbench_report_grid_start(grid: dict[str, Any]) -> None:
    """Before the first run: ``grid`` holds ``grid_id``, ``output`` and ``runs`` (one dict per planned run:
    run_dir, variant, seed, dataset, budget, config_id)."""


@hookspec
def ltbench_report_run_start(run: dict[str, Any]) -> None:
    """A run starts training (or resumes); not called for a run skipped as already complete."""


@hookspec
def ltbench_report_epoch_end(run: dict[str, Any], entry: dict[str, Any]) -> None:
    """An epoch ended: ``entry`` is its line of ``metrics.jsonl`` (stage, epoch, lr, seconds, images,
    images_per_s, ``loss_<term>`` means, and ``val_overall`` when validation was computed)."""


@hookspec
def ltbench_report_run_end(run: dict[str, Any], record: dict[str, Any], plots: list[str]) -> None:
    """The run's record was written (any status); ``plots`` are image files about this run (PNG)."""


@hookspec
def ltbench_report_grid_end(grid: dict[str, Any], records: list[dict[str, Any]], summary: str) -> None:
    """After the last run: every record of the grid and the summary table ``ltbench run`` prints."""
