#!/usr/bin/env bash
# The paper-budget rows of the CIFAR-100-LT boards: one experiment file per imbalance factor
# (leaderboards/cifar100-lt-if{200,100,50}-paper.toml). Needs CIFAR-100: DATA=<dir holding cifar100.npz>
# (default ../shared/data).
# First puts back the checkpoints carried in leaderboards/in-progress/ (ci/paper_progress.py), so that a run
# begun on another machine resumes where its last carried checkpoint left it; landed records are skipped.
#
#   ci/run_paper_grid.sh [EXPERIMENT.toml] [extra ltbench run flags, e.g. --methods ce,crt]
#   python ci/paper_progress.py save     # now and then, and before the machine goes: then commit the folder
#
# Without an experiment file it runs the IF100 one.
set -euo pipefail
cd "$(dirname "$0")/.."
experiment=leaderboards/cifar100-lt-if100-paper.toml
if [[ $# -gt 0 && "$1" == *.toml ]]; then experiment="$1"; shift; fi
python ci/paper_progress.py restore
ltbench run --config "$experiment" --data-root "${DATA:-../shared/data}" "$@"
