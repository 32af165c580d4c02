"""The method authors' kit (issue 13): check_method, the conformance check, passes for every built-in
method and for the example plugin, and fails when a method breaks what it checks."""

import re
import sys
from pathlib import Path

import pytest
import torch

from ltbench import Method, MethodMetadata, hookimpl
from ltbench.catalog import get_catalog
from ltbench.testing import catalog_with, check_method, run_methods
from ltbench_builtin import losses

REPO = Path(__file__).resolve().parents[1]
#: settings a method needs on synthetic-lt's tiny CNN
NEEDS = {"safa": {"backbone": "resnet8"}}


@pytest.mark.parametrize("name", sorted(get_catalog().methods))
def test_every_built_in_method_passes_the_conformance_check(name, tmp_path):
    record = check_method(get_catalog().method(name).cls, tmp_path, settings=NEEDS.get(name))
    assert record["status"] == "completed"


@pytest.mark.parametrize("name", ["LabelSmoothing", "ExampleMixup", "ExampleSecondHead"])
def test_the_example_plugin_passes_the_conformance_check(name, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "plugins" / "ltbench-example-plugin"))
    import ltbench_example

    assert check_method(getattr(ltbench_example, name), tmp_path)["status"] == "completed"


@pytest.mark.parametrize("module", ["mixup_ce.py", "second_head.py"])
def test_the_two_examples_are_short_and_use_only_public_names(module):
    """Issue 13's yardstick: mixup + CE and a second-head ensemble in under 60 lines, no run.pm, no _private."""
    text = (REPO / "plugins" / "ltbench-example-plugin" / "ltbench_example" / module).read_text()
    assert len(text.splitlines()) < 60
    assert ".pm" not in text and not re.search(r"\.\_[a-z]", text)
    for imported in re.findall(r"from (ltbench[\w.]*) import", text):
        assert not any(part.startswith("_") for part in imported.split("."))


def test_the_examples_do_what_they_say(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "plugins" / "ltbench-example-plugin"))
    from ltbench_example import ExampleMixup, ExampleSecondHead

    from ltbench.catalog import build_catalog

    catalog = build_catalog()  # where the example plugin's metadata is on the path its entry point gives them
    if "example-mixup" not in catalog.methods:
        catalog = catalog_with(ExampleMixup, ExampleSecondHead)
    seen = []
    soft = losses.ldam_loss_soft
    monkeypatch.setattr(losses, "ldam_loss_soft", lambda *a, **k: seen.append(1) or soft(*a, **k))
    (mixed,) = run_methods(catalog, ["example-mixup+ldam-drw"], tmp_path)
    assert mixed["status"] == "completed" and seen  # LDAM-DRW trained toward the mixed targets
    (ensemble,) = run_methods(catalog, ["example-second-head"], tmp_path)
    assert ensemble["status"] == "completed"
    assert all("loss_balanced_head" in e for e in ensemble["history"])


class _Meddler(Method):
    name = "meddler"
    metadata = MethodMetadata(title="changes batch-norm statistics in augment_batch")

    @hookimpl
    def ltbench_augment_batch(self, model, batch):
        model.train()
        model(batch.images)  # a forward pass in train mode moves the running statistics


class _Forgetful(Method):
    name = "forgetful"
    metadata = MethodMetadata(title="counts epochs but forgets them on resume")

    def __init__(self, **options):
        super().__init__(**options)
        self.seen = 0

    @hookimpl
    def ltbench_epoch_end(self):
        self.seen += 1

    @hookimpl
    def ltbench_extra_losses(self, output):
        return {"scaled": output.logits.float().pow(2).mean() * 0.01 * self.seen}


@pytest.mark.parametrize("cls, message", [
    (_Meddler, "ltbench_augment_batch changed the model: buffer:"),
    (_Forgetful, "a run resumed after an interrupted epoch differs"),
])
def test_the_conformance_check_catches_a_broken_method(cls, message, tmp_path):
    with pytest.raises(AssertionError, match=message):
        check_method(cls, tmp_path)


def test_the_fixtures_give_a_real_run_batch_and_model(tiny_run, tiny_batch, tiny_model):
    assert tiny_batch.images.shape[0] == len(tiny_batch.labels) == 16
    assert tiny_model is tiny_run.model
    assert tiny_model(tiny_batch.images).shape == (16, tiny_run.num_classes)


def test_new_plugin_refuses_a_name_whose_package_would_shadow_or_be_shadowed(tmp_path, capsys):
    from ltbench.cli import main

    # ltbench's own built-in plugins live in ltbench_builtin: a package of that name would replace them
    assert main(["new-plugin", "builtin", "--dir", str(tmp_path)]) == 2
    assert "'ltbench_builtin' for method 'builtin' is taken by an installed module" in capsys.readouterr().err
    assert not (tmp_path / "ltbench-builtin").exists()
    assert main(["new-plugin", "plugins", "--dir", str(tmp_path)]) == 2  # the old name, reserved
    assert "'ltbench_plugins' for method 'plugins' is taken by ltbench itself" in capsys.readouterr().err


def test_new_plugin_writes_a_package_that_installs_and_passes_its_own_tests(tmp_path, capsys):
    import os
    import subprocess

    from ltbench.cli import main

    assert main(["new-plugin", "entropy-bonus", "--dir", str(tmp_path)]) == 0
    root = tmp_path / "ltbench-entropy-bonus"
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(root)], check=True, capture_output=True, text=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}
    own = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "tests")],
                         env=env, capture_output=True, text=True, cwd=tmp_path)
    assert own.returncode == 0, own.stdout + own.stderr
    assert "4 passed" in own.stdout
    assert main(["new-plugin", "entropy-bonus", "--dir", str(tmp_path)]) == 2  # never overwrites
    assert main(["new-plugin", "Bad_Name", "--dir", str(tmp_path)]) == 2
    assert "a method name is lower-case letters" in capsys.readouterr().err
