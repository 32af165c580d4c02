"""Break each method's wiring on purpose, one line at a time, and check that a test goes red.

Each mutant is one exact text replacement in one module and the tests that must catch it. The mutated source
is compiled in memory by an import hook in a fresh pytest process: the file on disk never changes (a run in
the background keeps reading the real code, and records keep the real source digest), and the module keeps
its real path, so the plugin loads through its entry point as usual.

    python ci/wiring_mutants.py            # every mutant; exit 1 if one survives (its tests stay green)
    python ci/wiring_mutants.py -k remix   # the mutants whose name contains "remix"

First the selected tests run unmutated and must pass; then each mutant must turn them red.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str  # the property the mutant breaks
    module: str
    old: str
    new: str
    tests: str  # a test file
    select: str  # its -k expression


BC, CAM, MIS, RIDE, MIX, LOSS = (f"ltbench_builtin.{m}" for m in ("breadcrumb", "cam_fusion", "mislas", "ride",
                                                                  "mixing", "losses"))
T_BC, T_CAM, T_MR, T_MIX = (f"tests/test_{t}.py" for t in ("breadcrumb", "cam_fusion", "mislas_ride", "mixing"))

MUTANTS = [
    # Breadcrumb
    Mutant("breadcrumb: the labels stay behind when the assembled set is shuffled", BC,
           "feats[order], labels[order]", "feats[order], labels", T_BC, "strong_mode_shuffles"),
    Mutant("breadcrumb: the alignment option never reaches the bank", BC,
           'self.opts["alignment"])', '"mean")', T_BC, "alignment_option"),
    Mutant("breadcrumb: the EMANATE set is assembled once, not every epoch", BC,
           "    def after_push(self, run) -> None:\n        if self.bank.ready and",
           "    def after_push(self, run) -> None:\n        if self.bank_features is not None:\n            return\n"
           "        if self.bank.ready and", T_BC, "rebuilt_every_epoch"),
    Mutant("breadcrumb: the EMANATE batches train h_r instead of h_c", BC,
           "model.classifier.balanced(feats)", "model.classifier.instance(feats)", T_BC, "rebuilt_every_epoch"),
    Mutant("breadcrumb: bank batch i no longer goes with image batch i (no reset per epoch)", BC,
           "self.step = 0  # bank batch i", "pass  # bank batch i", T_BC, "rebuilt_every_epoch"),
    Mutant("breadcrumb-weak: stage 2 trains on the newest snapshot, not the back-tracked set", BC,
           "feats, labels = self.bank.assemble(self.generator)\n        self.seconds += time.perf_counter() - t0\n"
           "        self.set_size",
           "feats, labels = self.bank.class_balanced(self.generator)\n        self.seconds += time.perf_counter() - t0"
           "\n        self.set_size", T_BC, "weak_mode_back_tracks"),
    Mutant("breadcrumb: warmup=class-balanced is ignored", BC,
           'if self.bank.ready or self.opts["warmup"] == "partial-history":', "if True:", T_BC, "warmup_option"),
    Mutant("breadcrumb: warmup=partial-history is ignored", BC,
           'if self.bank.ready or self.opts["warmup"] == "partial-history":', "if self.bank.ready:", T_BC,
           "warmup_option"),
    # CAM fusion
    Mutant("cam-fusion: the specific region comes from low CAM values of the tail image", CAM,
           'cam_t[i] >= self.opts["tau_s"]', 'cam_t[i] <= self.opts["tau_g"]', T_CAM, "fused_sample_pools"),
    Mutant("cam-fusion: the generic region comes from high CAM values of the confusing image", CAM,
           'cam_c[k] <= self.opts["tau_g"]', 'cam_c[k] >= self.opts["tau_s"]', T_CAM, "fused_sample_pools"),
    Mutant("cam-fusion: specific and generic regions swapped between the two images", CAM,
           'specific = masked_vectors(tail_maps[i], cam_t[i] >= self.opts["tau_s"])',
           'specific = masked_vectors(conf_maps[i * n_a], cam_c[i * n_a] <= self.opts["tau_g"])', T_CAM,
           "fused_sample_pools"),
    Mutant("cam-fusion: the CAMs come from the head being fine-tuned", CAM,
           "weight = self.cam_weight.to(fmap.device)", "weight = model.classifier.weight.detach()", T_CAM,
           "frozen_phase"),
    Mutant("cam-fusion: a fused slot holds the tail image's vectors only", CAM,
           "fuse(specific, generic, gamma, length, self.generator)",
           "fuse(specific, generic, 1.0, length, self.generator)", T_CAM, "fused_sample_pools"),
    Mutant("cam-fusion: the fused map is max-pooled", CAM,
           "fused.append(vectors.mean(0))", "fused.append(vectors.max(0).values)", T_CAM, "fused_sample_pools"),
    Mutant("cam-fusion: fused labels cycle through the tail samples instead of following them", CAM,
           "labels[:n_t].repeat_interleave(n_a)", "labels[:n_t].repeat(n_a)", T_CAM, "fused_samples_take"),
    Mutant("cam-fusion: the default Phase II is half the paper's length", CAM,
           '"iterations": 6400,', '"iterations": 3200,', T_CAM, "default_phase"),
    Mutant("cam-fusion: the head-draw option never reaches the sampler", CAM,
           'run.generator, self.opts["head_draw"])', "run.generator)", T_CAM, "default_phase"),
    Mutant("cam-fusion: the default head draw is per image", CAM,
           '"head_draw": "classes",', '"head_draw": "images",', T_CAM, "default_phase"),
    # MiSLAS
    Mutant("mislas: more smoothing on tail classes than on head classes", MIS,
           'eps = smoothing_per_class(run.train_counts, self.opts["smooth_head"], self.opts["smooth_tail"])\n'
           "        eps = eps.to(run.device)",
           'eps = smoothing_per_class(run.train_counts, self.opts["smooth_tail"], self.opts["smooth_head"])\n'
           "        eps = eps.to(run.device)", T_MR, "more_smoothing_on_head"),
    Mutant("mislas: stage 2 trains with plain cross-entropy", MIS,
           "        if stage != 2:\n            return None  # stage 1",
           "        if True:\n            return None  # stage 1", T_MR, "more_smoothing_on_head"),
    Mutant("mislas: batch-norm statistics are not re-estimated", MIS,
           'update_bn_statistics=self.opts["shift_bn"],', "update_bn_statistics=False,", T_MR, "fifth_of_the_lr"),
    Mutant("mislas: the 0.2x learning rate reaches the LWS scales too", MIS,
           'head_lr_factors={"head.": self.opts["head_lr_factor"]}', 'head_lr_factors={"": self.opts["head_lr_factor"]}',
           T_MR, "fifth_of_the_lr"),
    Mutant("mislas: stage 2 samples as the data comes", MIS,
           "return class_balanced(labels, run.generator) if stage == 2 else None", "return None", T_MR,
           "samples_class_balanced"),
    # RIDE
    Mutant("ride: the experts' LDAM loss has no margins", RIDE,
           "ldam_loss(logits / s, targets, self._margins, s, weight)",
           "ldam_loss(logits / s, targets, self._margins * 0, s, weight)", T_MR, "every_expert_with_ldam_drw_from"),
    Mutant("ride: the DRW weights never switch on", RIDE,
           "weight = self._weights if self.after_drw(run) else None", "weight = None", T_MR,
           "every_expert_with_ldam_drw_from"),
    Mutant("ride: the DRW weights switch on one epoch late", RIDE,
           "run.epoch >= self.drw_epoch(run)", "run.epoch > self.drw_epoch(run)", T_MR,
           "every_expert_with_ldam_drw_from"),
    Mutant("ride: the class-aware temperatures are never used", RIDE,
           "temperature = self._temperatures if self.after_drw(run) else",
           'temperature = self.opts["diversity_temperature"] if True else', T_MR,
           "every_expert_with_ldam_drw_from"),
    Mutant("ride: only one extra expert receives the LDAM-DRW loss", RIDE,
           "for z in logits[1:])", "for z in logits[1:2])", T_MR, "every_expert_with_ldam_drw_from"),
    # mixing
    Mutant("remix: the targets get mixup's weight, not Eq. 6's", MIX,
           "batch.targets = mix_pairs(batch.labels, pool_labels[perm], weights, run.num_classes)",
           "batch.targets = mix_pairs(batch.labels, pool_labels[perm], lam, run.num_classes)", T_MIX, "remix_hands"),
    Mutant("remix: the label pairs are not the image pairs", MIX,
           "batch.targets = mix_pairs(batch.labels, pool_labels[perm], weights, run.num_classes)",
           "batch.targets = mix_pairs(batch.labels, pool_labels[perm.flip(0)], weights, run.num_classes)", T_MIX,
           "remix_hands"),
    Mutant("cutmix: the targets are weighted by lam, not by the area kept", MIX,
           "mix_pairs(batch.labels, pool_labels[perm], kept, run.num_classes)",
           "mix_pairs(batch.labels, pool_labels[perm], lam, run.num_classes)", T_MIX, "pastes"),
    Mutant("cutmix: the label pairs are not the image pairs", MIX,
           "mix_pairs(batch.labels, pool_labels[perm], kept, run.num_classes)",
           "mix_pairs(batch.labels, pool_labels.roll(1), kept, run.num_classes)", T_MIX, "pastes"),
    Mutant("cutmix: the probability is ignored", MIX,
           'or self.rng.random() >= self.opts["prob"]:', "or self.rng.random() >= 1.0:", T_MIX, "with_its_probability"),
    Mutant("mixup: the label pairs are not the image pairs", MIX,
           "batch.targets = mix_pairs(batch.labels, pool_labels[perm], lam, run.num_classes)\n        self.mixed",
           "batch.targets = mix_pairs(batch.labels, pool_labels.roll(1), lam, run.num_classes)\n        self.mixed",
           T_MIX, "mixes_images_and_targets"),
    # cb-focal
    Mutant("cb-focal: the classifier bias keeps PyTorch's default, not the prior", LOSS,
           "bias.fill_(-math.log((1 - prior) / prior))", "pass", "tests/test_baselines.py", "cb_focal_starts"),
    Mutant("cb-focal: the prior option never reaches the bias", LOSS,
           "bias.fill_(-math.log((1 - prior) / prior))", "bias.fill_(-math.log(9.0))", "tests/test_baselines.py",
           "cb_focal_starts"),
]


def _bcl_paco_mutants() -> list[Mutant]:
    """One-line (or one-block) defects in BCL's and PaCo's wiring, each with the test that catches it."""
    B, P, T = "ltbench_builtin.bcl", "ltbench_builtin.paco", "tests/test_bcl_paco_wiring.py"
    update = " " * 12 + "self._momentum_update(model)  # then the keys, with the moved encoder (official MoCo._train)"
    encode = "\n".join(" " * 16 + line for line in (
        'key_backbone = heads["paco_key_backbone"]',
        "pooled = key_backbone.forward_pool(key_backbone.forward_features(batch.extra_views[0]))",
        'keys = F.normalize(heads["paco_key_projection"](pooled), dim=1)'))
    encode = " " * 12 + "with torch.no_grad():\n" + encode
    return [
        # BCL: which views and rows feed the contrastive term
        Mutant("bcl: the contrastive term takes views 0 and 1, not views 1 and 2", B,
               "rows = slice(batch.view_rows(1).start, batch.view_rows(2).stop)",
               "rows = slice(batch.view_rows(0).start, batch.view_rows(1).stop)", T, "bcl_contrastive_gradient"),
        Mutant("bcl: only two views, so the contrastive term never runs", B,
               "return 3 if stage == 1 else None", "return 2 if stage == 1 else None", T, "bcl_step"),
        Mutant("bcl: the contrastive labels do not follow the rows", B,
               "labels = batch.labels[: len(batch.images)]\n", "labels = batch.labels.roll(1)\n", T, "bcl_step"),
        # BCL: the centres and the projections
        Mutant("bcl: the class centres are detached from the classifier", B,
               'model.heads["bcl_centres"](model.classifier.weight.T)',
               'model.heads["bcl_centres"](model.classifier.weight.T.detach())', T, "bcl_contrastive_gradient"),
        Mutant("bcl: the centres go through the projection head, not their own (head_fc)", B,
               'model.heads["bcl_centres"](model.classifier.weight.T)',
               'model.heads["bcl_projection"](model.classifier.weight.T)', T, "bcl_step"),
        Mutant("bcl: the centres are not normalised", B,
               'centres = F.normalize(model.heads["bcl_centres"](model.classifier.weight.T), dim=1)',
               'centres = model.heads["bcl_centres"](model.classifier.weight.T)', T, "bcl_step"),
        Mutant("bcl: the contrastive features are not normalised", B,
               'features = F.normalize(model.heads["bcl_projection"](output.features[rows]), dim=1)',
               'features = model.heads["bcl_projection"](output.features[rows])', T, "bcl_step"),
        Mutant("bcl: the contrastive term does not reach the backbone", B,
               'model.heads["bcl_projection"](output.features[rows])',
               'model.heads["bcl_projection"](output.features[rows].detach())', T, "bcl_contrastive_gradient"),
        # BCL: weights, temperature, prior, scale
        Mutant("bcl: the beta option never reaches the loss", B,
               '"bcl": self.opts["beta"] * scl', '"bcl": 0.6 * scl', T, "bcl_step"),
        Mutant("bcl: the temperature option never reaches the loss", B,
               'self.opts["temperature"])', "0.1)", T, "bcl_step"),
        Mutant("bcl: the alpha option never reaches the loss", B,
               'alpha = self.opts["alpha"]', "alpha = 2.0", T, "bcl_task_loss"),
        Mutant("bcl: alpha does not weigh the loss on soft targets or row weights", B,
               "return alpha * soft_cross_entropy(", "return soft_cross_entropy(", T, "bcl_task_loss"),
        Mutant("bcl: soft targets and row weights skip the logit adjustment", B,
               "soft_cross_entropy(adjusted, targets", "soft_cross_entropy(logits, targets", T, "bcl_task_loss"),
        Mutant("bcl: the logit adjustment uses a uniform prior, not the training counts", B,
               "np.log(counts / counts.sum())", "np.log(np.ones_like(counts) / len(counts))", T, "bcl_step"),
        Mutant("bcl: the logit adjustment has tau 0.5, not 1", B,
               "adjusted = logits + log_prior", "adjusted = logits + 0.5 * log_prior", T, "bcl_task_loss"),
        Mutant("bcl: the scale option never reaches the cosine classifier", B,
               'ScaledCosine(in_features, num_classes, self.opts["scale"])',
               "ScaledCosine(in_features, num_classes, 30.0)", T, "bcl_classifier"),
        # PaCo: which rows and views feed the loss
        Mutant("paco: the query is view 1", P,
               "rows = batch.view_rows(0)", "rows = batch.view_rows(1)", T, "paco_gradient"),
        Mutant("paco: the keys are encoded from the query view", P,
               "forward_features(batch.extra_views[0])", "forward_features(batch.images)", T, "paco_step"),
        Mutant("paco: the hook runs on a batch without a key view", P,
               "if run.stage != 1 or batch.views < 2:", "if run.stage != 1:", T, "paco_hook_is_stage_1"),
        # PaCo: the key encoder
        Mutant("paco: the keys come from the query backbone", P,
               'key_backbone = heads["paco_key_backbone"]', "key_backbone = model.backbone", T, "paco_step"),
        Mutant("paco: the keys are projected by the query's head", P,
               'keys = F.normalize(heads["paco_key_projection"](pooled), dim=1)',
               'keys = F.normalize(heads["paco_projection"](pooled), dim=1)', T, "paco_step"),
        Mutant("paco: the key encoder is trained by gradients", P,
               "model.heads[name].requires_grad_(False)", "model.heads[name].requires_grad_(True)", T, "paco_step"),
        Mutant("paco: the momentum update leaves the key projection behind", P,
               'for query, key in (("backbone", "paco_key_backbone"), ("paco_projection", "paco_key_projection")):',
               'for query, key in (("backbone", "paco_key_backbone"),):', T, "paco_step"),
        Mutant("paco: the key_momentum option never reaches the update", P,
               'm = self.opts["key_momentum"]', "m = 0.999", T, "paco_step"),
        Mutant("paco: the momentum update weighs the query encoder by m", P,
               "p_k.mul_(m).add_(p_q.detach(), alpha=1 - m)", "p_k.mul_(1 - m).add_(p_q.detach(), alpha=m)", T,
               "paco_step"),
        Mutant("paco: the key encoder moves after the keys are encoded", P,
               update + "\n" + encode, encode + "\n" + " " * 12 + "self._momentum_update(model)", T, "paco_step"),
        # PaCo: the queue
        Mutant("paco: the queries are enqueued, not the keys", P,
               "queue.push(keys, labels)", "queue.push(queries.detach(), labels)", T, "paco_step"),
        Mutant("paco: the queue advances twice per step", P,
               "queue.push(keys, labels)", "queue.push(keys, labels); queue.push(keys, labels)", T, "paco_step"),
        Mutant("paco: the step's keys enter the queue before the loss reads it", P,
               "queue_keys, queue_labels = queue.keys.clone(), queue.labels.clone()",
               "queue.push(keys, labels); queue_keys, queue_labels = queue.keys.clone(), queue.labels.clone()", T,
               "paco_step"),
        # PaCo: the centres' prior, the weights, the temperature, the gradients
        Mutant("paco: the log prior is left out of the centres' logits", P,
               "output.logits[rows].float() + self._log_prior", "output.logits[rows].float()", T, "paco_step"),
        Mutant("paco: the prior is uniform, not the training counts", P,
               "np.log(counts / counts.sum() + 1e-9)", "np.log(np.full_like(counts, 1 / len(counts)) + 1e-9)", T,
               "paco_step"),
        Mutant("paco: alpha and beta swapped", P,
               'self.opts["alpha"], self.opts["beta"],', 'self.opts["beta"], self.opts["alpha"],', T, "paco_step"),
        Mutant("paco: the gamma option never reaches the loss", P,
               'self.opts["gamma"], self.opts["temperature"])', '1.0, self.opts["temperature"])', T, "paco_step"),
        Mutant("paco: the temperature option never reaches the loss", P,
               'self.opts["gamma"], self.opts["temperature"])', 'self.opts["gamma"], 0.05)', T, "paco_step"),
        Mutant("paco: the classifier (the parametric centres) gets no gradient", P,
               "output.logits[rows].float()", "output.logits[rows].detach().float()", T, "paco_gradient"),
        Mutant("paco: the queries do not reach the backbone", P,
               'heads["paco_projection"](output.features[rows])',
               'heads["paco_projection"](output.features[rows].detach())', T, "paco_gradient"),
        Mutant("paco: row weights are ignored", P,
               "loss = per_anchor.mean() if weights is None else (per_anchor * weights.to(per_anchor.dtype)).mean()",
               "loss = per_anchor.mean()", T, "paco_gradient"),
    ]

#: BCL's and PaCo's (issue 37, item 9)
MUTANTS += _bcl_paco_mutants()


class _MutatingFinder(importlib.abc.MetaPathFinder):
    """Finds ``module`` where Python would, but compiles its source with ``old`` replaced by ``new``."""

    def __init__(self, module: str, old: str, new: str):
        self.module, self.old, self.new = module, old, new

    def find_spec(self, name, path, target=None):
        if name != self.module:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        finder = self

        class Loader(importlib.machinery.SourceFileLoader):
            def get_code(self, fullname):
                source = Path(self.path).read_text()
                if source.count(finder.old) != 1:
                    raise SystemExit(f"mutant: {finder.old!r} occurs {source.count(finder.old)} times in {self.path}")
                return compile(source.replace(finder.old, finder.new), self.path, "exec", dont_inherit=True)

        spec.loader = Loader(name, spec.origin)
        return spec


def _run_mutated(spec: dict) -> int:
    import pytest

    sys.dont_write_bytecode = True
    sys.meta_path.insert(0, _MutatingFinder(spec["module"], spec["old"], spec["new"]))
    return int(pytest.main(["-q", "-x", "-p", "no:cacheprovider", spec["tests"], "-k", spec["select"]]))


def _pytest(args: list[str], mutant: Mutant | None = None) -> tuple[int, str]:
    if mutant is None:
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    else:
        cmd = [sys.executable, __file__, "--apply", json.dumps(mutant.__dict__)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-k", default="", help="only the mutants whose name contains this text")
    parser.add_argument("--apply", help=argparse.SUPPRESS)  # internal: run one mutant's tests in this process
    args = parser.parse_args()
    if args.apply:
        return _run_mutated(json.loads(args.apply))
    mutants = [m for m in MUTANTS if args.k in m.name]
    if not mutants:
        print(f"no mutant name contains {args.k!r}", file=sys.stderr)
        return 2
    for tests in sorted({m.tests for m in mutants}):  # the unmutated code passes the selected tests
        select = " or ".join(sorted({m.select for m in mutants if m.tests == tests}))
        rc, out = _pytest([tests, "-k", select])
        if rc != 0:
            print(f"the unmutated code fails {tests} -k '{select}':\n{out[-3000:]}", file=sys.stderr)
            return 2
    survivors = 0
    for m in mutants:
        t0 = time.perf_counter()
        rc, out = _pytest([], m)
        caught = rc == 1  # pytest's "tests failed"; any other code is a broken mutant or test run
        if rc not in (0, 1):
            print(f"{m.name}: pytest exited {rc}:\n{out[-2000:]}", file=sys.stderr)
            return 2
        survivors += not caught
        print(f"{'red     ' if caught else 'SURVIVED'}  {m.name}  ({m.tests} -k {m.select}, "
              f"{time.perf_counter() - t0:.1f}s)")
    print(f"{len(mutants) - survivors} of {len(mutants)} mutants caught")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
