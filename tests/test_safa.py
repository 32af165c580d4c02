"""SAFA (our reconstruction): the properties the issue pins."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from ltbench.plugins.testing import catalog_with, run_methods
from ltbench.training.backbones import CifarResNet
from ltbench.training.model import LTModel
from ltbench_builtin.safa import SAFAModule, SAFAStage, pair_head_tail

IS_HEAD = torch.tensor([True, True, False, False, False])


def test_pairing_rule_pairs_every_tail_sample_with_a_head_sample_of_the_batch():
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 3, 1, 4, 4, 2])
    tails, heads = pair_head_tail(labels, IS_HEAD, g)
    assert sorted(tails.tolist()) == [1, 3, 4, 5]
    assert set(heads.tolist()) == {0, 2}  # both head samples used, cycled
    for labels in (torch.tensor([0, 1, 1]), torch.tensor([2, 3, 4])):  # no tail / no head in the batch
        tails, heads = pair_head_tail(labels, IS_HEAD, g)
        assert len(tails) == len(heads) == 0


def make_model(detach=True):
    torch.manual_seed(0)
    backbone = CifarResNet(1, 3)
    model = LTModel(backbone, torch.nn.Linear(64, 5))
    stage = SAFAStage(backbone.layer2, SAFAModule((32, 8, 8), 5), detach_input=detach)
    backbone.layer2 = stage
    return model, stage


def planned_forward(model, stage, labels, images):
    tails, heads = pair_head_tail(labels, IS_HEAD, torch.Generator().manual_seed(0))
    stage.plan = (labels, tails, heads)
    return model.forward_all(images), tails


def test_generated_features_keep_the_tail_label_and_the_feature_map_shape():
    model, stage = make_model()
    labels = torch.tensor([0, 3, 1, 4])
    captured = {}
    stage.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    out, tails = planned_forward(model.train(), stage, labels, torch.randn(4, 3, 16, 16))
    assert stage.generated == len(tails) == 2
    assert out.logits.shape == (6, 5)  # 4 real + 2 generated rows
    assert captured["out"].shape == (6, 32, 8, 8)  # generated maps have the stage's shape
    # the plugin appends the tail samples' labels in the same order
    assert labels[tails].tolist() == [3, 4]


def test_evaluation_gives_exactly_the_bare_backbones_logits():
    model, stage = make_model()
    bare = copy.deepcopy(model)
    bare.backbone.layer2 = stage.stage  # the same stage without SAFA
    x = torch.randn(5, 3, 16, 16)
    model.eval()
    bare.eval()
    stage.plan = (torch.tensor([0, 3, 1, 4, 2]), torch.tensor([1]), torch.tensor([0]))
    assert torch.equal(model(x), bare(x))
    assert stage.plan is not None  # evaluation never consumes a training plan


def test_every_loss_is_finite_non_negative_and_reaches_e_d_g_and_q():
    model, stage = make_model()
    out, _ = planned_forward(model.train(), stage, torch.tensor([0, 3, 1, 4, 2, 0]), torch.randn(6, 3, 16, 16))
    losses = stage.losses
    assert set(losses) == {"safa_cycle", "safa_contrastive", "safa_mode_seeking_head", "safa_mode_seeking_tail"}
    for name, value in losses.items():
        assert torch.isfinite(value) and value.item() >= 0, name
    total = sum(losses.values()) + F.cross_entropy(out.logits, torch.tensor([0, 3, 1, 4, 2, 0, 3, 4, 2]))
    total.backward()
    for part in ("E", "D", "G", "Q"):
        grads = [p.grad for p in getattr(stage.safa, part).parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), part


@pytest.mark.parametrize("detach", [True, False])
def test_whether_generated_samples_send_gradient_into_the_backbone_is_an_explicit_choice(detach):
    model, stage = make_model(detach)
    labels = torch.tensor([0, 3, 1, 4])
    captured = {}
    stage.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    planned_forward(model.train(), stage, labels, torch.randn(4, 3, 16, 16))
    # the generated maps and SAFA's own losses (later batch-norm layers still couple all rows of a batch)
    generated_loss = captured["out"][4:].sum() + sum(stage.losses.values())
    grads = torch.autograd.grad(generated_loss, list(model.backbone.layer1.parameters()), allow_unused=True)
    reached = any(g is not None and g.abs().sum() > 0 for g in grads)
    assert reached is (not detach)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    settings = {"backbone": "resnet8", "safa.start": "0.6"}
    recs = run_methods(catalog_with(), ["ce", "safa", "safa+ldam-drw"], out, epochs=5, settings=settings)
    return out, {r["method"]: r for r in recs}


def test_nothing_is_generated_before_the_start_epoch_and_the_record_reports_overhead(runs):
    out, recs = runs
    rec = recs["safa"]
    assert rec["status"] == "completed", rec["error"]
    extra = rec["extra"]["safa"]
    assert extra["start_epoch"] == 3
    assert rec["epochs_completed"] == 5 and extra["generated"] > 0
    assert extra["epoch_time_ratio_vs_without"] > 0 and extra["activation_memory_ratio_vs_without"] > 1
    metrics = [json.loads(line) for line in (out / rec["dataset"] / "smoke" / "safa" / rec["config_id"] / "seed0" / "metrics.jsonl").read_text().splitlines()]
    assert all("loss_safa_cycle" in m for m in metrics)  # the modules train from the first epoch
    assert extra["modules_start_epoch"] == 0 and extra["head_direction_spread_last_batch"] > 0


def test_generated_samples_join_the_batch_only_from_the_start_epoch_while_the_modules_train_before(safa_run):
    run, make = safa_run
    method, model = run.methods[0], run.model
    method.opts["start"] = 0.6  # of smoke's 3 epochs: samples join from epoch 2 (0-based)
    model.train()
    for epoch, joins in ((0, False), (1, False), (2, True)):
        run.epoch = epoch
        batch = make(torch.randperm(len(run.train_labels), generator=torch.Generator().manual_seed(epoch))[:64])
        method.ltbench_augment_batch(run, model, batch)
        logits = model.forward_all(batch.images).logits
        assert (len(batch.labels) > 64) is joins and len(logits) == len(batch.labels)
        assert set(method.ltbench_extra_losses(run)) == {"safa_cycle", "safa_contrastive", "safa_mode_seeking_head",
                                                        "safa_mode_seeking_tail"}


def test_safa_composes_with_ldam_drw(runs):
    rec = runs[1]["ldam-drw+safa"]  # no run hook is implemented by both: one canonical order, whatever is written
    assert rec["status"] == "completed", rec["error"]
    assert rec["methods"] == ["ldam-drw", "safa"] and rec["extra"]["safa"]["generated"] > 0


# ---- the defining properties issue 15 pins -------------------------------------------------------------------


@pytest.fixture
def safa_run(tmp_path):
    from ltbench.training.run import build_run
    from ltbench.training.loop import image_batch
    from ltbench.grid.plan import plan_grid

    catalog = catalog_with()
    (cell,) = plan_grid(["safa"], ["synthetic-lt"], [0], "smoke", catalog=catalog,
                        settings={"backbone": "resnet8", "safa.start": "0"})
    run = build_run(catalog, cell.dataset, cell.data, cell.config, 0, torch.device("cpu"), tmp_path,
                    log=lambda m: None)
    return run, image_batch(run, run.train_labels)


def test_the_plugin_appends_the_tail_samples_labels_from_the_pairing_the_module_uses(safa_run):
    run, make = safa_run
    method, model = run.methods[0], run.model
    batch = make(torch.randperm(len(run.train_labels), generator=torch.Generator().manual_seed(0))[:64])
    own = batch.labels.clone()
    method.ltbench_augment_batch(run, model, batch)
    labels, tails, heads = method.stage_module.plan  # what the module will generate from
    assert torch.equal(labels, own) and len(tails) > 0
    assert torch.equal(batch.labels, torch.cat([own, own[tails]]))  # the generated rows' labels, in its order
    assert not method.is_head[own[tails]].any() and method.is_head[own[heads]].all()
    model.train()
    assert model.forward_all(batch.images).logits.shape[0] == len(batch.labels)


def test_the_head_set_is_the_most_frequent_classes(safa_run):
    run, _ = safa_run
    is_head = run.methods[0].is_head
    counts = torch.as_tensor(run.train_counts)
    assert int(is_head.sum()) == round(0.2 * run.num_classes)
    assert counts[is_head].min() >= counts[~is_head].max()


def test_the_task_loss_reaches_the_generator_through_the_generated_rows():
    model, stage = make_model()
    model.train()
    model.backbone.layer3.eval()  # (batch statistics after SAFA would couple every row with every other)
    labels = torch.tensor([0, 3, 1, 4, 2, 0])
    out, tails = planned_forward(model, stage, labels, torch.randn(6, 3, 16, 16))
    targets = torch.cat([labels, labels[tails]])
    generated = F.cross_entropy(out.logits[6:], targets[6:])
    grads = torch.autograd.grad(generated, list(stage.safa.G.parameters()), retain_graph=True)
    assert all(g.abs().sum() > 0 for g in grads)  # the generated rows' task loss trains G
    real = F.cross_entropy(out.logits[:6], targets[:6])
    grads = torch.autograd.grad(real, list(stage.safa.G.parameters()), allow_unused=True)
    assert all(g is None or g.abs().sum() == 0 for g in grads)  # the real rows' does not


def _head_direction_spread(detach: bool, steps: int = 30) -> tuple[float, float]:
    """Train E, D and G on the head mode-seeking term alone; the spread of the head directions before and
    after."""
    model, stage = make_model()
    stage.detach_mode_seeking = detach
    g = torch.Generator().manual_seed(3)
    labels, images = torch.tensor([0, 1, 2, 3, 4, 2, 0, 1]), torch.randn(8, 3, 16, 16, generator=g)
    params = [p for part in (stage.safa.E, stage.safa.D, stage.safa.G) for p in part.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.5)
    spreads = []
    for _ in range(steps):
        planned_forward(model.train(), stage, labels, images)
        loss = stage.losses["safa_mode_seeking_head"]
        spreads.append(float(stage.last_head_spread))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return spreads[0], spreads[-1]


def test_the_head_mode_seeking_term_rewards_diverse_directions():
    before, after = _head_direction_spread(detach=True)
    assert after >= 0.9 * before  # the directions stay apart
    before, after = _head_direction_spread(detach=False)
    assert after < 0.5 * before  # the trainable numerator (the earlier form) collapses them
