"""``sam``: sharpness-aware minimisation as a method that owns the optimisation step.

Foret et al. (ICLR 2021) minimise the loss at the worst point of a ball of radius rho around the weights. To
first order that point is ``w + e``, ``e = rho * g / ||g||`` (g the batch gradient, the norm over all
parameters); SAM takes the optimizer's step from ``w`` with the gradient computed at ``w + e``. Rangwani et al.
(NeurIPS 2022, "Escaping saddle points for effective generalization on class-imbalanced data") show that the
tail classes' loss sits at saddle points that SAM escapes, and train it on top of CE, CE+DRW and LDAM-DRW.

The step, per batch (their ``cifar_train_sam.py`` with davda54's ``SAM`` optimizer, non-adaptive):

1. the core has computed the batch's loss and its gradient g at w (every method's loss terms);
2. ``e = rho * g / (||g|| + 1e-12)``; the weights move to ``w + e``;
3. ``closure()`` evaluates the same batch there: the same loss terms, so ``ldam-drw+sam`` perturbs LDAM-DRW's
   loss, a gradient g' (averaged over ranks under torchrun, like g);
4. the weights go back to w exactly and the optimizer (SGD, momentum, weight decay) steps with g'.

It implements only ``ltbench_optimizer_step``, so it composes with any loss or sampling method that honours the
re-evaluation contract: while ``closure()`` runs, ``run.reevaluating`` is true and every method computes the same
terms without advancing its state (PaCo's queue and momentum encoder, SAFA's class means and sample count,
Breadcrumb's bank move once per step; ``tests/test_reevaluation.py`` checks each built-in stateful method). It
cannot compose with another step owner.
"""

from __future__ import annotations

import torch

from ltbench.api import ConfigError, Method, MethodMetadata, hookimpl

from ltbench_builtin.ce import LDAM_SETTING


def sam_perturbation(grads: list[torch.Tensor], rho: float) -> list[torch.Tensor]:
    """``rho * g / (||g|| + 1e-12)`` for each parameter's gradient, ``||g||`` the 2-norm over all of them
    (davda54/sam ``first_step`` with ``adaptive=False``)."""
    norm = torch.norm(torch.stack([g.norm(p=2) for g in grads]), p=2)
    scale = rho / (norm + 1e-12)
    return [g * scale for g in grads]


class SharpnessAwareMinimisation(Method):
    name = "sam"
    options = {"rho": 0.2}
    metadata = MethodMetadata(
        family="optimisation",
        title="Sharpness-aware minimisation (SAM)",
        paper="Rangwani et al., Escaping Saddle Points for Effective Generalization on Class-Imbalanced Data "
              "(SAM: Foret et al., Sharpness-Aware Minimization for Efficiently Improving Generalization, ICLR 2021)",
        venue="NeurIPS", year=2022,
        code_url="https://github.com/val-iisc/Saddle-LongTail",
        summary="Each step moves the weights to w + rho g/||g||, takes the gradient of the same batch's loss there, "
                "and steps from w with it. rho 0.2 (the official CIFAR-100-LT CE+SAM run); composes with any loss "
                "method whose hooks honour run.reevaluating (every built-in does): ldam-drw+sam trains LDAM-DRW's "
                "loss this way (the official run uses rho 0.8).",
        reference_results={
            "cifar100-lt-if100": {"overall": None, **LDAM_SETTING,
                                  "source": "no CE+SAM number in the official README; it gives CE+DRW+SAM 44.6 and "
                                  "LDAM+DRW+SAM 45.4 (ResNet-32, 200 epochs, rho 0.8), the compositions' numbers"},
            "ldam-drw:cifar100-lt-if100": {"overall": 45.4, **LDAM_SETTING, "options": {"sam.rho": 0.8},
                                           "source": "Saddle-LongTail README (Rangwani et al., NeurIPS 2022), "
                                           "LDAM+DRW+SAM on CIFAR-100-LT imbalance 100: ResNet-32, 200 epochs, "
                                           "rho 0.8, the standard CIFAR augmentation"},
        },
        interpretations=(
            "Batch-norm statistics move on both forward passes of a step, as in the official code (it does not "
            "freeze them for the perturbed pass, as davda54's example suggests).",
            "The perturbation covers every parameter the optimizer steps (backbone and classifier), with one "
            "global gradient norm and no adaptive scaling, as the official CIFAR runs.",
            "rho is constant (the official CIFAR runs use rho_schedule none).",
        ),
    )

    def check_options(self) -> None:
        super().check_options()
        if not self.opts["rho"] >= 0:
            raise ConfigError(f"sam.rho is the radius of the neighbourhood, >= 0; got {self.opts['rho']}")

    def __init__(self, **options):
        super().__init__(**options)
        self.steps = 0

    @hookimpl
    def ltbench_optimizer_step(self, optimizer, closure):
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        with torch.no_grad():
            start = [p.detach().clone() for p in params]
            for p, e in zip(params, sam_perturbation([p.grad for p in params], self.opts["rho"])):
                p.add_(e)
        closure()  # the gradient of the same batch at w + e
        with torch.no_grad():
            for p, w in zip(params, start):
                p.copy_(w)
        optimizer.step()
        self.steps += 1
        return True

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = int(state.get("steps", 0))

    @hookimpl
    def ltbench_record(self):
        return {"rho": self.opts["rho"], "sam_steps": self.steps}


@hookimpl
def ltbench_register_methods(register):
    register(SharpnessAwareMinimisation)
