"""A run's plugin manager and the checked calls of its first-result hooks: the core defaults plus the
run's methods; composition rules; the classifier, sampler, loss and extra-loss terms the hooks answer.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import numpy as np
import pluggy
import torch
from torch import nn

import ltbench.hookspecs as hookspecs
from ltbench.errors import CompositionError, PluginContractError
from ltbench.plugins.defaults import CoreDefaults
from ltbench.plugins.method import STAGE_HOOKS, STAGES, Method
from ltbench.training.model import LTModel, ModelOutput, ParamGroup

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ltbench.training.run import Batch, Run


FIRST_RESULT_HOOKS = sorted(
    name for name in dir(hookspecs)
    if name.startswith("ltbench_") and getattr(getattr(hookspecs, name), "ltbench_spec", {}).get("firstresult")
)


#: hooks called on every method of a run, in the order the run names them (not registration, not reporting)
BROADCAST_RUN_HOOKS = sorted(
    name for name in dir(hookspecs)
    if name.startswith("ltbench_") and not name.startswith(("ltbench_register_", "ltbench_report_"))
    and hasattr(getattr(hookspecs, name), "ltbench_spec") and name not in FIRST_RESULT_HOOKS
)


def order_sensitive_hooks(classes: list[type[Method]]) -> list[str]:
    """The broadcast run hooks that two or more of ``classes`` implement: where the order of a composition can
    change what a run computes. ``ltbench_record`` is left out: each method's fields are stored under its own
    name. First-result hooks cannot matter: two methods answering one in one stage is a composition error, and
    in a stage the core asks only the methods that answer in it."""
    return [hook for hook in BROADCAST_RUN_HOOKS if hook != "ltbench_record"
            and sum(callable(getattr(cls, hook, None)) for cls in classes) > 1]


def canonical_order(classes: list[type[Method]]) -> list[type[Method]]:
    """The order a composition runs in: sorted by name when the hooks prove the order cannot matter (no
    broadcast run hook is implemented by two of them), so ``a+b`` and ``b+a`` are one run; otherwise the
    order written, which the run's name and record keep."""
    return classes if order_sensitive_hooks(classes) else sorted(classes, key=lambda cls: cls.name)


def answering_stages(cls: type[Method], hook: str) -> tuple[int, ...]:
    """The stages in which ``cls`` answers the first-result ``hook``: none when it does not implement it, those
    its ``hook_stages`` names for a stage hook, else every stage."""
    if not callable(getattr(cls, hook, None)):
        return ()
    return tuple(cls.hook_stages.get(hook, STAGES)) if hook in STAGE_HOOKS else STAGES


def check_composition(classes: list[type[Method]]) -> None:
    """Raise :class:`CompositionError` when two of ``classes`` answer the same first-result hook in the same stage
    (a hook that is not asked per stage: when two of them implement it)."""
    for hook in FIRST_RESULT_HOOKS:
        if hook not in STAGE_HOOKS:
            names = [cls.name for cls in classes if callable(getattr(cls, hook, None))]
            if len(names) > 1:
                raise CompositionError(
                    f"methods {' and '.join(repr(n) for n in names)} both implement {hook}, which only one method of "
                    f"a composed run may answer (it is asked once per run, not per stage); compose methods that "
                    f"implement different first-result hooks")
            continue
        for stage in STAGES:
            answering = [cls for cls in classes if stage in answering_stages(cls, hook)]
            if len(answering) > 1:
                raise CompositionError(_stage_conflict(answering, hook, stage))


def _stage_conflict(classes: list[type[Method]], hook: str, stage: int) -> str:
    said = []
    for cls in classes:
        if hook in cls.hook_stages:
            said.append(f"{cls.name!r} declares stage{'s' if len(cls.hook_stages[hook]) > 1 else ''} "
                        f"{' and '.join(map(str, cls.hook_stages[hook]))} for it")
        else:
            said.append(f"{cls.name!r} answers it in every stage (its hook_stages does not limit {hook})")
    return (f"methods {' and '.join(repr(cls.name) for cls in classes)} both implement {hook} in stage {stage}, "
            f"where only one method of a composed run may answer it: {'; '.join(said)}. Compose methods that answer "
            f"{hook} in different stages (Method.hook_stages declares the stages a method answers a hook in)")


def stage_hook(run: Run, hook: str, stage: int):
    """The caller of the first-result ``hook`` in ``stage``: the run's plugin manager without the methods whose
    ``hook_stages`` leave ``stage`` out, so that only the method that answers in ``stage`` is asked."""
    absent = [m for m in run.methods
              if callable(getattr(m, hook, None)) and stage not in answering_stages(type(m), hook)]
    return run.pm.subset_hook_caller(hook, remove_plugins=absent) if absent else getattr(run.pm.hook, hook)


def make_plugin_manager(methods: list[Method]) -> pluggy.PluginManager:
    """A fresh manager: the core defaults plus this run's method instances.

    Raises :class:`CompositionError` when two methods answer the same
    first-result hook in the same stage.
    """
    check_composition([type(m) for m in methods])
    pm = pluggy.PluginManager("ltbench")
    pm.add_hookspecs(hookspecs)
    pm.register(CoreDefaults(), name="core")
    for m in reversed(methods):  # pluggy calls the last registered first: broadcast hooks run a, then b
        pm.register(m, name=m.name)
    pm.check_pending()
    return pm


def _owner(run: Run, hook: str, stage: int | None = None) -> str:
    """Who answers ``hook`` (in ``stage``, for a stage hook): the first method of the run asked, else the core."""
    for m in run.methods:
        if callable(getattr(m, hook, None)) and (stage is None or stage in answering_stages(type(m), hook)):
            return f"method {m.name!r}"
    return "the core defaults"


def _expect(run: Run, hook: str, value: Any, check, expected: str, stage: int | None = None) -> Any:
    if not check(value):
        raise PluginContractError(f"{_owner(run, hook, stage)}: {hook} returned {type(value).__name__}; the hook "
                                  f"specification expects {expected}")
    return value


def build_classifier(run: Run, stage: int, in_features: int, previous: nn.Module | None) -> nn.Module:
    head = stage_hook(run, "ltbench_build_classifier", stage)(
        run=run, in_features=in_features, num_classes=run.num_classes, stage=stage, previous=previous)
    return _expect(run, "ltbench_build_classifier", head, lambda v: isinstance(v, nn.Module), "an nn.Module", stage)


def build_sampler(run: Run, stage: int, labels: np.ndarray | None = None) -> torch.utils.data.Sampler:
    labels = run.train_labels if labels is None else labels
    sampler = stage_hook(run, "ltbench_build_sampler", stage)(run=run, stage=stage, labels=labels)
    ok = lambda v: hasattr(v, "__iter__") and hasattr(v, "__len__")  # noqa: E731
    return _expect(run, "ltbench_build_sampler", sampler, ok, "a sampler (iterable of indices with a length)", stage)


def build_loss(run: Run, stage: int):
    loss = stage_hook(run, "ltbench_build_loss", stage)(run=run, stage=stage)
    return _expect(run, "ltbench_build_loss", loss, callable, "a callable loss(logits, targets)", stage)


def train_views(run: Run, stage: int, on_features: bool) -> int:
    """How many views of each row the stage trains on: the largest answer to ``ltbench_train_views``, else 1."""
    answers = run.pm.hook.ltbench_train_views(run=run, stage=stage)
    for value in answers:
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise PluginContractError(f"{_owner(run, 'ltbench_train_views')}: ltbench_train_views returned "
                                      f"{value!r}; the hook specification expects a whole number of views, 1 or more")
    views = max([1, *answers])
    if views > 1 and on_features:
        raise PluginContractError(f"{_owner(run, 'ltbench_train_views')}: asks for {views} views in stage {stage}, "
                                  f"which trains on cached features (no images to augment)")
    return views


def _takes_row_weights(loss_fn) -> bool:
    try:  # asked at every weighted step, of the one loss a stage builds: remembered where it can be
        return _takes_row_weights_cached(loss_fn)
    except TypeError:  # an unhashable callable
        return _signature_takes_row_weights(loss_fn)


@functools.lru_cache(maxsize=16)
def _takes_row_weights_cached(loss_fn) -> bool:
    return _signature_takes_row_weights(loss_fn)


def _signature_takes_row_weights(loss_fn) -> bool:
    try:
        params = inspect.signature(loss_fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: it cannot take the keyword
        return False
    return any(p.name == "row_weights" or p.kind is p.VAR_KEYWORD for p in params)


def compute_loss(run: Run, loss_fn, logits: torch.Tensor, targets: torch.Tensor,
                 row_weights: torch.Tensor | None = None) -> torch.Tensor:
    if len(logits) != len(targets):
        raise PluginContractError(f"the batch has {len(targets)} targets but the model gave {len(logits)} logits; "
                                  f"a method's ltbench_augment_batch and the modules it inserted disagree")
    if targets.dim() == 2 and tuple(targets.shape) != tuple(logits.shape):
        raise PluginContractError(f"the batch's soft targets have shape {tuple(targets.shape)}; the logits "
                                  f"{tuple(logits.shape)}: a method set batch.targets with the wrong number of classes")
    if row_weights is None:
        loss = loss_fn(logits, targets)
    else:
        if not _takes_row_weights(loss_fn):
            raise PluginContractError(f"a method set batch.row_weights, but the task loss of "
                                      f"{_owner(run, 'ltbench_build_loss', run.stage)} (ltbench_build_loss) takes no "
                                      f"row_weights keyword: it cannot weight rows; see ltbench.api.cross_entropy")
        if row_weights.shape != (len(targets),):
            raise PluginContractError(f"batch.row_weights has shape {tuple(row_weights.shape)}; the batch has "
                                      f"{len(targets)} rows (one weight per row)")
        loss = loss_fn(logits, targets, row_weights=row_weights)
    if not (isinstance(loss, torch.Tensor) and loss.dim() == 0):
        raise PluginContractError(f"{_owner(run, 'ltbench_build_loss', run.stage)}: its loss returned "
                                  f"{type(loss).__name__} {getattr(loss, 'shape', '')}; expected a scalar tensor")
    return loss


def _check_param_group(who: str, group: Any) -> None:
    import math

    if not isinstance(group, ParamGroup):
        raise PluginContractError(f"{who} returned {type(group).__name__} in its list; the hook specification "
                                  f"expects ltbench.api.ParamGroup items")
    if (not isinstance(group.prefixes, tuple) or not group.prefixes
            or not all(isinstance(p, str) for p in group.prefixes)):
        raise PluginContractError(f"{who}: ParamGroup.prefixes is {group.prefixes!r}; expected a non-empty tuple of "
                                  f"parameter-name prefixes, e.g. ('classifier.',), or ('',) for every parameter")
    for field_name, value, none_ok in (("lr_factor", group.lr_factor, False), ("weight_decay", group.weight_decay, True)):
        if value is None and none_ok:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise PluginContractError(f"{who}: ParamGroup {group.describe()} has {field_name}={value!r}; expected a "
                                      f"finite number, 0 or more")


def param_groups(run: Run, stage: int, groups: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The optimiser groups of ``stage``: the core's ``groups`` (dicts with ``params``, ``lr``, ``weight_decay``
    and a ``label``) split by every method's ``ltbench_param_groups``, and a description of each group for the
    record. Each group carries ``lr_factor``, its multiple of the stage's learning rate."""
    names = {id(p): n for n, p in run.model.named_parameters()}
    trainable = [p for g in groups for p in g["params"]]
    claims: dict[int, tuple[str, int, ParamGroup]] = {}  # parameter -> (method, group index, group)
    methods = {m.name: m for m in run.methods}
    kwargs = {"run": run, "stage": stage, "model": run.model}
    for impl in reversed(run.pm.hook.ltbench_param_groups.get_hookimpls()):  # the call order: a, then b
        value = impl.function(*[kwargs[a] for a in impl.argnames])
        if value is None:
            continue
        who = f"method {impl.plugin_name!r}: ltbench_param_groups"
        if not isinstance(value, (list, tuple)):
            raise PluginContractError(f"{who} returned {type(value).__name__}; the hook specification expects a list "
                                      f"of ltbench.api.ParamGroup, or None")
        if stage == 1 and value and getattr(methods.get(impl.plugin_name), "plain_stage1", False):
            raise PluginContractError(f"{who} shapes stage 1, but the method sets plain_stage1 (its stage 1 is the "
                                      f"core's, shared with other methods): answer None in stage 1, or drop "
                                      f"plain_stage1")
        for index, group in enumerate(value):
            _check_param_group(who, group)
            matched = [p for p in trainable if names.get(id(p), "").startswith(group.prefixes)]
            if not matched:
                raise PluginContractError(f"{who}: ParamGroup {group.describe()} selects no trainable parameter of "
                                          f"stage {stage} (prefixes {list(group.prefixes)}); parameter names start "
                                          f"with: {', '.join(sorted({n.split('.')[0] + '.' for n in names.values()}))}")
            for p in matched:
                owner = claims.get(id(p))
                if owner is None:
                    claims[id(p)] = (impl.plugin_name, index, group)
                elif owner[0] != impl.plugin_name:
                    raise CompositionError(
                        f"methods {owner[0]!r} and {impl.plugin_name!r} both shape the optimiser group of parameter "
                        f"{names[id(p)]!r} in stage {stage} (ltbench_param_groups); compose methods whose groups "
                        f"select different parameters")
    shaped: list[dict[str, Any]] = []
    described: list[dict[str, Any]] = []
    for g in groups:
        buckets: dict[tuple[str, int] | None, list[torch.nn.Parameter]] = {}
        for p in g["params"]:
            claim = claims.get(id(p))
            buckets.setdefault(None if claim is None else claim[:2], []).append(p)
        for key, params in buckets.items():
            group = None if key is None else claims[id(params[0])][2]
            factor = 1.0 if group is None else float(group.lr_factor)
            decay = g["weight_decay"] if group is None or group.weight_decay is None else float(group.weight_decay)
            shaped.append({"params": params, "lr": g["lr"] * factor, "weight_decay": decay,
                           "lr_factor": g.get("lr_factor", 1.0) * factor})
            described.append({"label": g["label"] if group is None else f"{g['label']}: {group.describe()}",
                              "method": None if key is None else key[0], "tensors": len(params),
                              "parameters": sum(p.numel() for p in params),
                              "lr_factor": round(g.get("lr_factor", 1.0) * factor, 10), "weight_decay": decay})
    return shaped, described


def extra_losses(run: Run, model: LTModel, batch: Batch, output: ModelOutput) -> dict[str, torch.Tensor]:
    """Every method's ``ltbench_extra_losses``, checked: a dict of named scalar tensors or None; ``"task"`` is
    reserved, and two methods may not use one name (one term would silently replace the other)."""
    kwargs = {"run": run, "model": model, "batch": batch, "output": output}
    owner: dict[str, str] = {}
    terms: dict[str, torch.Tensor] = {}
    for impl in reversed(run.pm.hook.ltbench_extra_losses.get_hookimpls()):  # the call order: a, then b
        value = impl.function(*[kwargs[a] for a in impl.argnames])
        if value is None:
            continue
        who = f"method {impl.plugin_name!r}: ltbench_extra_losses"
        if not isinstance(value, dict):
            raise PluginContractError(f"{who} returned {type(value).__name__}; the hook specification expects a "
                                      f"dict of named scalar tensors, e.g. {{'my_term': loss}}, or None")
        for name, term in value.items():
            if name == "task":
                raise PluginContractError(f"{who} returned a term named 'task'; that name is the task loss's, "
                                          f"choose another (the task loss comes from ltbench_build_loss)")
            if name in owner:
                raise PluginContractError(f"{who} and method {owner[name]!r} both return a loss term named "
                                          f"{name!r}; one would replace the other: rename one of them")
            if not (isinstance(term, torch.Tensor) and term.dim() == 0):
                raise PluginContractError(f"{who} returned {name!r} = {type(term).__name__}"
                                          f"{tuple(term.shape) if isinstance(term, torch.Tensor) else ''}; "
                                          f"the hook specification expects a scalar tensor")
            owner[name] = impl.plugin_name
            terms[name] = term
    return terms
