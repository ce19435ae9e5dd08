"""Where the time of one layer's forward+backward goes: torch.profiler tables, side by side
with torch's layer of the same recurrence and size.

    PYTHONPATH=src python benchmarks/profile_layer.py AdamLSTM 784,128,1,128 [--rows 15] [--out FILE]

Prints (and with ``--out`` writes) the operators sorted by self CPU time for one profiled
forward+backward of the layer (default path, ``impl="auto"``) and of ``torch.nn.LSTM``/
``GRU``/``RNN``, after one warm-up each, on 1 thread. The profiler adds overhead per op, so
its totals exceed the benchmark's times; compare the shares.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import momentumrnn as mrnn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from layers import _quiet_stderr  # noqa: E402  (benchmarks/layers.py)

TORCH = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}


def profile_one(module, x, rows):
    def run():
        module.zero_grad(set_to_none=True)
        module(x)[0].sum().backward()

    run()
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        run()
    return prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=32, max_shapes_column_width=60)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("layer", help="a momentumrnn layer name, e.g. AdamLSTM")
    parser.add_argument("shape", help="T,batch,input,hidden")
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    layers = {cls.__name__: (key, cls) for key, cls in mrnn.LAYERS.items()}
    if args.layer not in layers:
        parser.error(f"unknown layer {args.layer!r}; one of {', '.join(sorted(layers))}")
    (kind, _), cls = layers[args.layer]
    T, B, I, H = (int(v) for v in args.shape.split(","))
    torch.manual_seed(0)
    x = torch.randn(T, B, I)
    layer, theirs = cls(I, H), TORCH[kind](I, H)
    text = (f"# {args.layer} (path {layer.path}) at T={T}, batch={B}, input={I}, hidden={H}; torch "
            f"{torch.__version__}, 1 thread; one forward+backward of output.sum()\n\n"
            f"## {args.layer}\n\n{profile_one(layer, x, args.rows)}\n\n"
            f"## torch.nn.{TORCH[kind].__name__}\n\n{profile_one(theirs, x, args.rows)}\n")
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    sys.exit(main())
