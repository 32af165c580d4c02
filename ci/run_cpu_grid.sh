#!/usr/bin/env bash
# The cpu-budget grid behind the committed CIFAR-100-LT leaderboard, as its experiment file defines it.
# Needs CIFAR-100: DATA=<dir holding cifar100.npz> (default ../shared/data).
# Runs whose records are committed are skipped, interrupted ones resume, so it can be re-run freely.
#
#   ci/run_cpu_grid.sh [extra ltbench run flags, e.g. --jobs 2 or --methods ce]
set -euo pipefail
cd "$(dirname "$0")/.."
ltbench run --config leaderboards/cifar100-lt-if100.toml --data-root "${DATA:-../shared/data}" "$@"
