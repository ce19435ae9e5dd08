"""Training throughput of ``momentumrnn train`` per model: examples per second of optimizer steps.

Runs ``python -m momentumrnn train`` once per model (a subprocess each, one after another)
on pixel MNIST with the paper preset for ``--steps`` optimizer steps, and reads the
``examples_per_s`` of the training rows in its ``metrics.jsonl`` (one row every
``--log-every`` steps), leaving out the first window (warm-up: cuDNN plans, Triton
compilation). Writes ``train-throughput.{md,json}`` to ``--out``::

    PYTHONPATH=src python benchmarks/train_throughput.py --device cuda --data-dir DATA \\
        --models lstm,momentum-lstm,adam-lstm,rmsprop-lstm,nesterov-lstm,momentum-dtriv

``MODEL@PATH`` trains the model with ``--impl PATH`` (e.g. ``nesterov-lstm@triton-loop``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(model, args, work):
    out = Path(work) / model
    name, _, impl = model.partition("@")
    command = [sys.executable, "-m", "momentumrnn", "train", "--task", args.task, "--model", name,
               "--preset", "paper", "--device", args.device, "--max-steps", str(args.steps),
               "--log-every", str(args.log_every), "--eval-every", str(10 * args.steps),
               "--val-subset", "256", "--test-subset", "256", "--quiet", "--out", str(out)]
    if impl:
        command += ["--impl", impl]
    if args.data_dir:
        command += ["--data-dir", args.data_dir, "--no-download"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        return {"model": model, "error": (done.stderr or done.stdout)[-2000:], "seconds": seconds}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["examples_per_s"] for r in rows if r.get("split") == "train" and "examples_per_s" in r]
    steady = rates[1:] or rates
    return {"model": model, "examples_per_s": statistics.median(steady), "windows": rates,
            "command": " ".join(command[1:]), "seconds": seconds}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="lstm,momentum-lstm,adam-lstm,rmsprop-lstm,nesterov-lstm,momentum-dtriv")
    parser.add_argument("--task", default="smnist")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--name", default="train-throughput", help="file name stem of the results")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        results = []
        for model in args.models.split(","):
            result = run(model, args, work)
            print(json.dumps({k: v for k, v in result.items() if k != "command"}), flush=True)
            results.append(result)
    baseline = next((r.get("examples_per_s") for r in results if r["model"] == "lstm"), None)
    lines = ["# Training throughput of `momentumrnn train`", "",
             f"Task {args.task}, `--preset paper`, device {args.device}, {args.steps} optimizer steps per model, "
             f"median of the `examples_per_s` windows of {args.log_every} steps after the first.", "",
             "| model | examples/s | / lstm |", "|---|---:|---:|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['model']} | failed | |")
            continue
        ratio = f"{r['examples_per_s'] / baseline:.2f}" if baseline else ""
        lines.append(f"| {r['model']} | {r['examples_per_s']:,.0f} | {ratio} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps({"settings": vars(args), "results": results}, indent=1) + "\n")
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
