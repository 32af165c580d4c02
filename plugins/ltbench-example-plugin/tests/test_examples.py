"""The two short examples: they pass ltbench's conformance check and do what they say."""

import pytest
import torch

from ltbench.api import Batch


@pytest.mark.parametrize("name", ["example-mixup", "example-second-head"])
def test_the_examples_pass_the_conformance_check(name, ltbench_method_check):
    from ltbench.api import build_catalog

    assert ltbench_method_check(build_catalog().method(name).cls)["status"] == "completed"


def test_mixup_mixes_the_targets_as_the_images(ltbench_tiny_run):
    from ltbench_example import ExampleMixup

    method = ExampleMixup()
    method.ltbench_configure_model(ltbench_tiny_run)
    images, labels = torch.randn(6, 3, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    batch = Batch(labels=labels.clone(), images=images.clone())
    method.ltbench_augment_batch(ltbench_tiny_run, batch)
    assert torch.allclose(batch.targets.sum(1), torch.ones(6)) and torch.equal(batch.labels, labels)
