#!/usr/bin/env bash
# Everything that needs a GPU, in one run from the repository root, results under OUT_DIR:
#   the CUDA tests (pytest --device cuda), the layer benchmark against cuDNN (layers-cuda.*),
#   the alternatives the path table was decided on (alt-*.*), torch.compile against eager
#   (compile-cuda.*), and the training throughput of `momentumrnn train` (train-throughput.*). DATA_DIR holds mnist/ for the throughput runs.
#
#   bash benchmarks/cuda_checks.sh OUT_DIR [DATA_DIR]          (ALTERNATIVES=0: skip the alternatives)
set -u
out=${1:?usage: bash benchmarks/cuda_checks.sh OUT_DIR [DATA_DIR]}
data=${2:-}
export PYTHONPATH=src PYTHONUNBUFFERED=1
mkdir -p "$out"
python=${PYTHON:-python3}

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  $python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'triton', triton.__version__)"
} > "$out/machine.txt" 2>&1
cat "$out/machine.txt"

step() { echo "== $1 ($(date +%T))"; }

step "CUDA tests"
$python -m pytest -q -p no:cacheprovider --device cuda tests/test_cuda.py > "$out/tests-cuda.log" 2>&1
echo "pytest exit $?"; tail -n 15 "$out/tests-cuda.log"

step "layers vs cuDNN"
$python benchmarks/layers.py --device cuda --no-reference --name layers-cuda --out "$out" > "$out/layers-cuda.log" 2>&1
echo "exit $?"; grep -A 20 "Summary (cuda): forward+backward" "$out/layers-cuda.md" | head -n 20

if [ "${ALTERNATIVES:-1}" = 1 ]; then
step "alternatives: momentum through identity weights (fused-drive) instead of the filtered input"
$python benchmarks/layers.py --device cuda --no-reference --name alt-fused-drive --out "$out" --impl fused-drive \
  --layers MomentumLSTM,MomentumGRU,MomentumRNN --shape 784,128,1,128 --shape 70,20,400,1150 > "$out/alt.log" 2>&1
echo "exit $?"
step "alternatives: the torch scans instead of the Triton kernels"
$python benchmarks/layers.py --device cuda --no-reference --name alt-torch-scans --out "$out" --scan-backend torch \
  --layers MomentumLSTM,AdamLSTM --shape 784,128,1,128 --shape 35,20,200,200 >> "$out/alt.log" 2>&1
echo "exit $?"; grep -h -A 6 "Summary (cuda): forward+backward" "$out"/alt-*.md
fi

step "torch.compile vs eager"
$python benchmarks/compile.py --device cuda --shape 784,128,1,128 --repeats 5 --name compile-cuda --out "$out" \
  > "$out/compile-cuda.log" 2>&1
echo "exit $?"; cat "$out/compile-cuda.md"

if [ -n "$data" ]; then
  step "training throughput"
  $python benchmarks/train_throughput.py --device cuda --data-dir "$data" --out "$out" > "$out/train-throughput.log" 2>&1
  echo "exit $?"; cat "$out/train-throughput.md"
fi
step "done"
