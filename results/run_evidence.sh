#!/usr/bin/env bash
# The pixel-MNIST and adding evidence runs in results/, run one after the other from the repository root:
#   DATA=/path/to/data nohup bash results/run_evidence.sh > results/evidence.log 2>&1 &
# Models are compared at the same number of optimizer steps (same data, batch and seed),
# not the same wall-clock time: on this branch the momentum layers run a per-step Python
# loop and are slower than torch's fused nn.LSTM.
set -euo pipefail
DATA="${DATA:-${MOMENTUMRNN_DATA:?set DATA or MOMENTUMRNN_DATA to the data root (mnist/, ptb/, fsdd/)}}"
cd "$(dirname "$0")/.."
export PYTHONPATH=src          # this checkout's momentumrnn (python -m momentumrnn == the console script)
MODELS="lstm momentum-lstm adam-lstm"

# Pixel MNIST, --preset paper at H = 128 (RMSprop lr 1e-3 alpha .9, batch 128, clip 1, paper init,
# forget bias 1; mu .6 s .6; Adam mu .6 s .6 beta .1). Budget: 200 optimizer steps
# (25,600 images, 0.47 epoch of the 55,000 training images). Validation every 50 steps on
# the first 1,000 of the 5,000 held-out training images; test on all 10,000 test images
# with the best-validation weights.
for model in $MODELS; do
  python -m momentumrnn train --task smnist --model "$model" --preset paper --hidden-size 128 \
    --data-dir "$DATA" --seed 0 --max-steps 200 --eval-every 50 --val-subset 1000 \
    --threads 1 --quiet --out "results/smnist/$model-seed0"
done
python -m momentumrnn report results/smnist/*-seed0 --out results/smnist

# Adding problem, length 200, --preset paper (the paper has no adding settings: its pixel-MNIST
# ones). Budget: 300 optimizer steps of batch 128 (38,400 sequences, ~1.9 epochs of 20,000).
# Validation every 50 steps on 2,000 sequences; test on 2,000.
for model in $MODELS; do
  python -m momentumrnn train --task adding --length 200 --model "$model" --preset paper --hidden-size 128 \
    --seed 0 --max-steps 300 --eval-every 50 --threads 1 --quiet --out "results/adding/$model-seed0"
done
python -m momentumrnn report results/adding/*-seed0 --out results/adding
