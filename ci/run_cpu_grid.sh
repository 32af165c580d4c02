#!/usr/bin/env bash
# The cpu-budget grid behind the committed CIFAR-100-LT leaderboard.
# Needs CIFAR-100: DATA=<dir holding cifar100.npz> (default ../shared/data).
# Finished runs are skipped, interrupted ones resume, so it can be re-run freely.
#
#   ci/run_cpu_grid.sh METHODS [SEEDS]
set -euo pipefail
cd "$(dirname "$0")/.."
methods="${1:?usage: ci/run_cpu_grid.sh METHODS [SEEDS]}"
ltbench run --methods "$methods" --datasets cifar100-lt --budget cpu --seeds "${2:-0,1,2}" \
  --data-root "${DATA:-../shared/data}" --output runs
