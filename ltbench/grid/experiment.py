"""Experiments as files: ``ltbench run --config FILE.toml``.

A file holds what the command line holds, one key per flag (``data-root`` is ``data_root``), plus named
variants for ablations::

    methods = ["ce", "breadcrumb"]
    datasets = ["cifar100-lt"]
    seeds = [0, 1, 2]
    budget = "cpu"
    data_root = "../shared/data"
    output = "runs"

    [set]                         # --set, for every run
    backbone = "resnet32"

    [variants.breadcrumb-var]     # one more row: breadcrumb with alignment=var
    method = "breadcrumb"
    set = { alignment = "var" }   # an option of the method, or a core key

    [slurm]                       # --slurm-partition ... for --launcher slurm
    partition = "gpu"

A flag given on the command line overrides the file's value (``--set`` adds to the file's ``[set]``). A key the
file may not hold is an error naming it and the valid ones, before anything runs. Relative paths in the file
(``output``, ``data_root``) are relative to the file's folder; on the command line, to the working directory.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from ltbench.errors import ConfigError, UnknownNameError

#: file key -> (type, default); the defaults are the command line's
KEYS: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "methods": ((list, str), None),
    "datasets": ((list, str), ["fashion-mnist-lt"]),
    "seeds": ((list, str, int), [0]),
    "budget": (str, "cpu"),
    "epochs": (int, None),
    "imbalance_factor": ((int, float), None),
    "data_root": (str, None),
    "download": (bool, False),
    "output": (str, "runs"),
    "device": (str, "auto"),
    "rerun": (bool, False),
    "quiet": (bool, False),
    "jobs": (int, 1),
    "threads": (int, None),
    "shard": (str, None),
    "nproc": (int, None),
    "launcher": (str, None),
    "wait": (bool, False),
    "report": ((list, str), []),
    "set": (dict, {}),
    "variants": (dict, {}),
    "slurm": (dict, {}),
}
SLURM_KEYS = ("partition", "account", "gpus_per_job", "cpus_per_task", "mem_gb", "time", "array_parallelism")
VARIANT_KEYS = ("method", "set")
#: keys holding paths: relative ones are relative to the experiment file's folder, not the working directory
PATH_KEYS = ("output", "data_root")


def _names(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def load(path: str | Path) -> dict[str, Any]:
    """The experiment in ``path``, checked: every key known and of its type."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"--config {path} is a directory; give an experiment file (.toml)") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--config {path}: not UTF-8 text ({exc.reason} at byte {exc.start}); TOML files are "
                          f"UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot be read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}: not valid TOML: {exc}") from None
    check(data, str(path))
    if "output" in data and not data["output"].strip():  # it would silently mean the file's own folder
        raise ConfigError(f"--config {path}: output is empty; give a directory for the records (e.g. output = "
                          f"\"runs\", relative to the file's folder)")
    for key in PATH_KEYS:  # a path in the file means a path next to the file, wherever ltbench runs from
        if key in data and not Path(data[key]).expanduser().is_absolute():
            data[key] = str(path.parent / data[key])
    return data


def check(data: dict[str, Any], where: str, noun: str = "experiment-file key") -> dict[str, Any]:
    """``data`` (an experiment file's table, or :func:`ltbench.run`'s keywords) checked: every key known and of
    its type, every ``[slurm]`` and variant key known; errors begin with ``where``."""
    for key, value in data.items():
        if key not in KEYS:
            raise ConfigError(f"{where}: {UnknownNameError(noun, key, KEYS)}")
        kind = KEYS[key][0]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: {key} must be {_kind_name(kind)}, got {value!r}")
    for key in data.get("slurm", {}):
        if key not in SLURM_KEYS:
            raise ConfigError(f"{where}: {UnknownNameError('[slurm] key', key, SLURM_KEYS)}")
    for name, variant in data.get("variants", {}).items():
        if not isinstance(variant, dict):
            raise ConfigError(f"{where}: [variants.{name}] must be a table with method = ... and set = {{...}}")
        for key in variant:
            if key not in VARIANT_KEYS:
                raise ConfigError(f"{where}: [variants.{name}]: {UnknownNameError('variant key', key, VARIANT_KEYS)}")
        if not isinstance(variant.get("method"), str):
            raise ConfigError(f"{where}: [variants.{name}] needs method = \"<a method name>\"")
        if not isinstance(variant.get("set", {}), dict):
            raise ConfigError(f"{where}: [variants.{name}] set must be a table, e.g. set = {{ alignment = \"var\" }}")
    for key in ("methods", "datasets", "report"):  # names: a list of strings, or one comma-separated string
        if isinstance(data.get(key), list) and not all(isinstance(v, str) for v in data[key]):
            raise ConfigError(f"{where}: {key} must be a list of strings or a comma-separated string, "
                              f"got {data[key]!r}")
    if "seeds" in data and isinstance(data["seeds"], str):
        try:
            [int(s) for s in data["seeds"].split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"{where}: seeds must be integers (a list, or a comma-separated string), "
                              f"got {data['seeds']!r}") from None
    elif "seeds" in data:
        seeds = data["seeds"] if isinstance(data["seeds"], list) else [data["seeds"]]
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise ConfigError(f"{where}: seeds must be integers, got {data['seeds']!r}")
    return data


def _kind_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    words = {list: "a list", str: "a string", int: "an integer", float: "a number", bool: "true or false",
             dict: "a table"}
    return " or ".join(words[k] for k in kinds)


def merge(experiment: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """The run's options: the command line's defaults, then the file's values, then the flags given
    (``None``/``False``/empty for a flag not given; ``--set`` entries are added to the file's). ``--methods``
    given over a file with variants keeps the variants it names, and only those."""
    options = {key: default for key, (_, default) in KEYS.items()}
    options.update({k: v for k, v in experiment.items()})
    for key, value in flags.items():
        if key == "set":
            options["set"] = {**options["set"], **(value or {})}
        elif value is not None and value is not False:
            options[key] = value
    for key in ("methods", "datasets", "report"):
        if options[key] is not None:
            options[key] = _names(options[key])
    seeds = options["seeds"]
    if isinstance(seeds, str):
        try:
            seeds = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"--seeds expects comma-separated integers, got {options['seeds']!r}") from None
    options["seeds"] = seeds if isinstance(seeds, list) else [seeds]
    if flags.get("methods") and experiment.get("variants"):
        # --methods narrows the file's grid: its variants too, to those it names (a name runs the variant, not a
        # plain method of the same name), so `--methods crt` never starts the file's other rows
        named = set(options["methods"])
        options["variants"] = {n: v for n, v in options["variants"].items() if n in named}
        options["methods"] = [m for m in options["methods"] if m not in options["variants"]]
    if not options["methods"] and not options["variants"]:
        raise ConfigError("--methods: give at least one method (on the command line or as methods = [...] in "
                          "the --config file)")
    return options


def variant_settings(method_options: dict[str, Any], method: str, settings: dict[str, Any],
                     variant_set: dict[str, Any]) -> dict[str, Any]:
    """The run settings of a variant: the grid's, plus the variant's own; a key that is one of the method's
    options is that option (``alignment`` means ``breadcrumb.alignment``)."""
    own = {(f"{method}.{k}" if "." not in k and k in method_options else k): v for k, v in variant_set.items()}
    return {**settings, **own}
