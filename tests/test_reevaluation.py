"""A step owner's re-evaluation advances no method's state (issue 37, item 5). SAM's ``closure()`` runs every loss
hook again; ``run.reevaluating`` tells them so, and PaCo (momentum encoder, queue), SAFA (pairing, class means,
sample count) and Breadcrumb (feature bank, step counter) compute the same terms without moving anything: the
queue advances once per step, and ``safa+sam`` trains."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ltbench.api import Method, MethodMetadata, hookimpl
from ltbench.plugins.testing import _same, catalog_with, run_methods  # (_same: the kit's deep equality)

#: the batch-norm statistics of trained modules move on every train-mode forward pass, as SAM's official code
#: lets them; everything else (a momentum encoder's statistics included) a closure leaves as it found it
MOVES_ON_EVERY_FORWARD = ("running_mean", "running_var", "num_batches_tracked")


def _snapshot(run, model):
    trained = {name for name, module in model.named_modules()
               if any(p.requires_grad for p in module.parameters(recurse=False))}
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()
               if not (name.endswith(MOVES_ON_EVERY_FORWARD) and name.rsplit(".", 1)[0] in trained)}
    others = [m for m in run.methods if m.name != ReevaluationProbe.name]
    # (time a method measures, e.g. Breadcrumb's "seconds", moves with the clock, not with a re-evaluation)
    states = {m.name: {k: _clone(v) for k, v in m.state_dict().items() if k != "seconds"} for m in others}
    counters = {m.name: {k: v for k, v in vars(m).items() if isinstance(v, int) and not isinstance(v, bool)}
                for m in others}
    return buffers, states, counters


def _clone(value):
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(v) for v in value)
    return value


class ReevaluationProbe(Method):
    """Owns the step: evaluates the batch twice at the same weights (two re-evaluations must agree) and checks
    that neither moved a buffer, a method's state or a counter; then steps from the first pass's gradient."""

    name = "reeval-probe"
    metadata = MethodMetadata(title="re-evaluation probe")

    def __init__(self, **options):
        super().__init__(**options)
        self.steps, self.problems, self.largest_difference = 0, [], 0.0

    @hookimpl
    def ltbench_optimizer_step(self, run, model, optimizer, closure):
        grads = [p.grad.clone() if p.grad is not None else None for p in model.parameters()]
        before = _snapshot(run, model)
        first, second = closure(), closure()
        after = _snapshot(run, model)
        self.largest_difference = max(self.largest_difference, abs(float(first) - float(second)))
        for what, old, new in zip(("buffer", "state", "counter"), before, after):
            for key in old:
                if not _same(old[key], new[key]) and len(self.problems) < 5:
                    self.problems.append(f"step {self.steps}: {what} {key!r} moved in a re-evaluation")
        for p, g in zip(model.parameters(), grads):
            p.grad = g
        optimizer.step()
        self.steps += 1
        return True

    @hookimpl
    def ltbench_record(self):
        return {"steps": self.steps, "problems": self.problems, "largest_difference": self.largest_difference}


CATALOG = catalog_with(ReevaluationProbe)


@pytest.mark.parametrize("method, settings", [
    ("paco", {}),
    ("safa", {"backbone": "resnet8", "safa.start": "0.0"}),  # samples generated and appended from the first step
    ("breadcrumb", {}),
])
def test_a_re_evaluation_computes_the_same_loss_and_moves_nothing(tmp_path, method, settings):
    (rec,) = run_methods(CATALOG, [f"{method}+reeval-probe"], tmp_path, epochs=2, settings=settings)
    assert rec["status"] == "completed", rec["error"]
    probe = rec["extra"]["reeval-probe"]
    assert probe["steps"] > 0 and probe["problems"] == []
    assert probe["largest_difference"] < 1e-5


def test_paco_sam_advances_the_queue_once_per_step(tmp_path):
    (rec,) = run_methods(catalog_with(), ["paco+sam"], tmp_path, epochs=2)
    assert rec["status"] == "completed", rec["error"]
    rows = sum(e["images"] for e in rec["history"] if e["stage"] == 1) // 2  # two views a row
    size = rec["config"]["methods"]["paco"]["queue"]
    model = torch.load(next(tmp_path.rglob("model.pt")), weights_only=True)
    state = model["model"]
    assert int(state["heads.paco_queue.pointer"]) == rows % size


def test_safa_sam_trains_and_counts_each_generated_sample_once(tmp_path):
    settings = {"backbone": "resnet8", "safa.start": "0.0"}
    (alone,) = run_methods(catalog_with(), ["safa"], tmp_path / "alone", epochs=1, settings=settings)
    (sam,) = run_methods(catalog_with(), ["safa+sam"], tmp_path / "sam", epochs=1, settings=settings)
    assert sam["status"] == "completed", sam["error"]
    assert sam["extra"]["safa"]["generated"] == alone["extra"]["safa"]["generated"] > 0
