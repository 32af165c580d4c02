"""Issue 27's hooks for contrastive and re-weighting methods: k augmented views of every row
(``ltbench_train_views``, in memory and streaming) and per-row loss weights (``Batch.row_weights``), which the
core passes to whichever method's task loss, so a re-weighting method composes with a loss method."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from ltbench.api import Method, MethodMetadata, cross_entropy, hookimpl, soft_cross_entropy
from ltbench.data.files import export_list_dataset, load_image_folder_lt
from ltbench.data.imagefiles import FileImageStore
from ltbench.plugins.testing import catalog_with, check_streaming, run_methods

META = MethodMetadata(title="a views/weights probe")


def _is_crop_of(view: torch.Tensor, image: torch.Tensor, pad: int) -> bool:
    """Whether ``view`` (C, H, W) is ``image`` shifted by at most ``pad`` pixels (zero fill), maybe flipped."""
    padded = F.pad(image, (pad, pad, pad, pad))
    h, w = image.shape[1:]
    for flip in (False, True):
        source = padded.flip(-1) if flip else padded
        for dy in range(2 * pad + 1):
            for dx in range(2 * pad + 1):
                if torch.equal(source[:, dy : dy + h, dx : dx + w], view):
                    return True
    return False


class TwoViews(Method):
    """Asks for two views and checks, at every step, what the batch and the forward pass hold."""

    name = "two-views"
    metadata = META

    def __init__(self, **options):
        super().__init__(**options)
        self.steps, self.same_images, self.distinct, self.rows_ok = 0, True, 0, True

    @hookimpl
    def ltbench_train_views(self):
        return 2

    @hookimpl
    def ltbench_extra_losses(self, run, batch, output):
        (second,) = batch.extra_views
        n = len(batch.images)
        self.rows_ok &= (second.shape == batch.images.shape and len(output.logits) == 2 * n
                         and batch.view_rows(1) == slice(n, 2 * n))
        store = run.train_images
        if self.steps == 0 and hasattr(store, "x"):  # each view is a crop of the same image (uint8 in memory)
            raw = store.x[batch.indices]
            for v in (batch.images, second):
                pixels = (v * store.std + store.mean) * 255
                pixels = pixels.round().to(torch.uint8)
                self.same_images &= all(_is_crop_of(pixels[i], raw[i], store.padding) for i in range(4))
        self.distinct += int(not torch.equal(batch.images, second))
        self.steps += 1
        # a term that uses the second view, so that it trains: its logits toward the labels
        return {"second_view": F.cross_entropy(output.logits[batch.view_rows(1)], batch.labels)}

    @hookimpl
    def ltbench_record(self):
        return {"steps": self.steps, "same_images": self.same_images, "distinct_steps": self.distinct,
                "rows_ok": self.rows_ok}


class HalfWeights(Method):
    """Weights every row 0.5, and rows of class 0 by 0: a toy re-weighter."""

    name = "half-weights"
    metadata = META

    @hookimpl
    def ltbench_augment_batch(self, batch):
        batch.row_weights = torch.where(batch.labels == 0, 0.0, 0.5).to(batch.images.dtype)


class ZeroWeights(Method):
    name = "zero-weights"
    metadata = META

    @hookimpl
    def ltbench_augment_batch(self, batch):
        batch.row_weights = torch.zeros(len(batch.labels))


class PlainLoss(Method):
    """A task loss that takes no ``row_weights`` keyword."""

    name = "plain-loss"
    metadata = META

    @hookimpl
    def ltbench_build_loss(self):
        return lambda logits, targets: F.cross_entropy(logits, targets)


def test_two_views_are_two_crops_of_the_same_images_in_one_forward_pass_and_the_record_counts_both(tmp_path):
    catalog = catalog_with(TwoViews)
    (ce,) = run_methods(catalog, ["ce"], tmp_path / "ce")
    (two,) = run_methods(catalog, ["two-views"], tmp_path / "two")
    assert two["status"] == "completed", two["error"]
    probe = two["extra"]["two-views"]
    assert probe["rows_ok"] and probe["same_images"] and probe["distinct_steps"] == probe["steps"] > 0
    assert [e["images"] for e in two["history"]] == [2 * e["images"] for e in ce["history"]]
    assert all("loss_second_view" in e for e in two["history"])


def test_views_from_image_files_train_exactly_as_from_memory(tmp_path):
    check_streaming(TwoViews, tmp_path, workers=1, catalog=catalog_with(TwoViews))


@pytest.mark.parametrize("transform", ["pad-crop-flip", "imagenet"])
def test_the_streaming_store_serves_every_view_from_its_read_ahead(tmp_path, transform):
    root = export_list_dataset(_tiny_data(), tmp_path / "files", "synthetic_lt", 2, True, log=lambda m: None)
    files = dataclasses.replace(load_image_folder_lt(str(root), 0.0).x_train, transform=transform, size=12)
    store = FileImageStore(files, (0.5,) * 3, (0.25,) * 3, torch.device("cpu"), padding=2, workers=1)
    order = torch.arange(64)
    store.prefetch(order, 32, torch.Generator().manual_seed(0), views=3)
    g = torch.Generator().manual_seed(0)
    x = store.get(order[:32], augment=True, generator=g, views=3)
    side = 12 if transform == "imagenet" else 16
    assert x.shape == (96, 3, side, side) and store._expected == [list(range(32, 64))]  # taken from the read-ahead
    a, b, c = x.chunk(3)
    assert not torch.equal(a, b) and not torch.equal(b, c)
    store.get(order[32:], augment=True, generator=g, views=3)
    assert store._expected == []


def _tiny_data():
    from ltbench.grid.plan import plan_grid

    (cell,) = plan_grid(["ce"], ["synthetic-lt"], [0], "smoke", catalog=catalog_with())
    return cell.data


def test_row_weights_scale_each_row_of_the_core_loss_and_one_is_the_unweighted_loss():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(6, 5, generator=g), torch.tensor([0, 1, 2, 3, 4, 0])
    r = torch.tensor([1.0, 0.0, 2.0, 0.5, 1.0, 3.0])
    assert torch.allclose(cross_entropy(logits, labels, row_weights=torch.ones(6)), F.cross_entropy(logits, labels))
    per_row = F.cross_entropy(logits, labels, reduction="none")
    assert torch.allclose(cross_entropy(logits, labels, row_weights=r), (per_row * r).mean())


def test_a_re_weighting_method_weights_the_core_loss(tmp_path):
    catalog = catalog_with(ZeroWeights)
    (zero,) = run_methods(catalog, ["zero-weights"], tmp_path / "zero")
    assert zero["status"] == "completed", zero["error"]
    assert all(e["loss_task"] == 0.0 for e in zero["history"])


def test_a_loss_without_row_weights_is_a_named_error_when_a_method_weights_rows(tmp_path):
    (rec,) = run_methods(catalog_with(HalfWeights, PlainLoss), ["half-weights+plain-loss"], tmp_path)
    assert rec["status"] == "failed" and "PluginContractError" in rec["error"]
    assert "method 'plain-loss' (ltbench_build_loss) takes no row_weights keyword" in rec["error"]


class BadViews(Method):
    name = "bad-views"
    metadata = META

    @hookimpl
    def ltbench_train_views(self):
        return 0


def test_a_views_answer_below_one_is_a_contract_error(tmp_path):
    (rec,) = run_methods(catalog_with(BadViews), ["bad-views"], tmp_path)
    assert rec["status"] == "failed" and "ltbench_train_views returned 0" in rec["error"]


def test_row_weights_scale_each_row_of_every_zoo_loss_and_one_is_the_unweighted_loss():
    from ltbench_builtin.losses import focal_loss, ldam_loss, logit_adjusted_loss, sigmoid_focal_loss

    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(6, 5, generator=g), torch.tensor([0, 1, 2, 3, 4, 0])
    w = torch.rand(5, generator=g) + 0.5
    r = torch.tensor([1.0, 0.0, 2.0, 0.5, 1.0, 3.0])
    losses = {
        "ce": lambda x, y, rw=None: cross_entropy(x, y, row_weights=rw),
        "class-weighted ce": lambda x, y, rw=None: soft_cross_entropy(x, y, w, row_weights=rw),
        "focal": lambda x, y, rw=None: focal_loss(x, y, 2.0, w, row_weights=rw),
        "sigmoid focal": lambda x, y, rw=None: sigmoid_focal_loss(x, y, 2.0, w, row_weights=rw),
        "ldam": lambda x, y, rw=None: ldam_loss(torch.tanh(x), y, torch.full((5,), 0.3), 10.0, w, row_weights=rw),
        "logit-adjust": lambda x, y, rw=None: logit_adjusted_loss(x, y, torch.log(w / w.sum()), 1.0, row_weights=rw),
    }
    for name, loss in losses.items():
        assert torch.allclose(loss(logits, labels, torch.ones(6)), loss(logits, labels), atol=1e-6), name
        # row i's term is r_i times its own: the weighted loss is the sum of one-row-at-a-time contributions
        alone = torch.stack([loss(logits, labels, F.one_hot(torch.tensor(i), 6).float()) for i in range(6)])
        assert torch.allclose(loss(logits, labels, r), (alone * r).sum(), atol=1e-5), name
        assert alone[1] > 0, name  # a row that counts when weighted


def test_a_re_weighting_method_composes_with_a_loss_method_and_its_weights_reach_that_loss(tmp_path):
    catalog = catalog_with(HalfWeights, ZeroWeights, PlainLoss)
    (ldam,) = run_methods(catalog, ["ldam-drw"], tmp_path / "ldam")
    (half,) = run_methods(catalog, ["half-weights+ldam-drw"], tmp_path / "half")
    (zero,) = run_methods(catalog, ["zero-weights+ldam-drw"], tmp_path / "zero")
    assert half["status"] == zero["status"] == "completed", (half["error"], zero["error"])
    # weight 0 on every row: no gradient, the loss logged is 0 and the weights never move from the start
    assert all(e["loss_task"] == 0.0 for e in zero["history"])
    # weight 0.5 (0 for class 0): the logged loss is smaller than ldam-drw's from the first epoch on
    assert half["history"][0]["loss_task"] < 0.6 * ldam["history"][0]["loss_task"]


