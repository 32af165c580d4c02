"""Issue 38's acceptance package: ``tests/packages/ltbench-api-probe``, written against ``ltbench.api`` alone, with a
dataset, a backbone, a method that shapes its optimiser and a method with a loss term over the global batch. It
installs, passes the kit's checks, runs by name and composes as per-stage composition allows."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ltbench.api import check_distributed, check_method, check_streaming
from ltbench.plugins.catalog import PluginInfo, build_catalog
from ltbench.plugins.testing import run_methods

from test_plugin_guides import private_ltbench_imports

PACKAGE = Path(__file__).resolve().parent / "packages" / "ltbench-api-probe"


@pytest.fixture
def probe(monkeypatch):
    """The package's modules, imported from its folder (as an installed package would be)."""
    monkeypatch.syspath_prepend(str(PACKAGE))
    modules = {name: importlib.import_module(f"ltbench_api_probe.{name}") for name in ("plugin", "methods", "data")}
    yield modules
    for name in [m for m in sys.modules if m.startswith("ltbench_api_probe")]:
        del sys.modules[name]


def probe_catalog(plugin_module):
    catalog = build_catalog()
    catalog.add_plugin(plugin_module, PluginInfo("api-probe", "ltbench_api_probe.plugin", "ltbench-api-probe", "0.1.0"))
    assert not catalog.broken, catalog.broken
    return catalog


def test_the_package_imports_nothing_of_ltbench_but_its_api():
    for path in sorted((PACKAGE / "ltbench_api_probe").glob("*.py")):
        assert private_ltbench_imports(path.read_text()) == [], path.name


def test_its_methods_pass_the_kit(probe, tmp_path):
    methods = probe["methods"]
    check_method(methods.StrongDecay, tmp_path / "decay")
    check_method(methods.BatchCentres, tmp_path / "centres")
    check_distributed(methods.BatchCentres, tmp_path / "centres-ranks")
    check_distributed(methods.StrongDecay, tmp_path / "decay-ranks")
    check_streaming(methods.BatchCentres, tmp_path / "centres-files")


def test_its_dataset_and_backbone_pass_the_kit(probe, tmp_path):
    from ltbench.api import BackboneSpec, check_backbone, check_dataset

    catalog = probe_catalog(probe["plugin"])
    data = check_dataset(probe["data"].PROBE_STRIPES, tmp_path / "data", catalog=catalog)
    assert data.num_classes == 8
    nets = importlib.import_module("ltbench_api_probe.nets")
    check_backbone(BackboneSpec("probe-cnn", "probe", lambda in_chans: nets.ProbeCNN(in_chans)), tmp_path / "net",
                   catalog=catalog)


def test_its_methods_pass_the_device_check_where_there_is_a_device(probe, tmp_path):
    from ltbench.api import check_device

    check_device(probe["methods"].StrongDecay, tmp_path)  # skipped, with its reason, where CUDA is absent


def test_its_methods_compose_on_its_dataset_and_backbone(probe, tmp_path):
    catalog = probe_catalog(probe["plugin"])
    records = run_methods(catalog, ["strong-decay+batch-centres", "strong-decay+sam", "strong-decay+crt"], tmp_path,
                          dataset="probe-stripes")
    for rec in records:
        assert rec["status"] == "completed", rec["error"]
        assert rec["config"]["backbone"] == "probe-cnn" and rec["dataset"] == "probe-stripes-if10"
        assert [g["weight_decay"] for g in rec["optimizer"]["1"]["groups"]] == [5e-3]
    assert records[0]["history"][0].get("loss_batch_centres") is not None
    assert records[2]["second_stage"] is not None  # crt's stage 2 on strong-decay's stage 1
    components = records[0]["versions"]["components"]
    assert {"backbone:probe-cnn", "dataset:probe-stripes"} <= set(components)


@pytest.mark.slow
def test_the_package_installs_and_runs_by_name_from_a_fresh_process(tmp_path):
    import shutil

    source, target = tmp_path / "source", tmp_path / "site"
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))  # (pip builds in place)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, capture_output=True, text=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}

    def ltbench(*argv):
        return subprocess.run([sys.executable, "-m", "ltbench.cli", *argv], env=env, capture_output=True, text=True,
                              cwd=tmp_path, timeout=600)

    for what, name in (("methods", "strong-decay"), ("methods", "batch-centres"), ("datasets", "probe-stripes"),
                       ("backbones", "probe-cnn")):
        listed = ltbench("ls", what, "--json")
        assert listed.returncode == 0, listed.stderr
        assert name in {entry["name"] for entry in json.loads(listed.stdout)}, (what, name)
    ran = ltbench("run", "--methods", "strong-decay+batch-centres", "--datasets", "probe-stripes", "--budget",
                  "smoke", "--output", str(tmp_path / "runs"), "--quiet", "--threads", "1")
    assert ran.returncode == 0, ran.stderr
    (path,) = (tmp_path / "runs").rglob("result.json")
    rec = json.loads(path.read_text())
    assert rec["status"] == "completed"
    assert rec["versions"]["plugins"]["strong-decay"]["distribution"] == "ltbench-api-probe"
