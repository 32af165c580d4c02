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
           "batch.targets = mix_pairs(batch.labels, batch.labels[perm], weights, run.num_classes)",
           "batch.targets = mix_pairs(batch.labels, batch.labels[perm], lam, run.num_classes)", T_MIX, "remix_hands"),
    Mutant("remix: the label pairs are not the image pairs", MIX,
           "batch.targets = mix_pairs(batch.labels, batch.labels[perm], weights, run.num_classes)",
           "batch.targets = mix_pairs(batch.labels, batch.labels[perm.flip(0)], weights, run.num_classes)", T_MIX,
           "remix_hands"),
    Mutant("cutmix: the targets are weighted by lam, not by the area kept", MIX,
           "mix_pairs(batch.labels, batch.labels[perm], kept, run.num_classes)",
           "mix_pairs(batch.labels, batch.labels[perm], lam, run.num_classes)", T_MIX, "pastes"),
    Mutant("cutmix: the label pairs are not the image pairs", MIX,
           "mix_pairs(batch.labels, batch.labels[perm], kept, run.num_classes)",
           "mix_pairs(batch.labels, batch.labels.roll(1), kept, run.num_classes)", T_MIX, "pastes"),
    Mutant("cutmix: the probability is ignored", MIX,
           'or self.rng.random() >= self.opts["prob"]:', "or self.rng.random() >= 1.0:", T_MIX, "with_its_probability"),
    Mutant("mixup: the label pairs are not the image pairs", MIX,
           "batch.targets = mix_pairs(batch.labels, batch.labels[perm], lam, run.num_classes)\n        self.mixed",
           "batch.targets = mix_pairs(batch.labels, batch.labels.roll(1), lam, run.num_classes)\n        self.mixed",
           T_MIX, "mixes_images_and_targets"),
    # cb-focal
    Mutant("cb-focal: the classifier bias keeps PyTorch's default, not the prior", LOSS,
           "bias.fill_(-math.log((1 - prior) / prior))", "pass", "tests/test_baselines.py", "cb_focal_starts"),
    Mutant("cb-focal: the prior option never reaches the bias", LOSS,
           "bias.fill_(-math.log((1 - prior) / prior))", "bias.fill_(-math.log(9.0))", "tests/test_baselines.py",
           "cb_focal_starts"),
]


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
