#!/usr/bin/env bash
# Regenerate leaderboards/ (markdown, web site, plots) from the committed records, after adding any
# completed records from a runs directory (optional). Commit the result.
#
#   ci/build_leaderboards.sh [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
ltbench leaderboard build ${1:+"$1"} --out leaderboards
ltbench leaderboard check --out leaderboards
