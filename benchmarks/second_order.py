"""What the second-order node costs a plain forward+backward (``momentumrnn.second_order``).

A layer call on a fast path passes its outputs through one more autograd node, so that
second derivatives and batched gradients can be recomputed on the reference path. This
times forward+backward of each layer with the node and without it (the call made directly,
as before the node existed), side by side in one run, and the cost of a double backward
(a gradient penalty) against the same on ``impl="reference"``::

    PYTHONPATH=src python benchmarks/second_order.py --out benchmarks/results
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import momentumrnn as mrnn
import momentumrnn.layers as layers_module

sys.path.insert(0, str(Path(__file__).resolve().parent))
from layers import machine, side_by_side  # noqa: E402
from timing import case_parser, markdown_table, print_and_write, run_cases  # noqa: E402

CASES = [("MomentumLSTM", "10,4,8,16"), ("MomentumLSTM", "100,8,16,64"), ("AdamLSTM", "100,8,16,64"),
         ("NesterovLSTM", "100,8,16,64"), ("NesterovLSTM", "35,20,200,200")]


def _without_node(module, forward, *args):
    return forward(*args)


def measure(name, shape, device, repeats):
    time_steps, batch, features, hidden = shape
    layer = getattr(mrnn, name)(features, hidden, device=device)
    reference = getattr(mrnn, name)(features, hidden, device=device, impl="reference")
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(time_steps, batch, features, device=device, requires_grad=True)
    with_node = layers_module.differentiable_twice

    def plain(node):
        def run():
            layers_module.differentiable_twice = node
            try:
                layer(x)[0].sum().backward()
            finally:
                layers_module.differentiable_twice = with_node
        return run

    def penalty(module):
        def run():
            (grad,) = torch.autograd.grad(module(x)[0].pow(2).sum(), x, create_graph=True)
            grad.pow(2).sum().backward()
        return run

    node_s, direct_s = side_by_side([plain(with_node), plain(_without_node)], repeats, device)
    fast_s, reference_s = side_by_side([penalty(layer), penalty(reference)], max(3, repeats // 3), device)
    return {"layer": name, "shape": shape, "path": layer.path, "with_node_ms": node_s * 1e3,
            "without_node_ms": direct_s * 1e3, "ratio": node_s / direct_s,
            "penalty_ms": fast_s * 1e3, "penalty_reference_ms": reference_s * 1e3}


def main(argv=None):
    args = case_parser(__doc__, "second-order", repeats=30).parse_args(argv)
    rows, device = run_cases(args, measure, CASES, ("NesterovLSTM", "6,2,3,4"))
    lines = markdown_table(
        f"The second-order node: forward+backward with it and without it, and a gradient penalty (double "
        f"backward) against impl='reference', {device.type}, torch {torch.__version__}",
        ["layer", "(T, B, I, H)", "path", "with node", "without", "with / without", "penalty", "penalty, reference"],
        [[r["layer"], str(r["shape"]), r["path"], f"{r['with_node_ms']:.2f} ms", f"{r['without_node_ms']:.2f} ms",
          f"{r['ratio']:.2f}", f"{r['penalty_ms']:.1f} ms", f"{r['penalty_reference_ms']:.1f} ms"] for r in rows])
    print_and_write(lines, {"machine": machine([device.type], args.threads), "rows": rows}, args.out, args.name)


if __name__ == "__main__":
    main()
