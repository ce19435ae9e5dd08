"""torch.compile on a model with a momentumrnn layer, against the same model in eager mode.

The model is ``Linear -> layer -> Linear``; dynamo compiles it into one graph in which the
layer's call is one opaque op (``momentumrnn.compiled``) that runs the layer's eager forward;
dynamo runs ``torch.nn.LSTM`` eagerly instead, behind a graph break. ``--lstm-compiled``
adds ``torch.nn.LSTM`` compiled by dynamo (its ``allow_rnn`` option: the recurrence traced
into the graph, as a momentumrnn layer's is not) for comparison. For each layer: the cold
compile time over three sequence lengths (seconds from the first call until the third
length has run forward+backward, with Inductor's caches off), the number of compiled
frames, and forward+backward time compiled over eager, measured side by side (median of
``--repeats``), with ``torch.nn.LSTM`` as control::

    PYTHONPATH=src python benchmarks/compile.py                     # CPU, inductor
    PYTHONPATH=src python benchmarks/compile.py --device cuda --shape 784,128,1,128
    PYTHONPATH=src python benchmarks/compile.py --layers torch.nn.LSTM,AdamLSTM --lstm-compiled  # minutes
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend

import momentumrnn as mrnn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from layers import machine, side_by_side  # noqa: E402
from timing import markdown_table, print_and_write  # noqa: E402

#: torch.nn.LSTM is the control: dynamo leaves its whole frame to eager, so its ratio is 1 up to
#: noise; the others' ratios are the cost of entering the compiled graphs and the op around
#: the layer's own eager work.
#: ``LSTM_COMPILED`` is ``torch.nn.LSTM`` with dynamo's ``allow_rnn``: dynamo traces its recurrence.
LSTM_COMPILED = "torch.nn.LSTM (allow_rnn)"
LAYERS = ["torch.nn.LSTM", "MomentumLSTM", "AdamLSTM", "NesterovLSTM", "RestartGRU", "MomentumOrthogonalRNN"]


def measure(name, shape, device, repeats, backend="inductor"):
    import torch._inductor.config

    # Cold: Inductor's caches off, so that no earlier run's compiled code is reused.
    with torch._dynamo.config.patch(allow_rnn=name == LSTM_COMPILED), \
            torch._inductor.config.patch(force_disable_caches=True):
        return _measure(name, shape, device, repeats, backend)


def _measure(name, shape, device, repeats, backend):
    time_steps, batch, features, hidden = shape
    torch._dynamo.reset()
    layer_class = torch.nn.LSTM if name.startswith("torch.nn.LSTM") else getattr(mrnn, name)
    layer = layer_class(features, hidden, device=device)
    before = torch.nn.Linear(features, features, device=device)
    after = torch.nn.Linear(hidden, 1, device=device)

    def model(x):
        return after(layer(before(x))[0]).sum()

    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(model, backend=counter)
    start = time.perf_counter()
    for length in (time_steps - 2, time_steps - 1, time_steps):
        compiled(torch.randn(length, batch, features, device=device)).backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    cold = time.perf_counter() - start
    x = torch.randn(time_steps, batch, features, device=device)
    runs = [lambda: compiled(x).backward(), lambda: model(x).backward()]
    compiled_s, eager_s = side_by_side(runs, repeats, device)
    return {"layer": name, "cold_compile_s": cold, "frames": counter.frame_count,
            "compiled_ms": compiled_s * 1e3, "eager_ms": eager_s * 1e3, "ratio": compiled_s / eager_s}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="100,8,16,64", metavar="T,B,I,H")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="write NAME.json and NAME.md here (e.g. benchmarks/results)")
    parser.add_argument("--name", default="compile")
    parser.add_argument("--layers", default=",".join(LAYERS), help="comma-separated (default: all of LAYERS)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (eager: a quick smoke run)")
    parser.add_argument("--lstm-compiled", action="store_true",
                        help=f"add the row {LSTM_COMPILED!r} (its cold compile takes minutes on a CPU)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = tuple(int(v) for v in args.shape.split(","))
    device = torch.device(args.device)
    names = args.layers.split(",") + ([LSTM_COMPILED] if args.lstm_compiled else [])
    rows = [measure(name, shape, device, args.repeats, args.backend) for name in names]
    lines = markdown_table(
        f"torch.compile ({args.backend}) over eager, forward+backward, shape (T, B, I, H) = {shape}, "
        f"{device.type}, torch {torch.__version__}",
        ["layer", "cold compile (3 lengths)", "frames", "compiled", "eager", "compiled / eager"],
        [[r["layer"], f"{r['cold_compile_s']:.1f} s", str(r["frames"]), f"{r['compiled_ms']:.2f} ms",
          f"{r['eager_ms']:.2f} ms", f"{r['ratio']:.2f}"] for r in rows])
    print_and_write(lines, {"machine": machine([device.type], args.threads), "shape": shape, "rows": rows},
                    args.out, args.name)


if __name__ == "__main__":
    main()
