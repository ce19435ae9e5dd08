"""Which method computes the rule filters fastest? (``momentumrnn.ops.linear_scan``)

Times forward and forward+backward (median of ``--repeats`` after a warm-up) of
``y_t = mu y_{t-1} + x_t`` for the shapes the layers meet at the benchmark shapes: the
input-side filter of the fused path (F = input_size + 1) and a rule state over all gates
(F = 4 * hidden_size). ``fixed``: mu is a number (x requires grad); ``learnable``: mu is a
0-d tensor with grad. Prints a Markdown table; ``--quick`` runs two small shapes.

    PYTHONPATH=src python benchmarks/scan.py [--quick] [--threads N]
"""

import argparse
import sys
from pathlib import Path

import torch

from momentumrnn.ops.linear_scan import linear_scan

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import median_time  # noqa: E402  (benchmarks/timing.py)

CASES = [  # name, T, B, F
    ("pixel MNIST input", 784, 128, 2),
    ("pixel MNIST gates", 784, 128, 512),
    ("TIMIT input", 200, 32, 130),
    ("TIMIT gates", 200, 32, 632),
    ("PTB small input", 35, 20, 201),
    ("PTB small gates", 35, 20, 800),
    ("PTB large input", 70, 20, 401),
    ("PTB large gates", 70, 20, 4600),
]
QUICK = [("short", 35, 4, 9), ("long", 300, 4, 9)]
METHODS = [("sequential", None), ("loop", None), ("matmul", 16), ("matmul", 64), ("chunked", None), ("chunked", 8)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [f"{m} {b}" if b else m for m, b in METHODS]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms, forward / forward+backward")
    print("| shape (T, B, F) | mu | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for name, T, B, F in (QUICK if args.quick else CASES):
        x = torch.randn(T, B, F, requires_grad=True)
        for mode in ("fixed", "learnable"):
            mu = 0.6 if mode == "fixed" else torch.tensor(0.6, requires_grad=True)
            cells = []
            for method, block in METHODS:
                if method == "sequential" and T * B * F > 5_000_000:
                    cells.append("-")
                    continue

                def forward():
                    with torch.no_grad():
                        linear_scan(mu, x, method=method, block=block)

                def both():
                    linear_scan(mu, x, method=method, block=block).sum().backward()

                f, fb = median_time(forward, args.repeats), median_time(both, args.repeats)
                cells.append(f"{f * 1e3:.1f} / {fb * 1e3:.1f}")
            print(f"| {name} ({T}, {B}, {F}) | {mode} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
