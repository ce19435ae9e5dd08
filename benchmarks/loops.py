"""Which per-step loop is tightest? The LSTM recurrence over a precomputed drive.

What the Adam/RMSProp/Nesterov layers must run step by step: ``gates_t = d_t + U h_{t-1} +
b``, then the LSTM cell. Times forward and forward+backward (median of ``--repeats`` after
one warm-up) of:

* ``autograd``: a Python loop of eager ops, recorded by autograd op by op;
* ``function``: ``momentumrnn.loops.lstm_loop``, the loop with a hand-written backward
  (preallocated buffers, factors of the backward precomputed for all steps, dU as one GEMM);
* ``compile``: the step function under ``torch.compile`` (inductor; fused C++ pointwise
  kernels on the CPU), looped in Python, autograd through the compiled step; its one-time
  compile cost is reported apart;
* ``compile16``: the same with 16 steps unrolled in each compiled call (the sequence split
  into chunks of 16 steps), so that Python runs once per 16 steps; compile cost apart;
* ``torchscript``: the whole loop under ``torch.jit.script`` (deprecated in torch 2.13),
  autograd through the scripted graph;
* ``lstm_cell``: torch's own LSTM cell op (``torch.lstm_cell``, its step in C++) called
  once a step, the drive entering as its input bias; autograd through it. Its forward alone
  shows what one call of ATen ops a step costs without Python between them;
* ``torch``: ``torch.nn.LSTM`` for scale (it also does the input GEMM, the others do not).

    PYTHONPATH=src python benchmarks/loops.py [--quick] [--threads N] [--methods a,b,...]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch
import torch._dynamo

from momentumrnn.loops import lstm_loop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import median_time  # noqa: E402  (benchmarks/timing.py)

SHAPES = [("TIMIT-like", (200, 32, 158)), ("PTB small", (35, 20, 200)), ("pixel MNIST", (784, 128, 128)),
          ("long sequence", (5000, 8, 64))]
QUICK = [("tiny", (20, 4, 8))]
METHODS = ("torch", "autograd", "function", "lstm_cell", "torchscript", "compile", "compile16")
#: Steps unrolled in each compiled call of ``compile16``.
CHUNK = 16


def step(d, h, c, weight_t, bias):
    gates = d + torch.addmm(bias, h, weight_t)
    i, f, g, o = gates.chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def unrolled_steps(d, h, c, weight_t, bias, step_fn=step):
    """The steps of ``d`` one after another: outputs stacked, final h and c."""
    outs = []
    for d_t in d.unbind(0):              # not d[t]: T selects make the backward quadratic in T
        h, c = step_fn(d_t, h, c, weight_t, bias)
        outs.append(h)
    return torch.stack(outs), h, c


def autograd_loop(d, h, c, weight, bias, step_fn=step):
    return unrolled_steps(d, h, c, weight.t(), bias, step_fn)[0]


def scripted_loop(d, h, c, weight, bias):
    weight_t = weight.t()
    outs = []
    for d_t in d.unbind(0):
        gates = d_t + torch.addmm(bias, h, weight_t)
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs)


def chunked_loop(d, h, c, weight, bias, chunk_fn):
    """``chunk_fn`` over the sequence split into chunks of ``CHUNK`` steps (``split``: one
    backward node, not a full-size zero gradient per slice)."""
    weight_t = weight.t()
    outs = []
    for piece in d.split(CHUNK):
        out, h, c = chunk_fn(piece, h, c, weight_t, bias)
        outs.append(out)
    return torch.cat(outs)


def cell_loop(d, h, c, weight, bias):
    """``torch.lstm_cell`` a step: an input of width 0, so that its input term is the bias
    ``d_t``, and ``U h_{t-1} + b`` as its hidden term."""
    nothing, no_weight = d.new_empty(d.size(1), 0), d.new_empty(d.size(2), 0)
    outs = []
    for d_t in d.unbind(0):
        h, c = torch.lstm_cell(nothing, (h, c), no_weight, weight, d_t, bias)
        outs.append(h)
    return torch.stack(outs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--shapes", default=None, help="comma-separated shape names (default: all)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = args.methods.split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms, forward / forward+backward "
          "(ratio to torch.nn.LSTM f+b)")
    print("| shape (T, B, H) | " + " | ".join(methods) + " |")
    print("|---|" + "---|" * len(methods))
    compile_seconds = {}
    shapes = QUICK if args.quick else SHAPES
    if args.shapes:
        shapes = [s for s in shapes if s[0] in args.shapes.split(",")]
    for name, (T, B, H) in shapes:
        torch.manual_seed(0)
        lstm = torch.nn.LSTM(H, H)
        drive = torch.randn(T, B, 4 * H) * 0.5
        x = torch.randn(T, B, H)
        weight = lstm.weight_hh_l0.detach().clone().requires_grad_()
        bias = lstm.bias_hh_l0.detach().clone().requires_grad_()
        h0 = torch.zeros(B, H, requires_grad=True)     # the same requires_grad at every step (compile's guards)
        d = drive.clone().requires_grad_()
        runs = {
            "torch": lambda: lstm(x)[0],
            "autograd": lambda: autograd_loop(d, h0, h0, weight, bias),
            "function": lambda: lstm_loop(d, h0, h0, weight, bias)[0],
            "lstm_cell": lambda: cell_loop(d, h0, h0, weight, bias),
        }
        if "torchscript" in methods:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")          # deprecated in torch 2.13
                try:
                    scripted = torch.jit.script(scripted_loop)
                    runs["torchscript"] = lambda: scripted(d, h0, h0, weight, bias)
                except Exception as error:               # noqa: BLE001 - reported, not raised
                    print(f"torchscript unavailable: {type(error).__name__}: {error}")
        if "compile" in methods:
            compiled = torch.compile(step, dynamic=False)
            start = time.perf_counter()
            autograd_loop(d, h0, h0, weight, bias, compiled).sum().backward()
            compile_seconds[name] = time.perf_counter() - start
            runs["compile"] = lambda: autograd_loop(d, h0, h0, weight, bias, compiled)
        if "compile16" in methods:
            torch._dynamo.reset()                        # each shape compiles afresh (no recompile limit)
            chunk = torch.compile(unrolled_steps, dynamic=False)
            start = time.perf_counter()
            chunked_loop(d, h0, h0, weight, bias, chunk).sum().backward()
            compile_seconds[f"{name}, {CHUNK} steps a call"] = time.perf_counter() - start
            runs["compile16"] = lambda: chunked_loop(d, h0, h0, weight, bias, chunk)
        cells, base = [], None
        for method in methods:
            if method not in runs:
                cells.append("n/a")
                continue
            run = runs[method]

            def forward():
                with torch.no_grad():
                    run()

            def both():
                run().sum().backward()

            forward(), both()
            f, fb = median_time(forward, args.repeats, warmup=False), median_time(both, args.repeats, warmup=False)
            base = fb if method == "torch" else base
            ratio = f" ({fb / base:.2f})" if base else ""
            cells.append(f"{f * 1e3:.1f} / {fb * 1e3:.1f}{ratio}")
        print(f"| {name} ({T}, {B}, {H}) | " + " | ".join(cells) + " |", flush=True)
    for name, seconds in compile_seconds.items():
        print(f"torch.compile: first call (compilation) at {name}: {seconds:.1f} s")


if __name__ == "__main__":
    main()
