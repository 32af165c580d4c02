"""The example plugin's own tests; run them with the plugin installed."""

import pytest
import torch
import torch.nn.functional as F

from ltbench.api import ConfigError, build_catalog


def test_discovered_through_the_ltbench_entry_point_group():
    catalog = build_catalog()
    entry = catalog.method("label-smoothing")
    assert entry.plugin.distribution == "ltbench-example-plugin"
    assert not catalog.broken


def test_loss_smooths_targets_and_reduces_to_cross_entropy_at_zero():
    from ltbench_example import LabelSmoothing

    logits, targets = torch.randn(8, 5), torch.randint(0, 5, (8,))
    smooth = LabelSmoothing(epsilon=0.2).ltbench_build_loss(stage=1)
    plain = LabelSmoothing(epsilon=0.0).ltbench_build_loss(stage=1)
    manual = (-(0.8 * F.one_hot(targets, 5) + 0.2 / 5) * logits.log_softmax(1)).sum(1).mean()
    assert torch.allclose(smooth(logits, targets), manual)
    assert torch.allclose(plain(logits, targets), F.cross_entropy(logits, targets))


def test_rejects_epsilon_outside_unit_interval():
    from ltbench_example import LabelSmoothing

    with pytest.raises(ConfigError, match="epsilon"):
        LabelSmoothing(epsilon=1.5)
