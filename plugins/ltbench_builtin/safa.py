"""SAFA: sample-adaptive feature augmentation (Hong, Zhang, Sun, Yan, ECCV 2022).

Only the paper's supplementary is available. What it fixes: a generator
made of a delta feature extractor E, a sample-specific delta generator D and a
sample-adaptive feature generator G (each one Conv-BN-ReLU block keeping the
channel count C), and a contrastive module Q (Conv-BN-ReLU + FC); losses
L_r (cycle reconstruction), L_c (contrastive), L_ms^h and L_ms^t (mode
seeking); placement study (Table 4: best before the second down-sampling
stage of ResNet-32). **Everything else here is ltbench's reconstruction**,
modelled on RSG (Wang et al., CVPR 2021), which SAFA compares itself to:

* The module sits on the output of a backbone stage (default ``layer2``) and
  is active only in training mode from ``start`` (a fraction of the epochs,
  default 0.8 = DRW's switch); in evaluation it is the identity, so the
  network gives exactly the bare backbone's logits.
* Head classes are the ``head_ratio`` (0.2) most frequent classes, the rest
  tail. Every tail sample of a batch is paired with a head sample of the
  batch (head samples cycled in random order); no head or no tail sample in
  the batch means nothing is generated.
* Delta = E(f_h - mean_{y_h}) with a running mean feature map per class;
  delta_t = D([f_t, Delta]); generated f~_t = G([f_t, delta_t]), same shape as
  f_t, labelled y_t, appended to the batch so that the rest of the network
  and the task loss (CE, or LDAM-DRW with ``ldam-drw+safa``) see it.
* L_r = |f_t - G([f~_t, D([f~_t, -Delta])])|_1 (translating back recovers
  the source tail feature); L_c trains Q to tell same-class from
  different-class feature pairs and asks that (f_h, Delta) be judged
  different (directions carry no class); L_ms^h = d(Delta_1, Delta_2) /
  d(f~(Delta_1), f~(Delta_2)) for one tail sample and two directions,
  L_ms^t = d(f_t1, f_t2) / d(f~(f_t1), f~(f_t2)) for two tail samples and
  one direction (MSGAN form, minimised), d the mean L1 distance.
* ``detach_input`` (default true, as RSG): the generator reads a detached
  copy of the stage output, so generated samples send no gradient into the
  layers before the insertion point; real samples train them as usual.

Under torchrun (``--nproc K``): every rank computes SAFA as one process does, on the global batch: the stage
outputs of every rank's rows are gathered (``gather_batch``, differentiable), the head-tail pairs drawn over the
global batch's labels (the same stream on every rank), and the class-mean maps, the generated samples and the
loss terms computed from them, the same on every rank (the SAFA modules run K times over, once per rank).
Each rank appends the generated samples of the tail rows that are its own, and weighs its rows so that the task
loss is the mean over the global batch's rows, generated ones included. ``generated`` in the record is summed
over ranks. The activation-memory probe runs only in a single process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ltbench.api import (ConfigError, Method, MethodMetadata, PluginContractError, all_reduce_sum, gather_batch,
                         hookimpl, is_distributed, shard_rows)
from ltbench_builtin.blt import weigh_appended_rows

EPS = 1e-5
POSITIONS = ("layer1", "layer2", "layer3")


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().mean()


def pair_head_tail(labels: torch.Tensor, is_head: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor,
                                                                                                      torch.Tensor]:
    """(tail positions, paired head positions): every tail sample of the batch with a head sample of the
    batch, head samples cycled in a random order. Empty without head or tail samples."""
    head_mask = is_head[labels.cpu()]
    heads, tails = head_mask.nonzero().squeeze(1), (~head_mask).nonzero().squeeze(1)
    if len(heads) == 0 or len(tails) == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty
    heads = heads[torch.randperm(len(heads), generator=generator)]
    return tails, heads[torch.arange(len(tails)) % len(heads)]


class SAFAModule(nn.Module):
    """E, D, G, Q on feature maps of C channels, with running class-mean maps for the head classes."""

    def __init__(self, map_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        channels = map_shape[0]
        self.E = conv_bn_relu(channels, channels)
        self.D = conv_bn_relu(2 * channels, channels)
        self.G = conv_bn_relu(2 * channels, channels)
        self.Q = nn.Sequential(conv_bn_relu(2 * channels, channels), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                               nn.Linear(channels, 2))
        self.register_buffer("class_means", torch.zeros(num_classes, *map_shape))
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))

    def generate(self, f_t: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        delta_t = self.D(torch.cat([f_t, delta], 1))
        return self.G(torch.cat([f_t, delta_t], 1))

    def update_means(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        """Running class means of the maps ``feats`` (the global batch's under torchrun, gathered by
        :class:`SAFAStage`, so every rank updates them alike)."""
        feats = feats.detach()
        for c in labels.unique():
            mean = feats[labels == c].mean(0)
            self.class_means[c] = torch.where(self.seen[c], 0.9 * self.class_means[c] + 0.1 * mean, mean)
            self.seen[c] = True

    def contrastive(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.Q(torch.cat([a, b], 1))


class SAFAStage(nn.Module):
    """A backbone stage followed by SAFA: in training (when armed with a pairing) it appends the generated
    tail features to the stage's output and keeps the loss terms for the plugin to hand to the engine."""

    def __init__(self, stage: nn.Module, safa: SAFAModule, detach_input: bool, detach_mode_seeking: bool = True):
        super().__init__()
        self.stage, self.safa, self.detach_input = stage, safa, detach_input
        self.detach_mode_seeking = detach_mode_seeking
        self.plan: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (labels, tails, heads)
        #: the step's plan once its first pass used it, for a step owner's re-evaluation of the batch (sam)
        self.last_plan: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        #: whether the pass running is such a re-evaluation (``run.reevaluating``; set by the plugin)
        self.reevaluating: Callable[[], bool] = lambda: False
        self.losses: dict[str, torch.Tensor] = {}
        self.generated = 0
        #: whether generated samples join the batch (from the start epoch) or only train the modules
        self.append = True
        #: under torchrun, this rank's rows -> the global batch's (``ltbench.api.gather_batch``; set by the plugin);
        #: None in one process
        self.gather: Callable[[torch.Tensor], torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stage(x)
        again = self.reevaluating() and self.plan is None and self.last_plan is not None
        if not self.training or (self.plan is None and not again):  # evaluation: exactly the bare stage
            return out
        if again:  # the same pairing and the class means the first pass left; nothing moves
            plan = self.last_plan
        else:
            plan, self.plan = self.plan, None
            self.last_plan = plan
        labels, tails, heads = plan
        src = out.detach() if self.detach_input else out
        if self.gather is not None:  # under torchrun: the global batch's maps, every rank computing as one process
            src = self.gather(src)
        if not again:
            self.safa.update_means(src, labels)
        self.losses = {}
        if len(tails) == 0:
            self.generated = 0
            return out
        s = self.safa
        f_t, f_h = src[tails], src[heads]
        delta = s.E(f_h - s.class_means[labels[heads]])
        gen = s.generate(f_t, delta)
        # cycle reconstruction: translating back along -delta recovers the source tail feature
        self.losses["safa_cycle"] = l1(f_t, s.generate(gen, -delta))
        # contrastive: Q tells same-class from different-class pairs; directions must look class-free
        perm = torch.roll(torch.arange(len(src), device=src.device), 1)
        same = (labels == labels[perm]).long()
        q_real = F.cross_entropy(s.contrastive(src, src[perm]), same)
        q_mean = F.cross_entropy(s.contrastive(src, s.class_means[labels]), torch.ones_like(labels))
        q_dir = F.cross_entropy(s.contrastive(f_h, delta), torch.zeros_like(labels[heads]))
        self.losses["safa_contrastive"] = q_real + q_mean + q_dir
        if len(tails) > 1:
            roll = torch.roll(torch.arange(len(tails), device=src.device), 1)
            gen_other_dir = s.generate(f_t, delta[roll])  # same tail sample, another head's direction
            gen_other_tail = s.generate(f_t[roll], delta)  # another tail sample, the same direction
            # MSGAN's ratio: the distance between the directions is what the generated samples should follow,
            # not something to shrink, so it is detached (trainable, minimising the ratio collapses them)
            spread = l1(delta, delta[roll])
            self.last_head_spread = spread.detach()  # the directions' spread, for inspection (no device wait)
            spread = spread.detach() if self.detach_mode_seeking else spread
            self.losses["safa_mode_seeking_head"] = spread / (l1(gen, gen_other_dir) + EPS)
            self.losses["safa_mode_seeking_tail"] = l1(f_t, f_t[roll]) / (l1(gen, gen_other_tail) + EPS)
        if not self.append:  # the modules train on their own losses; the batch goes on without the samples
            self.generated = 0
            return out
        if self.gather is not None:  # this rank appends the samples of the tail rows that are its own
            start = shard_rows(len(src)).start
            gen = gen[(tails >= start) & (tails < start + len(out))]
        self.generated = len(gen)
        return torch.cat([out, gen])


PAPER = "Hong, Zhang, Sun, Yan, SAFA: Sample-Adaptive Feature Augmentation for Long-Tailed Image Classification"
_UNSTATED = ("; the supplement states neither epochs nor augmentation: 200 epochs is assumed, the LDAM-DRW recipe "
             "its Table 4 builds on")
TABLE3 = "supplementary Table 3 (CE-SAFA, ResNet-32; 100 - top-1 error" + _UNSTATED + ")"
TABLE4 = ("supplementary Table 4 (LDAM-DRW + SAFA after the 2nd down-sampling, ResNet-32; 100 - top-1 error"
          + _UNSTATED + ")")
#: the setting of the supplement's CIFAR numbers (ResNet-32, stated; 200 epochs, assumed: see _UNSTATED)
SETTING = {"backbone": "resnet32", "epochs": 200}
#: Table 4's row is SAFA before the second down-sampling stage: ltbench's default position
TABLE4_SETTING = {**SETTING, "options": {"safa.position": "layer2"}}


class SAFA(Method):
    name = "safa"
    options = {"position": "layer2", "head_ratio": 0.2, "start": 0.8, "modules_start": 0.0, "detach_input": True,
               "detach_mode_seeking": True, "lambda_cycle": 0.1,
               "lambda_contrastive": 0.1, "lambda_mode_seeking": 0.01}
    metadata = MethodMetadata(
        family="seed paper",
        title="SAFA: sample-adaptive feature augmentation (ltbench reconstruction from the supplementary)",
        paper=PAPER, venue="ECCV", year=2022, code_url="",
        summary="A training-only module after a backbone stage translates tail-class feature maps along "
        "sample-adapted directions taken from head-class samples; the generated features keep the tail label and "
        "continue through the network. Compose with ldam-drw as ldam-drw+safa (either spelling).",
        reference_results={
            "cifar100-lt-if200": {"overall": 100 - 61.34, **SETTING, "source": TABLE3},
            "cifar100-lt-if50": {"overall": 100 - 52.31, **SETTING, "source": TABLE3},
            "cifar10-lt-if200": {"overall": 100 - 25.11, **SETTING, "source": TABLE3},
            "cifar10-lt-if50": {"overall": 100 - 18.86, **SETTING, "source": TABLE3},
            "ldam-drw:cifar100-lt-if200": {"overall": 100 - 57.53, **TABLE4_SETTING, "source": TABLE4},
            "ldam-drw:cifar100-lt-if50": {"overall": 100 - 49.98, **TABLE4_SETTING, "source": TABLE4},
            "ldam-drw:cifar10-lt-if200": {"overall": 100 - 22.47, **TABLE4_SETTING, "source": TABLE4},
            "ldam-drw:cifar10-lt-if50": {"overall": 100 - 16.43, **TABLE4_SETTING, "source": TABLE4},
        },
        interpretations=(
            "All loss definitions, the pairing rule, the head set (top 20% of classes, RSG's ratio), the running "
            "class-mean maps, the loss weights (0.1 cycle, 0.1 contrastive, 0.01 mode seeking, RSG's scale) and the "
            "start epoch (80% of the epochs, RSG's and DRW's) are ltbench's reconstruction, not the paper's.",
            "SAFA's modules (E, D, G, Q) train on their own losses from the first epoch (modules_start 0), as RSG "
            "trains its modules throughout; generated samples join the batch and the task loss from the start "
            "epoch. The supplementary does not say when the modules start; started with the samples, they were "
            "untrained when generation began.",
            "Generated samples read a detached copy of the stage output (RSG's choice, option detach_input).",
            "The head mode-seeking term's numerator (the distance between two head directions) is detached, as "
            "MSGAN's mode-seeking loss, whose form it takes: trainable, minimising the ratio shrank the "
            "directions 10x over a run. detach_mode_seeking=false restores the earlier, collapsing form.",
            "Default position: the layer2 output (before the second down-sampling stage), the supplementary's "
            "best placement in Table 4.",
        ),
    )

    def check_options(self) -> None:
        o = self.opts
        if o["position"] not in POSITIONS:
            raise ConfigError(f"safa.position must be one of {', '.join(POSITIONS)}, got {o['position']!r}")
        if not 0 < o["head_ratio"] < 1 or not 0 <= o["modules_start"] <= o["start"] <= 1:
            raise ConfigError(f"safa: head_ratio must be in (0, 1) and 0 <= modules_start <= start <= 1, got {o}")
        if min(o["lambda_cycle"], o["lambda_contrastive"], o["lambda_mode_seeking"]) < 0:
            raise ConfigError(f"safa: loss weights must be >= 0, got {o}")

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.stage_module: SAFAStage | None = None
        self.generator = torch.Generator()
        self.is_head: torch.Tensor | None = None
        self.generated_total = 0
        self.memory: dict[str, float] | None = None

    def state_dict(self) -> dict[str, Any]:
        """The pairing generator and the sample count: a resumed run draws the pairs the uninterrupted one draws.
        (The modules' weights and class means are model state, saved with the model.)"""
        return {"generator": self.generator.get_state(), "generated_total": self.generated_total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.generator.set_state(state["generator"])
            self.generated_total = state["generated_total"]

    def start_epoch(self, run) -> int:
        return round(self.opts["start"] * run.config["epochs"])

    @hookimpl
    def ltbench_configure_model(self, run, model):
        backbone = model.backbone
        position = self.opts["position"]
        stage = getattr(backbone, position, None)
        if stage is None:
            raise PluginContractError(f"safa.position {position!r}: backbone {run.config['backbone']!r} has no such "
                                      f"stage; SAFA needs a backbone with {', '.join(POSITIONS)}")
        with torch.no_grad():
            probe = torch.zeros(1, run.data.channels, *run.train_images.image_hw)
            map_shape = _stage_output_shape(backbone, position, probe)
        module = SAFAModule(map_shape, run.num_classes)
        self.stage_module = SAFAStage(stage, module, self.opts["detach_input"], self.opts["detach_mode_seeking"])
        setattr(backbone, position, self.stage_module)
        self.stage_module.reevaluating = lambda: getattr(run, "reevaluating", False)
        if is_distributed():
            self.stage_module.gather = lambda t: gather_batch(run, t)
        counts = run.train_counts
        n_head = max(1, int(round(self.opts["head_ratio"] * run.num_classes)))
        self.is_head = torch.zeros(run.num_classes, dtype=torch.bool)
        self.is_head[np.argsort(-counts, kind="stable")[:n_head]] = True
        self.generator.manual_seed(40_000 + run.seed)

    def modules_start_epoch(self, run) -> int:
        return round(self.opts["modules_start"] * run.config["epochs"])

    def active(self, run) -> bool:
        """SAFA's modules train (on their own losses) from ``modules_start``."""
        return run.stage == 1 and run.epoch >= self.modules_start_epoch(run)

    def appending(self, run) -> bool:
        """Generated samples join the batch, and the task loss, from ``start``."""
        return run.stage == 1 and run.epoch >= self.start_epoch(run)

    @hookimpl
    def ltbench_augment_batch(self, run, model, batch):
        if self.stage_module is not None:
            self.stage_module.last_plan = None  # a new step: no re-evaluation may use the previous one's
        if not self.active(run) or batch.images is None:
            return
        own = batch.labels
        gather = self.stage_module.gather  # under torchrun: one process's pairs, of the global batch's rows
        labels = gather(own) if gather is not None else own
        tails, heads = pair_head_tail(labels, self.is_head, self.generator)
        device = labels.device
        plan = (labels, tails.to(device), heads.to(device))
        if self.memory is None and len(tails) and not is_distributed():  # (a probe on one rank
            # only would run collectives the others do not)
            self.memory = activation_memory(model, batch.images, plan)
        self.stage_module.plan = plan
        self.stage_module.append = self.appending(run)
        if self.stage_module.append:
            if gather is not None:  # this rank appends the samples of the tail rows that are its own
                start = shard_rows(len(labels)).start
                tails = tails[(tails >= start) & (tails < start + len(own))]
            # the module appends one generated sample per tail sample, labelled with that tail sample's class
            batch.labels = torch.cat([own, labels[tails.to(device)]])
            if gather is not None:  # the task loss: the mean over the global batch's rows, generated ones included
                weigh_appended_rows(run, batch, len(own), len(tails))

    @hookimpl
    def ltbench_extra_losses(self, run):
        if not self.active(run) or run.stage != 1:
            return None
        losses = self.stage_module.losses
        self.stage_module.losses = {}
        if not getattr(run, "reevaluating", False):  # a step owner's second pass generates them again: counted once
            self.generated_total += self.stage_module.generated
        weights = {"safa_cycle": self.opts["lambda_cycle"], "safa_contrastive": self.opts["lambda_contrastive"],
                   "safa_mode_seeking_head": self.opts["lambda_mode_seeking"],
                   "safa_mode_seeking_tail": self.opts["lambda_mode_seeking"]}
        return {k: weights[k] * v for k, v in losses.items()}

    @hookimpl
    def ltbench_record(self, run):
        start = self.start_epoch(run)
        before = [e["seconds"] for e in run.history if e["stage"] == 1 and e["epoch"] <= start]
        after = [e["seconds"] for e in run.history if e["stage"] == 1 and e["epoch"] > start]
        return {
            "start_epoch": start,
            "modules_start_epoch": self.modules_start_epoch(run),
            "generated": int(all_reduce_sum(torch.tensor([float(self.generated_total)], device=run.device))),
            "parameters": sum(p.numel() for p in self.stage_module.safa.parameters()),
            # mean L1 distance between two head directions in the last batch: near 0, the directions collapsed
            "head_direction_spread_last_batch": (round(float(self.stage_module.last_head_spread), 5)
                                                 if hasattr(self.stage_module, "last_head_spread") else None),
            # side by side in one run: the epochs whose batches carry generated samples against the epochs before
            # them. With the modules training from epoch 0 (the default) both sides pay for the modules, so this
            # is the cost of the generated samples alone; SAFA's whole cost against ce is ci/bench_overheads.py's
            "epoch_time_ratio_vs_without": round(np.mean(after) / np.mean(before), 3) if before and after else None,
            # one training batch, forward + backward, on a copy of the model with and without SAFA
            **(self.memory or {}),
        }


def activation_memory(model: nn.Module, images: torch.Tensor, plan) -> dict[str, float]:
    """Bytes autograd keeps for the backward pass of one training batch (the peak of a training step
    beyond parameters and optimizer state), on a copy of the model, without and with SAFA."""
    probe = copy.deepcopy(model).train()
    stage = next(m for m in probe.modules() if isinstance(m, SAFAStage))
    saved = {}
    for key, use_plan in (("without", None), ("with", plan)):
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        stage.plan = use_plan
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logits = probe(images)
        saved[key] = total
        del logits
    return {"activation_mb_without": round(saved["without"] / 2**20, 3),
            "activation_mb_with": round(saved["with"] / 2**20, 3),
            "activation_memory_ratio_vs_without": round(saved["with"] / max(saved["without"], 1), 3)}


def _stage_output_shape(backbone: nn.Module, position: str, probe: torch.Tensor) -> tuple[int, int, int]:
    """(C, H, W) of a stage's output, found by running the stages up to it on a zero image."""
    was = backbone.training
    backbone.eval()
    x = backbone.stem(probe)
    for name in POSITIONS:
        x = getattr(backbone, name)(x)
        if name == position:
            break
    backbone.train(was)
    return tuple(x.shape[1:])


@hookimpl
def ltbench_register_methods(register):
    register(SAFA)
