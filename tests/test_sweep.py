"""``momentumrnn sweep`` and the report of runs that differ by seed.

The sweeps run real ``momentumrnn train`` subprocesses on a tiny adding task (a few steps);
the grouped report is checked on hand-made run directories whose curves are known."""

import json
import os
import shlex
import statistics
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from momentumrnn.experiments.cli import main
from momentumrnn.experiments.config import resolve_config
from momentumrnn.experiments.rundir import RunError, hold_lock
from momentumrnn.experiments.seeds import equal_step, first_reach, value_at
from toolkit_helpers import deterministic, rows

REPOSITORY = Path(__file__).resolve().parents[1]
TINY = ["--length", "12", "--train-size", "48", "--val-size", "16", "--test-size", "16", "--batch-size", "8",
        "--hidden-size", "8", "--log-every", "2", "--checkpoint-every", "2", "--eval-every", "3"]
SWEEP = ["--task", "adding", "--models", "lstm,momentum-lstm", "--seeds", "0-1", "--control", "mu0",
         "--jobs-per-device", "2", "--max-steps", "12", *TINY]
NAMES = ["lstm_seed=0", "lstm_seed=1", "momentum-lstm_seed=0", "momentum-lstm_momentum=0_step-size=0.6_seed=0",
         "momentum-lstm_seed=1", "momentum-lstm_momentum=0_step-size=0.6_seed=1"]


def environment() -> dict:
    source = str(REPOSITORY / "src")
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    return {**os.environ, "PATH": path, "PYTHONPATH": source + os.pathsep + os.environ.get("PYTHONPATH", "")}


def sweep(*args) -> int:
    return main(["sweep", *map(str, args), "--quiet"])


def run_files(out: Path) -> dict:
    """Every run's metrics rows without timing, and its summary without wall time."""
    files = {}
    for name in NAMES:
        summary = json.loads((out / name / "summary.json").read_text())
        files[name] = ([deterministic(r) for r in rows(out / name)],
                       {k: v for k, v in summary.items() if k != "wall_time_s"})
    return files


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "sweep"
    assert sweep(*SWEEP, "--out", out) == 0
    return out


def test_a_sweep_writes_one_run_per_point_and_its_record(finished):
    record = json.loads((finished / "sweep.json").read_text())
    assert [p["name"] for p in record["points"]] == NAMES
    assert sorted(p.name for p in finished.iterdir()) == sorted(NAMES + ["logs", "sweep.json", ".lock"])
    control = next(p for p in record["points"] if p["control"] == "mu0")
    assert control["of"] == "momentum-lstm_seed=0" and control["settings"] == {"momentum": 0.0, "step_size": 0.6}
    assert record["definition"]["controls"] == ["mu0"] and record["definition"]["seeds"] == [0, 1]
    for name in NAMES:
        summary = json.loads((finished / name / "summary.json").read_text())
        config = json.loads((finished / name / "config.json").read_text())["config"]
        assert summary["status"] == "finished" and summary["steps"] == 12
        assert config["threads"] == max(1, os.cpu_count() // 2) and config["device"] == "cpu"   # 2 jobs
        assert (finished / "logs" / f"{name}.log").read_text().startswith("$ momentumrnn train")
    assert json.loads((finished / NAMES[3] / "config.json").read_text())["config"]["momentum"] == 0.0
    assert sweep(*SWEEP, "--out", finished) == 2                            # exists: --resume or another --out
    assert sweep(*SWEEP, "--out", finished, "--resume") == 0                # nothing left to run


def test_a_killed_sweep_resumes_to_the_same_run_files(finished, tmp_path):
    out = tmp_path / "sweep"
    args = [*SWEEP, "--out", out]
    process = subprocess.Popen([sys.executable, "-m", "momentumrnn", "sweep", *map(str, args), "--quiet"],
                               env=environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not any((out / n / "summary.json").exists() for n in NAMES):     # mid-way: one run done
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    for name in NAMES:                                                        # the children stop too
        while (out / name / ".lock").exists():
            try:
                os.close(hold_lock(out / name))
                break
            except RunError:
                assert time.time() < deadline
                time.sleep(0.05)
    unfinished = [n for n in NAMES if not (out / n / "summary.json").exists()]
    assert unfinished, "the sweep finished before it was killed"
    assert sweep(*args, "--resume") == 0
    assert run_files(out) == run_files(finished)


def test_dry_run_prints_commands_that_run_as_they_are(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert sweep(*SWEEP, "--control", "gain", "--out", out, "--dry-run") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 8 and not out.exists()
    assert all(line.startswith("momentumrnn train --task adding --model ") for line in lines)
    gain = next(line for line in lines if "--momentum 0.0 --step-size 1.5" in line)
    for line in (lines[0], gain):
        result = subprocess.run(line, shell=True, env=environment(), capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        run = Path(shlex.split(line)[-1])
        assert run.parent == out and json.loads((run / "summary.json").read_text())["status"] == "finished"


def test_a_failed_run_is_reported_and_the_sweep_exits_1(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", "--task", "adding", "--models", "lstm", "--grid", "lr=0.001,1e30", "--out", str(out),
                 "--jobs-per-device", "2", "--max-steps", "6", *TINY]) == 1
    err = capsys.readouterr().err
    assert "FAILED lstm_lr=1e+30_seed=0 (exit status 1)" in err and "training diverged" in err
    assert "finished lstm_lr=0.001_seed=0" in err and "1 of 2 runs failed: lstm_lr=1e+30_seed=0" in err
    assert sweep("--task", "adding", "--models", "lstm", "--grid", "lr=0.001,1e30", "--out", out, "--resume",
                 "--max-steps", "6", *TINY) == 1                              # not retried: it would diverge again


@pytest.mark.parametrize("args, message", [
    (["--grid", "nonsense=1,2"], "--grid nonsense: not a train setting"),
    (["--grid", "momentum"], "--grid takes KEY=V1,V2,..."),
    (["--grid", "seed=1,2"], "--grid seed: the sweep sets --seed itself"),
    (["--seeds", "a-b"], "--seeds takes integers and ranges"),
    (["--seeds", "0,0"], "--seeds must name each seed once"),
    (["--seed", "3"], "momentumrnn sweep sets --seed itself"),
    (["--grid", "momentum=1.5"], "momentum must be in [0, 1)"),
    (["--devices", "tpu"], "device must be auto, cpu, cuda or cuda:N"),
    (["--lr", "inf"], "lr must be a finite number"),
    (["--jobs-per-device", "0"], "--jobs-per-device must be >= 1"),
])
def test_bad_sweeps_are_refused_before_anything_runs(tmp_path, capsys, args, message):
    out = tmp_path / "sweep"
    assert main(["sweep", "--task", "adding", "--models", "lstm,momentum-lstm", "--out", str(out), "--dry-run",
                 *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_resume_with_another_definition_is_refused(finished, capsys):
    assert sweep(*SWEEP, "--seeds", "0-2", "--out", finished, "--resume") == 2
    assert "cannot resume" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the grouped report
def hand_made_run(root: Path, name: str, model: str, seed: int, curve: dict, test: float, **settings) -> Path:
    """A finished adding run with the validation losses ``curve`` (step -> value)."""
    run = root / name
    run.mkdir(parents=True)
    config = resolve_config("adding", model, {"seed": seed, "hidden_size": 8, **settings})
    (run / "config.json").write_text(json.dumps({"config": config}))
    steps = sorted(curve)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"split": "val", "epoch": s / 10, "step": s,
                                                           "loss": curve[s]}) + "\n" for s in steps))
    best = min(steps, key=lambda s: curve[s])
    (run / "summary.json").write_text(json.dumps({
        "task": "adding", "model": model, "parameters": 10, "hidden_size": 8, "seed": seed, "status": "finished",
        "selection": {"metric": "loss", "mode": "min"}, "best_val": curve[best], "best_val_step": best,
        "best_val_epoch": best / 10, "test_at_best_val": test, "steps": steps[-1], "epochs": steps[-1] / 10,
        "wall_time_s": 1.0}))
    return run


def test_first_reach_value_at_and_equal_step():
    points = [(100, 0.3), (200, 0.04), (300, 0.2), (400, 0.01)]
    assert first_reach(points, 0.05, "min") == 200 and first_reach(points, 0.001, "min") is None
    assert first_reach([(100, 0.5), (200, 0.9)], 0.8, "max") == 200
    assert value_at(points, 350) == 0.2 and value_at(points, 99) is None and value_at(points, 400) == 0.01
    assert equal_step([points, points[:2], points[:3]]) == 200 and equal_step([points, []]) is None


def test_report_takes_the_seeds_of_each_setting_together(tmp_path, capsys):
    runs = tmp_path / "runs"
    curves = {0: {100: 0.2, 200: 0.04, 300: 0.03, 400: 0.02, 500: 0.01},
              1: {100: 0.15, 200: 0.09, 300: 0.04, 400: 0.03},
              2: {100: 0.2, 200: 0.2, 300: 0.2, 400: 0.2, 500: 0.2, 600: 0.2}}
    for seed, curve in curves.items():
        hand_made_run(runs, f"m{seed}", "momentum-lstm", seed, curve, test=[0.1, 0.2, 0.3][seed])
        hand_made_run(runs, f"l{seed}", "lstm", seed, {s: v + 0.1 for s, v in curve.items()}, test=0.5)
    # a 2-D grid of one seed each: the heatmap
    for mu in (0.0, 0.3):
        for s in (0.3, 0.9):
            hand_made_run(runs, f"g{mu}-{s}", "momentum-lstm", 9, {100: mu + s, 400: mu * s}, test=0.1,
                          momentum=mu, step_size=s)
    out = tmp_path / "report"
    assert main(["report", *map(str, sorted(runs.iterdir())), "--out", str(out), "--thresholds", "0.05,0.035"]) == 0
    text = (out / "report.md").read_text()
    table = {}
    for line in text.splitlines():
        if line.startswith("| momentum-lstm μ") or line.startswith("| lstm |"):
            cells = line.strip("| ").split(" | ")
            table[cells[0]] = cells
    momentum = table["momentum-lstm μ 0.6 s 0.6"]
    assert momentum[1] == "0, 1, 2"
    assert momentum[2] == "0.2000 ± 0.1000 (n 3)"                             # test at best val
    assert "val at step 400" in text                                         # the last step every run reached
    at_400 = [0.02, 0.03, 0.2]
    assert momentum[4] == f"{statistics.fmean(at_400):.4f} ± {statistics.stdev(at_400):.4f} (n 3)"
    assert momentum[5] == "300 (200–300; 2/3)"          # <= 0.05: seeds 0, 1 at 200, 300, seed 2 never
    assert momentum[6] == "400 (300–400; 2/3)"          # <= 0.035: at 300 and 400
    assert table["lstm"][5] == "not reached (by 400–600)"
    assert (out / "adding_seeds.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "adding_momentum-lstm_heatmap.png").read_bytes()[:4] == b"\x89PNG"
    assert "by momentum and step_size" in text


def test_report_of_a_sweep_directory(finished, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(finished), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "### adding: seeds taken together" in text
    for label in ("| lstm | 0, 1 |", "| momentum-lstm μ 0.6 s 0.6 | 0, 1 |",
                  "| momentum-lstm μ 0 s 0.6 (mu0 control) | 0, 1 |"):
        assert label in text
