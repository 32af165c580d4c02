"""Built-in methods that draw or append over the global batch train on two ranks as in one process (issue 37,
item 6): the kit's ``check_distributed`` (losses to 1e-4, per-class test predictions within one image).

mixup, cutmix and remix draw one pairing over the global batch; BLT its tail samples, targets and thresholds;
SAFA its head-tail pairs and module statistics; both weigh the rows they append. cb-loss's global normaliser is
checked in ``tests/test_global_batch.py``. ride, bcl and paco compute over the global batch too, but at the smoke
budget their float32 rounding, amplified by training, reaches 1e-3 to 1e-2 (as far as one process with 1 thread
is from itself with 2): in float64 each matches to 1e-13 (``python ci/check_distributed_all.py --float64``)."""

from __future__ import annotations

import pytest

from ltbench.api import build_catalog, check_distributed


@pytest.mark.slow
@pytest.mark.parametrize("method, settings", [
    ("mixup", None), ("cutmix", None), ("remix", None), ("blt", None), ("safa", {"backbone": "resnet8"}),
])
def test_two_ranks_train_as_one_process(tmp_path, method, settings):
    check_distributed(build_catalog().method(method).cls, tmp_path, settings=settings)
