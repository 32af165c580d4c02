"""Which execution options make a budget's training steps fastest, measured side by side in one process.

    python ci/bench_execution.py [--dataset cifar100-lt --data-root ../shared/data] [--budget paper]
                                 [--option channels_last=true] [--steps 5] [--rounds 8]

Two runs of the same cell are built, the budget as it is and the budget with ``--option`` (an execution option:
it changes how a run is computed, not what); ltbench's own step loop (:func:`ltbench.training.loop.run_steps`) trains
each for ``--steps`` steps, alternating in rounds so that the load of a shared machine hits both alike. The
printed ratio (images/s with the option over without) is the median over rounds. The paper budget's
experiment file uses what this shows to be faster (docs/paper-budget.md).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench_steps import ltbench_stepper
from ltbench.grid.plan import resolve_device


def stepper(args: argparse.Namespace, settings: dict[str, str], device: torch.device):
    cell, run, train = ltbench_stepper(args.method, args.dataset, args.budget, settings, args.data_root, device,
                                       args.steps)
    images = args.steps * cell.config["batch_size"]

    def steps() -> float:
        t0 = time.perf_counter()
        train()
        return images / (time.perf_counter() - t0)

    return cell, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="cifar100-lt")
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--budget", default="paper")
    parser.add_argument("--method", default="ce")
    parser.add_argument("--option", default="channels_last=true", metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=5, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    device = resolve_device("auto")
    key, value = args.option.split("=", 1)
    cell, plain = stepper(args, {}, device)
    _, option = stepper(args, {key: value}, device)
    plain(), option()  # warm-up: allocator, lazy initialisation
    speeds: dict[str, list[float]] = {"plain": [], "option": []}
    for r in range(args.rounds):
        pair = [("plain", plain), ("option", option)]
        for name, fn in pair if r % 2 == 0 else pair[::-1]:
            speeds[name].append(fn())
    ratio = np.array(speeds["option"]) / np.array(speeds["plain"])
    print(f"{cell.dataset_key} {args.budget} ({cell.config['backbone']}, batch {cell.config['batch_size']}), "
          f"{device}, {torch.get_num_threads()} threads, {args.steps} steps x {args.rounds} rounds, interleaved")
    print(f"without {args.option}: {np.median(speeds['plain']):6.0f} img/s   with: {np.median(speeds['option']):6.0f} "
          f"img/s   ratio {np.median(ratio):.3f} (median; range {ratio.min():.2f}-{ratio.max():.2f})")


if __name__ == "__main__":
    main()
