"""``momentumrnn sweep`` and the report of runs that differ by seed.

The sweeps run real ``momentumrnn train`` subprocesses on a tiny adding task (a few steps);
the grouped report is checked on hand-made run directories whose curves are known."""

import contextlib
import json
import os
import shlex
import shutil
import statistics
import signal
import subprocess
import sys
import threading
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
    assert "FAILED lstm_lr=1e+30_seed=0 (exit status 1, run diverged)" in err and "training diverged" in err
    assert "finished lstm_lr=0.001_seed=0" in err and "1 of 2 runs finished; 1 failed (lstm_lr=1e+30_seed=0)" in err
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
    # a train flag that would override the grid's or a control's value in every run
    (["--grid", "lr=0.1,0.01", "--lr", "0.5"], "--lr is set twice: by the train flag --lr 0.5 and by --grid lr=0.1,0.01"),
    (["--control", "gain", "--momentum", "0.9"], "--momentum is set twice: by the train flag --momentum 0.9 and by "
                                                  "--control gain"),
    (["--control", "mu0", "--step-size=0.3"], "--step-size is set twice"),
    (["--se", "3"], "momentumrnn sweep sets --seed itself"),                 # abbreviated
    # inputs that would silently do nothing
    (["--grid", "lr=0.1,0.10"], "gives the value 0.1 twice"),
    (["--grid", "beta=0.9,0.99"], "--grid beta: none of the models (lstm, momentum-lstm) takes --beta"),
    (["--grid", "threads=1,2"], "--grid threads: the sweep sets --threads itself"),
    (["--seeds", "0,5-2"], "--seeds range '5-2' runs backwards"),
    (["--models", ","], "--models takes model names separated by commas, got ','"),
    (["--models", "lstm,lstm"], "--models names lstm twice"),
    # no tracebacks
    (["--seeds", "0-4294967295"], "names more than 10,000 seeds"),
    (["--seeds", "4294967296"], "--seeds must be integers in [0, 2**32 - 1]"),
    (["--grid", "tied=maybe"], "--grid 'tied=maybe': expected yes or no"),
    ([f"--grid={key}={value}" for key, value in [
        ("lr", 0.0012345678901234567), ("alpha", 0.912345678901234), ("weight-decay", 0.00012345678901234),
        ("clip", 1.2345678901234567), ("forget-bias", 1.2345678901234567), ("eval-every", 123456789),
        ("hidden-size", 123456), ("batch-size", 1234567), ("train-size", 123456789), ("log-every", 12345678),
        ("eval-batch-size", 1234567), ("checkpoint-every", 1234567), ("momentum", 0.12345678901234),
        ("step-size", 0.123456789012345)]], "more than a file name may have (255)"),
])
def test_bad_sweeps_are_refused_before_anything_runs(tmp_path, capsys, args, message):
    out = tmp_path / "sweep"
    assert main(["sweep", "--task", "adding", "--models", "lstm,momentum-lstm", "--out", str(out), "--dry-run",
                 *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_run_names_are_lossless_and_each_point_runs(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert sweep("--task", "adding", "--models", "lstm", "--grid", "lr=0.0010000001,0.0010000002,0.001",
                 "--out", out, "--dry-run") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [shlex.split(line)[-1].rsplit("/", 1)[-1] for line in lines] == [
        "lstm_lr=0.0010000001_seed=0", "lstm_lr=0.0010000002_seed=0", "lstm_lr=0.001_seed=0"]
    assert [shlex.split(line)[shlex.split(line).index("--lr") + 1] for line in lines] == [
        "0.0010000001", "0.0010000002", "0.001"]


def test_a_control_equal_to_a_grid_point_runs_once_and_says_so(tmp_path, capsys):
    assert main(["sweep", "--task", "adding", "--models", "momentum-lstm", "--grid", "momentum=0,0.5",
                 "--control", "mu0", "--out", str(tmp_path / "sweep"), "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 2
    assert ("note: momentum-lstm_momentum=0_step-size=0.6_seed=0 is the same run as momentum-lstm_momentum=0_seed=0"
            in captured.err)


@contextlib.contextmanager
def signal_a_run_mid_way(out: Path, names: list[str], signum: int):
    """While the block runs, send ``signum`` to the train process of the first run of ``names``
    found with a checkpoint and no summary yet (its pid from the run's lock), as from outside
    the sweep; yields a dict that gets the run's ``name``."""
    caught: dict = {}

    def watch():
        deadline = time.time() + 200
        while time.time() < deadline:
            for name in names:
                run = out / name
                try:
                    if (run / "checkpoints" / "latest").exists() and not (run / "summary.json").exists():
                        os.kill(json.loads((run / ".lock").read_text())["pid"], signum)
                        caught["name"] = name
                        return
                except (OSError, ValueError, KeyError):
                    pass
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        yield caught
    finally:
        watcher.join()
    assert caught, "no run was caught mid-way"


def test_a_run_stopped_from_outside_makes_the_sweep_exit_1(tmp_path, capsys):
    out = tmp_path / "sweep"
    run = out / "lstm_seed=0"
    with signal_a_run_mid_way(out, [run.name], signal.SIGTERM):    # to the train process, not to the sweep
        status = main(["sweep", "--task", "adding", "--models", "lstm", "--out", str(out), "--max-steps", "100000",
                       *TINY])
    err = capsys.readouterr().err
    assert status == 1, err
    assert "STOPPED lstm_seed=0 from outside the sweep" in err and "all 1 runs finished" not in err
    assert "0 of 1 runs finished; 1 stopped from outside (lstm_seed=0)" in err
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"


def test_sweep_devices_default_to_every_visible_gpu_else_the_cpu(monkeypatch):
    """As train picks CUDA when there is one: no --devices means every GPU, else the CPU."""
    import torch

    from momentumrnn.experiments import cli

    parsed = cli.build_parser().parse_args(["sweep", "--task", "adding", "--models", "lstm", "--out", "x"])
    assert parsed.devices is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli._default_devices() == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert cli._default_devices() == "cuda:0,cuda:1"


def test_the_progress_line_counts_the_runs_as_they_are(tmp_path, monkeypatch):
    """Two slots, three runs: when the first ends, the freed slot takes the third before the
    line is printed, so the line says 2 running, 0 waiting (not 1 running, 1 waiting)."""
    import momentumrnn.experiments.sweep as sweep_module

    alive, ends = set(), {"a": 1, "b": 6, "c": 3}        # polls until each run ends

    class Process:
        def __init__(self, name):
            self.name, self.polls, self.returncode = name, 0, None
            alive.add(name)

        def poll(self):
            self.polls += 1
            if self.polls >= ends[self.name]:
                self.returncode = 0
                alive.discard(self.name)
            return self.returncode

    class Log:
        def close(self):
            pass

    finished = set()
    monkeypatch.setattr(sweep_module, "_launch", lambda sweep, point, out, device, threads: (
        Process(point.name), Log(), time.time()))
    import momentumrnn.experiments.sweep_runs as sweep_runs

    def status(run_dir):
        return "finished" if run_dir.name in finished and run_dir.name not in alive else "new"
    monkeypatch.setattr(sweep_module, "run_status", status)
    monkeypatch.setattr(sweep_runs, "run_status", status)
    monkeypatch.setattr(sweep_module, "_lock_is_free", lambda run_dir: True)
    monkeypatch.setattr(sweep_module.time, "sleep", lambda seconds: finished.update(alive))
    plan = type("Plan", (), {"points": [type("Point", (), {"name": n})() for n in "abc"], "train_flags": []})()
    lines = []

    def say(line):
        if "running" in line:
            running = int(line.split(" running")[0].split()[-1])
            lines.append(line.strip())
            assert running == len(alive), (line, alive)

    assert sweep_module._schedule(plan, tmp_path, ["cpu"], 2, say) == 0
    assert lines[0] == "1 finished, 2 running, 0 failed, 0 stopped, 0 waiting"
    assert lines[-1] == "3 finished, 0 running, 0 failed, 0 stopped, 0 waiting"


def test_resume_names_a_lock_that_cannot_be_used_instead_of_waiting(finished, tmp_path):
    out = tmp_path / "sweep"
    shutil.copytree(finished, out)
    run = out / NAMES[0]
    (run / "summary.json").unlink()
    (run / ".lock").unlink()
    (run / ".lock").mkdir()                              # a lock file that cannot be opened
    result = subprocess.run([sys.executable, "-m", "momentumrnn", "sweep", *map(str, SWEEP), "--out", str(out),
                             "--resume"], env=environment(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert f"FAILED {NAMES[0]}: cannot use the lock file {run / '.lock'}" in result.stderr


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
    table = seed_rows(text)
    momentum = table["momentum-lstm μ 0.6 s 0.6"]
    assert momentum[1] == "0, 1, 2"
    assert momentum[2] == "0.2000 ± 0.1000 (n 3)"                             # test at best val
    assert "val at step 400" in text                                         # the last step every run reached
    at_400 = [0.02, 0.03, 0.2]
    assert momentum[4] == f"{statistics.fmean(at_400):.4f} ± {statistics.stdev(at_400):.4f} (n 3)"
    assert momentum[5] == "300 (200–300; 2/3)"          # <= 0.05: seeds 0, 1 at 200, 300, seed 2 never
    assert momentum[6] == "400 (300–400; 2/3)"          # <= 0.035: at 300 and 400
    assert table["lstm ✗ not above the baseline"][5] == "not reached (by 400–600)"     # mean best 0.18 > 1/6
    assert (out / "adding_seeds.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "adding_momentum-lstm_heatmap.png").read_bytes()[:4] == b"\x89PNG"
    assert "by momentum and step_size" in text


def test_report_of_a_sweep_directory(finished, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(finished), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "### adding: seeds taken together" in text
    table = {label.replace(" ✗ not above the baseline", ""): cells for label, cells in seed_rows(text).items()}
    for label in ("lstm", "momentum-lstm μ 0.6 s 0.6", "momentum-lstm μ 0 s 0.6 (mu0 control)"):
        assert table[label][1] == "0, 1"


def seed_rows(text: str) -> dict:
    """The rows of the seeds table by their setting label."""
    table = {}
    for line in text.split("seeds taken together", 1)[1].splitlines():
        if line.startswith("| ") and not line.startswith("| setting"):
            cells = line.strip("| ").split(" | ")
            table[cells[0]] = cells
    return table


def test_report_groups_only_runs_that_differ_by_seed_alone(tmp_path):
    runs = tmp_path / "runs"
    curve = {100: 0.2, 200: 0.1}
    for seed in (0, 1):                                   # the same setting at two budgets
        hand_made_run(runs, f"short{seed}", "lstm", seed, curve, test=0.1, max_steps=200)
        hand_made_run(runs, f"long{seed}", "lstm", seed, curve, test=0.3, max_steps=400)
    hand_made_run(runs, "other-machine", "lstm", 2, curve, test=0.1, max_steps=200, threads=7, device="cpu",
                  log_every=5)                            # what cannot change the result does not split
    stopped = hand_made_run(runs, "stopped", "lstm", 3, curve, test=0.9, max_steps=200)
    record = json.loads((stopped / "summary.json").read_text())
    (stopped / "summary.json").write_text(json.dumps({**record, "status": "interrupted"}))
    shutil.copytree(runs / "short0", runs / "copy-of-short0")
    (runs / "link-to-short1").symlink_to(runs / "short1")
    out = tmp_path / "report"
    args = [*map(str, sorted(runs.iterdir())), str(runs / "short1")]          # short1 three ways
    assert main(["report", *args, "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    table = seed_rows(text)
    short, long = table["lstm max_steps=200"], table["lstm max_steps=400"]
    assert short[1].startswith("0, 1, 2 (left out: ") and long[1] == "0, 1"
    assert "seed 0: repeats seed 0 of" in short[1] and "stopped, seed 3: interrupted" in short[1]
    assert short[2] == "0.1000 ± 0.0000 (n 3)" and long[2] == "0.3000 ± 0.0000 (n 2)"
    assert text.count("is the same run directory as") == 2
    assert text.count("| adding | lstm (") == 7                               # one table row per run directory


def test_report_rows_show_the_baseline_and_mark_runs_that_do_not_beat_it(tmp_path):
    runs = tmp_path / "runs"
    for seed in (0, 1):
        hand_made_run(runs, f"good{seed}", "momentum-lstm", seed, {100: 0.05}, test=0.05)
        hand_made_run(runs, f"blind{seed}", "lstm", seed, {100: 0.2}, test=0.2)     # 1/6 predicts the mean
    out = tmp_path / "report"
    assert main(["report", *map(str, sorted(runs.iterdir())), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    run_rows = [line for line in text.splitlines() if line.startswith("| adding |")]
    assert all(" | 0.1667 ✗ not beaten | " in line for line in run_rows if "| lstm (" in line)
    assert all(" | 0.1667 | " in line for line in run_rows if "| momentum-lstm (" in line)
    table = seed_rows(text)
    assert "lstm ✗ not above the baseline" in table and table["input-blind baseline"][3] == "0.1667"
    assert any(label.startswith("momentum-lstm") and "✗" not in label for label in table)


def test_report_wall_time_names_a_one_time_cost(tmp_path):
    run = hand_made_run(tmp_path / "runs", "a", "lstm", 0, {100: 0.1}, test=0.1)
    record = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**record, "wall_time_s": 40.2,
                                                  "one_time_s": {"building the CPU step kernels": 17.4}}))
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    assert "| 40 s (incl. 17 s building the CPU step kernels) |" in (tmp_path / "report" / "report.md").read_text()


def test_a_heatmap_with_a_setting_unset_in_some_runs_is_drawn(tmp_path):
    runs = tmp_path / "runs"
    for mu in (0.0, 0.3):
        for alpha in (0.9, None):
            run = hand_made_run(runs, f"g{mu}-{alpha}", "momentum-lstm", 9, {100: mu + 0.1}, test=0.1, momentum=mu,
                                alpha=alpha or 0.99)
            if alpha is None:                           # a run recorded before the setting existed
                record = json.loads((run / "config.json").read_text())
                del record["config"]["alpha"]
                (run / "config.json").write_text(json.dumps(record))
    hand_made_run(runs, "again", "momentum-lstm", 10, {100: 0.1}, test=0.1, momentum=0.0, alpha=0.9)
    out = tmp_path / "report"
    assert main(["report", *map(str, sorted(runs.iterdir())), "--out", str(out)]) == 0
    assert (out / "adding_momentum-lstm_heatmap.png").read_bytes()[:4] == b"\x89PNG"


def test_report_writes_nothing_outside_out(tmp_path, capsys):
    run = hand_made_run(tmp_path / "deep" / "runs", "a", "lstm", 0, {100: 0.1}, test=0.1)
    good = hand_made_run(tmp_path / "deep" / "runs", "b", "lstm", 0, {100: 0.1}, test=0.1)
    record = json.loads((run / "config.json").read_text())
    record["config"]["task"] = "../../escaped"
    (run / "config.json").write_text(json.dumps(record))
    out = tmp_path / "deep" / "runs" / "report"
    assert main(["report", str(run), str(good), "--out", str(out)]) == 1
    assert "names an unknown task '../../escaped'" in capsys.readouterr().err
    assert not list(tmp_path.rglob("escaped*"))
    (tmp_path / "file").write_text("")
    assert main(["report", str(good), "--out", str(tmp_path / "file")]) == 2
    assert "--out " + str(tmp_path / "file") + " is a file, not a directory" in capsys.readouterr().err


def test_file_names_from_records_stay_in_their_folder():
    from momentumrnn.experiments.rundir import safe_name
    for text in ("../../x", "/etc/passwd", "..", ".hidden", "a/b", ""):
        name = safe_name(text)
        assert "/" not in name and not name.startswith(".") and name
    assert safe_name("momentum-lstm_lr=0.001_seed=0") == "momentum-lstm_lr=0.001_seed=0"


# ----------------------------------------------------------------------------- submitit launchers
ON_ONE_MACHINE = SWEEP[:SWEEP.index("--jobs-per-device")] + SWEEP[SWEEP.index("--jobs-per-device") + 2:]


def test_a_submitit_sweep_with_a_run_killed_mid_way_resumes(tmp_path, capsys):
    pytest.importorskip("submitit")
    out = tmp_path / "sweep"
    args = [*ON_ONE_MACHINE, "--launcher", "local-submitit", "--points-per-job", "3", "--out", out]
    with signal_a_run_mid_way(out, NAMES, signal.SIGKILL) as killed:   # as on a lost node: no checkpoint
        status = sweep(*args)
    jobs = json.loads((out / "jobs.json").read_text())
    assert [len(job["points"]) for job in jobs] == [3, 3] and all(j["launcher"] == "local-submitit" for j in jobs)
    record = json.loads((out / "sweep.json").read_text())
    assert record["launcher"]["name"] == "local-submitit" and record["launcher"]["points_per_job"] == 3
    assert status == 1                                  # one run did not finish: the sweep says so
    assert not (out / killed["name"] / "summary.json").exists()
    assert sweep(*args, "--resume") == 0                 # submitted again, resumed from its checkpoint
    assert len(json.loads((out / "jobs.json").read_text())) == 3
    for name in NAMES:
        assert json.loads((out / name / "summary.json").read_text())["status"] == "finished"
    assert json.loads((out / killed["name"] / "config.json").read_text())["resumed"]


def test_resume_follows_queued_jobs_and_submits_lost_ones_again(finished, tmp_path, capsys, monkeypatch):
    from momentumrnn.experiments import submitit_launcher

    out = tmp_path / "sweep"
    shutil.copytree(finished, out)
    (out / NAMES[1] / "summary.json").unlink()         # its job is still running, says the scheduler
    record = json.loads((out / "sweep.json").read_text())
    (out / "sweep.json").write_text(json.dumps({**record, "launcher": {"name": "slurm"}}))
    (out / "jobs.json").write_text(json.dumps([{"job_id": "4242", "launcher": "slurm", "points": [NAMES[1]]}]))
    state = {"4242": "RUNNING"}
    monkeypatch.setattr(submitit_launcher, "job_state", lambda out, job: state[job["job_id"]])
    assert sweep(*ON_ONE_MACHINE, "--out", out, "--resume") == 2                 # local now would run it twice
    assert "whose jobs 4242 are still queued or running" in capsys.readouterr().err
    assert main(["sweep", *map(str, ON_ONE_MACHINE), "--out", str(out), "--resume", "--launcher", "slurm",
                 "--no-wait"]) == 0
    err = capsys.readouterr().err
    assert "5 finished, 0 failed before, 1 in jobs still queued or running, 0 to submit" in err
    state["4242"] = "NODE_FAIL"                          # lost with its node: the local launcher may take it
    assert sweep(*ON_ONE_MACHINE, "--out", out, "--resume") == 0
    assert json.loads((out / NAMES[1] / "summary.json").read_text())["status"] == "finished"


def test_a_job_of_several_gpus_runs_each_point_as_torchrun(tmp_path, monkeypatch):
    from momentumrnn.experiments import submitit_launcher

    (tmp_path / "logs").mkdir()
    (tmp_path / "sweep.json").write_text(json.dumps({"commands": {"a": "momentumrnn train --task adding "
                                                                       "--model lstm --out " + str(tmp_path / "a")}}))
    calls = []
    monkeypatch.setattr(submitit_launcher.subprocess, "run",
                        lambda argv, **kw: calls.append(argv) or subprocess.CompletedProcess(argv, 0))
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "6")
    assert submitit_launcher.run_points(str(tmp_path), ["a"], gpus=4) == {"a": 0}
    assert calls[0][1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4", "-m"]
    assert calls[0][6:9] == ["momentumrnn", "train", "--task"] and calls[0][-3:] == ["--quiet", "--threads", "6"]


@pytest.mark.parametrize("args, message", [
    (["--slurm-partition", "gpu"], "--slurm-partition: not a setting of --launcher local"),
    (["--launcher", "slurm", "--devices", "cpu"], "--devices: not a setting of --launcher slurm"),
    (["--launcher", "local-submitit", "--slurm-setup", "module load cuda"],
     "--slurm-setup: not a setting of --launcher local-submitit"),
    (["--launcher", "slurm", "--points-per-job", "0"], "--points-per-job must be >= 1"),
])
def test_launcher_flags_of_another_launcher_are_refused(tmp_path, capsys, args, message):
    assert main(["sweep", "--task", "adding", "--models", "lstm", "--out", str(tmp_path / "s"), "--dry-run",
                 *args]) == 2
    assert message in capsys.readouterr().err
