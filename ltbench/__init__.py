"""ltbench: a benchmark suite for long-tailed image recognition.

Methods are pluggy plugins. A plugin module implements the registration
hooks in :mod:`ltbench.hookspecs` and registers :class:`ltbench.Method`
subclasses; each run instantiates the selected methods and calls their
stage hooks.
"""

from __future__ import annotations

import os
from typing import Any

from ltbench.hookspecs import hookimpl, installed_version

__version__ = installed_version()

from ltbench.errors import LtbenchError
from ltbench.plugins.method import Method, MethodMetadata

__all__ = ["hookimpl", "Method", "MethodMetadata", "LtbenchError", "run", "__version__"]


def run(experiment: "str | os.PathLike[str] | None" = None, **options: Any) -> list[dict[str, Any]]:
    """Run a grid from Python, as ``ltbench run`` does, and return its records (one dict per run, in the
    grid's order: the ``result.json`` each run wrote under ``output``).

    ``options`` are the keys of an experiment file (``docs/quickstart.md``, "Experiment files"):
    ``methods``, ``datasets``, ``seeds``, ``budget``, ``epochs``, ``imbalance_factor``, ``data_root``,
    ``download``, ``output`` (default ``"runs"``), ``device``, ``rerun``, ``quiet``, ``jobs``, ``threads``,
    ``report``, ``set`` (a dict: what ``--set`` holds) and ``variants``. ``experiment`` is an experiment file
    (``.toml``) to start from; ``options`` override it as flags do. Names may be a list or a comma-separated
    string. A finished run is returned from its record, not retrained; an interrupted one resumes.

    >>> records = ltbench.run(methods=["ce", "crt"], seeds=[0, 1], budget="smoke")  # doctest: +SKIP
    >>> records[0]["metrics"]["overall"]  # doctest: +SKIP

    Bad input raises :class:`ltbench.LtbenchError` (a ``ConfigError`` naming the key and the valid values)
    before anything trains; a run that fails or diverges does not raise: its record says so (``status``).
    """
    from ltbench.grid.orchestrate import run_records

    return run_records(experiment, options)
