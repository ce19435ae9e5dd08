#!/usr/bin/env bash
# Everything that needs a GPU, in one run from the repository root, results under OUT_DIR:
#   tests:        the CUDA tests (pytest --device cuda)
#   layers:       the layer benchmark against cuDNN (layers-cuda.*)
#   alternatives: the alternatives the path table was decided on (alt-*.*)
#   triton-loop:  the triton-loop path (Nesterov, orthogonal) against cuDNN: windows replayed as
#                 CUDA graphs, launched step by step, and the persistent kernels; beside the loop
#                 path (triton-loop-*.*)
#   compile:      torch.compile against eager (compile-cuda.*)
#   throughput:   the training throughput of `momentumrnn train` (train-throughput*.*); DATA_DIR holds mnist/
#
#   bash benchmarks/cuda_checks.sh OUT_DIR [DATA_DIR]
#   SECTIONS=tests,triton-loop bash benchmarks/cuda_checks.sh OUT_DIR      (default: all of them)
set -u
out=${1:?usage: bash benchmarks/cuda_checks.sh OUT_DIR [DATA_DIR]}
data=${2:-}
sections=${SECTIONS:-tests,layers,alternatives,triton-loop,compile,throughput}
export PYTHONPATH=src PYTHONUNBUFFERED=1
mkdir -p "$out"
python=${PYTHON:-python3}

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  $python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'triton', triton.__version__)"
} > "$out/machine.txt" 2>&1
cat "$out/machine.txt"

step() { echo "== $1 ($(date +%T))"; }
want() { [[ ",$sections," == *",$1,"* ]]; }

if want tests; then
step "CUDA tests"
$python -m pytest -q -p no:cacheprovider --device cuda tests/test_cuda.py > "$out/tests-cuda.log" 2>&1
echo "pytest exit $?"; tail -n 15 "$out/tests-cuda.log"
fi

if want layers; then
step "layers vs cuDNN"
$python benchmarks/layers.py --device cuda --no-reference --name layers-cuda --out "$out" > "$out/layers-cuda.log" 2>&1
echo "exit $?"; grep -A 20 "Summary (cuda): forward+backward" "$out/layers-cuda.md" | head -n 20
fi

if want alternatives; then
step "alternatives: momentum through identity weights (fused-drive) instead of the filtered input"
$python benchmarks/layers.py --device cuda --no-reference --name alt-fused-drive --out "$out" --impl fused-drive \
  --layers MomentumLSTM,MomentumGRU,MomentumRNN --shape 784,128,1,128 --shape 70,20,400,1150 > "$out/alt.log" 2>&1
echo "exit $?"
step "alternatives: the torch scans instead of the Triton kernels"
$python benchmarks/layers.py --device cuda --no-reference --name alt-torch-scans --out "$out" --scan-backend torch \
  --layers MomentumLSTM,AdamLSTM --shape 784,128,1,128 --shape 35,20,200,200 >> "$out/alt.log" 2>&1
echo "exit $?"; grep -h -A 6 "Summary (cuda): forward+backward" "$out"/alt-*.md
fi

if want triton-loop; then
coupled=NesterovLSTM,NesterovRNN,OrthogonalRNN,MomentumOrthogonalRNN
step "triton-loop vs cuDNN (CUDA graphs)"
$python benchmarks/layers.py --device cuda --no-reference --name triton-loop-cuda --out "$out" --impl triton-loop \
  --layers $coupled --shape 784,128,1,128 --shape 784,128,1,256 --shape 200,32,129,158 --shape 35,20,200,200 \
  --shape 70,20,400,1150 --shape 784,128,1,170 --shape 200,32,129,224 > "$out/triton-loop.log" 2>&1
echo "exit $?"; grep -A 8 "Summary (cuda): forward+backward" "$out/triton-loop-cuda.md"
grep -A 8 "Summary (cuda): peak memory" "$out/triton-loop-cuda.md"
step "triton-loop launched step by step (no CUDA graphs), and the loop path, at two shapes"
$python benchmarks/layers.py --device cuda --no-reference --name triton-loop-no-graphs --out "$out" \
  --impl triton-loop --no-cuda-graphs --layers $coupled --shape 784,128,1,128 --shape 35,20,200,200 \
  >> "$out/triton-loop.log" 2>&1
echo "exit $?"
$python benchmarks/layers.py --device cuda --no-reference --name triton-loop-persistent --out "$out" \
  --impl triton-loop --engine persistent --layers $coupled --shape 784,128,1,64 --shape 784,128,1,128 \
  --shape 35,20,200,64 >> "$out/triton-loop.log" 2>&1
echo "exit $?"
$python benchmarks/layers.py --device cuda --no-reference --name triton-loop-before --out "$out" \
  --layers NesterovLSTM,NesterovRNN,MomentumOrthogonalRNN --shape 784,128,1,128 --shape 35,20,200,200 \
  --repeats 3 >> "$out/triton-loop.log" 2>&1
echo "exit $?"; grep -h -A 6 "Summary (cuda): forward+backward" "$out"/triton-loop-no-graphs.md \
  "$out"/triton-loop-persistent.md "$out"/triton-loop-before.md
fi

if want compile; then
step "torch.compile vs eager"
$python benchmarks/compile.py --device cuda --shape 784,128,1,128 --repeats 5 --name compile-cuda --out "$out" \
  > "$out/compile-cuda.log" 2>&1
echo "exit $?"; cat "$out/compile-cuda.md"
fi

if want throughput && [ -n "$data" ]; then
  step "training throughput"
  $python benchmarks/train_throughput.py --device cuda --data-dir "$data" --out "$out" \
    --models lstm,momentum-lstm,adam-lstm,rmsprop-lstm,nesterov-lstm,nesterov-lstm@triton-loop,momentum-dtriv,momentum-dtriv@triton-loop \
    > "$out/train-throughput.log" 2>&1
  echo "exit $?"; cat "$out/train-throughput.md"
fi
step "done"
