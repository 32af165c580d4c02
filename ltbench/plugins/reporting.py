"""Reporters: plugins that observe runs for an experiment tracker or a log, and never change them.

A reporter is a :class:`Reporter` subclass whose ``@hookimpl`` methods implement the reporting hooks of
:mod:`ltbench.hookspecs` (grid start, run start, epoch end, run end, grid end). A plugin module registers it
through ``ltbench_register_reporters`` (the same entry-point group as methods); ``ltbench run --report
a,b`` (or ``report = [...]`` in an experiment file) makes one instance of each for the whole grid.

:class:`Reporting` calls them. A reporter that raises is disabled for the rest of the grid with one warning
naming it and the hook; the run goes on and its record is written as without it.

Writing one::

    from ltbench.hookspecs import hookimpl
    from ltbench.plugins.reporting import Reporter

    class PrintReporter(Reporter):
        name = "print"
        description = "one line per epoch on stdout"

        @hookimpl
        def ltbench_report_epoch_end(self, run, entry):
            print(run["variant"], run["seed"], entry["epoch"], entry.get("loss_task"))

    @hookimpl
    def ltbench_register_reporters(register):
        register(PrintReporter)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pluggy

import ltbench.hookspecs as hookspecs
from ltbench.errors import ConfigError, LtbenchError


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


class Reporting:
    """The selected reporters of one grid (one process)."""

    def __init__(self, names: list[str], output: Path, catalog=None, warn=_warn) -> None:
        from ltbench.plugins.catalog import get_catalog

        catalog = catalog or get_catalog()
        classes = [catalog.reporter(name) for name in names]  # unknown names fail before anything runs
        self.names = list(names)
        self.warn = warn
        self.pm = pluggy.PluginManager("ltbench")
        self.pm.add_hookspecs(hookspecs)
        self.disabled: dict[str, str] = {}
        for cls in classes:
            try:
                reporter = cls(output=output)
            except LtbenchError:
                raise
            except Exception as exc:  # before anything runs: a reporter that cannot start is bad input
                raise ConfigError(f"--report {cls.name}: the reporter could not start: {type(exc).__name__}: "
                                  f"{str(exc)[:300]}") from None
            self.pm.register(reporter, name=cls.name)

    @property
    def active(self) -> list[str]:
        return [name for name, _ in self.pm.list_name_plugin()]

    def emit(self, event: str, **kwargs: Any) -> None:
        """Call ``event`` on every reporter, each on its own: one that raises is unregistered, with a warning."""
        for impl in list(getattr(self.pm.hook, event).get_hookimpls()):
            try:
                impl.function(*[kwargs[arg] for arg in impl.argnames])
            except KeyboardInterrupt:  # Ctrl-C still stops the grid
                raise
            except BaseException as exc:  # a reporter never fails a run, nor ends the grid (sys.exit or any other)
                name = impl.plugin_name
                self.disabled[name] = f"{event}: {type(exc).__name__}: {exc}"
                self.pm.unregister(name=name)
                self.warn(f"reporter {name!r} raised in {event} ({type(exc).__name__}: {exc}); it is disabled for "
                          f"the rest of this grid")


def run_info(cell, output: Path, grid_id: str | None, resumed: int) -> dict[str, Any]:
    """What reporters get as ``run``: the run's identity, resolved config, split summary and grid."""
    out = cell.out_dir(output)
    data = cell.data
    return {"run_dir": str(out), "variant": cell.label, "method": cell.method, "seed": cell.seed,
            "dataset": cell.dataset_key, "budget": cell.budget, "config_id": cell.config_id,
            "overrides": cell.overrides, "config": cell.config, "grid_id": grid_id, "resumed": resumed,
            "split": {"train_size": int(len(data.y_train)), "val_size": int(len(data.y_val)),
                      "test_size": int(len(data.y_test)), "num_classes": int(data.num_classes),
                      "train_counts": data.train_counts.tolist()}}


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"methods.breadcrumb.alignment": "mean", "lr": 0.1, ...}``: a nested config as tracker params."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def final_metrics(record: dict[str, Any]) -> dict[str, float]:
    """``test/overall``, ``test/many``, ... and ``val/overall``, ...: the record's numbers, for trackers."""
    out = {}
    for split, key in (("test", "metrics"), ("val", "val_metrics")):
        for group, value in (record.get(key) or {}).items():
            if value is not None:
                out[f"{split}/{group}"] = float(value)
    return out


def epoch_scalars(entry: dict[str, Any]) -> dict[str, float]:
    """An epoch's numbers under tracker names: ``train/loss_task``, ``val/overall``, ``lr``, ``images_per_s``."""
    out = {f"train/{k}": float(v) for k, v in entry.items() if k.startswith("loss_") and v is not None}
    if entry.get("val_overall") is not None:
        out["val/overall"] = float(entry["val_overall"])
    for key in ("lr", "images_per_s"):
        if entry.get(key) is not None:
            out[key] = float(entry[key])
    out["stage"] = float(entry["stage"])  # 1, then 2: where stage 2 begins on the shared epoch axis
    return out
