"""Helpers for testing ltbench and method plugins without installing them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ltbench import hookimpl
from ltbench.catalog import Catalog, PluginInfo, build_catalog
from ltbench.method import Method
from ltbench.runner import execute, plan_grid


def catalog_with(*methods: type[Method], plugin_name: str = "test-plugin", reporters: tuple = ()) -> Catalog:
    """A fresh catalog (core + installed entry points) plus ``methods`` and ``reporters``,
    registered through ``ltbench_register_methods``/``ltbench_register_reporters`` like any plugin."""
    catalog = build_catalog()

    class _Plugin:
        @hookimpl
        def ltbench_register_methods(self, register):
            for cls in methods:
                register(cls)

        @hookimpl
        def ltbench_register_reporters(self, register):
            for cls in reporters:
                register(cls)

    catalog.add_plugin(_Plugin(), PluginInfo(plugin_name, __name__, "tests", "0"))
    if catalog.broken:
        raise AssertionError(f"plugins failed to load: {catalog.broken}")
    return catalog


def run_methods(catalog: Catalog, methods: list[str], output: Path, dataset: str = "synthetic-lt",
                seeds: tuple[int, ...] = (0,), budget: str = "smoke", settings: dict[str, Any] | None = None,
                epochs: int | None = None, rerun: bool = False, data_root: str | None = None) -> list[dict]:
    cells = plan_grid(methods, [dataset], list(seeds), budget, settings=settings, epochs=epochs,
                      data_root=data_root, catalog=catalog)
    return [execute(c, Path(output), torch.device("cpu"), rerun=rerun, log=lambda m: None, catalog=catalog)
            for c in cells]
