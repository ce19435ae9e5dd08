"""Shared helpers of the experiment-toolkit tests: the data root and a quiet CLI call."""

import json
import os
from pathlib import Path

import torch

from momentumrnn.experiments.cli import main

#: ``../shared/data`` relative to the repository root (as on the project's machines and CI).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HAVE_MNIST = (SHARED_DATA / "mnist" / "train-images-idx3-ubyte.gz").exists()

#: A tiny adding-task run: 40 training examples in batches of 8 (5 steps per epoch).
TINY_ADDING = ["--task", "adding", "--length", "12", "--train-size", "40", "--val-size", "16", "--test-size", "16",
               "--batch-size", "8", "--hidden-size", "8", "--log-every", "2", "--checkpoint-every", "3"]


def cli(*args) -> int:
    """Run the command line in this process, single-threaded and quiet."""
    threads = torch.get_num_threads()
    try:
        return main([str(a) for a in args] + (["--quiet", "--threads", "1"] if args[0] == "train" else []))
    finally:
        torch.set_num_threads(threads)


def rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def deterministic(row: dict) -> dict:
    """A metrics row without its timing fields."""
    return {k: v for k, v in row.items() if k not in ("time", "examples_per_s")}


def summary(run_dir) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def data_env():
    return {**os.environ, "MOMENTUMRNN_DATA": str(SHARED_DATA)}
