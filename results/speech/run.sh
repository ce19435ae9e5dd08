#!/usr/bin/env bash
# Speech evidence: LSTM vs MomentumLSTM (mu .3, s .1) vs the mu = 0 control (s .1), the paper's
# TIMIT settings (--preset paper: H 158, Adam 1e-4, batch 32, paper init, forget bias -4) with clip 1
# on the Free Spoken Digit Dataset, 20 epochs (1,500 optimizer steps) per run, seeds 0 and 1.
set -euo pipefail
DATA="${DATA:-${MOMENTUMRNN_DATA:?set DATA or MOMENTUMRNN_DATA to the data root (mnist/, ptb/, fsdd/)}}"
cd "$(dirname "$0")/../.."
common=(--task speech --preset paper --clip 1 --data-dir "$DATA" --epochs 20 --threads 1 --quiet)
for seed in 0 1; do
  python -m momentumrnn train "${common[@]}" --model lstm --seed $seed --out results/speech/lstm-seed$seed
  python -m momentumrnn train "${common[@]}" --model momentum-lstm --seed $seed --out results/speech/momentum-lstm-seed$seed
  python -m momentumrnn train "${common[@]}" --model momentum-lstm --momentum 0 --step-size 0.1 --seed $seed \
    --out results/speech/momentum-lstm-mu0-seed$seed
done
