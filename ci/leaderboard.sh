#!/usr/bin/env bash
# Everything the leaderboard workflow does, in one command: train what the committed boards are missing
# (runs with committed records are skipped), rebuild markdown + web site + plots, and check them.
#
#   DATA=<dir with CIFAR-100, or where to download it> ci/leaderboard.sh [--download] [--jobs N]
set -euo pipefail
cd "$(dirname "$0")/.."
for board in leaderboards/*.toml; do
  # the paper-budget rows take hours each on a CPU: they train with ci/run_paper_grid.sh, over sessions
  case "$board" in *-paper.toml|*-paper-*.toml) continue ;; esac
  ltbench run --config "$board" --data-root "${DATA:-../shared/data}" "$@"
done
ltbench leaderboard build --out leaderboards
ltbench leaderboard check --out leaderboards
ltbench show leaderboards/records --format markdown
