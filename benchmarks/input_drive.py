"""The loops' input drive ``u = x W^T + b`` (``momentumrnn.projection``) against ``F.linear``.

Forward+backward of the projection alone, with gradients for ``x``, ``W`` and ``b``, side by
side in one run (median of ``--repeats``), at the (T*B, I, G) of the layers' benchmark shapes::

    PYTHONPATH=src python benchmarks/input_drive.py [--threads 1] [--quick] > benchmarks/results/input-drive.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from momentumrnn.projection import input_drive

sys.path.insert(0, str(Path(__file__).resolve().parent))
from layers import side_by_side  # noqa: E402

SHAPES = [("long sequence, small batch (LSTM)", (5000, 8, 8, 256)), ("I = 4 (GRU)", (1000, 32, 4, 384)),
          ("I = 12 (LSTM)", (500, 40, 12, 512)), ("I = 16 (LSTM)", (500, 40, 16, 512)),
          ("pixel MNIST (LSTM)", (784, 128, 1, 512)), ("PTB small (LSTM)", (35, 20, 200, 800))]
QUICK = [("tiny", (20, 4, 3, 16))]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); forward+backward, median of {args.repeats}")
    print()
    print("| shape | (T, B, I, G) | F.linear | input_drive | ratio |")
    print("|---|---|---:|---:|---:|")
    for name, (time_steps, batch, features, gates) in QUICK if args.quick else SHAPES:
        x = torch.randn(time_steps, batch, features, requires_grad=True)
        weight = torch.randn(gates, features, requires_grad=True)
        bias = torch.randn(gates, requires_grad=True)
        seed = torch.randn(time_steps, batch, gates)

        def run(projection):
            return lambda: torch.autograd.grad(projection(x, weight, bias), (x, weight, bias), seed)

        theirs, ours = side_by_side([run(F.linear), run(input_drive)], args.repeats, device)
        print(f"| {name} | {(time_steps, batch, features, gates)} | {theirs * 1e3:.1f} ms | {ours * 1e3:.1f} ms "
              f"| {ours / theirs:.2f} |", flush=True)


if __name__ == "__main__":
    main()
