#!/usr/bin/env bash
# The runs behind the choice of the committed board's cpu budget (issue 15): CIFAR ResNet-8 with the paper's
# schedule shape (warm-up, x0.01 at 80 % and again at 90 % of the epochs, wd 2e-4) at several epoch counts,
# for the rows the budget must separate: ce, balanced-softmax, crt, tau-norm (which share ce's stage 1)
# and ldam-drw, 3 seeds each. Records go to leaderboards/budget-study (result.json and predictions.npz are
# committed); `ltbench show leaderboards/budget-study` tabulates them. METHODS narrows the rows: the trend
# points beside the chosen 30 epochs need only ce and ldam-drw.
#
#   ci/budget_study.sh [EPOCHS ...]                    # default: 20 30 45
#   METHODS=ce,ldam-drw ci/budget_study.sh 12 20 45
set -euo pipefail
cd "$(dirname "$0")/.."
for epochs in "${@:-20 30 45}"; do
  for e in $epochs; do
    ltbench run --methods "${METHODS:-ce,balanced-softmax,crt,tau-norm,ldam-drw}" --datasets cifar100-lt \
      --data-root "${DATA:-../shared/data}" --budget cpu --epochs "$e" --seeds 0,1,2 \
      --set backbone=resnet8 --set lr_decay=0.01 --set lr_milestones=0.8,0.9 --set weight_decay=2e-4 \
      ${THREADS:+--threads "$THREADS"} --output leaderboards/budget-study
  done
done
