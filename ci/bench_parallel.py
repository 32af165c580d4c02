"""The speed-up of ``ltbench run --jobs 2`` over ``--jobs 1`` on one 4-run grid, measured side by side.

    python ci/bench_parallel.py [--methods ce,cb-sampling,focal,ldam-drw] [--datasets fashion-mnist-lt]
                                [--budget cpu] [--epochs 3] [--rounds 2] [--jobs 2]

Each round runs the whole grid once with ``--jobs 1`` (one process, all cores) and once with ``--jobs N``
(N workers, cores // N threads each), into fresh output directories, alternating which goes first so that the
load of a shared machine hits both alike. Prints the wall time of each and the speed-up (median over rounds).
The methods default to four that share no stage 1, so that every run is real work.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed_grid(args: argparse.Namespace, jobs: int, out: Path) -> float:
    cmd = [sys.executable, "-m", "ltbench.cli", "run", "--methods", args.methods, "--datasets", args.datasets,
           "--budget", args.budget, "--seeds", args.seeds, "--output", str(out), "--jobs", str(jobs), "--quiet"]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    if args.data_root:
        cmd += ["--data-root", args.data_root]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="ce,cb-sampling,focal,ldam-drw")
    parser.add_argument("--datasets", default="fashion-mnist-lt")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--budget", default="cpu")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data-root")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    runs = len(args.methods.split(",")) * len(args.datasets.split(",")) * len(args.seeds.split(","))
    print(f"grid: {runs} runs ({args.methods} on {args.datasets}, seeds {args.seeds}, budget {args.budget}, "
          f"{args.epochs} epochs); --jobs 1 against --jobs {args.jobs}, {args.rounds} rounds, alternating")
    times: dict[int, list[float]] = {1: [], args.jobs: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for jobs in (1, args.jobs) if r % 2 == 0 else (args.jobs, 1):
                seconds = timed_grid(args, jobs, Path(tmp) / f"round{r}-jobs{jobs}")
                times[jobs].append(seconds)
                print(f"round {r + 1}: --jobs {jobs}: {seconds:6.1f} s", flush=True)
    ratios = [a / b for a, b in zip(times[1], times[args.jobs])]
    print(f"--jobs 1 {statistics.median(times[1]):.1f} s, --jobs {args.jobs} {statistics.median(times[args.jobs]):.1f} s:"
          f" speed-up {statistics.median(ratios):.2f}x (median of {len(ratios)} rounds; "
          f"range {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
