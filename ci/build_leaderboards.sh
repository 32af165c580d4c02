#!/usr/bin/env bash
# Regenerate leaderboards/ from a runs directory (default runs/):
# copies every completed result.json into leaderboards/records/ and rewrites
# the markdown from those records. Commit both.
#
#   ci/build_leaderboards.sh [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
ltbench leaderboard build "${1:-runs}" --out leaderboards
ltbench leaderboard check --out leaderboards
