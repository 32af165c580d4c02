"""``example-second-head``: a second, balanced-softmax classifier on the pooled features, trained beside the
run's own and averaged with it at evaluation (a two-expert ensemble in a few lines)."""

import torch
import torch.nn.functional as F

from ltbench.api import Method, MethodMetadata, hookimpl


class ExampleSecondHead(Method):
    name = "example-second-head"
    metadata = MethodMetadata(
        title="second balanced-softmax head, averaged at evaluation (example plugin)",
        summary="A linear head trained with balanced softmax (CE on logits + log prior) beside the run's head; "
        "evaluation averages the two heads' logits.",
    )

    @hookimpl
    def ltbench_configure_model(self, run, model):
        model.heads["balanced"] = torch.nn.Linear(model.num_features, run.num_classes)
        counts = torch.as_tensor(run.train_counts, dtype=torch.float32)
        self.log_prior = (counts / counts.sum()).log().to(run.device)

    @hookimpl
    def ltbench_extra_losses(self, run, model, batch, output):
        logits = model.heads["balanced"](output.features) + self.log_prior
        return {"balanced_head": F.cross_entropy(logits, batch.loss_targets(run.num_classes))}

    @hookimpl
    def ltbench_eval_logits(self, model, output):
        return (output.logits + model.heads["balanced"](output.features)) / 2
