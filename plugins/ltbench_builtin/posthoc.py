"""``logit-adjust-posthoc``: post-hoc logit adjustment of a plain CE model
(Menon et al., ICLR 2021): at evaluation, logits - tau * log(prior).

Stage 1 is the plain CE model (shared with ``ce``); nothing is trained
after it. tau is chosen on the validation split over 0, 0.1, ..., 2.
"""

from __future__ import annotations

from ltbench.api import Method, MethodMetadata, SecondStage, hookimpl
from ltbench_builtin.decoupling import TAU_GRID, choose_on_validation
from ltbench_builtin.losses import log_prior


class LogitAdjustPosthoc(Method):
    name = "logit-adjust-posthoc"
    plain_stage1 = True
    metadata = MethodMetadata(
        family="post-hoc",
        title="Post-hoc logit adjustment", paper="Menon et al., Long-Tail Learning via Logit Adjustment",
        venue="ICLR", year=2021, code_url="https://github.com/google-research/google-research/tree/master/logit_adjustment",
        summary="Evaluate a plain cross-entropy model with logits - tau * log(prior); tau chosen on validation.",
        interpretations=("tau is chosen on validation (mean per-class accuracy) over 0..2 in steps of 0.1; the "
                         "paper reports tau = 1 and a test-set sweep.",),
    )

    def __init__(self, **options):
        super().__init__(**options)
        self.tau = 0.0
        self.scores: dict[str, float] = {}

    @hookimpl
    def ltbench_second_stage(self):
        return SecondStage(epochs=0, cached_features=False, note="no training; tau chosen on validation")

    @hookimpl
    def ltbench_stage_end(self, run, stage):
        if stage != 2:
            return
        prior = log_prior(run.train_counts).to(run.device)
        head = run.model.classifier
        self.tau, self.scores = choose_on_validation(run, TAU_GRID, lambda t, f: head(f) - t * prior)

    @hookimpl
    def ltbench_adjust_logits(self, run, logits):
        return logits - self.tau * log_prior(run.train_counts).to(logits.device)

    @hookimpl
    def ltbench_record(self):
        return {"tau": self.tau, "validation_accuracy_by_tau": self.scores}

    def state_dict(self):
        return {"tau": self.tau, "scores": self.scores}

    def load_state_dict(self, state):
        self.tau, self.scores = state.get("tau", 0.0), state.get("scores", {})


@hookimpl
def ltbench_register_methods(register):
    register(LogitAdjustPosthoc)
