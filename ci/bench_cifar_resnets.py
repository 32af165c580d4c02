"""What CAM fusion's paper setting costs: the CIFAR ResNet-18/34's training steps beside ResNet-32's, in one process.

    python ci/bench_cifar_resnets.py [--data-root ../shared/data] [--threads 1] [--steps 3] [--rounds 6]

Each backbone's run is the stage 1 (Phase I: ``ce``, which cam-fusion shares) of
leaderboards/experiments/cam-fusion-paper.toml on CIFAR-100-LT IF100, its ``[set]`` as it is but for the backbone,
built as ``ltbench run`` builds it; ltbench's own step loop (ci/bench_steps.py) trains each for ``--steps`` steps
of batch 128 a round, the backbones taking turns in an order that rotates every round, so that the load of a
shared machine hits all alike. A frozen-backbone forward (eval mode, no gradients) over one batch is timed beside
it, which is what each of Phase II's iterations runs before the classifier's step.

Printed per backbone: training images/s (median over rounds), its cost against resnet32 (median of the per-round
time ratios), seconds per Phase-I epoch (the 10,847 training images at IF100) and the 300 epochs in hours, and
Phase II's 6,400 iterations of 128 images at the forward rate (a lower bound: the CAMs, the fusion and the
classifier's steps come on top).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from bench_steps import ltbench_stepper
from ltbench.grid import experiment
from ltbench.grid.plan import resolve_device
from ltbench.plugins.catalog import get_catalog

EXPERIMENT = Path(__file__).resolve().parents[1] / "leaderboards" / "experiments" / "cam-fusion-paper.toml"


def _timed(device: torch.device, fn) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--backbone", default="resnet32,cifar-resnet18,cifar-resnet34",
                        help="comma-separated; the first is the one the others are set against")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    parser.add_argument("--steps", type=int, default=3, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    exp = experiment.load(EXPERIMENT)
    settings = {**exp["set"], "epochs": exp["epochs"], "imbalance_factor": exp["imbalance_factor"]}
    fusion = get_catalog().method("cam-fusion").cls.options
    phase2_images = fusion["iterations"] * 2 * fusion["n_t"] * (1 + fusion["n_f"])

    backbones = args.backbone.split(",")
    runs = {}
    for name in backbones:
        cell, run, train = ltbench_stepper("ce", exp["datasets"][0], exp["budget"], {**settings, "backbone": name},
                                           args.data_root, device, args.steps)
        x = run.train_images.get(torch.arange(cell.config["batch_size"]), augment=True)

        @torch.no_grad()
        def forward(run=run, x=x) -> None:
            run.model.backbone.eval()
            run.model.backbone.forward_features(x)
            run.model.backbone.train()

        train(), forward()  # warm-up: allocator, lazy initialisation
        runs[name] = (cell, run, train, forward)
    cell, run = runs[backbones[0]][:2]
    batch, epoch_images, epochs = cell.config["batch_size"], len(run.train_labels), cell.config["epochs"]
    print(f"{device}, {torch.get_num_threads()} thread(s); {cell.dataset_key} ({epoch_images:,} training images), "
          f"{EXPERIMENT.name}: batch {batch}, {epochs} epochs; {args.steps} steps x {args.rounds} rounds, "
          f"backbones taking turns")

    train_s = {name: [] for name in backbones}
    forward_s = {name: [] for name in backbones}
    for r in range(args.rounds):
        order = backbones[r % len(backbones):] + backbones[:r % len(backbones)]
        for name in order:
            _, _, train, forward = runs[name]
            train_s[name].append(_timed(device, train))
            forward_s[name].append(_timed(device, forward))

    base = np.array(train_s[backbones[0]])
    print(f"{'backbone':15s} {'params':>7s} {'train img/s':>11s} {'time x ' + backbones[0]:>24s} {'s/epoch':>8s} "
          f"{'Phase I':>9s} {'fwd img/s':>9s} {'Phase II >=':>11s}")
    for name in backbones:
        times = np.array(train_s[name])
        ratio = times / base  # per round: this backbone's step time over the first's
        ips = args.steps * batch / np.median(times)
        fwd = batch / np.median(forward_s[name])
        params = sum(p.numel() for p in runs[name][1].model.parameters()) / 1e6
        spread = f"{np.median(ratio):.2f} ({ratio.min():.2f}-{ratio.max():.2f})"
        print(f"{name:15s} {params:6.2f}M {ips:11.1f} {spread:>24s} {epoch_images / ips:8.0f} "
              f"{epochs * epoch_images / ips / 3600:7.1f} h {fwd:9.1f} {phase2_images / fwd / 3600:9.2f} h")
    print(f"time x {backbones[0]}: median (range) over rounds of the per-round step-time ratio; s/epoch: "
          f"{epoch_images:,} images at the median rate; Phase I: {epochs} epochs; Phase II: "
          f"{fusion['iterations']:,} iterations x {phase2_images // fusion['iterations']} images, frozen-backbone "
          f"forward only")


if __name__ == "__main__":
    main()
