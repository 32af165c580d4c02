"""``sam``: the step moves from w with the gradient taken at w + rho g/||g||, composes with any loss method,
and trains alike in one process and in two (torchrun, gloo)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ltbench.api import ConfigError
from ltbench.plugins.testing import catalog_with, check_distributed, check_method, run_methods
from ltbench_builtin.sam import SharpnessAwareMinimisation, sam_perturbation


def _catalog():
    """The catalog with ``sam`` (it joins the ltbench entry points together with its board rows)."""
    catalog = catalog_with()
    return catalog if "sam" in catalog.methods else catalog_with(SharpnessAwareMinimisation)


def test_the_perturbation_is_rho_along_the_normalised_gradient_of_all_parameters():
    grads = [torch.tensor([3.0, 0.0]), torch.tensor([[4.0]])]
    e = sam_perturbation(grads, rho=0.5)
    assert torch.allclose(e[0], torch.tensor([0.3, 0.0])) and torch.allclose(e[1], torch.tensor([[0.4]]))
    assert torch.isclose(torch.norm(torch.cat([x.flatten() for x in e])), torch.tensor(0.5))


def test_a_sam_step_descends_from_w_with_the_gradient_at_the_perturbed_weights():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    x, y = torch.randn(8, 3), torch.tensor([0, 1] * 4)
    loss_at = lambda m: nn.functional.cross_entropy(m(x), y)  # noqa: E731
    lr, rho = 0.1, 0.3
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)

    def closure():
        optimizer.zero_grad()
        loss = loss_at(model)
        loss.backward()
        return loss.detach()

    w = [p.detach().clone() for p in model.parameters()]
    closure()
    g = [p.grad.clone() for p in model.parameters()]
    # by hand: the gradient at w + rho g/||g||, then w - lr * that gradient
    probe = nn.Linear(3, 2)
    norm = torch.norm(torch.stack([t.norm() for t in g]))
    with torch.no_grad():
        for p, w0, g0 in zip(probe.parameters(), w, g):
            p.copy_(w0 + rho * g0 / norm)
    loss_at(probe).backward()
    expected = [w0 - lr * p.grad for w0, p in zip(w, probe.parameters())]

    sam = SharpnessAwareMinimisation(rho=rho)
    assert sam.ltbench_optimizer_step(optimizer=optimizer, closure=closure) is True
    for p, want in zip(model.parameters(), expected):
        assert torch.allclose(p.detach(), want, atol=1e-6)
    plain = [w0 - lr * g0 for w0, g0 in zip(w, g)]
    assert not all(torch.allclose(p.detach(), q, atol=1e-4) for p, q in zip(model.parameters(), plain))


def test_rho_zero_trains_exactly_as_the_core_step_and_rho_above_zero_does_not(tmp_path):
    catalog = _catalog()
    (ce,) = run_methods(catalog, ["ce"], tmp_path / "ce")
    (flat,) = run_methods(catalog, ["sam"], tmp_path / "flat", settings={"sam.rho": "0"})
    (sharp,) = run_methods(catalog, ["sam"], tmp_path / "sharp")
    assert flat["status"] == sharp["status"] == "completed", (flat["error"], sharp["error"])
    # the logged loss is the first evaluation's, at w: with e = 0 every step is the core's own
    assert [e["loss_task"] for e in flat["history"]] == [e["loss_task"] for e in ce["history"]]
    assert [e["loss_task"] for e in sharp["history"]] != [e["loss_task"] for e in ce["history"]]
    steps = sharp["extra"]["sam"]["sam_steps"]
    assert steps > 0 and sharp["extra"]["sam"]["rho"] == 0.2


def test_sam_composes_with_ldam_drw_and_perturbs_its_loss(tmp_path):
    catalog = _catalog()
    (ldam,) = run_methods(catalog, ["ldam-drw"], tmp_path / "ldam")
    (both,) = run_methods(catalog, ["ldam-drw+sam"], tmp_path / "both", settings={"sam.rho": "0.8"})
    assert both["status"] == "completed", both["error"]
    assert both["extra"]["sam"]["rho"] == 0.8 and both["extra"]["ldam-drw"]["drw_epoch"] > 0
    assert [e["loss_task"] for e in both["history"]][1:] != [e["loss_task"] for e in ldam["history"]][1:]


def test_a_negative_rho_is_a_named_error():
    with pytest.raises(ConfigError, match="sam.rho is the radius"):
        SharpnessAwareMinimisation(rho=-0.1)


def test_sam_passes_the_conformance_kit(tmp_path):
    check_method(SharpnessAwareMinimisation, tmp_path, catalog=_catalog())


@pytest.mark.slow
def test_sam_trains_alike_in_two_gloo_processes_and_one(tmp_path):
    check_distributed(SharpnessAwareMinimisation, tmp_path, catalog=_catalog())
