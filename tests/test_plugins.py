import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ltbench import Method, MethodMetadata, hookimpl
from ltbench.cli import main
from ltbench.errors import CompositionError
from ltbench.plugins.catalog import PluginInfo, build_catalog
from ltbench.plugins.testing import catalog_with, run_methods

import toy_methods as toy

REPO = Path(__file__).resolve().parents[1]


def test_builtin_methods_load_through_the_entry_point_group():
    import importlib.metadata as md

    eps = {ep.name: ep for ep in md.entry_points(group="ltbench")}
    assert {"ce", "cb-sampling"} <= set(eps)
    catalog = build_catalog()
    for name in ("ce", "cb-sampling"):
        entry = catalog.method(name)
        assert entry.plugin.distribution == "ltbench"
        assert entry.plugin.module == eps[name].value  # the same path a third-party package takes
    assert not catalog.broken


def test_ltbench_builtin_lists_distribution_version_and_hooks(capsys):
    assert main(["plugins", "--json"]) == 0
    rows = {r["plugin"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["cb-sampling"]["distribution"] == "ltbench"
    assert rows["cb-sampling"]["version"]
    assert "ltbench_build_sampler" in rows["cb-sampling"]["hooks"]
    assert "ltbench_register_methods" in rows["ce"]["hooks"]


def _fake_distribution(root: Path, name: str, entry_points: dict[str, str]) -> None:
    info = root / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[ltbench]\n{lines}\n")


def test_a_plugin_that_fails_to_import_is_reported_by_name_and_the_rest_load(tmp_path, monkeypatch):
    _fake_distribution(tmp_path, "ltbench-broken", {"broken-method": "module_that_does_not_exist"})
    (tmp_path / "dup_plugin.py").write_text(
        "from ltbench import hookimpl\nfrom ltbench_builtin.ce import CrossEntropy\n"
        "@hookimpl\ndef ltbench_register_methods(register):\n    register(CrossEntropy)\n")
    _fake_distribution(tmp_path, "ltbench-dup", {"dup": "dup_plugin"})
    monkeypatch.syspath_prepend(str(tmp_path))
    catalog = build_catalog()
    broken = {b.name: b for b in catalog.broken}
    assert "import failed" in broken["broken-method"].error and broken["broken-method"].distribution == "ltbench-broken"
    assert "belongs to ltbench itself" in broken["dup"].error and "ltbench-dup" in broken["dup"].error
    assert catalog.method("ce").plugin.distribution == "ltbench"  # the built-in keeps its name
    assert {"ce", "cb-sampling"} <= set(catalog.methods)


class _Misspelled(Method):
    name = "misspelled"
    metadata = MethodMetadata(title="x")

    @hookimpl
    def ltbench_build_los(self):  # typo: no such hook
        return None


class _UnknownArgument(Method):
    name = "unknown-argument"
    metadata = MethodMetadata(title="x")

    @hookimpl
    def ltbench_build_loss(self, stage, temperature):  # 'temperature' is not in the spec
        return None


class _NoMetadata(Method):
    name = "no-metadata"


@pytest.mark.parametrize("cls, message", [(_Misspelled, "ltbench_build_los"), (_UnknownArgument, "temperature"),
                                          (_NoMetadata, "MethodMetadata")])
def test_a_method_that_breaks_the_hook_contract_is_rejected_at_load(cls, message):
    catalog = build_catalog()

    class Plugin:
        @hookimpl
        def ltbench_register_methods(self, register):
            register(toy.Counter)
            register(cls)

    catalog.add_plugin(Plugin(), PluginInfo("bad-plugin", "x", "bad-dist", "1"))
    assert [b.name for b in catalog.broken] == ["bad-plugin"]
    assert message in catalog.broken[0].error
    assert "counter" not in catalog.methods  # the broken plugin is rolled back whole
    assert "ce" in catalog.methods


def test_conflicting_first_result_hooks_are_an_error_before_training(tmp_path):
    catalog = catalog_with(*toy.ALL)
    with pytest.raises(CompositionError, match="sampler-a.*sampler-b.*ltbench_build_sampler"):
        run_methods(catalog, ["sampler-a+sampler-b"], tmp_path)
    assert not list(tmp_path.iterdir())  # nothing ran


def test_a_composition_error_is_not_preceded_by_a_note_on_its_order(tmp_path):
    # ldam+focal: both answer ltbench_build_loss; the note "runs as focal+ldam: no run hook is implemented by
    # more than one of them" would contradict the error that follows it
    from ltbench.grid.plan import plan_grid

    said: list[str] = []
    with pytest.raises(CompositionError, match="'ldam' and 'focal' both implement ltbench_build_loss"):
        plan_grid(["ldam+focal"], ["synthetic-lt"], [0], "smoke", catalog=catalog_with(), log=said.append)
    assert not any("runs as" in line for line in said)
    plan_grid(["remix+ldam-drw"], ["synthetic-lt"], [0], "smoke", catalog=catalog_with(), log=said.append)
    assert any("remix+ldam-drw runs as ldam-drw+remix" in line for line in said)  # where the note holds, it stays


def test_composed_methods_each_take_part(tmp_path):
    catalog = catalog_with(*toy.ALL)
    (rec,) = run_methods(catalog, ["cb-sampling+counter"], tmp_path)
    assert rec["status"] == "completed"
    assert rec["methods"] == ["cb-sampling", "counter"]
    assert rec["extra"]["counter"]["epochs_seen"] == rec["config"]["epochs"]
    assert len(list((tmp_path / "synthetic-lt-if30" / "smoke" / "cb-sampling+counter").glob("*/seed0/result.json"))) == 1


def test_the_epoch_line_shows_every_loss_term(tmp_path):
    from ltbench.grid.runner import execute
    from ltbench.grid.plan import plan_grid

    import torch

    catalog = catalog_with(*toy.ALL)
    (cell,) = plan_grid(["counter"], ["synthetic-lt"], [0], "smoke", catalog=catalog)
    said: list[str] = []
    rec = execute(cell, tmp_path, torch.device("cpu"), log=said.append, catalog=catalog)
    lines = [line for line in said if " epoch 1/" in line and line.startswith("[counter seed 0] stage 1")]
    task = rec["history"][0]["loss_task"]
    assert len(lines) == 1 and f"loss {task:.4f} (+ zero 0.0000) (" in lines[0]  # task loss, then each extra term


def test_each_run_gets_fresh_method_instances_and_only_selected_methods_run(tmp_path):
    catalog = catalog_with(*toy.ALL)
    toy.Counter.calls.clear()
    run_methods(catalog, ["ce"], tmp_path)
    assert toy.Counter.calls == []  # not selected: never called
    recs = run_methods(catalog, ["counter"], tmp_path, seeds=(0, 1))
    epochs = recs[0]["config"]["epochs"]
    assert [r["extra"]["counter"]["epochs_seen"] for r in recs] == [epochs, epochs]  # state did not leak
    assert toy.Counter.calls == [0] * epochs + [1] * epochs


@pytest.mark.slow
def test_example_third_party_package_installs_and_its_method_runs(tmp_path):
    """pip-install plugins/ltbench-example-plugin into a scratch target and use it from a fresh process."""
    target = tmp_path / "site"
    pkg = REPO / "plugins" / "ltbench-example-plugin"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(pkg)], check=True, capture_output=True, text=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}
    listed = subprocess.run([sys.executable, "-m", "ltbench.cli", "ls", "methods", "--json"], env=env,
                            capture_output=True, text=True, check=True)
    methods = {m["name"]: m for m in json.loads(listed.stdout)}
    assert methods["label-smoothing"]["plugin"].startswith("ltbench-example-plugin")
    ran = subprocess.run([sys.executable, "-m", "ltbench.cli", "run", "--methods", "label-smoothing", "--datasets",
                          "synthetic-lt", "--budget", "smoke", "--output", str(tmp_path / "runs"), "--quiet"],
                         env=env, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    rec = json.loads(next((tmp_path / "runs").rglob("result.json")).read_text())
    assert rec["status"] == "completed" and rec["method"] == "label-smoothing"
    assert rec["versions"]["plugins"]["label-smoothing"]["distribution"] == "ltbench-example-plugin"
    own = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(pkg / "tests")],
                         env=env, capture_output=True, text=True, cwd=tmp_path)
    assert own.returncode == 0, own.stdout + own.stderr
    # and without the package the method is unknown
    missing = subprocess.run([sys.executable, "-m", "ltbench.cli", "run", "--methods", "label-smoothing",
                              "--budget", "smoke"], capture_output=True, text=True, cwd=tmp_path)
    assert missing.returncode == 2 and "unknown method 'label-smoothing'" in missing.stderr


def test_every_hook_is_documented_and_called_by_the_core():
    import inspect

    from ltbench.plugins import catalog
    from ltbench.training import evaluate, hooks as run_hooks, loop, run as run_module
    from ltbench import hookspecs
    from ltbench.grid import launch, runner

    core = "".join(inspect.getsource(m) for m in (catalog, run_hooks, evaluate, loop, run_module, runner, launch))
    hooks = [n for n in dir(hookspecs) if n.startswith("ltbench_")]
    assert len(hooks) == 25
    for name in hooks:
        assert inspect.getdoc(getattr(hookspecs, name)), f"{name} has no docstring"
        # run hooks through the run's plugin manager (a stage's first-result hooks through stage_hook, which asks
        # only the methods that answer in that stage); reporting hooks through Reporting.emit
        assert f"hook.{name}" in core or f'stage_hook(run, "{name}"' in core or f'emit("{name}"' in core, \
            f"{name} is specified but never called"
