"""What ``torch.func.grad`` and ``torch.func.vmap`` cost (``momentumrnn.transforms``).

Under one ``torch.func.grad`` or one ``vmap`` a layer runs its own path through one more
autograd node. This times, side by side in one run:

* the gradients of ``sum(output^2)`` with respect to the parameters by ``torch.func.grad``
  and by ``backward()`` on the layer's default path, by ``torch.func.grad`` on
  ``impl="reference"`` (the plain ops that stacked transforms see), and by
  ``torch.func.grad`` on torch's layer of the same recurrence and size;
* forward+backward (``backward()`` of ``sum(output^2)``) of ``vmap`` over four groups of the
  batch, on the default path and on ``impl="reference"``, against one call on the whole batch::

    PYTHONPATH=src python benchmarks/torch_func.py --out benchmarks/results
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.func import functional_call, grad, vmap

import momentumrnn as mrnn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from layers import TORCH, machine, side_by_side  # noqa: E402
from timing import case_parser, markdown_table, print_and_write, run_cases  # noqa: E402

CASES = [("MomentumLSTM", "35,20,200,200"), ("AdamLSTM", "35,20,200,200"), ("NesterovLSTM", "35,20,200,200"),
         ("AdamGRU", "35,20,200,200"), ("AdamLSTM", "196,32,1,64"), ("NesterovLSTM", "196,32,1,64")]


def measure(name, shape, device, repeats):
    time_steps, batch, features, hidden = shape
    layer = getattr(mrnn, name)(features, hidden, device=device)
    reference = getattr(mrnn, name)(features, hidden, device=device, impl="reference")
    reference.load_state_dict(layer.state_dict())
    theirs = TORCH[layer.recurrence.name](features, hidden, device=device)
    x = torch.randn(time_steps, batch, features, device=device)

    def transformed(module):
        params = {name: p.detach() for name, p in module.named_parameters()}
        loss = grad(lambda p: functional_call(module, p, (x,))[0].pow(2).sum())
        return lambda: loss(params)

    def backward():
        layer.zero_grad(set_to_none=True)
        layer(x)[0].pow(2).sum().backward()

    groups = x.unflatten(1, (4, -1)).movedim(1, 0)                 # (4, T, B/4, I)

    def mapped(module):
        def run():
            module.zero_grad(set_to_none=True)
            vmap(lambda part: module(part)[0])(groups).pow(2).sum().backward()
        return run

    func_s, backward_s, reference_s, torch_s, vmap_s, vmap_reference_s = side_by_side(
        [transformed(layer), backward, transformed(reference), transformed(theirs), mapped(layer), mapped(reference)],
        repeats, device)
    return {"layer": name, "shape": shape, "path": layer.path, "func_grad_ms": func_s * 1e3,
            "backward_ms": backward_s * 1e3, "ratio": func_s / backward_s,
            "reference_func_grad_ms": reference_s * 1e3, "torch_func_grad_ms": torch_s * 1e3,
            "vmap_ms": vmap_s * 1e3, "vmap_reference_ms": vmap_reference_s * 1e3, "vmap_ratio": vmap_s / backward_s}


def main(argv=None):
    args = case_parser(__doc__, "torch-func", repeats=15).parse_args(argv)
    rows, device = run_cases(args, measure, CASES, ("NesterovLSTM", "6,4,3,4"))
    lines = markdown_table(
        f"Parameter gradients by torch.func.grad against backward() on the default path, and by torch.func.grad "
        f"on impl='reference' and on torch's layer, {device.type}, torch {torch.__version__}, "
        f"{args.threads} thread(s), median of {args.repeats}",
        ["layer", "(T, B, I, H)", "path", "func.grad", "backward()", "func.grad / backward()",
         "func.grad, reference", "func.grad, torch's layer"],
        [[r["layer"], str(r["shape"]), r["path"], f"{r['func_grad_ms']:.2f} ms", f"{r['backward_ms']:.2f} ms",
          f"{r['ratio']:.2f}", f"{r['reference_func_grad_ms']:.2f} ms", f"{r['torch_func_grad_ms']:.2f} ms"]
         for r in rows]) + [""] + markdown_table(
        "Forward+backward of vmap over four groups of the batch, on the default path and on impl='reference', "
        "against one call on the whole batch (backward() above)",
        ["layer", "(T, B, I, H)", "path", "vmap", "vmap, reference", "one call", "vmap / one call"],
        [[r["layer"], str(r["shape"]), r["path"], f"{r['vmap_ms']:.2f} ms", f"{r['vmap_reference_ms']:.2f} ms",
          f"{r['backward_ms']:.2f} ms", f"{r['vmap_ratio']:.2f}"] for r in rows])
    print_and_write(lines, {"machine": machine([device.type], args.threads), "rows": rows}, args.out, args.name)


if __name__ == "__main__":
    main()
