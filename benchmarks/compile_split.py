"""Where a compiled model's time goes: the layer's own work, the op around it, and torch.compile's runtime.

The model is ``benchmarks/compile.py``'s ``Linear -> layer -> Linear``, run eagerly and
compiled (inductor), alternating, with clocks inside: around the layer's eager forward (in
eager mode, and inside the ``momentumrnn::layer`` op), around the kept graph's backward
(inside ``momentumrnn::layer_backward``), and around the compiled forward and backward
graphs (Inductor's ``CompiledFxGraph`` calls). Medians over ``--repeats`` iterations, in
microseconds, CPU::

    PYTHONPATH=src python benchmarks/compile_split.py
    PYTHONPATH=src python benchmarks/compile_split.py --shape 3,8,16,64 --layers MomentumLSTM

Columns: forward and backward of the whole model, eager and compiled; ``layer`` the layer's
forward (eager: inside the model's eager forward; compiled: inside the op); ``kept bwd`` the
kept graph's backward inside the backward op; ``graphs`` the two compiled graphs' calls
(which contain the op and the two Linear layers); ``release`` the release of the kept graph
(the layer's saved tensors and autograd nodes, freed after the compiled backward);
``outside`` the rest of the compiled model's time outside its graphs: dynamo's guards and
AOTAutograd's runtime (its autograd Function, saving and restoring the graphs' tensors),
forward plus backward.

The control row (``CONTROL``) has no momentumrnn layer: ``Linear -> Conv1d over time -> tanh
-> Linear``, of the same sizes, whose convolution is one opaque kernel in the compiled graph
as the layer's op is. Its ``outside`` is what torch.compile's runtime costs any model of this
kind; the layer columns are empty for it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch._dynamo

import momentumrnn as mrnn
from momentumrnn import compiled as compiled_op

sys.path.insert(0, str(Path(__file__).resolve().parent))
from layers import machine  # noqa: E402
from timing import markdown_table, print_and_write  # noqa: E402

CONTROL = "Conv1d (control)"
LAYERS = ["MomentumLSTM", "AdamLSTM", "NesterovLSTM", CONTROL]
LAYER_CLOCKS = ("eager layer", "compiled layer", "kept bwd", "release")
#: The report's columns; all but ``outside`` are clocked, ``outside`` is what they leave.
COLUMNS = ("eager fwd", "eager bwd", "compiled fwd", "compiled bwd", "eager layer", "compiled layer", "kept bwd",
           "graphs", "release", "outside")


class _TimedRelease(dict):
    """``momentumrnn.compiled``'s kept graphs, whose release (when the compiled backward's saved
    tensors go, outside the graphs) is clocked: the layer's saved tensors and autograd nodes freed."""

    clocks: Clocks

    def pop(self, key, default=None):
        start = time.perf_counter()
        super().pop(key, default)                  # freed here, not by the caller
        self.clocks.spent["release"].append(time.perf_counter() - start)


class Clocks:
    """Seconds spent in the wrapped calls since the last ``clear``, by name."""

    def __init__(self):
        self.spent: dict[str, list[float]] = {}

    def wrap(self, name, function):
        self.spent[name] = []

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.spent[name].append(time.perf_counter() - start)
        return timed

    def clear(self):
        for spent in self.spent.values():
            spent.clear()


def split(name, shape, repeats):
    """Medians (µs) of one layer's eager and compiled model and of the clocked parts."""
    from torch._inductor.output_code import CompiledFxGraph

    time_steps, batch, features, hidden = shape
    torch._dynamo.reset()
    before, after = torch.nn.Linear(features, features), torch.nn.Linear(hidden, 1)
    clocks = Clocks()
    clocks.spent["layer"] = []
    if name == CONTROL:
        convolution = torch.nn.Conv1d(features, hidden, kernel_size=9, padding=4)

        def model(x):
            return after(torch.tanh(convolution(before(x).permute(1, 2, 0))).permute(2, 0, 1)).sum()
    else:
        layer = getattr(mrnn, name)(features, hidden)
        layer._forward = clocks.wrap("layer", layer._forward)      # the eager call and the op both run it

        def model(x):
            return after(layer(before(x))[0]).sum()

    compiled = torch.compile(model)
    x = torch.randn(time_steps, batch, features)
    graph_call, autograd_grad, kept = CompiledFxGraph.__call__, torch.autograd.grad, compiled_op._GRAPHS
    clocks.spent["release"] = []
    _TimedRelease.clocks = clocks
    compiled_op._GRAPHS = _TimedRelease()
    CompiledFxGraph.__call__ = clocks.wrap("graphs", graph_call)
    torch.autograd.grad = clocks.wrap("kept bwd", autograd_grad)   # layer_backward's one call
    try:
        for run in (model, compiled):
            run(x).backward()
        found = {key: [] for key in COLUMNS[:-1]}
        for _ in range(repeats):
            for mode, run in (("eager", model), ("compiled", compiled)):
                clocks.clear()
                start = time.perf_counter()
                loss = run(x)
                middle = time.perf_counter()
                loss.backward()
                end = time.perf_counter()
                found[f"{mode} fwd"].append(middle - start)
                found[f"{mode} bwd"].append(end - middle)
                found[f"{mode} layer"].append(sum(clocks.spent["layer"]))
                if mode == "compiled":
                    found["kept bwd"].append(sum(clocks.spent["kept bwd"]))
                    found["graphs"].append(sum(clocks.spent["graphs"]))
                    found["release"].append(sum(clocks.spent["release"]))
    finally:
        CompiledFxGraph.__call__, torch.autograd.grad, compiled_op._GRAPHS = graph_call, autograd_grad, kept
    row = {key: statistics.median(values) * 1e6 for key, values in found.items()}
    row["outside"] = row["compiled fwd"] + row["compiled bwd"] - row["graphs"] - row["release"]
    if name == CONTROL:
        row.update(dict.fromkeys(LAYER_CLOCKS))
    return {"layer": name, **row}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="100,8,16,64", metavar="T,B,I,H")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--layers", default=",".join(LAYERS), help="comma-separated (default: all of LAYERS)")
    parser.add_argument("--out", default=None, help="write NAME.json and NAME.md here (e.g. benchmarks/results)")
    parser.add_argument("--name", default="compile-split")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = tuple(int(v) for v in args.shape.split(","))
    rows = [split(name, shape, args.repeats) for name in args.layers.split(",")]
    lines = markdown_table(
        f"Where a compiled model's time goes (µs, median of {args.repeats}), shape (T, B, I, H) = {shape}, "
        f"cpu, torch {torch.__version__}",
        ["layer", *COLUMNS], [[r["layer"], *("–" if r[c] is None else f"{r[c]:.0f}" for c in COLUMNS)] for r in rows])
    print_and_write(lines, {"machine": machine(["cpu"], args.threads), "shape": shape, "rows": rows},
                    args.out, args.name)


if __name__ == "__main__":
    main()
