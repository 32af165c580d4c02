"""Speed without changing results: the step loop never waits for the device, and the fast paths compute exactly
what the plain ones did (issue 16). Throughput itself is measured by ci/bench_throughput.py, never here."""

import contextlib

import numpy as np
import pytest
import torch
from torch import nn

from ltbench.data.augment import random_crop_flip
from ltbench.grid.plan import plan_grid
from ltbench.plugins.testing import catalog_with
from ltbench.training.evaluate import evaluate
from ltbench.training.hooks import build_loss
from ltbench.training.loop import image_batch, run_steps
from ltbench.training.run import build_run

import toy_methods as toy

#: Tensor methods that copy a value to the host, and so wait for a GPU's queue
HOST_READS = ("item", "__float__", "__int__", "__bool__", "tolist", "numpy", "__index__")


@contextlib.contextmanager
def count_host_reads(calls: list[str]):
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def counting(name):
        def wrapper(self, *args, **kwargs):
            calls.append(name)
            return originals[name](self, *args, **kwargs)

        return wrapper

    try:
        for name in HOST_READS:
            setattr(torch.Tensor, name, counting(name))
        yield calls
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


def _run(catalog, method: str, tmp_path):
    (cell,) = plan_grid([method], ["synthetic-lt"], [0], "smoke", catalog=catalog)
    return build_run(catalog, cell.dataset, cell.data, cell.config, 0, torch.device("cpu"), tmp_path,
                     log=lambda m: None)


@pytest.mark.parametrize("method", ["ce", "cb-sampling", "ldam-drw", "focal"])
def test_the_step_loop_never_reads_a_value_back_from_the_device(method, tmp_path):
    catalog = catalog_with()
    run = _run(catalog, method, tmp_path)
    optimizer = torch.optim.SGD(run.model.parameters(), lr=0.05, momentum=0.9)
    order = torch.randperm(len(run.train_labels), generator=torch.Generator().manual_seed(0))
    loss_fn, make_batch = build_loss(run, 1), image_batch(run, run.train_labels)
    with count_host_reads([]) as calls:
        sums, steps = run_steps(run, optimizer, loss_fn, order, 64, make_batch)
    assert steps == -(-len(order) // 64) and set(sums) == {"task"}
    assert calls == []  # no float()/item()/bool() per step: the epoch reads its loss sums once, after the loop
    assert torch.isfinite(sums["task"]) and sums["task"].dtype == torch.float64


def test_a_diverged_epoch_is_still_reported_with_its_epoch_and_term(tmp_path):
    from ltbench.plugins.testing import run_methods

    (rec,) = run_methods(catalog_with(*toy.ALL), ["nan-at-epoch-2"], tmp_path)
    assert rec["status"] == "diverged" and "epoch 2" in rec["error"] and "poison" in rec["error"]
    assert rec["epochs_completed"] == 1  # the poisoned epoch is neither recorded nor checkpointed


def _reference_crop_flip(x, padding, flip, generator):
    """ltbench's augmentation before the speed-up: a 4-D gather on float images (the specification)."""
    b, c, h, w = x.shape
    x = nn.functional.pad(x, (padding, padding, padding, padding))
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w))[:, None, None, :]
    x = x[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    if flip:
        mask = torch.rand(b, generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


@pytest.mark.parametrize("padding, channels", [(4, 3), (2, 1)])
def test_uint8_augmentation_is_bit_identical_to_the_float_gather(padding, channels):
    images = torch.randint(0, 256, (96, channels, 16, 16), dtype=torch.uint8)
    mean = torch.rand(1, channels, 1, 1)
    std = torch.rand(1, channels, 1, 1) + 0.1
    ref = (_reference_crop_flip(images.float().div(255), padding, True, torch.Generator().manual_seed(5)) - mean) / std
    fast = random_crop_flip(images, padding, True, torch.Generator().manual_seed(5))
    assert fast.dtype == torch.uint8
    fast = fast.float().div_(255).sub_(mean).div_(std)
    assert torch.equal(ref, fast)


def test_a_normalised_batch_has_standard_strides_even_with_one_channel():
    """A cropped one-channel batch can have strides that also read as channels-last; convolutions then take
    another algorithm and round differently, so results would change with the speed-up."""
    from ltbench.data.stores import ImageStore

    class Data:
        mean, std = (0.5,), (0.25,)

    class Spec:
        crop_padding, flip = 2, True

    store = ImageStore(np.zeros((8, 28, 28, 1), np.uint8), Spec, Data, torch.device("cpu"))
    x = store.get(torch.arange(8), augment=True, generator=torch.Generator().manual_seed(0))
    assert x.stride() == (784, 784, 28, 1)


def test_evaluation_is_the_plain_forward_pass(tmp_path):
    catalog = catalog_with()
    run = _run(catalog, "ce", tmp_path)
    data = run.data
    x = torch.from_numpy(data.x_val).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(data.mean).view(1, -1, 1, 1)) / torch.tensor(data.std).view(1, -1, 1, 1)
    run.model.eval()
    with torch.no_grad():
        expected = run.model(x).argmax(1).numpy()
    result = evaluate(run, data.x_val, data.y_val)
    per_class = [100.0 * np.mean(expected[data.y_val == c] == c) for c in range(data.num_classes)]
    assert result.per_class_accuracy == pytest.approx(per_class, abs=1e-9)
    assert run.image_store(data.x_val) is run.image_store(data.x_val)  # the device copy is made once


def test_execution_options_are_recorded_but_not_part_of_a_runs_identity(tmp_path):
    from ltbench.grid import config as C

    catalog = catalog_with()
    spec = catalog.dataset("synthetic-lt")
    classes = [catalog.method("ce").cls]
    plain = C.resolve(spec, "smoke", classes)
    fast = C.resolve(spec, "smoke", classes, {"channels_last": "true"})
    assert fast["channels_last"] is True and plain["channels_last"] is False
    assert C.config_id(fast) == C.config_id(plain) and C.overrides(fast, plain) == {}


def _reference_store_get(self, idx, augment, generator=None, local=None, views=1):
    """ImageStore.get before the speed-up: float images, then the 4-D gather crop, then normalise (one view)."""
    x = self.x[idx.to(self.x.device)].float().div_(255)
    if augment:
        x = _reference_crop_flip(x, self.padding, self.flip, generator)
    return (x - self.mean) / self.std


@pytest.mark.parametrize("method", ["ce", "ldam-drw", "crt"])
def test_the_speed_up_leaves_a_runs_results_unchanged_for_a_fixed_seed(method, tmp_path, monkeypatch):
    """The same run through the old augmentation path and through the fast one: identical per-class accuracy
    and identical per-epoch losses, to the last bit (stage 2 of cRT included)."""
    from ltbench.data import stores
    from ltbench.plugins.testing import run_methods

    catalog = catalog_with()
    (fast,) = run_methods(catalog, [method], tmp_path / "fast", epochs=3)
    with monkeypatch.context() as m:
        m.setattr(stores.ImageStore, "get", _reference_store_get)
        (slow,) = run_methods(catalog, [method], tmp_path / "reference", epochs=3)
    assert fast["status"] == slow["status"] == "completed"
    assert fast["per_class_accuracy"] == slow["per_class_accuracy"]
    assert _losses(tmp_path / "fast") == _losses(tmp_path / "reference") != []


def _losses(out) -> list[dict]:
    import json

    (history,) = out.rglob("metrics.jsonl")
    entries = [json.loads(line) for line in history.read_text().splitlines()]
    return [{k: v for k, v in e.items() if k.startswith("loss_")} for e in entries]
