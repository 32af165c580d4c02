"""What a paper-budget stage 1 costs per method, measured side by side in one process against `ce`.

    python ci/bench_paper_cost.py [--methods safa,ldam-drw+safa,ldam-drw+sam,breadcrumb] [--data-root ../shared/data]
                                  [--imbalance-factors 200,100,50] [--steps 4] [--rounds 6] [--threads 1]

Each method's run is built as ``ltbench run --budget paper --datasets cifar100-lt`` builds it (ci/bench_steps.py)
and trained for ``--steps`` steps of its batch size through ltbench's own step loop, the methods' hooks included
(SAFA's modules and generated samples, SAM's second forward and backward). Methods and `ce` alternate in rounds,
so that the load of a shared machine hits them alike; the ratio (seconds per step over `ce`'s) is the median over
rounds, and is what to read. A method whose stage 1 changes with the epoch (SAFA's samples join the batch from
80 % of the epochs; DRW re-weights from epoch 160) is measured at an early and a late epoch, and its estimate
weights the two by the epochs each covers. The estimate in hours multiplies the measured seconds per step by
the steps of 200 epochs at each imbalance factor's training-set size, on this machine with this load: state
the load beside it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench_steps import ltbench_stepper
from ltbench.grid.plan import resolve_device

#: {phase: (the epoch its steps run at, the share of the 200 epochs that epoch stands for)}
PHASES = {"early": (0, 0.8), "late": (170, 0.2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="safa,ldam-drw+safa,ldam-drw+sam,breadcrumb")
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--imbalance-factors", default="200,100,50")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device("cpu")
    settings = {"channels_last": "true", "sam.rho": "0.8"}
    methods = ["ce"] + [m for m in args.methods.split(",") if m and m != "ce"]
    steppers = {}
    for method in methods:
        used = {k: v for k, v in settings.items() if not k.startswith("sam.") or "sam" in method.split("+")}
        cell, run, train = ltbench_stepper(method, "cifar100-lt", "paper", used, args.data_root, device, args.steps)
        steppers[method] = (run, train)
        run.stage = 1
    seconds: dict[tuple[str, str], list[float]] = {(m, p): [] for m in methods for p in PHASES}
    for _ in range(args.rounds):
        for phase, (epoch, _) in PHASES.items():
            for method in methods:
                run, train = steppers[method]
                run.epoch = epoch
                t = time.perf_counter()
                train()
                seconds[(method, phase)].append((time.perf_counter() - t) / args.steps)
    per_step = {key: statistics.median(v) for key, v in seconds.items()}
    sizes = {200: 9502, 100: 10847, 50: 12608}  # CIFAR-100-LT training images (Cao et al.'s subset, seed 0)
    factors = [int(f) for f in args.imbalance_factors.split(",")]
    print(f"{args.threads} thread(s), {args.steps} steps x {args.rounds} rounds, batch 128; median seconds per step")
    print("method            early s/step  late s/step  ratio to ce (early, late)  " +
          "  ".join(f"IF{f} h/200 ep" for f in factors))
    for method in methods:
        early, late = per_step[(method, "early")], per_step[(method, "late")]
        ratios = [statistics.median(a / b for a, b in zip(seconds[(method, p)], seconds[("ce", p)])) for p in PHASES]
        mean = sum(per_step[(method, p)] * share for p, (_, share) in PHASES.items())
        hours = [mean * -(-sizes[f] // 128) * 200 / 3600 for f in factors]
        print(f"{method:<17} {early:>12.3f}  {late:>11.3f}  {ratios[0]:>10.2f}, {ratios[1]:<14.2f}  " +
              "  ".join(f"{h:>14.2f}" for h in hours))


if __name__ == "__main__":
    main()
