"""``strong-decay`` shapes its optimiser (Weight Balancing's stage-1 weight decay); ``batch-centres`` adds a loss
term over the global batch (a centre loss on the batch's class means, gathered over ranks)."""

import torch

from ltbench.api import ConfigError, Method, MethodMetadata, ParamGroup, gather_batch, hookimpl


class StrongDecay(Method):
    name = "strong-decay"
    metadata = MethodMetadata(title="Weight Balancing's stage-1 weight decay (probe)",
                              paper="Alshammari et al., Long-Tailed Recognition via Weight Balancing", venue="CVPR",
                              year=2022)
    options = {"wd": 5e-3}

    def check_options(self):
        if not self.opts["wd"] >= 0:
            raise ConfigError(f"strong-decay.wd must be 0 or more, got {self.opts['wd']}")

    @hookimpl
    def ltbench_param_groups(self, stage):
        return [ParamGroup(("",), weight_decay=self.opts["wd"], label="weight balancing")] if stage == 1 else None


class BatchCentres(Method):
    name = "batch-centres"
    metadata = MethodMetadata(title="a centre loss over the global batch (probe)")
    options = {"weight": 0.1}

    @hookimpl
    def ltbench_extra_losses(self, run, batch, output):
        features = gather_batch(run, output.features[batch.view_rows(0)])
        labels = gather_batch(run, batch.labels)
        one_hot = torch.nn.functional.one_hot(labels, run.num_classes).to(features.dtype)
        centres = (one_hot.T @ features) / one_hot.sum(0).clamp(min=1)[:, None]
        spread = (features - centres[labels]).pow(2).sum(1).mean()
        return {"batch_centres": self.opts["weight"] * spread}
