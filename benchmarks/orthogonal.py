#!/usr/bin/env python
"""Forward + backward time of the orthogonal layers, each against the plain DTRIV layer.

    python benchmarks/orthogonal.py            # quick and pixel-MNIST sizes, writes results
    python benchmarks/orthogonal.py --quick    # quick size only (seconds), writes nothing
                                               # unless --out is given

Sizes (time, batch, input, hidden): quick (100, 32, 1, 64); pixel-MNIST (784, 128, 1, 170),
the authors' permuted-MNIST DTRIV setting. One measurement is ``out, h_n = layer(x)``,
``h_n.sum().backward()``. The layers are timed in interleaved rounds (each round times
every layer once) so that load from other processes spreads over all of them; the table
gives the median and the minimum over rounds and both ratios to the plain layer. Also the
cost of one change of base (``layer.change_base()``, what K = 1 adds per optimizer step).
Results go to ``benchmarks/results/orthogonal.{md,json}``. One torch thread by default
(``--threads``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))          # benchmark this checkout, not an installed copy

import torch  # noqa: E402

import momentumrnn as mrnn  # noqa: E402

SIZES = {"quick": (100, 32, 1, 64), "pixel-mnist": (784, 128, 1, 170)}


def checkout() -> str:
    """The measured code: git commit of this checkout, marked when it has local changes."""
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        return run("rev-parse", "--short", "HEAD").strip() + (" (modified)" if run("status", "--porcelain", "src") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def time_once(layer, x) -> float:
    for p in layer.parameters():
        p.grad = None
    start = time.perf_counter()
    _, h_n = layer(x)
    h_n.sum().backward()
    return time.perf_counter() - start


def bench_size(name: str, rounds: int) -> dict:
    steps, batch, features, hidden = SIZES[name]
    torch.manual_seed(0)
    x = torch.rand(steps, batch, features)
    layers = {rule: cls(features, hidden) for rule, cls in mrnn.ORTHOGONAL_LAYERS.items()}
    for layer in layers.values():                  # warm-up
        time_once(layer, x)
    times = {rule: [] for rule in layers}
    for _ in range(rounds):
        for rule, layer in layers.items():
            times[rule].append(time_once(layer, x))
    plain = times["none"]
    rows = []
    for rule, layer in layers.items():
        t = times[rule]
        rows.append({
            "layer": type(layer).__name__.removeprefix("Parametrized"), "rule": rule,
            "median_s": statistics.median(t), "min_s": min(t),
            "ratio_median": statistics.median(t) / statistics.median(plain), "ratio_min": min(t) / min(plain),
            "times_s": t,
        })
    base = layers["none"]
    base.change_base()
    start = time.perf_counter()
    for _ in range(20):
        base.change_base()
    change_base_ms = (time.perf_counter() - start) / 20 * 1e3
    return {"size": name, "time": steps, "batch": batch, "input": features, "hidden": hidden, "rounds": rounds,
            "rows": rows, "change_base_ms": change_base_ms}


def markdown(results: list[dict], meta: dict) -> str:
    lines = ["# Orthogonal layers: forward + backward time",
             "",
             f"Machine: {meta['machine']}; torch {meta['torch']}, torch threads: {meta['threads']}; "
             f"{meta['date']}; code at commit {meta['commit']}. Written by `python benchmarks/orthogonal.py`.",
             "Each layer timed once per round, rounds interleaved; ratio = layer / OrthogonalRNN (plain DTRIV).",
             ""]
    for r in results:
        lines += [f"## {r['size']}: time {r['time']}, batch {r['batch']}, input {r['input']}, hidden {r['hidden']} "
                  f"({r['rounds']} rounds)",
                  "",
                  "| layer | median s | min s | ratio (median) | ratio (min) |",
                  "|---|---:|---:|---:|---:|"]
        for row in r["rows"]:
            lines.append(f"| {row['layer']} | {row['median_s']:.3f} | {row['min_s']:.3f} | "
                         f"{row['ratio_median']:.2f}x | {row['ratio_min']:.2f}x |")
        lines += ["", f"One change of base (`change_base()`, H = {r['hidden']}): {r['change_base_ms']:.2f} ms.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="quick size only; write results only with --out")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per size (default 10)")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared machine more threads than free cores "
                             "make the timings erratic)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = ["quick"] if args.quick else ["quick", "pixel-mnist"]
    results = []
    for name in sizes:
        rounds = args.rounds or 10
        r = bench_size(name, rounds)
        results.append(r)
        print(f"{name} (T, B, in, H) = {SIZES[name]}, {rounds} rounds")
        for row in r["rows"]:
            print(f"  {row['layer']:24s} median {row['median_s']:.3f} s  min {row['min_s']:.3f} s  "
                  f"ratio {row['ratio_median']:.2f}x (median) {row['ratio_min']:.2f}x (min)")
        print(f"  change_base: {r['change_base_ms']:.2f} ms")
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared)", "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d"), "commit": checkout()}
    out = args.out or (None if args.quick else ROOT / "benchmarks" / "results")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "orthogonal.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
        (out / "orthogonal.md").write_text(markdown(results, meta))
        print(f"wrote {out / 'orthogonal.md'} and {out / 'orthogonal.json'}")


if __name__ == "__main__":
    main()
