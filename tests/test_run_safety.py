"""What the training command guarantees under misuse: one process per run directory, no
foreign files touched, no silent data loss, no "finished" on NaN, and one named line (exit
2) for every input it cannot use."""

import json
import os
import shutil
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from momentumrnn.experiments.cli import main
from momentumrnn.experiments.data import DataError
from momentumrnn.experiments.speech import fsdd_features
from toolkit_helpers import HAVE_MNIST, SHARED_DATA, TINY_ADDING, cli, rows, summary

REPOSITORY = Path(__file__).resolve().parents[1]
HAVE_PTB = (SHARED_DATA / "ptb" / "ptb.train.txt").exists()


def latest(run: Path) -> Path:
    return run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()


def snapshot(folder: Path) -> dict:
    """Every file's bytes but the lock's (it names the last process that held the run)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def command(*args) -> list[str]:
    return [sys.executable, "-m", "momentumrnn", *map(str, args)]


def environment() -> dict:
    source = str(REPOSITORY / "src")
    return {**os.environ, "PYTHONPATH": source + os.pathsep + os.environ.get("PYTHONPATH", "")}


# ----------------------------------------------------------------------------- one process per run
def test_a_second_process_on_the_same_run_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    first = subprocess.Popen(command("train", *TINY_ADDING, "--model", "lstm", "--out", run, "--quiet",
                                     "--threads", 1, "--train-size", 400, "--epochs", 4),
                             env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (run / "config.json").exists():          # the first holds the lock by now
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.05)
        assert cli("train", *TINY_ADDING, "--model", "lstm", "--out", run) == 2
        error = capsys.readouterr().err
        assert f"is in use by another momentumrnn process (pid {first.pid} on " in error, error
        assert cli("train", "--out", run, "--resume") == 2
        assert f"pid {first.pid}" in capsys.readouterr().err
        assert first.poll() is None, "the first run ended before the second was refused: make it longer"
    finally:
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    s = summary(run)                                        # the first run, whole and alone
    assert s["status"] == "finished" and s["epochs"] == 4 and s["steps"] == 4 * 50
    train_steps = [r["step"] for r in rows(run) if r["split"] == "train"]
    assert train_steps == sorted(set(train_steps)) and train_steps[-1] == 200


def test_the_lock_is_released_when_a_run_ends(tmp_path):
    run = tmp_path / "run"
    assert cli("train", *TINY_ADDING, "--model", "lstm", "--out", run, "--max-steps", 2) == 0
    assert cli("train", "--out", run, "--resume", "--max-steps", 4) == 0
    assert summary(run)["steps"] == 4


# ----------------------------------------------------------------------------- foreign directories
def test_an_unrelated_directory_is_left_byte_for_byte(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "summary.json").write_text('{"mine": 1}')
    (folder / "permutation.json").write_text("[1, 2, 3]")
    (folder / "metrics.jsonl").write_text("my own log\n")
    (folder / "notes").mkdir()
    (folder / "notes" / "a.txt").write_text("keep")
    before = snapshot(folder)
    assert cli("train", *TINY_ADDING, "--model", "lstm", "--out", folder, "--max-steps", 2) == 2
    assert "is a non-empty directory that holds no momentumrnn run" in capsys.readouterr().err
    assert snapshot(folder) == before and sorted(os.listdir(folder)) == ["metrics.jsonl", "notes", "permutation.json",
                                                                          "summary.json"]


def test_an_empty_directory_is_used(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    assert cli("train", *TINY_ADDING, "--model", "lstm", "--out", folder, "--max-steps", 2) == 0
    assert summary(folder)["steps"] == 2


@pytest.mark.parametrize("case", ["file", "below a file"])
def test_out_that_cannot_be_a_directory(tmp_path, capsys, case):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" if case == "file" else tmp_path / "file" / "run"
    assert cli("train", *TINY_ADDING, "--model", "lstm", "--out", out, "--max-steps", 2) == 2
    error = capsys.readouterr().err
    assert str(out) in error and ("is a file" in error or "cannot create run directory" in error)
    assert (tmp_path / "file").read_text() == "x"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere")
def test_out_that_cannot_be_written(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert cli("train", *TINY_ADDING, "--model", "lstm", "--out", locked / "run", "--max-steps", 2) == 2
        assert "cannot create run directory" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


def test_a_failed_start_leaves_nothing_behind(tmp_path, capsys):
    args = ["--task", "smnist", "--model", "lstm", "--data-dir", tmp_path / "no-data", "--no-download"]
    assert cli("train", *args, "--out", tmp_path / "new") == 2
    assert "MNIST file" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    assert cli("train", *args, "--out", tmp_path / "empty") == 2
    assert os.listdir(tmp_path / "empty") == []


def test_a_failed_resume_changes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli("train", *TINY_ADDING, "--model", "lstm", "--out", run, "--max-steps", 3) == 0
    state = latest(run) / "state.pt"
    state.write_bytes(state.read_bytes()[:100])
    before = snapshot(run)
    assert cli("train", "--out", run, "--resume", "--max-steps", 6) == 2
    assert "corrupt or unreadable" in capsys.readouterr().err
    assert snapshot(run) == before                          # config.json has no "resumed" entry
    assert json.loads((run / "config.json").read_text())["resumed"] == []


# ----------------------------------------------------------------------------- the metrics log
def test_checkpoints_record_only_rows_on_disk(tmp_path, monkeypatch):
    import importlib

    train_module = importlib.import_module("momentumrnn.experiments.train")

    synced = []
    original = train_module.MetricsLog.sync

    def sync(self):
        original(self)
        synced.append(self.offset)

    monkeypatch.setattr(train_module.MetricsLog, "sync", sync)
    run = tmp_path / "run"
    assert cli("train", *TINY_ADDING, "--model", "lstm", "--out", run, "--max-steps", 4) == 0
    recorded = torch.load(latest(run) / "state.pt", weights_only=True)["progress"]["metrics_bytes"]
    assert recorded > 0 and recorded in synced


@pytest.mark.parametrize("damage", ["short", "torn", "missing"])
def test_resume_cuts_a_short_or_torn_log_and_says_so(tmp_path, capsys, damage):
    run = tmp_path / "run"
    assert cli("train", *TINY_ADDING, "--model", "lstm", "--out", run, "--max-steps", 4) == 0
    log = run / "metrics.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    if damage == "short":                                   # the last rows never reached the disk
        log.write_bytes(b"".join(lines[:2]))
    elif damage == "torn":                                  # half a row, then garbage
        log.write_bytes(b"".join(lines[:2]) + lines[2][:10] + b"\0" * 7 + b"\n" + b"".join(lines[3:]))
    else:
        log.unlink()
    capsys.readouterr()
    assert cli("train", "--out", run, "--resume", "--max-steps", 6) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "are lost" in err
    data = log.read_bytes()
    assert b"\0" not in data
    kept = 0 if damage == "missing" else 2
    assert [json.loads(line) for line in data.splitlines()][:kept] == [json.loads(line) for line in lines[:kept]]
    assert rows(run)[-1]["split"] == "test"
    assert "are lost" in json.loads((run / "config.json").read_text())["resumed"][0]["metrics_damage"]


# ----------------------------------------------------------------------------- settings
@pytest.mark.parametrize("flags, message", [
    (["--lr", "inf"], "lr must be a finite number, got inf"),
    (["--lr", "nan"], "lr must be a finite number, got nan"),
    (["--alpha", "5"], r"alpha (RMSprop's smoothing constant) must be in [0, 1), got 5.0"),
    (["--alpha", "-1"], "alpha (RMSprop's smoothing constant) must be in [0, 1), got -1.0"),
    (["--init", "paper", "--forget-bias", "nan"], "forget_bias must be a finite number, got nan"),
    (["--clip", "inf"], "clip must be a finite number, got inf"),
    (["--model", "momentum-lstm", "--step-size", "1e300"], "step_size must be a number in (0, 3.403e+38]"),
    (["--model", "nesterov-lstm", "--restart", str(10**30)], "restart must be in [0, 2**63 - 1]"),
    (["--time-budget", "0"], "time_budget must be a number of seconds > 0 (leave it out for no budget), got 0.0"),
    (["--seed", str(2**70)], "seed must be an integer in [0, 2**32 - 1], got 1180591620717411303424"),
    (["--data-seed", "-1"], "data_seed must be an integer in [0, 2**32 - 1], got -1"),
    (["--device", "tpu"], "device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    (["--device", "meta"], "device must be auto, cpu, cuda or cuda:N, got 'meta'"),
    (["--length", "1"], "length must be >= 2 (one marked value in each half), got 1"),
])
def test_settings_that_cannot_train_are_refused_at_the_door(tmp_path, capsys, flags, message):
    args = list(TINY_ADDING)
    if "--model" not in flags:
        args += ["--model", "lstm"]
    assert cli("train", *args, *flags, "--out", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, message", [
    (["--val-size", "60000"], "val_size must be in [1, 60000)"),
    (["--val-size", "0"], "val_size must be a positive integer, got 0"),
])
def test_mnist_validation_size_is_checked_before_the_data_is_read(tmp_path, capsys, flags, message):
    assert cli("train", "--task", "smnist", "--model", "lstm", *flags, "--data-dir", tmp_path / "none",
               "--no-download", "--out", tmp_path / "run") == 2
    assert message in capsys.readouterr().err


def test_a_diverging_run_stops_with_its_last_good_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli("train", *TINY_ADDING, "--model", "lstm", "--lr", "1e30", "--out", run, "--max-steps", 10) == 1
    err = capsys.readouterr().err
    assert "training diverged: the training loss is" in err and "last checkpoint, at step 0" in err
    s = summary(run)
    assert s["status"] == "diverged" and s["stop_reason"].startswith("the training loss is")
    weights = latest(run) / "model.safetensors"
    from safetensors.torch import load_file
    assert all(torch.isfinite(t).all() for t in load_file(weights).values())
    assert not any(r["split"] == "test" for r in rows(run))


# ----------------------------------------------------------------------------- checkpoint integrity
def test_a_flipped_byte_in_the_weights_is_caught(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli("train", *TINY_ADDING, "--model", "lstm", "--out", run, "--max-steps", 3) == 0
    path = latest(run) / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10                                          # in the tensor data, not the header
    path.write_bytes(bytes(data))
    assert cli("train", "--out", run, "--resume", "--max-steps", 4) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "SHA-256 differs" in err


def test_a_deleted_best_weights_file_is_caught(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli("train", *TINY_ADDING, "--model", "lstm", "--out", run, "--max-steps", 6) == 0
    path = latest(run) / "best.safetensors"
    path.unlink()
    assert cli("train", "--out", run, "--resume", "--max-steps", 7) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "is missing" in err


@pytest.mark.skipif(not HAVE_MNIST, reason="needs ../shared/data/mnist")
def test_psmnist_resume_checks_its_permutation(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["--task", "psmnist", "--model", "lstm", "--data-dir", SHARED_DATA, "--train-subset", 16,
            "--val-subset", 8, "--test-subset", 8, "--batch-size", 8, "--hidden-size", 4]
    assert cli("train", *args, "--out", run, "--max-steps", 1) == 0
    (run / "permutation.json").write_text(json.dumps(list(range(784))))
    assert cli("train", "--out", run, "--resume", "--max-steps", 2) == 2
    assert "permutation.json" in capsys.readouterr().err
    (run / "permutation.json").write_text("[1, 2")
    assert cli("train", "--out", run, "--resume", "--max-steps", 2) == 2
    assert "permutation.json is corrupt or unreadable" in capsys.readouterr().err
    (run / "permutation.json").write_text("[1, 2]")
    assert cli("train", "--out", run, "--resume", "--max-steps", 2) == 2
    assert "permutation.json is not a permutation of 0..783" in capsys.readouterr().err


# ----------------------------------------------------------------------------- named errors
@pytest.mark.parametrize("flags", [["--batches", "0"], ["--batch-size", "-1"]])
def test_gradients_sizes_are_named(tmp_path, capsys, flags):
    assert main(["gradients", "--task", "adding", "--model", "lstm", *flags, "--out", str(tmp_path)]) == 2
    assert "--batches and --batch-size must be > 0" in capsys.readouterr().err


def write_wav(path, count):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.zeros(count, dtype="<i2").tobytes())


@pytest.mark.parametrize("count, message", [(0, "holds no samples"), (200, "is too short: 200 samples"),
                                            (300, "is too short: 300 samples, at least 384")])
def test_short_recordings_are_named(tmp_path, count, message):
    folder = tmp_path / "fsdd" / "recordings"
    folder.mkdir(parents=True)
    write_wav(folder / "0_a_0.wav", 2000)
    write_wav(folder / "1_a_0.wav", count)
    with pytest.raises(DataError, match=message) as error:
        fsdd_features(tmp_path)
    assert "1_a_0.wav" in str(error.value)


@pytest.mark.skipif(not HAVE_PTB, reason="needs ../shared/data/ptb")
@pytest.mark.parametrize("flags, message", [
    (["--val-subset", 1], "val_subset 1 is too small: the ptb val split needs at least 2 tokens"),
    (["--train-subset", 10], "train_subset 10 is too small: the ptb train split needs at least 16 tokens"),
])
def test_ptb_subsets_too_small_are_named(tmp_path, capsys, flags, message):
    assert cli("train", "--task", "ptb", "--model", "lstm", "--data-dir", SHARED_DATA, "--batch-size", 8,
               "--hidden-size", 4, "--emb-size", 4, *flags, "--out", tmp_path / "run", "--max-steps", 1) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_closed_pipe_ends_quietly():
    child = subprocess.Popen(command("list"), env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()                                    # the reader is gone before anything is written
    err = child.stderr.read().decode()
    child.wait(timeout=120)
    assert child.returncode == 141 and err == "", err


# ----------------------------------------------------------------------------- report
def test_report_shows_the_good_runs_and_names_the_bad(tmp_path, capsys):
    good = tmp_path / "good"
    assert cli("train", *TINY_ADDING, "--model", "lstm", "--out", good, "--max-steps", 3) == 0
    broken = {}
    for name, file, content in (("bad-summary", "summary.json", "{"), ("bad-config", "config.json", "[]"),
                                ("bad-metrics", "metrics.jsonl", '{"split": "train", "step": 1}\nnot json\n')):
        shutil.copytree(good, tmp_path / name)
        (tmp_path / name / file).write_text(content)
        broken[name] = file
    shutil.copytree(good, tmp_path / "writing")
    with open(tmp_path / "writing" / "metrics.jsonl", "a") as f:
        f.write('{"split": "tra')                            # a run still writing its next row
    runs = [good, tmp_path / "writing", *(tmp_path / name for name in broken)]
    capsys.readouterr()
    assert cli("report", *runs, "--out", tmp_path / "report") == 1
    out, err = capsys.readouterr()
    assert len([line for line in out.splitlines() if line.startswith("| adding")]) == 2
    for name, file in broken.items():
        line = next(line for line in err.splitlines() if f"could not read {tmp_path / name}: " in line)
        assert f"{tmp_path / name / file}" in line
    assert "Left out, could not be read" in (tmp_path / "report" / "report.md").read_text()


def test_a_checkpoint_of_the_former_orthogonal_parametrization_is_refused(tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    assert cli("train", *TINY_ADDING, "--model", "momentum-dtriv", "--out", run, "--max-steps", 2) == 0
    path = latest(run) / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    state = load_file(path)
    del state["rnn.orthogonal_form"]                            # what the former layers wrote
    save_file(state, path, metadata=metadata)
    state_pt = latest(run) / "state.pt"                         # keep the digest in step with the file
    saved = torch.load(state_pt, weights_only=True)
    from momentumrnn.experiments.data import sha256
    saved["digests"]["model.safetensors"] = sha256(path)
    torch.save(saved, state_pt)
    assert cli("train", "--out", run, "--resume", "--max-steps", 3) == 2
    assert "former parametrization" in capsys.readouterr().err


# ----------------------------------------------------------------------------- writing only where it should
@pytest.mark.parametrize("name", ["metrics.jsonl", ".lock"])
def test_a_run_file_that_is_a_link_is_never_written_through(tmp_path, capsys, name):
    run = tmp_path / "run"
    assert cli("train", *TINY_ADDING, "--model", "lstm", "--out", run, "--max-steps", 3) == 0
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    (run / name).unlink()
    (run / name).symlink_to(target)
    assert cli("train", "--out", run, "--resume", "--max-steps", 6) == 2
    assert f"{run / name} is a symbolic link (to {target})" in capsys.readouterr().err
    assert target.read_text() == "keep me\n"


def test_a_sweep_directory_and_a_foreign_directory_are_refused_as_run_directories(tmp_path, capsys):
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / "sweep.json").write_text("{}")
    (sweep_dir / ".lock").write_text("")
    before = snapshot(sweep_dir)
    assert cli("train", *TINY_ADDING, "--model", "lstm", "--out", sweep_dir, "--max-steps", 2) == 2
    assert "is a sweep directory" in capsys.readouterr().err
    assert snapshot(sweep_dir) == before and sorted(os.listdir(sweep_dir)) == [".lock", "sweep.json"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / ".lock").write_text("")
    (foreign / "notes.txt").write_text("mine")
    assert cli("train", *TINY_ADDING, "--model", "lstm", "--out", foreign, "--max-steps", 2) == 2
    assert "holds no momentumrnn run" in capsys.readouterr().err
    assert sorted(os.listdir(foreign)) == [".lock", "notes.txt"]
    lone = tmp_path / "lone"                             # the lock a killed start left: the folder is empty
    lone.mkdir()
    (lone / ".lock").write_text("")
    assert cli("train", *TINY_ADDING, "--model", "lstm", "--out", lone, "--max-steps", 2) == 0


# ----------------------------------------------------------------------------- no tracebacks
@pytest.mark.parametrize("broken", ["checkpoint", "metrics"])
def test_a_full_disk_stops_the_run_with_one_line_and_it_resumes(tmp_path, capsys, monkeypatch, broken):
    import errno
    import importlib

    training = importlib.import_module("momentumrnn.experiments.train")

    run = tmp_path / "run"
    calls = {"n": 0}

    def full(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(run / "x"))
        return original(*args, **kwargs)

    if broken == "checkpoint":
        original = training.save_checkpoint
        monkeypatch.setattr(training, "save_checkpoint", full)
    else:
        original = training.MetricsLog.write
        monkeypatch.setattr(training.MetricsLog, "write", lambda self, row: full(self, row))
    assert cli("train", *TINY_ADDING, "--model", "lstm", "--out", run, "--max-steps", 12) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert "could not write its files (No space left on device" in error and "is kept" in error
    assert "--resume" in error
    monkeypatch.undo()
    assert cli("train", "--out", run, "--resume", "--max-steps", 12) == 0
    assert summary(run)["status"] == "finished" and summary(run)["steps"] == 12


def test_a_config_with_a_setting_removed_is_named(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli("train", *TINY_ADDING, "--model", "lstm", "--out", run, "--max-steps", 3) == 0
    record = json.loads((run / "config.json").read_text())
    del record["config"]["lr"], record["config"]["log_every"]          # log_every: a placement key, refilled
    (run / "config.json").write_text(json.dumps(record))
    assert cli("train", "--out", run, "--resume", "--max-steps", 6) == 2
    assert "config.json has no setting 'lr' (was it edited?)" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    # 20000 examples of 10**8 steps: an allocation that fails at once (never one that nearly fits)
    (["train", "--task", "adding", "--model", "lstm", "--length", "100000000", "--max-steps", "1", "--quiet"],
     "not enough memory"),
    (["gradients", "--task", "adding", "--model", "lstm", "--batch-size", "1000000"],
     "--batch-size 1000000 exceeds the 20000 training examples"),
])
def test_sizes_too_large_are_named(tmp_path, capsys, args, message):
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


def test_a_one_time_cost_is_recorded_apart(tmp_path, monkeypatch):
    from momentumrnn import cpu_kernels

    clock = iter([0.0, 17.5])                             # before the first step; at the summary
    monkeypatch.setattr(cpu_kernels, "build_seconds", lambda: next(clock))
    run = tmp_path / "run"
    assert cli("train", *TINY_ADDING, "--model", "lstm", "--out", run, "--max-steps", 3) == 0
    assert summary(run)["one_time_s"] == {"building the CPU step kernels": 17.5}
