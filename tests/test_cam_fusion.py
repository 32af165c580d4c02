"""CAM-based feature space augmentation: the paper's defining properties."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltbench.plugins.testing import catalog_with, run_methods
from ltbench_builtin.cam_fusion import (FusionBatchSampler, class_activation_maps, confusing_classes, fuse,
                                        head_classes, masked_vectors)


def test_head_set_is_the_minimal_prefix_reaching_h_r():
    counts = np.array([50, 400, 30, 15, 5])  # sorted: 400, 50, 30, 15, 5 of 500
    assert head_classes(counts, 0.8).tolist() == [1]  # 400/500 = 0.80 reaches 0.8
    assert head_classes(counts, 0.81).tolist() == [0, 1]  # 450/500
    assert head_classes(counts, 0.9).tolist() == [0, 1]  # 0.90
    assert head_classes(counts, 0.95).tolist() == [0, 1, 2]  # 480/500 = 0.96
    assert head_classes(counts, 0.97).tolist() == [0, 1, 2, 3]  # 0.99; 0.96 is not enough
    cifar = np.array([int(500 * 0.01 ** (c / 99)) for c in range(100)])
    head = head_classes(cifar, 0.9)
    assert cifar[head].sum() / cifar.sum() >= 0.9 > cifar[head[:-1]].sum() / cifar.sum()


def test_confusing_classes_exclude_the_class_itself_and_have_length_n_f():
    scores = np.array([[0.7, 0.1, 0.1, 0.1], [0.5, 0.1, 0.3, 0.1], [0.2, 0.3, 0.4, 0.1], [0.1, 0.2, 0.6, 0.1]])
    out = confusing_classes(scores, np.array([1, 2, 3]), n_f=2)
    assert out == {1: [0, 2], 2: [1, 0], 3: [2, 1]}
    assert all(c not in us and len(us) == 2 for c, us in out.items())
    assert confusing_classes(scores, np.array([3]), 2, candidates=np.array([0, 1])) == {3: [1, 0]}


def test_cam_is_a_1x1_convolution_with_the_class_weight_row_then_min_max_normalised():
    g = torch.Generator().manual_seed(0)
    fmap = torch.randn(3, 8, 4, 4, generator=g)
    weight = torch.randn(5, 8, generator=g)
    classes = torch.tensor([4, 0, 2])
    cam = class_activation_maps(fmap, weight, classes)
    for b, c in enumerate(classes):
        raw = F.conv2d(fmap[b: b + 1], weight[c].view(1, 8, 1, 1))[0, 0]
        expected = (raw - raw.min()) / (raw.max() - raw.min())
        assert torch.allclose(cam[b], expected, atol=1e-5)
        flat = cam[b].flatten()
        assert flat.max() == 1.0 and flat.min() == 0.0
        assert flat[raw.flatten().argmax()] >= 0.8 and flat[raw.flatten().argmin()] <= 0.2  # in both masks


def test_an_augmented_map_has_exactly_l_vectors_each_from_its_source():
    g = torch.Generator().manual_seed(0)
    specific, generic = torch.randn(3, 6, generator=g) + 10, torch.randn(5, 6, generator=g) - 10
    fused, n_spec = fuse(specific, generic, gamma=0.3, length=16, generator=g)
    assert fused.shape == (16, 6) and n_spec == round(0.3 * 16)
    spec_rows = {tuple(r.tolist()) for r in specific}
    gen_rows = {tuple(r.tolist()) for r in generic}
    assert all(tuple(r.tolist()) in spec_rows for r in fused[:n_spec])
    assert all(tuple(r.tolist()) in gen_rows for r in fused[n_spec:])


def test_all_zero_vectors_are_never_drawn():
    fmap = torch.zeros(2, 2, 2)
    fmap[:, 0, 0] = torch.tensor([1.0, 2.0])
    vectors = masked_vectors(fmap, torch.ones(2, 2, dtype=torch.bool))
    assert vectors.tolist() == [[1.0, 2.0]]


def test_batch_composition_is_2_nt_1_plus_na_with_the_stated_parts():
    labels = np.repeat(np.arange(6), [40, 30, 20, 5, 4, 3])
    head, tail = np.array([0, 1, 2]), np.array([3, 4, 5])
    confusing = {3: [0, 1], 4: [1, 2], 5: [2, 0]}
    sampler = FusionBatchSampler(labels, tail, head, confusing, n_t=4, n_a=2, iterations=3,
                                 generator=torch.Generator().manual_seed(0))
    idx = np.array(list(sampler))
    assert len(sampler) == len(idx) == 3 * 2 * 4 * 3
    for batch in idx.reshape(3, -1):
        y = labels[batch]
        tail_y, conf_y, head_y = y[:4], y[4:12], y[12:]
        assert set(tail_y) <= set(tail) and len(head_y) == 4 * 3 and set(head_y) <= set(head)
        assert [list(conf_y[2 * i: 2 * i + 2]) for i in range(4)] == [confusing[c] for c in tail_y]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    recs = run_methods(catalog_with(), ["ce", "cam-fusion", "cam-fusion+focal"], out, epochs=4,
                       settings={"cam-fusion.iterations": "20"})
    return out, {r["method"]: r for r in recs}


def test_phase_two_leaves_every_backbone_parameter_bit_identical(runs):
    out, recs = runs
    assert all(r["status"] == "completed" for r in recs.values()), [r["error"] for r in recs.values()]
    assert recs["cam-fusion"]["stage1"]["reused"]  # Phase I is ce's stage 1
    stage1 = torch.load(out / recs["cam-fusion"]["stage1"]["source"] / "stage1.pt", weights_only=True)["model"]
    final = torch.load(next(out.rglob("cam-fusion/*/seed0/checkpoint-stage2.pt")), weights_only=True)["model"]
    backbone = [k for k in stage1 if k.startswith("backbone.")]
    assert backbone and all(torch.equal(stage1[k], final[k]) for k in backbone)
    assert not torch.equal(stage1["classifier.weight"], final["classifier.weight"])


def test_fused_samples_are_counted_and_focal_composes(runs):
    _, recs = runs
    extra = recs["cam-fusion"]["extra"]["cam-fusion"]
    assert extra["fused_samples"] == 20 * 16 * 3  # iterations x N_t x N_a
    assert all(int(c) not in us and len(us) == 3 for c, us in extra["confusing"].items())
    composed = recs["cam-fusion+focal"]
    assert composed["methods"] == ["cam-fusion", "focal"] and not composed["stage1"]["shared"]


def test_fused_samples_take_the_tail_classs_cam_for_the_specific_part_and_each_confusing_images_own_class_for_the_generic(
        tmp_path, monkeypatch):
    from ltbench.training.run import build_run
    from ltbench.training.loop import image_batch
    from ltbench.grid.plan import plan_grid
    from ltbench_builtin import cam_fusion

    catalog = catalog_with()
    (cell,) = plan_grid(["cam-fusion"], ["synthetic-lt"], [0], "smoke", catalog=catalog,
                        settings={"cam-fusion.iterations": "2"})
    run = build_run(catalog, cell.dataset, cell.data, cell.config, 0, torch.device("cpu"), tmp_path,
                    log=lambda m: None)
    method = run.methods[0]
    method.ltbench_second_stage(run)
    run.stage = 2
    sampler = method.ltbench_build_sampler(run, 2, run.train_labels)
    idx = torch.as_tensor(list(iter(sampler))[: sampler.batch_size])
    batch = image_batch(run, run.train_labels)(idx)
    labels = batch.labels.clone()
    calls = []
    real = cam_fusion.class_activation_maps
    monkeypatch.setattr(cam_fusion, "class_activation_maps",
                        lambda fmap, weight, classes: calls.append(classes.clone()) or real(fmap, weight, classes))
    method.ltbench_augment_batch(run, run.model, batch)
    n_t, n_a = method.opts["n_t"], method.n_a
    tail, confusing = labels[:n_t], labels[n_t: n_t + n_t * n_a]
    assert len(calls) == 2
    assert torch.equal(calls[0], tail)  # specific parts: each tail sample's own (ground-truth) class
    assert torch.equal(calls[1], confusing)  # generic parts: each confusing image's own class
    assert all(int(confusing[i * n_a + j]) in method.split["confusing"][int(tail[i])]
               for i in range(n_t) for j in range(n_a))
    fused_labels = batch.labels[n_t: n_t + n_t * n_a]
    assert torch.equal(fused_labels, tail.repeat_interleave(n_a))  # a fused sample carries its tail label


@pytest.mark.parametrize("rule", ["classes", "images"])
def test_head_samples_are_drawn_class_first_by_default_and_per_image_on_request(rule):
    labels = np.repeat(np.arange(6), [400, 100, 20, 5, 4, 3])
    head, tail = np.array([0, 1, 2]), np.array([3, 4, 5])
    sampler = FusionBatchSampler(labels, tail, head, {3: [0], 4: [1], 5: [2]}, n_t=4, n_a=1, iterations=300,
                                 generator=torch.Generator().manual_seed(0), head_draw=rule)
    heads = labels[np.array(list(sampler)).reshape(300, -1)[:, 8:].ravel()]
    shares = np.bincount(heads, minlength=3)[:3] / len(heads)
    expected = [1 / 3] * 3 if rule == "classes" else [400 / 520, 100 / 520, 20 / 520]
    np.testing.assert_allclose(shares, expected, atol=0.03)


# ---- the hook wiring: what Phase II hands to the classifier ---------------------------------------------------
#
# Driven through ``ltbench_augment_batch`` with a stand-in backbone whose feature maps are the batch's "images"
# (K = 2 channels, L = 2 x 2 locations), so every vector of every map is known. The CAM weight of every class
# is (1, 0): a map's CAM is its channel 0. Tail maps hold s = (1, 10) at their one high-CAM location and
# (0, 20) elsewhere; confusing maps hold (1, 30) at their high-CAM location and g = (0, 40) elsewhere. A fused
# sample of the right regions, average-pooled, is a * s + (1 - a) * g = (a, 40 - 30 a), a a multiple of 1/4.


def _wired_cam_fusion(n_t=4, n_f=2, classifier_weight=(1.0, 0.0)):
    from types import SimpleNamespace

    from ltbench.training.run import Batch
    from ltbench_builtin.cam_fusion import CAMFusion

    method = CAMFusion(n_t=n_t, n_f=n_f)
    method.cam_weight = torch.tensor([[1.0, 0.0]] * 3)  # the frozen Phase-I weights
    method.generator.manual_seed(0)
    classifier = torch.nn.Linear(2, 3)
    with torch.no_grad():
        classifier.weight.copy_(torch.tensor([list(classifier_weight)] * 3))  # the head being fine-tuned
    backbone = SimpleNamespace(forward_features=lambda x: x, forward_pool=lambda f: f.mean((2, 3)))
    model = SimpleNamespace(backbone=backbone, classifier=classifier)

    def maps(n, high, low):
        m = torch.tensor(low).view(1, 2, 1, 1).repeat(n, 1, 2, 2)
        m[:, :, 0, 0] = torch.tensor(high)
        return m

    n_a = n_f
    images = torch.cat([maps(n_t, (1.0, 10.0), (0.0, 20.0)), maps(n_t * n_a, (1.0, 30.0), (0.0, 40.0)),
                        maps(n_t * (1 + n_a), (1.0, 50.0), (0.0, 60.0))])
    labels = torch.cat([torch.full((n_t,), 2), torch.full((n_t * n_a,), 1), torch.full((n_t * (1 + n_a),), 0)])
    batch = Batch(labels=labels, images=images)
    method.ltbench_augment_batch(run=SimpleNamespace(stage=2), model=model, batch=batch)
    return method, batch, images


def test_a_fused_sample_pools_the_tail_images_specific_region_with_the_confusing_images_generic_region():
    method, batch, images = _wired_cam_fusion()
    n_t, n_a = 4, 2
    fused = batch.features[n_t:n_t + n_t * n_a]
    share = fused[:, 0]  # a: the share of the L locations drawn from the tail image's specific region
    assert torch.allclose(fused[:, 1], 40 - 30 * share)  # only s and g, never the other regions
    assert torch.allclose(share * 4, (share * 4).round())  # a mean over L = 4 vectors
    assert ((share > 0) & (share < 1)).any()  # a fused slot really combines the two images
    assert method.fused == n_t * n_a and batch.images is None
    assert batch.labels[n_t:n_t + n_t * n_a].tolist() == [2] * (n_t * n_a)  # the tail label
    # the real tail and head rows are their own maps, average-pooled
    assert torch.equal(batch.features[:n_t], images[:n_t].mean((2, 3)))
    assert torch.equal(batch.features[n_t + n_t * n_a:], images[n_t + n_t * n_a:].mean((2, 3)))


def test_the_cams_come_from_the_frozen_phase_one_weights_not_the_head_being_fine_tuned():
    # the head being fine-tuned has moved to (-1, 0): CAMs from it would pick the opposite regions
    _, batch, _ = _wired_cam_fusion(classifier_weight=(-1.0, 0.0))
    fused = batch.features[4:12]
    assert torch.allclose(fused[:, 1], 40 - 30 * fused[:, 0])


def test_the_default_phase_two_length_and_head_draw_are_the_papers_and_reach_the_sampler():
    from types import SimpleNamespace

    from ltbench_builtin.cam_fusion import CAMFusion

    def sampler(method, epochs):
        run = SimpleNamespace(config={"epochs": epochs}, generator=torch.Generator().manual_seed(0))
        method.split = {"tail": [3, 4], "head": [0, 1, 2], "confusing": {3: [0], 4: [1]}}
        return method.ltbench_build_sampler(run=run, stage=2, labels=np.repeat(np.arange(5), [9, 8, 7, 2, 1]))

    default = sampler(CAMFusion(), 200)
    assert default.iterations == 6400 and default.head_draw == "classes"  # the paper's 6,400 CIFAR iterations
    assert default.n_t == 16 and default.n_a == 3 and default.batch_size == 128
    assert sampler(CAMFusion(iterations=0), 150).iterations == 3200  # scaled to the Phase-I length over 300
    assert sampler(CAMFusion(head_draw="images"), 200).head_draw == "images"


def test_the_paper_setting_experiment_file_plans_the_papers_cifar_recipe(cifar_root):
    """leaderboards/experiments/cam-fusion-paper.toml: Table 2's CIFAR-100-LT IF100 rows (ResNet-18 and -34, each
    with its CE baseline sharing cam-fusion's Phase I), 300 epochs, lr 0.1 divided by 10 at epoch 150."""
    from pathlib import Path

    from ltbench.cli import build_parser
    from ltbench.grid.orchestrate import plan_cells, run_options
    from ltbench.grid.plan import stage1_dir
    from ltbench.training.schedules import lr_at

    repo = Path(__file__).resolve().parents[1]
    args = run_options(build_parser().parse_args(["run", "--config", str(repo / "leaderboards/experiments/"
                                                  "cam-fusion-paper.toml"), "--data-root", str(cifar_root)]))
    cells = plan_cells(args)
    assert [(c.method, c.config["backbone"]) for c in cells] == [
        ("ce", "cifar-resnet18"), ("cam-fusion", "cifar-resnet18"), ("ce", "cifar-resnet34"),
        ("cam-fusion", "cifar-resnet34")]
    assert {c.dataset_key for c in cells} == {"cifar100-lt-if100"} and {c.seed for c in cells} == {0}
    assert len(cells[0].data.y_train) == 10_847
    for cell in cells:
        config = cell.config
        assert (config["epochs"], config["batch_size"], config["lr"]) == (300, 128, 0.1)
        assert [lr_at(config, e) for e in (0, 149, 150, 299)] == pytest.approx([0.1, 0.1, 0.01, 0.01])
    options = cells[1].config["methods"]["cam-fusion"]
    assert (options["iterations"], options["phase2_lr"], options["n_f"], options["n_t"], options["h_r"]) == (
        6400, 0.001, 3, 16, 0.9)  # Phase II: 6,400 iterations of 2 * 16 * (1 + 3) = 128 items at lr 0.001
    out = Path(args.output)
    assert stage1_dir(cells[0], out) == stage1_dir(cells[1], out) != stage1_dir(cells[2], out)
    assert out.resolve() == repo / "runs" / "cam-fusion-paper"  # not committed; not a board
