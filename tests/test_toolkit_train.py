"""`momentumrnn train`: the run directory contract, model selection, checkpoints and resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from momentumrnn.experiments.cli import main
from toolkit_helpers import HAVE_MNIST, SHARED_DATA, TINY_ADDING, cli, deterministic, rows, summary

REPO = Path(__file__).resolve().parents[1]


def latest(run_dir) -> Path:
    root = Path(run_dir) / "checkpoints"
    return root / (root / "latest").read_text().strip()


def test_run_directory_contract(tmp_path):
    run = tmp_path / "run"
    assert cli("train", *TINY_ADDING, "--model", "momentum-lstm", "--out", run, "--max-steps", 12) == 0
    record = json.loads((run / "config.json").read_text())
    assert record["config"]["model"] == "momentum-lstm" and record["config"]["momentum"] == 0.6
    assert record["versions"]["torch"] == torch.__version__ and record["device"]["type"] == "cpu"
    metrics = rows(run)
    assert all({"split", "epoch", "step"} <= set(r) for r in metrics)
    assert {r["split"] for r in metrics} == {"train", "val", "test"}
    assert [r["step"] for r in metrics if r["split"] == "val"] == [5, 10, 12]          # epoch ends, then the end
    s = summary(run)
    assert s["status"] == "finished" and s["stop_reason"] == "max_steps" and s["steps"] == 12
    assert s["parameters"] == sum(t.numel() for t in load_file(latest(run) / "model.safetensors").values())
    val = {r["step"]: r["loss"] for r in metrics if r["split"] == "val"}
    assert s["best_val"] == min(val.values()) and val[s["best_val_step"]] == s["best_val"]
    test = [r for r in metrics if r["split"] == "test"]
    assert len(test) == 1 and test[0]["step"] == s["best_val_step"] and test[0]["loss"] == s["test_at_best_val"]
    assert s["epochs"] == 2.4 and s["wall_time_s"] > 0 and s["seed"] == 0


def test_test_is_evaluated_with_the_best_validation_weights(tmp_path):
    from momentumrnn.experiments.config import resolve_config
    from momentumrnn.experiments.models import build_model
    from momentumrnn.experiments.tasks import TASKS
    from momentumrnn.experiments.train import evaluate

    run = tmp_path / "run"
    # a learning rate large enough that validation is not monotone
    cli("train", *TINY_ADDING, "--model", "lstm", "--out", run, "--epochs", 6, "--lr", 0.05)
    s = summary(run)
    config = json.loads((run / "config.json").read_text())["config"]
    model = build_model(config, 2, 1, False)
    model.load_state_dict(load_file(latest(run) / "best.safetensors"))
    test = evaluate(model, TASKS["adding"](config), "test", 256)
    assert test["loss"] == pytest.approx(s["test_at_best_val"], rel=1e-6)


@pytest.mark.parametrize("model", ["momentum-lstm", "lstm", "momentum-dtriv"])
def test_resume_gives_the_uninterrupted_metrics(tmp_path, model):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    common = [*TINY_ADDING, "--model", model, "--seed", 3] + (["--trivialization", 3] if "dtriv" in model else [])
    assert cli("train", *common, "--out", whole, "--max-steps", 13) == 0
    assert cli("train", *common, "--out", parts, "--max-steps", 7) == 0              # stops mid-epoch 2
    assert summary(parts)["steps"] == 7
    assert cli("train", "--out", parts, "--resume", "--max-steps", 13) == 0
    after = lambda run: [deterministic(r) for r in rows(run) if r["step"] > 7]  # noqa: E731
    assert after(parts) == after(whole) and len(after(whole)) >= 5
    a, b = load_file(latest(whole) / "model.safetensors"), load_file(latest(parts) / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((parts / "config.json").read_text())["resumed"][0]["at_step"] == 7


def start_cli(*args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, "-m", "momentumrnn", *[str(a) for a in args], "--threads", "1"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_rows(process, run, n, timeout=90):
    deadline = time.time() + timeout
    while not ((run / "metrics.jsonl").exists() and len(rows(run)) >= n):
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, "the run wrote no metrics in time"
        time.sleep(0.05)


def test_resume_after_a_kill_gives_the_uninterrupted_run(tmp_path):
    """SIGKILL at an arbitrary moment: rows written after the last checkpoint are dropped
    and recomputed; the resumed file equals the uninterrupted one."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    common = [*TINY_ADDING, "--model", "momentum-lstm", "--max-steps", 150, "--log-every", 1, "--checkpoint-every", 7]
    process = start_cli("train", *common, "--out", killed)
    wait_for_rows(process, killed, 20)
    process.kill()
    process.communicate()
    assert not (killed / "summary.json").exists()
    (killed / "checkpoints" / ".tmp-leftover").mkdir()              # a save killed half-way
    assert cli("train", *common, "--out", whole) == 0
    assert cli("train", "--out", killed, "--resume") == 0
    assert [deterministic(r) for r in rows(killed)] == [deterministic(r) for r in rows(whole)]
    assert not (killed / "checkpoints" / ".tmp-leftover").exists()


def test_refuses_to_overwrite_or_to_resume_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    cli("train", *TINY_ADDING, "--model", "rnn", "--out", run, "--max-steps", 2)
    assert cli("train", *TINY_ADDING, "--model", "rnn", "--out", run, "--max-steps", 2) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert cli("train", "--out", tmp_path / "empty", "--resume") == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_the_path_reaches_the_run_and_triton_loop_needs_cuda(tmp_path, capsys, monkeypatch):
    """``--impl`` is recorded and used; ``triton-loop`` on a CPU run is refused at the door
    (exit 2, one line), unless Triton's interpreter runs it (as in these tests)."""
    from momentumrnn import triton_loop

    run = tmp_path / "run"
    assert cli("train", *TINY_ADDING, "--model", "nesterov-lstm", "--impl", "reference", "--out", run,
               "--max-steps", 2) == 0
    assert json.loads((run / "config.json").read_text())["config"]["impl"] == "reference"
    monkeypatch.setattr(triton_loop, "_interpreting", lambda: False)
    assert cli("train", *TINY_ADDING, "--model", "momentum-dtriv", "--impl", "triton-loop", "--device", "cpu",
               "--out", tmp_path / "refused", "--max-steps", 2) == 2
    assert "--impl triton-loop runs on CUDA, but the run's device is cpu" in capsys.readouterr().err


def test_resume_refuses_a_different_configuration(tmp_path, capsys):
    run = tmp_path / "run"
    cli("train", *TINY_ADDING, "--model", "momentum-lstm", "--out", run, "--max-steps", 2)
    assert cli("train", "--out", run, "--resume", "--hidden-size", 16) == 2
    err = capsys.readouterr().err
    assert "--hidden-size 16" in err and "the run has 8" in err
    assert cli("train", "--out", run, "--resume", "--model", "lstm") == 2
    assert "--model 'lstm'" in capsys.readouterr().err
    assert cli("train", "--out", run, "--resume", "--max-steps", 3, "--model", "momentum-lstm") == 0


def test_mismatched_checkpoint_is_an_error_not_a_fresh_start(tmp_path, capsys):
    small, big = tmp_path / "small", tmp_path / "big"
    cli("train", *TINY_ADDING, "--model", "momentum-lstm", "--out", small, "--max-steps", 2)
    cli("train", *TINY_ADDING, "--model", "momentum-lstm", "--out", big, "--max-steps", 2, "--hidden-size", 16)
    import shutil
    shutil.rmtree(big / "checkpoints")
    shutil.copytree(small / "checkpoints", big / "checkpoints")
    assert cli("train", "--out", big, "--resume", "--max-steps", 4) == 2
    err = capsys.readouterr().err
    assert "different configuration" in err and "hidden_size: 8 (checkpoint) vs 16 (run)" in err
    assert summary(big)["steps"] == 2                                   # nothing was overwritten


@pytest.mark.parametrize("victim", ["state.pt", "model.safetensors", "best.safetensors"])
@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_checkpoint_names_the_file(tmp_path, capsys, victim, damage):
    run = tmp_path / "run"
    cli("train", *TINY_ADDING, "--model", "lstm", "--out", run, "--max-steps", 5)
    path = latest(run) / victim
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else os.urandom(len(data)))
    assert cli("train", "--out", run, "--resume", "--max-steps", 6) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "corrupt or unreadable" in err


def test_checkpoint_state_is_never_unpickled(tmp_path, capsys):
    run = tmp_path / "run"
    cli("train", *TINY_ADDING, "--model", "lstm", "--out", run, "--max-steps", 2)
    path = latest(run) / "state.pt"
    state = torch.load(path, weights_only=True)
    state["progress"]["evil"] = Path("/")                      # needs unpickling of an arbitrary class
    torch.save(state, path)
    assert cli("train", "--out", run, "--resume", "--max-steps", 3) == 2
    assert "corrupt or unreadable" in capsys.readouterr().err


def test_files_of_two_saves_are_not_mixed(tmp_path, capsys):
    run, other = tmp_path / "run", tmp_path / "other"
    cli("train", *TINY_ADDING, "--model", "lstm", "--out", run, "--max-steps", 3)
    cli("train", *TINY_ADDING, "--model", "lstm", "--out", other, "--max-steps", 3)
    (latest(run) / "model.safetensors").write_bytes((latest(other) / "model.safetensors").read_bytes())
    assert cli("train", "--out", run, "--resume", "--max-steps", 4) == 2
    assert "written by a different save" in capsys.readouterr().err


def test_time_budget_stops_and_still_tests(tmp_path):
    run = tmp_path / "run"
    assert cli("train", *TINY_ADDING, "--model", "gru", "--out", run, "--epochs", 10_000, "--time-budget", "1s") == 0
    s = summary(run)
    assert s["stop_reason"] == "time_budget" and s["test_at_best_val"] is not None
    assert 1.0 <= s["wall_time_s"] < 30
    assert cli("train", "--out", run, "--resume", "--time-budget", "2s") == 0   # continues for the rest
    assert summary(run)["steps"] > s["steps"]


def test_ctrl_c_saves_a_checkpoint_and_resume_continues(tmp_path):
    run = tmp_path / "run"
    process = start_cli("train", *TINY_ADDING, "--model", "momentum-gru", "--out", run, "--epochs", 100000,
                        "--log-every", 1)
    wait_for_rows(process, run, 3)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "checkpoint saved" in err and "--resume" in err
    s = summary(run)
    assert s["status"] == "interrupted" and s["steps"] >= 3 and s["test_at_best_val"] is None
    assert cli("train", "--out", run, "--resume", "--max-steps", s["steps"] + 2) == 0
    assert summary(run)["steps"] == s["steps"] + 2 and summary(run)["status"] == "finished"


@pytest.mark.skipif(not HAVE_MNIST, reason="needs ../shared/data/mnist")
def test_psmnist_saves_its_permutation_and_resumes_with_it(tmp_path):
    run = tmp_path / "run"
    args = ["--task", "psmnist", "--model", "momentum-lstm", "--data-dir", SHARED_DATA, "--hidden-size", 4,
            "--train-subset", 32, "--val-subset", 16, "--test-subset", 16, "--batch-size", 16, "--preset", "paper"]
    assert cli("train", *args, "--out", run, "--max-steps", 1) == 0
    permutation = json.loads((run / "permutation.json").read_text())
    assert sorted(permutation) == list(range(784)) and permutation != list(range(784))
    config = json.loads((run / "config.json").read_text())["config"]
    assert (config["momentum"], config["step_size"], config["optimizer"], config["alpha"]) == (0.6, 1.0, "rmsprop", 0.9)
    assert cli("train", "--out", run, "--resume", "--max-steps", 2) == 0
    assert summary(run)["steps"] == 2 and summary(run)["train_size"] == 32


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_a_clear_error(tmp_path, capsys):
    assert cli("train", *TINY_ADDING, "--model", "lstm", "--out", tmp_path / "r", "--device", "cuda") == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_a_smoke_run_is_told_how_to_make_evaluation_quick(tmp_path, capsys):
    args = ["train", "--task", "adding", "--model", "lstm", "--length", "12", "--hidden-size", "4", "--threads", "1",
            "--max-steps", "2", "--batch-size", "8"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "note: this run trains on 16 examples and evaluates 4,000 (validation and test)" in err
    assert "--val-subset 500 --test-subset 500" in err
    assert main(args + ["--val-subset", "8", "--test-subset", "8", "--out", str(tmp_path / "b")]) == 0
    assert "for a quick run" not in capsys.readouterr().err
