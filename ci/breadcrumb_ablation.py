"""Why Breadcrumb trails cRT on the committed board: its classifier's training set, taken apart.

    python ci/breadcrumb_ablation.py [--data-root ../shared/data] [--seeds 0,1,2]

On the board, breadcrumb's backbone is ce's stage 1 bit for bit (its class-balanced head trains on detached
features, and its bank draws from its own generator), so breadcrumb, breadcrumb-weak and crt differ only in
what the class-balanced classifier is trained on:

- crt with ``stage2=cached`` (the board's crt until its BagofTricks-LT stage 2; the ablation rows say
  ``crt [stage2=cached]``): eval-mode features of every training image, un-augmented, class-balanced sampling;
- breadcrumb-weak: the final epoch's EMANATE set, i.e. train-mode features of augmented images (the snapshots
  are the training forward passes' features, as the official code keeps them), every class with n_j >= n_B
  cut to a random n_B of its images, and the other classes filled up to n_B with aligned older snapshots.

Each method below is crt (same stage 2: head re-initialised, class-balanced sampling, the budget's stage-2
epochs and lr, on the same stage-1 model) with one of those differences put in:

- ``crt-capped``: every class with more than n_B images keeps a fixed random n_B of them;
- ``crt-train-mode``: the features are one pass of the stage-1 network in train mode over augmented images
  (batch statistics, as a snapshot), not eval-mode features of the plain images;
- ``crt-capped-train-mode``: both.

Records go to leaderboards/ablations (result.json and predictions.npz are committed); the runs reuse the
board's shared stage 1s when leaderboards/records has them, and train them otherwise (the same model: stage 1
is deterministic). `ltbench compare leaderboards/ablations crt-capped crt` reads them (every crt record
in the ablations trained on cached features).
"""
from __future__ import annotations

import argparse
import copy
import sys

import numpy as np
import torch

from ltbench import MethodMetadata, hookimpl
from ltbench.data.samplers import class_balanced
from ltbench.plugins.testing import catalog_with
from ltbench.training.evaluate import extract_features
from ltbench.training.run import SecondStage
from ltbench_builtin.breadcrumb import default_n_b
from ltbench_builtin.decoupling import CRT

from ablation_runs import run_ablation  # ci/ablation_runs.py, beside this script

META = MethodMetadata(title="crt with one of breadcrumb-weak's differences (ci/breadcrumb_ablation.py)",
                      paper="ltbench ablation", family="ablation",
                      interpretations=("An ablation of ltbench's, not a method of any paper.",))


@torch.no_grad()
def train_mode_features(run) -> torch.Tensor:
    """One image-balanced pass of a copy of the stage-1 network in train mode over augmented training images:
    the features a Breadcrumb snapshot holds (the copy keeps the real model's batch-norm statistics intact)."""
    model = copy.deepcopy(run.model).train()
    n, bs = len(run.train_labels), run.config["batch_size"]
    order = torch.randperm(n, generator=run.generator)
    feats = torch.empty(n, model.num_features, device=run.device)
    for start in range(0, n, bs):
        idx = order[start:start + bs]
        images = run.train_images.get(idx, augment=True, generator=run.aug_generator)
        feats[idx.to(run.device)] = model.features(images).float()
    return feats


def capped_rows(labels: np.ndarray, generator: torch.Generator) -> np.ndarray:
    """A fixed random n_B = ceil(mean class count) rows of every class that has more, all rows of the others."""
    counts = np.bincount(labels)
    n_b = default_n_b(counts)
    keep = []
    for c in range(len(counts)):
        rows = np.flatnonzero(labels == c)
        if len(rows) > n_b:
            rows = rows[torch.randperm(len(rows), generator=generator)[:n_b].numpy()]
        keep.append(rows)
    return np.sort(np.concatenate(keep))


class _CRTAblation(CRT):
    name = ""
    options = {}
    metadata = META
    capped = train_mode = False

    @hookimpl
    def ltbench_second_stage(self, run):
        generator = torch.Generator().manual_seed(40_000 + run.seed)
        feats = train_mode_features(run) if self.train_mode else extract_features(run)
        rows = capped_rows(run.train_labels, generator) if self.capped else np.arange(len(run.train_labels))
        return SecondStage(features=feats[torch.as_tensor(rows, device=feats.device)],
                           labels=run.train_labels[rows], note=self.name)

    @hookimpl
    def ltbench_build_sampler(self, run, stage, labels):  # crt's sampler, with crt's epoch length
        return class_balanced(labels, run.generator, len(run.train_labels)) if stage == 2 else None


class CRTCapped(_CRTAblation):
    name, capped = "crt-capped", True


class CRTTrainMode(_CRTAblation):
    name, train_mode = "crt-train-mode", True


class CRTCappedTrainMode(_CRTAblation):
    name, capped, train_mode = "crt-capped-train-mode", True, True


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args(argv)
    catalog = catalog_with(CRTCapped, CRTTrainMode, CRTCappedTrainMode, plugin_name="breadcrumb-ablation")
    # every variant trains crt's head on cached features (their own sets); crt itself does so with stage2=cached
    run_ablation(catalog, ["crt", "crt-capped", "crt-train-mode", "crt-capped-train-mode"],
                 [int(s) for s in args.seeds.split(",")], args.data_root, settings={"crt.stage2": "cached"})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
