"""Data-parallel training under torchrun (two CPU processes, gloo) against one process.

The global batch is the same, so every metrics row and the final weights equal the
single-process run's to float rounding; the run directory is written once; a pair killed
with SIGKILL and resumed gives the uninterrupted pair's run."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import importlib
from momentumrnn.experiments.cli import main
from momentumrnn.experiments.distributed import Ranks
from toolkit_helpers import SHARED_DATA, deterministic, rows

ROOT = Path(__file__).resolve().parents[1]
HAVE_PTB = (SHARED_DATA / "ptb" / "ptb.train.txt").exists()
TINY = ["--task", "adding", "--length", "12", "--train-size", "48", "--val-size", "16", "--test-size", "16",
        "--batch-size", "8", "--hidden-size", "8", "--log-every", "2", "--checkpoint-every", "3", "--eval-every", "3",
        "--threads", "1", "--quiet"]


def environment() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1"}


def torchrun(*args, **kwargs) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "momentumrnn", "train", *map(str, args)]
    return subprocess.Popen(command, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **kwargs)


def finish(process: subprocess.Popen) -> None:
    out, _ = process.communicate(timeout=600)
    assert process.returncode == 0, out[-3000:]


def weights(run: Path) -> dict:
    root = run / "checkpoints"
    return load_file(root / (root / "latest").read_text().strip() / "model.safetensors")


def assert_same_run(got: Path, want: Path, rtol: float) -> None:
    a, b = [deterministic(r) for r in rows(got)], [deterministic(r) for r in rows(want)]
    assert [(r["split"], r["step"]) for r in a] == [(r["split"], r["step"]) for r in b]   # each row written once
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key, value in x.items():
            if isinstance(value, float):
                assert value == pytest.approx(y[key], rel=rtol, abs=rtol), (x, y)
            else:
                assert value == y[key]
    got_w, want_w = weights(got), weights(want)
    assert got_w.keys() == want_w.keys()
    for name in got_w:
        torch.testing.assert_close(got_w[name], want_w[name], rtol=rtol, atol=rtol)


@pytest.mark.parametrize("model, extra", [("momentum-lstm", []), ("momentum-dtriv", ["--trivialization", "2"])])
def test_two_ranks_equal_one_process_with_the_same_global_batch(tmp_path, model, extra):
    args = [*TINY, "--model", model, "--max-steps", 8, *extra]
    pair = torchrun(*args, "--out", tmp_path / "pair")
    assert main(["train", *map(str, args), "--out", str(tmp_path / "one")]) == 0
    finish(pair)
    assert_same_run(tmp_path / "pair", tmp_path / "one", rtol=1e-5)
    record = json.loads((tmp_path / "pair" / "config.json").read_text())
    assert record["distributed"] == {"world_size": 2, "backend": "gloo"} and "distributed" not in json.loads(
        (tmp_path / "one" / "config.json").read_text())
    assert sorted(p.name for p in (tmp_path / "pair" / "checkpoints").iterdir()) != []
    # another number of processes cannot continue the pair's run
    assert main(["train", "--out", str(tmp_path / "pair"), "--resume", "--max-steps", "9"]) == 2


def test_a_killed_pair_resumes_to_the_uninterrupted_run(tmp_path):
    args = [*TINY, "--model", "adam-lstm", "--train-size", "2000", "--max-steps", "150", "--checkpoint-every", "2"]
    whole = torchrun(*args, "--out", tmp_path / "whole")
    finish(whole)
    killed = torchrun(*args, "--out", tmp_path / "killed")
    deadline = time.time() + 300
    latest = tmp_path / "killed" / "checkpoints" / "latest"
    while not (latest.exists() and latest.read_text() >= "step-00000010"):           # mid-way
        assert killed.poll() is None and time.time() < deadline
        time.sleep(0.05)
    subprocess.run(["pkill", "-9", "-f", f"out {tmp_path / 'killed'}"])     # torchrun and both ranks at once
    killed.communicate()
    assert not (tmp_path / "killed" / "summary.json").exists()
    finish(torchrun("--out", tmp_path / "killed", "--resume", "--threads", 1, "--quiet"))
    assert_same_run(tmp_path / "killed", tmp_path / "whole", rtol=1e-9)


@pytest.mark.skipif(not HAVE_PTB, reason="needs ../shared/data/ptb")
def test_ptb_columns_are_divided_among_ranks(tmp_path):
    args = ["--task", "ptb", "--model", "momentum-lstm", "--data-dir", SHARED_DATA, "--hidden-size", 8, "--emb-size", 8,
            "--num-layers", 2, "--bptt", 5, "--batch-size", 4, "--train-subset", 400, "--val-subset", 200,
            "--test-subset", 200, "--eval-batch-size", 4, "--max-steps", 6, "--eval-every", 3, "--log-every", 2,
            "--threads", 1, "--quiet"]
    pair = torchrun(*args, "--out", tmp_path / "pair")
    assert main(["train", *map(str, args), "--out", str(tmp_path / "one")]) == 0
    finish(pair)
    assert_same_run(tmp_path / "pair", tmp_path / "one", rtol=1e-5)


def test_the_global_batch_must_divide_among_the_ranks(tmp_path, monkeypatch, capsys):
    train_module = importlib.import_module("momentumrnn.experiments.train")
    monkeypatch.setattr(train_module, "from_environment", lambda device: Ranks(rank=0, world=3))
    assert main(["train", *TINY, "--model", "lstm", "--out", str(tmp_path / "run")]) == 2
    assert "batch_size 8 must be a multiple of the 3 ranks" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
