"""The method authors' kit (issue 13): check_method, the conformance check, passes for every built-in
method and for the example plugin, and fails when a method breaks what it checks."""

import re
import sys
from pathlib import Path

import pytest
import torch

from ltbench import Method, MethodMetadata, hookimpl
from ltbench.plugins.catalog import get_catalog
from ltbench.plugins.testing import catalog_with, check_method, run_methods
from ltbench_builtin import losses

REPO = Path(__file__).resolve().parents[1]
#: settings a method needs on synthetic-lt's tiny CNN
NEEDS = {"safa": {"backbone": "resnet8"}}


@pytest.mark.parametrize("name", sorted(get_catalog().methods))
def test_every_built_in_method_passes_the_conformance_check(name, tmp_path):
    record = check_method(get_catalog().method(name).cls, tmp_path, settings=NEEDS.get(name))
    assert record["status"] == "completed"


def test_the_conformance_check_leaves_the_catalog_it_is_given_as_it_was(tmp_path):
    from ltbench.api import build_catalog

    catalog = build_catalog()
    before = sorted(catalog.methods), [p.name for p in catalog.plugins]
    check_method(losses.Focal, tmp_path, catalog=catalog)
    assert (sorted(catalog.methods), [p.name for p in catalog.plugins]) == before


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

    from ltbench.plugins.catalog import build_catalog

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


class _ByRunName(Method):
    """A loss method that finds its options under the run's name: right alone, wrong in any composition."""

    name = "by-run-name"
    metadata = MethodMetadata(title="reads its options under run.method_name")
    options = {"gamma": 2.0}

    @hookimpl
    def ltbench_build_loss(self, run):
        gamma = run.config["methods"].get(run.method_name, {"gamma": 0.0})["gamma"]
        return lambda logits, targets: losses.focal_loss(logits, targets, gamma)


@pytest.mark.parametrize("cls, message", [
    (_Meddler, "ltbench_augment_batch changed the model: buffer:"),
    (_Forgetful, "a run resumed after an interrupted epoch differs"),
    (_ByRunName, "by-run-name\\+ltbench-kit-probe: composed with a method that changes nothing, it trains differently"),
])
def test_the_conformance_check_catches_a_broken_method(cls, message, tmp_path):
    with pytest.raises(AssertionError, match=message):
        check_method(cls, tmp_path)


class PerRankRows(Method):
    """Scales its extra loss by the rows it has seen: per rank, half of what one process sees (the state a
    distributed method must reduce over ranks). At module level: the kit spawns processes that import it."""

    name = "per-rank-rows"
    metadata = MethodMetadata(title="keeps a per-rank count that changes the loss")
    options = {"reduce": False}

    def __init__(self, **options):
        super().__init__(**options)
        self.rows = 0

    @hookimpl
    def ltbench_augment_batch(self, batch):
        from ltbench.api import all_reduce_sum

        rows = torch.tensor(float(len(batch.labels)))
        self.rows += int(all_reduce_sum(rows).item() if self.opts["reduce"] else rows.item())

    @hookimpl
    def ltbench_extra_losses(self, output):
        return {"rows": output.logits.float().pow(2).mean() * 1e-4 * self.rows}

    def state_dict(self):
        return {"rows": self.rows}

    def load_state_dict(self, state):
        self.rows = int(state["rows"])


@pytest.mark.slow
def test_the_distributed_check_compares_two_processes_with_one(tmp_path):
    from ltbench.plugins.testing import check_distributed

    record = check_distributed(PerRankRows, tmp_path / "reduced", settings={"per-rank-rows.reduce": "true"})
    assert record["world_size"] == 2 and record["status"] == "completed"
    with pytest.raises(AssertionError, match="per-rank-rows: 2 processes train differently from one"):
        check_distributed(PerRankRows, tmp_path / "per-rank")


class _HoldsTheImages(Method):
    """Keeps a copy of the training images at the start, which the streaming store does not have."""

    name = "holds-the-images"
    metadata = MethodMetadata(title="assumes the training images are an in-memory array")

    @hookimpl
    def ltbench_configure_model(self, run):
        self.pixels = float(run.train_images.x.float().mean())


def test_the_streaming_check_runs_a_method_from_image_files(tmp_path):
    from ltbench.plugins.testing import check_streaming

    assert check_streaming(get_catalog().method("cb-sampling").cls, tmp_path / "ok")["status"] == "completed"
    with pytest.raises(AssertionError, match="holds-the-images: the streaming run failed: .*'FileImageStore' object has no attribute 'x'"):
        check_streaming(_HoldsTheImages, tmp_path / "bad")


def test_the_fixtures_give_a_real_run_batch_and_model(ltbench_tiny_run, ltbench_tiny_batch, ltbench_tiny_model):
    assert ltbench_tiny_batch.images.shape[0] == len(ltbench_tiny_batch.labels) == 16
    assert ltbench_tiny_model is ltbench_tiny_run.model
    assert ltbench_tiny_model(ltbench_tiny_batch.images).shape == (16, ltbench_tiny_run.num_classes)


def test_the_pytest_plugin_loads_without_torch_and_its_old_fixture_names_warn(tmp_path):
    import subprocess

    code = "import sys, ltbench.plugins.pytest_plugin; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0  # pytest starts without importing torch
    (tmp_path / "test_old.py").write_text(
        "import pytest\n"
        "def test_old(tiny_run):\n"
        "    assert tiny_run.model is not None\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W",
                           "error::DeprecationWarning", str(tmp_path / "test_old.py")], capture_output=True,
                          text=True, cwd=tmp_path)
    assert done.returncode == 1 and "'tiny_run' is now 'ltbench_tiny_run'" in done.stdout


def test_new_plugin_refuses_a_name_whose_package_would_shadow_or_be_shadowed(tmp_path, capsys):
    from ltbench.cli import main

    # ltbench's own built-in plugins live in ltbench_builtin: a package of that name would replace them
    assert main(["new-plugin", "builtin", "--dir", str(tmp_path)]) == 2
    assert "'ltbench_builtin' for method 'builtin' is taken by an installed module" in capsys.readouterr().err
    assert not (tmp_path / "ltbench-builtin").exists()
    assert main(["new-plugin", "plugins", "--dir", str(tmp_path)]) == 2  # the old name, reserved
    assert "'ltbench_plugins' for method 'plugins' is taken by ltbench itself" in capsys.readouterr().err


@pytest.mark.slow
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
