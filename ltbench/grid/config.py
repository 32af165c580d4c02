"""Resolving a run's configuration: budget + ``--epochs`` + ``--set key=value``.

The resolved configuration is a flat, JSON-serialisable dict of the core
keys (the fields of :class:`ltbench.data.split.Budget` plus
``imbalance_factor``) and ``methods``: ``{method name: {option: value}}``
with every option, defaults included. A ``--set`` key is a core key, a
method option (``gamma``) or a qualified method option (``focal.gamma``);
anything else is an error naming the key.

The resolved configuration *is* the run's identity: :func:`config_id`
hashes it, and a run directory holds exactly one configuration. What
differs from the budget's defaults (:func:`overrides`) names the variant
on leaderboards, e.g. ``breadcrumb [alignment=var]``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any

from ltbench.data.split import CORE_KEYS, DatasetSpec
from ltbench.errors import ConfigError, UnknownNameError
from ltbench.plugins.method import Method, current_option_name, identity_option_names


def parse_set(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def coerce(key: str, raw: Any, default: Any) -> Any:
    """Convert ``raw`` (a string from the command line, or a value) to the type of ``default``."""
    try:
        if isinstance(raw, bool) and not isinstance(default, bool):
            raise ValueError  # booleans are not numbers (TOML's true would pass as 1)
        if isinstance(default, bool):
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in ("1", "true", "yes", "on"):
                return True
            if str(raw).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(default, int):
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError
            return int(str(raw)) if isinstance(raw, str) else int(raw)
        if isinstance(default, float):
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError
            return value
        if isinstance(default, tuple):
            parts = raw if isinstance(raw, (list, tuple)) else [p for p in str(raw).split(",") if p.strip()]
            return tuple(float(p) for p in parts)
        return str(raw)
    except (TypeError, ValueError):
        kind = "true/false" if isinstance(default, bool) else (
            "comma-separated numbers" if isinstance(default, tuple) else type(default).__name__)
        raise ConfigError(f"{key}: expected {kind}, got {raw!r}") from None


def check_core(config: dict[str, Any]) -> None:
    positive = ["epochs", "batch_size", "eval_batch_size", "stage2_batch_size"]
    for key in positive:
        if config[key] < 1:
            raise ConfigError(f"{key} must be >= 1, got {config[key]!r}")
    for key in ["lr", "stage2_lr"]:
        if not config[key] > 0:
            raise ConfigError(f"{key} must be > 0, got {config[key]!r}")
    for key in ["weight_decay", "momentum", "warmup_epochs", "stage2_epochs", "stage2_warmup_epochs", "val_every",
                "workers", "image_size"]:
        if config[key] < 0:
            raise ConfigError(f"{key} must be >= 0, got {config[key]!r}")
    if config.get("schedule", "step") not in ("step", "cosine"):
        raise ConfigError(f"schedule must be one of step, cosine, got {config['schedule']!r}")
    if not (config["imbalance_factor"] >= 1 or config["imbalance_factor"] == 0):
        raise ConfigError(f"imbalance_factor must be >= 1 (or 0: the data's natural profile, for datasets that "
                          f"have one), got {config['imbalance_factor']!r}")
    if not 0 < config["lr_decay"] <= 1:
        raise ConfigError(f"lr_decay must be in (0, 1], got {config['lr_decay']!r}")
    if any(not 0 < m < 1 for m in config["lr_milestones"]):
        raise ConfigError(f"lr_milestones are fractions of the epochs in (0, 1), got {config['lr_milestones']!r}")
    if not 0 < config["stage2_lr_decay"] <= 1:
        raise ConfigError(f"stage2_lr_decay must be in (0, 1], got {config['stage2_lr_decay']!r}")
    s2 = list(config["stage2_lr_milestones"])
    if any(m != int(m) or not 0 < m < config["stage2_epochs"] for m in s2) or s2 != sorted(s2):
        raise ConfigError(f"stage2_lr_milestones are stage-2 epochs, whole numbers in increasing order between 1 "
                          f"and stage2_epochs - 1 ({config['stage2_epochs'] - 1}), got {config['stage2_lr_milestones']!r}")


def resolve(
    dataset: DatasetSpec,
    budget: str,
    method_classes: list[type[Method]],
    settings: dict[str, Any] | None = None,
    epochs: int | None = None,
    imbalance_factor: float | None = None,
    grid_classes: list[type[Method]] | None = None,
) -> dict[str, Any]:
    """Resolve one cell's config. ``grid_classes`` are all methods of the grid: a method option
    is valid when one of them has it, and applies to the cells whose methods have it."""
    if budget not in dataset.budgets:
        raise UnknownNameError(f"budget for {dataset.name}", budget, dataset.budgets)
    base = dataclasses.asdict(dataset.budgets[budget])
    base.pop("description")
    base["lr_milestones"] = tuple(base["lr_milestones"])
    base["imbalance_factor"] = float(dataset.default_imbalance_factor)
    config: dict[str, Any] = dict(base)
    method_opts: dict[str, dict[str, Any]] = {cls.name: {} for cls in method_classes}
    settings = dict(settings or {})
    if epochs is not None:
        settings["epochs"] = epochs
    if imbalance_factor is not None:
        settings["imbalance_factor"] = imbalance_factor
    for key, raw in settings.items():
        if key in base:
            config[key] = coerce(key, raw, base[key])
            continue
        owner, _, opt = key.rpartition(".")
        for cls in method_classes + list(grid_classes or []):
            if cls.name == owner:
                opt = current_option_name(cls, opt, warn=True)

        def owns(c: type[Method]) -> bool:
            return (c.name == owner or not owner) and opt in c.options

        known = grid_classes or method_classes
        if not any(owns(c) for c in known):
            valid = CORE_KEYS + sorted({f"{c.name}.{o}" for c in known for o in c.options})
            raise UnknownNameError("--set key", key, valid)
        for cls in filter(owns, method_classes):
            method_opts[cls.name][opt] = coerce(key, raw, cls.options[opt])
    check_core(config)
    config["lr_milestones"] = list(config["lr_milestones"])
    config["stage2_lr_milestones"] = [int(m) for m in config["stage2_lr_milestones"]]
    config["methods"] = {cls.name: {**_defaults(cls), **method_opts[cls.name]} for cls in method_classes}
    return canonical(config)


def _defaults(cls: type[Method]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cls.options.items()}


def canonical(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` as JSON sees it (tuples become lists), so that equal configs compare equal. Key order is
    kept: the order of ``methods`` is the order their hooks run in."""
    return json.loads(json.dumps(config))


#: keys that say how a run is computed, not what: recorded in its config, left out of its identity
EXECUTION_KEYS = ("channels_last", "compile", "val_every", "workers")
#: keys added after records existed, with the value that means "as before": at that value a key is left out
#: of the identity, so that existing runs keep their directories and shared stage 1s
LATER_KEYS = {"sync_bn": False, "schedule": "step", "pretrained": False, "pretrained_path": "", "image_size": 0,
              "smoke": False, "stage2_warmup_epochs": 0, "stage2_lr_milestones": [], "stage2_lr_decay": 0.1,
              "world_size": 1}


def identity(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a config that identifies a run: all of it but :data:`EXECUTION_KEYS` and
    :data:`LATER_KEYS` at their neutral values, and renamed method options under their former names.

    The renamed options are known once the method's plugin is imported, so the installed plugins are loaded
    first: an identity never depends on what the process imported before (``ltbench eval`` computed one before
    any plugin was loaded, and refused the shipped cam-fusion model as another run's)."""
    from ltbench.plugins.catalog import get_catalog

    get_catalog()
    out = {k: v for k, v in canonical(config).items()
           if k not in EXECUTION_KEYS and not (k in LATER_KEYS and v == LATER_KEYS[k])}
    if isinstance(out.get("methods"), dict):
        out["methods"] = {m: identity_option_names(m, o) for m, o in out["methods"].items()}
    return out


def config_id(config: dict[str, Any]) -> str:
    """A short hash of the resolved configuration (and of the order of its methods): its run directories' name."""
    blob = json.dumps({"config": identity(config), "method_order": list(config["methods"])}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def overrides(config: dict[str, Any], default: dict[str, Any]) -> dict[str, Any]:
    """``{key: value}`` where ``config`` differs from ``default``; method options as ``method.option``.

    ``imbalance_factor`` is left out: it is part of the dataset's name (``cifar100-lt-if50``)."""
    out = {k: v for k, v in config.items()
           if k not in ("methods", "imbalance_factor", *EXECUTION_KEYS) and default.get(k) != v}
    for method, opts in config["methods"].items():
        base = default["methods"].get(method, {})
        out.update({f"{method}.{k}": v for k, v in opts.items() if base.get(k) != v})
    return dict(sorted(out.items()))


def variant_label(method: str, changed: dict[str, Any]) -> str:
    """``method`` alone for the defaults, else ``method [key=value, ...]`` (a single method's options unqualified)."""
    if not changed:
        return method
    single = "+" not in method

    def short(key: str) -> str:
        return key.split(".", 1)[1] if single and key.startswith(method + ".") else key

    def text(value: Any) -> str:
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) if isinstance(value, list) \
            else (f"{value:g}" if isinstance(value, float) else str(value))

    return f"{method} [{', '.join(f'{short(k)}={text(v)}' for k, v in changed.items())}]"
