"""``example-mixup``: mixup (Zhang et al., ICLR 2018) that composes with any loss method.

It mixes the images and sets ``batch.targets``; whatever loss the run uses (cross-entropy by default,
``example-mixup+ldam-drw`` for LDAM-DRW) trains toward the mixed targets.
"""

import numpy as np
import torch

from ltbench.api import ConfigError, Method, MethodMetadata, hookimpl, mix_pairs


class ExampleMixup(Method):
    name = "example-mixup"
    options = {"alpha": 1.0}
    metadata = MethodMetadata(
        title="mixup (example plugin)", paper="Zhang et al., mixup: Beyond Empirical Risk Minimization",
        venue="ICLR", year=2018, summary="x = lam x_i + (1 - lam) x_j, targets mixed alike, lam ~ Beta(alpha, alpha).",
    )

    def __init__(self, **options):
        super().__init__(**options)
        self.generator = torch.Generator()  # own randomness, saved in checkpoints

    def check_options(self):
        if not self.opts["alpha"] > 0:
            raise ConfigError(f"example-mixup.alpha must be > 0, got {self.opts['alpha']}")

    @hookimpl
    def ltbench_configure_model(self, run):
        self.generator.manual_seed(run.seed)

    @hookimpl
    def ltbench_augment_batch(self, run, batch):
        if run.stage != 1 or batch.images is None:
            return
        draw = int(torch.randint(2**31, (1,), generator=self.generator))  # the weight, from our own generator
        lam = float(np.random.default_rng(draw).beta(self.opts["alpha"], self.opts["alpha"]))
        perm = torch.randperm(len(batch.labels), generator=self.generator).to(batch.labels.device)
        batch.images = lam * batch.images + (1 - lam) * batch.images[perm]
        batch.targets = mix_pairs(batch.labels, batch.labels[perm], lam, run.num_classes)

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        if state:
            self.generator.set_state(state["generator"])

