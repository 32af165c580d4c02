"""``label-smoothing``: cross-entropy with label smoothing (toy example plugin)."""

import torch.nn.functional as F

from ltbench.api import ConfigError, Method, MethodMetadata, hookimpl


class LabelSmoothing(Method):
    name = "label-smoothing"
    options = {"epsilon": 0.1}
    metadata = MethodMetadata(
        title="Cross-entropy with label smoothing",
        paper="Szegedy et al., Rethinking the Inception Architecture for Computer Vision",
        venue="CVPR",
        year=2016,
        summary="Toy example of a third-party plugin: the target puts epsilon of its mass uniformly on all classes.",
    )

    def check_options(self):
        if not 0 <= self.opts["epsilon"] < 1:
            raise ConfigError(f"label-smoothing.epsilon must be in [0, 1), got {self.opts['epsilon']}")

    @hookimpl
    def ltbench_build_loss(self, stage):
        epsilon = self.opts["epsilon"]
        return lambda logits, targets: F.cross_entropy(logits, targets, label_smoothing=epsilon)


from ltbench_example.mixup_ce import ExampleMixup  # noqa: E402
from ltbench_example.second_head import ExampleSecondHead  # noqa: E402


@hookimpl
def ltbench_register_methods(register):
    register(LabelSmoothing)
    register(ExampleMixup)
    register(ExampleSecondHead)
