"""The plugin authors' kit (issues 13 and 38): check_method, the conformance check, passes for every built-in
method and for the example plugin, and fails when a method breaks what it checks; the checks of a second stage's
resume, of two processes' predictions, of a dataset, a backbone and a device each catch a planted defect of their
kind and pass a correct plugin."""

import json
import re
import sys
import unittest
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ltbench import Method, MethodMetadata, hookimpl
from ltbench.api import (BackboneSpec, Budget, DatasetSpec, LTData, Reporter, SecondStage, exponential_counts,
                         long_tailed_split)
from ltbench.plugins.catalog import get_catalog
from ltbench.api import check_backbone, check_dataset, check_device
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


class _ForgetsStage2(Method):
    """Counts its stage-2 epochs and trains with the count, but saves it for resume only with ``save``: a resumed
    stage 2 starts counting again (the stage-1 check cannot see it: nothing changes in stage 1)."""

    name = "forgets-stage2"
    metadata = MethodMetadata(title="a stage-2 state that state_dict leaves out")
    options = {"save": False}

    def __init__(self, **options):
        super().__init__(**options)
        self.stage2_epochs = 0

    @hookimpl
    def ltbench_second_stage(self):
        return SecondStage()

    @hookimpl
    def ltbench_epoch_end(self, stage):
        if stage == 2:
            self.stage2_epochs += 1

    @hookimpl
    def ltbench_extra_losses(self, run, output):
        if run.stage == 2:
            return {"stage2": output.logits.float().pow(2).mean() * 0.01 * self.stage2_epochs}

    def state_dict(self):
        return {"stage2_epochs": self.stage2_epochs} if self.opts["save"] else {}

    def load_state_dict(self, state):
        self.stage2_epochs = int(state.get("stage2_epochs", 0))


class _HardLabelsOnly(Method):
    """A loss of its own that takes hard labels only: right alone, broken beside a method that mixes targets."""

    name = "hard-labels-only"
    metadata = MethodMetadata(title="a loss that ignores soft targets")

    @hookimpl
    def ltbench_build_loss(self):
        return lambda logits, targets, row_weights=None: F.nll_loss(F.log_softmax(logits, 1), targets)


@pytest.mark.parametrize("cls, message", [
    (_Meddler, "ltbench_augment_batch changed the model: buffer:"),
    (_Forgetful, "a run resumed after an interrupted epoch differs"),
    (_ByRunName, "by-run-name\\+ltbench-kit-probe: composed with a method that changes nothing, it trains differently"),
    (_ForgetsStage2, "forgets-stage2: a run resumed after an interrupted stage-2 epoch differs from an uninterrupted "
                     "one: stage 2 epoch 2 loss_stage2"),
    (_HardLabelsOnly, "hard-labels-only\\+mixup: failed: "),
])
def test_the_conformance_check_catches_a_broken_method(cls, message, tmp_path):
    with pytest.raises(AssertionError, match=message):
        check_method(cls, tmp_path)


def test_a_stage2_state_saved_for_resume_passes_the_check(tmp_path):
    record = check_method(_ForgetsStage2, tmp_path, settings={"forgets-stage2.save": "true"})
    assert sum(e["stage"] == 2 for e in record["history"]) == 2  # the check interrupted a stage that trains


def test_the_resume_check_compares_the_final_model_too(tmp_path, monkeypatch):
    """A difference the record does not show (here: a model tensor changed after the run) still fails."""
    from ltbench.plugins import testing

    real = testing._saved_model

    def tampered(output):
        saved = real(output)
        if "resumed" in str(output):
            saved["classifier.bias"] = saved["classifier.bias"] + 1e-6
        return saved

    monkeypatch.setattr(testing, "_saved_model", tampered)
    with pytest.raises(AssertionError, match="forgets-stage2: a run resumed after an interrupted epoch ends with "
                                             "another model than an uninterrupted one: classifier.bias differs"):
        check_method(_ForgetsStage2, tmp_path, settings={"forgets-stage2.save": "true"})


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


class PerRankPrior(Method):
    """Post-hoc logit adjustment by a class prior counted from this rank's rows of the training set (sorted by
    class in synthetic-lt: rank 0 sees the head) unless ``global_prior``: losses are untouched, predictions are
    not. At module level: the kit spawns processes that import it."""

    name = "per-rank-prior"
    metadata = MethodMetadata(title="a prior counted per rank, used at prediction only")
    options = {"global_prior": False}

    @hookimpl
    def ltbench_configure_model(self, run):
        from ltbench.api import shard_rows

        labels = np.asarray(run.train_labels)
        if not self.opts["global_prior"]:
            labels = labels[shard_rows(len(labels))]
        counts = np.bincount(labels, minlength=run.num_classes) + 1.0
        self.log_prior = torch.log(torch.as_tensor(counts / counts.sum(), dtype=torch.float32))

    @hookimpl
    def ltbench_adjust_logits(self, logits):
        return logits - self.log_prior.to(logits.device)


@pytest.mark.slow
def test_the_distributed_check_compares_per_class_predictions(tmp_path):
    from ltbench.plugins.testing import check_distributed

    record = check_distributed(PerRankPrior, tmp_path / "global", settings={"per-rank-prior.global_prior": "true"})
    assert record["world_size"] == 2 and record["status"] == "completed"
    with pytest.raises(AssertionError, match="per-rank-prior: 2 processes predict differently from one: .*class 0: "):
        check_distributed(PerRankPrior, tmp_path / "per-rank")


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


# ---- dataset and backbone plugins -----------------------------------------------------------------------------

TOY_CLASSES, TOY_PER_CLASS, TOY_TEST, TOY_VAL = 6, 60, 20, 5


def _toy_arrays(seed):
    """A balanced source of 8x8 RGB images, a smooth pattern per class plus noise: (x, y, x_test, y_test)."""
    rng = np.random.RandomState(seed)
    protos = rng.uniform(0, 1, size=(TOY_CLASSES, 4, 4, 3)).repeat(2, axis=1).repeat(2, axis=2)

    def draw(n):
        labels = np.repeat(np.arange(TOY_CLASSES), n).astype(np.int64)
        images = np.clip(protos[labels] * 0.6 + 0.2 + rng.normal(0, 0.3, size=(len(labels), 8, 8, 3)), 0, 1)
        return (images * 255).astype(np.uint8), labels

    return (*draw(TOY_PER_CLASS), *draw(TOY_TEST))


def toy_dataset(defect=None, name="toy-lt"):
    """A dataset plugin written from ltbench.api alone (as docs/writing-a-dataset.md's), with one planted
    ``defect``: "overlap" (validation holds training images), "unseeded" (each load draws other images),
    "profile" (the counts of twice the imbalance factor), "labels" (test labels 1..C)."""

    def load(data_root, imbalance_factor):
        x, y, x_test, y_test = _toy_arrays(None if defect == "unseeded" else 0)
        counts = exponential_counts(TOY_PER_CLASS - 10, TOY_CLASSES,
                                    imbalance_factor * (2 if defect == "profile" else 1))
        train, val = long_tailed_split(y, counts, val_per_class=TOY_VAL)
        if defect == "overlap":
            val = np.concatenate([val, train[:3]])
        return LTData(name=name, num_classes=TOY_CLASSES, x_train=x[train], y_train=y[train], x_val=x[val],
                      y_val=y[val], x_test=x_test, y_test=y_test + (1 if defect == "labels" else 0),
                      mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                      class_names=[f"toy {c}" for c in range(TOY_CLASSES)],
                      info={"imbalance_factor": imbalance_factor, "source": "generated", "classes_without_val": []})

    smoke = Budget(backbone="tiny-cnn", epochs=2, batch_size=32, lr=0.05, stage2_epochs=1, stage2_batch_size=32,
                   smoke=True, description="seconds")
    return DatasetSpec(name=name, description="toy long-tailed 8x8 images (tests)", load=load,
                       budgets={"smoke": smoke}, default_imbalance_factor=5.0, crop_padding=1, image_shape=(8, 8, 3))


def test_the_dataset_check_passes_a_correct_dataset_and_trains_it_by_name(tmp_path):
    data = check_dataset(toy_dataset(), tmp_path, test_counts=TOY_TEST, val_counts=TOY_VAL)
    assert data.train_counts.tolist() == exponential_counts(50, TOY_CLASSES, 5.0)
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "run").rglob("result.json")]
    assert record["status"] == "completed" and record["dataset"] == "toy-lt-if5"
    assert check_dataset(get_catalog().dataset("synthetic-lt"), tmp_path / "built-in", test_counts=50,
                         val_counts=10, method=None).num_classes == 10


@pytest.mark.parametrize("defect, message", [
    ("overlap", "dataset 'toy-lt': the validation split shares 3 images with the training split \\(val image 30 "
                "is train image 0\\)"),
    ("unseeded", "dataset 'toy-lt': two loads give different x_train .*load must be deterministic"),
    ("profile", "dataset 'toy-lt': the training counts .* do not follow the exponential profile of imbalance "
                "factor 5"),
    ("labels", "dataset 'toy-lt': y_test holds labels outside 0..5: 6"),
])
def test_the_dataset_check_catches_a_broken_dataset(defect, message, tmp_path):
    with pytest.raises(AssertionError, match=message):
        check_dataset(toy_dataset(defect), tmp_path, method=None)


def test_the_dataset_check_counts_what_the_author_declares(tmp_path):
    with pytest.raises(AssertionError, match="the test split has \\[20, 20, 20, 20, 20, 20\\] images per class, "
                                             "expected \\[25, 25, 25, 25, 25, 25\\]"):
        check_dataset(toy_dataset(), tmp_path, test_counts=25, method=None)
    with pytest.raises(AssertionError, match="the training split has .* images per class, expected \\[1, 2"):
        check_dataset(toy_dataset(), tmp_path, train_counts=[1, 2, 3, 4, 5, 6], method=None)


def _files_dataset(wrong_size=False):
    """A dataset whose images stay on disk (the streaming path; not public API yet, so built from internals),
    declaring 16x16 images for its 8x8 files with ``wrong_size``."""
    import dataclasses

    from ltbench.data.files import load_image_folder_lt

    def load(data_root, imbalance_factor):
        data = load_image_folder_lt(data_root, 0.0)
        if wrong_size:
            data = dataclasses.replace(data, **{f"x_{s}": dataclasses.replace(
                getattr(data, f"x_{s}"), info={**getattr(data, f"x_{s}").info, "image_hw": [16, 16]})
                for s in ("train", "val", "test")})
        return data

    return DatasetSpec(name="toy-files-lt", description="toy images on disk (tests)", load=load, budgets={},
                       default_imbalance_factor=0.0, needs_data_root=True)


def test_the_dataset_check_streams_images_from_disk_and_catches_a_wrong_declared_size(tmp_path):
    from ltbench.data.files import export_list_dataset

    root = export_list_dataset(toy_dataset().load(None, 5.0), tmp_path / "files", "toy", 1, True, log=lambda m: None)
    data = check_dataset(_files_dataset(), tmp_path / "ok", data_root=str(root), method=None)
    assert data.streaming and len(data.y_train) == sum(exponential_counts(50, TOY_CLASSES, 5.0))
    with pytest.raises(AssertionError, match="dataset 'toy-files-lt': its train images decode to \\(3, 8, 8\\) "
                                             "\\(C, H, W\\), but the data declare \\(3, 16, 16\\)"):
        check_dataset(_files_dataset(wrong_size=True), tmp_path / "bad", data_root=str(root), method=None)


class _ToyNet(nn.Module):
    """A one-block backbone; ``claimed`` misstates its feature width, ``eval_dropout`` calls F.dropout without
    ``training=self.training`` (so it drops at evaluation too), ``own_seed`` initialises its convolution from a
    generator it seeds itself (so the run's seed does not repeat it)."""

    def __init__(self, in_chans=3, width=8, claimed=None, eval_dropout=False, own_seed=False):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        if own_seed:
            generator = torch.Generator()
            generator.seed()  # a seed from the operating system
            with torch.no_grad():
                self.stem[0].weight.normal_(0, 0.1, generator=generator)
        self.num_features = claimed or width
        self.eval_dropout = eval_dropout

    def forward_features(self, x):
        return self.stem(x)

    def forward_pool(self, fmap):
        pooled = F.adaptive_avg_pool2d(fmap, 1).flatten(1)
        return F.dropout(pooled, 0.5) if self.eval_dropout else pooled


def test_the_backbone_check_passes_a_correct_backbone_and_trains_it_by_name(tmp_path):
    record = check_backbone(BackboneSpec("toy-net", "one block (tests)", lambda c: _ToyNet(c)), tmp_path)
    assert record["status"] == "completed" and record["config"]["backbone"] == "toy-net"
    assert check_backbone(get_catalog().backbone("tiny-cnn"), tmp_path / "built-in", method=None) is None


@pytest.mark.parametrize("spec, message", [
    (BackboneSpec("toy-claims-16", "says 16, gives 8", lambda c: _ToyNet(c, claimed=16)),
     "backbone 'toy-claims-16': forward_pool gives features of shape \\(4, 8\\), but num_features is 16"),
    (BackboneSpec("toy-eval-dropout", "drops at evaluation", lambda c: _ToyNet(c, eval_dropout=True)),
     "backbone 'toy-eval-dropout': in eval mode the same images give different features twice"),
    (BackboneSpec("toy-own-seed", "initialised from a generator of its own", lambda c: _ToyNet(c, own_seed=True)),
     "backbone 'toy-own-seed': two builds under the same seed differ in"),
])
def test_the_backbone_check_catches_a_broken_backbone(spec, message, tmp_path):
    with pytest.raises(AssertionError, match=message):
        check_backbone(spec, tmp_path, method=None)


def test_catalog_with_registers_datasets_backbones_reporters_and_methods():
    class Quiet(Reporter):
        name = "quiet"

    dataset, backbone = toy_dataset(), BackboneSpec("toy-net", "one block (tests)", lambda c: _ToyNet(c))
    catalog = catalog_with(dataset, backbone, Quiet, _Forgetful)
    assert catalog.dataset("toy-lt") is dataset and catalog.backbone("toy-net") is backbone
    assert catalog.reporter("quiet") is Quiet and catalog.method("forgetful").cls is _Forgetful
    with pytest.raises(AssertionError, match="plugins failed to load: .*register\\(\\) expects a subclass of "
                                             "ltbench.Method, got 'not a plugin'"):
        catalog_with("not a plugin")
    with pytest.raises(AssertionError, match="dataset name 'synthetic-lt' belongs to ltbench itself"):
        catalog_with(get_catalog().dataset("synthetic-lt"))


# ---- the device check --------------------------------------------------------------------------------------------

class _CpuOffsets(Method):
    """Adds per-class offsets made on the CPU to the evaluation logits: right on the CPU, an error on CUDA."""

    name = "cpu-offsets"
    metadata = MethodMetadata(title="a tensor left on the CPU")

    @hookimpl
    def ltbench_adjust_logits(self, logits):
        return logits + torch.linspace(0, 1e-3, logits.shape[1])


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available: the device check runs")
def test_without_cuda_the_device_check_is_skipped_with_the_reason(tmp_path, monkeypatch):
    with pytest.raises(pytest.skip.Exception, match="CUDA is not available: check_device runs cpu-offsets on cuda"):
        check_device(_CpuOffsets, tmp_path)
    assert not list(tmp_path.iterdir())  # nothing ran
    monkeypatch.setitem(sys.modules, "pytest", None)  # without pytest: unittest's skip, which pytest also honours
    with pytest.raises(unittest.SkipTest, match="CUDA is not available"):
        check_device(_CpuOffsets, tmp_path)


def test_the_device_check_compares_a_run_and_a_reloaded_model_on_the_device_with_the_cpu(tmp_path):
    """On the CPU as the device (what this machine can run): a correct two-stage method passes every step."""
    record = check_device(get_catalog().method("crt").cls, tmp_path, device="cpu")
    assert record["status"] == "completed" and any(e["stage"] == 2 for e in record["history"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_device_check_catches_a_tensor_left_on_the_cpu(tmp_path):
    assert check_device(losses.Focal, tmp_path / "ok")["status"] == "completed"
    with pytest.raises(AssertionError, match="cpu-offsets: the run on cuda failed: .*device"):
        check_device(_CpuOffsets, tmp_path / "bad")


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
