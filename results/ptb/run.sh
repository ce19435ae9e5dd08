#!/usr/bin/env bash
# Penn Treebank evidence: LSTM vs MomentumLSTM (mu 0, s .6: the authors' PTB setting) with
# --preset small (2 x 200, bptt 35, batch 20, SGD lr 20, clip 0.25, dropout 0.2), one epoch
# (1,328 optimizer steps) each, validation every 450 steps and at the end of the epoch.
set -euo pipefail
DATA="${DATA:-${MOMENTUMRNN_DATA:?set DATA or MOMENTUMRNN_DATA to the data root (mnist/, ptb/, fsdd/)}}"
cd "$(dirname "$0")/../.."
common=(--task ptb --preset small --data-dir "$DATA" --epochs 1 --eval-every 450 --threads 1 --quiet)
python -m momentumrnn train "${common[@]}" --model lstm --out results/ptb/lstm
python -m momentumrnn train "${common[@]}" --model momentum-lstm --out results/ptb/momentum-lstm
