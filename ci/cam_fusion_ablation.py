"""What CAM fusion's fused features do on the committed board: Phase II with real tail images in their place.

    python ci/cam_fusion_ablation.py [--data-root ../shared/data] [--seeds 0,1,2]

On the board, cam-fusion trails crt in the medium-shot classes that its h_r rule puts in the tail set (the ones
whose Phase-II batches carry fused samples; `python ci/board_findings.py` prints the split). An Algorithm-1
batch holds, per tail item, one real image and n_f fused features that carry its label. ``cam-fusion-real``
keeps everything else of cam-fusion (its sampling rule for tail and head classes, the Phase-I
classifier fine-tuned at lr 0.001 for 6,400 iterations on the frozen backbone, the same batch layout) but
fills each fused slot with the pooled feature of another real image of the same tail class, drawn uniformly.
So cam-fusion - cam-fusion-real is what fusing features adds over showing real ones.

Records go to leaderboards/ablations (result.json and predictions.npz are committed); the runs reuse the
board's shared stage 1s when leaderboards/records has them. `ltbench compare leaderboards/ablations
cam-fusion-real crt` reads them (ci/breadcrumb_ablation.py retrains crt there as its control, identical
to the board's).
"""
from __future__ import annotations

import argparse
import itertools
import sys

import numpy as np
import torch

from ltbench import MethodMetadata, hookimpl
from ltbench.plugins.testing import catalog_with
from ltbench_builtin.cam_fusion import CAMFusion, FusionBatchSampler

from ablation_runs import run_ablation  # ci/ablation_runs.py, beside this script


class RealTailSampler(FusionBatchSampler):
    """cam-fusion's Algorithm-1 batches, each confusing slot refilled with another image of its tail item's class."""

    def __iter__(self):
        n_t, n_a = self.n_t, self.n_a
        stream = super().__iter__()
        for _ in range(self.iterations):
            batch = np.fromiter(itertools.islice(stream, self.batch_size), dtype=np.int64)
            for i, c in enumerate(self.labels[batch[:n_t]]):
                batch[n_t + i * n_a: n_t + (i + 1) * n_a] = self._pick(self.by_class[c], n_a)
            yield from batch.tolist()


class CAMFusionReal(CAMFusion):
    name = "cam-fusion-real"
    metadata = MethodMetadata(
        title="cam-fusion with real tail images in the fused slots (ci/cam_fusion_ablation.py)",
        paper="ltbench ablation", family="ablation",
        interpretations=("An ablation of ltbench's, not a method of any paper: Phase II as cam-fusion, each fused "
                         "feature replaced by the pooled feature of another real image of the same tail class.",))
    sampler_class = RealTailSampler

    @hookimpl
    def ltbench_augment_batch(self, run, model, batch):
        if run.stage != 2:
            return
        with torch.no_grad():
            batch.features = model.backbone.forward_pool(model.backbone.forward_features(batch.images).float())
        batch.images = None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args(argv)
    catalog = catalog_with(CAMFusionReal, plugin_name="cam-fusion-ablation")
    run_ablation(catalog, ["cam-fusion-real"], [int(s) for s in args.seeds.split(",")], args.data_root)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
