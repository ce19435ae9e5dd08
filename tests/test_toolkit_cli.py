import json
"""The command line and `momentumrnn report`."""

import subprocess
import sys
from pathlib import Path

import pytest

from toolkit_helpers import TINY_ADDING, cli

REPO = Path(__file__).resolve().parents[1]


def run_module(*args):
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=120)


def test_python_dash_m_and_the_light_library_import():
    result = run_module("-m", "momentumrnn", "list")
    assert result.returncode == 0, result.stderr
    assert "smnist" in result.stdout and "momentum-lstm" in result.stdout and "ORTHOGONAL_LAYERS['momentum']" in result.stdout
    # torch itself may import tqdm (torch.hub); ours must add neither matplotlib nor tqdm
    check = ("import sys, torch; before = set(sys.modules); import momentumrnn, momentumrnn.experiments; "
             "extra = {m.split('.')[0] for m in set(sys.modules) - before}; "
             "assert not {'matplotlib', 'tqdm'} & extra, extra; assert 'matplotlib' not in sys.modules")
    result = run_module("-c", check)
    assert result.returncode == 0, result.stderr


def test_list_names_the_classes_in_rows_a_terminal_holds(capsys):
    """Models by class name, no empty option list, no row longer than 100 characters."""
    from momentumrnn.experiments.cli import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "momentumrnn.AdamGRU" in out and "momentumrnn.MomentumLSTM" in out
    assert "momentumrnn.MomentumOrthogonalRNN" in out and "LAYERS['" not in out.replace("ORTHOGONAL_LAYERS", "")
    assert "[]" not in out and max(map(len, out.splitlines())) <= 100


def test_train_help_is_grouped(capsys):
    from momentumrnn.experiments.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    titles = [line[:-1] for line in out.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert titles == ["options", "model", "rule", "orthogonal models", "task", "optimization", "evaluation",
                      "run directory", "devices and distributed", "PTB only"]
    assert out.index("--momentum MOMENTUM") > out.index("\nrule:") and out.index("--bptt BPTT") > out.index(
        "\nPTB only:")


def test_console_script_is_declared():
    text = (REPO / "pyproject.toml").read_text()
    assert 'momentumrnn = "momentumrnn.experiments.cli:main"' in text
    for package in ("safetensors", "tqdm", "matplotlib"):
        assert package in text


def test_train_needs_task_and_model(capsys):
    with pytest.raises(SystemExit):
        cli("train", "--out", "somewhere")
    assert "needs --task and --model" in capsys.readouterr().err


def test_orthogonal_models_train_with_two_optimizers(tmp_path, capsys):
    run = tmp_path / "r"
    assert cli("train", *TINY_ADDING, "--model", "momentum-dtriv", "--trivialization", "2", "--out", run,
               "--max-steps", "5") == 0
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["trivialization"] == 2 and config["lr_orth"] == 1e-4 and "init" not in config
    assert cli("train", *TINY_ADDING, "--model", "dtriv", "--init", "paper", "--out", tmp_path / "x") == 2
    assert "--orthogonal-init" in capsys.readouterr().err


def test_report(tmp_path, capsys):
    runs = []
    for model in ("lstm", "momentum-lstm"):
        runs.append(tmp_path / model)
        assert cli("train", *TINY_ADDING, "--model", model, "--out", runs[-1], "--max-steps", 6) == 0
    runs.append(tmp_path / "lstm-seed1")
    cli("train", *TINY_ADDING, "--model", "lstm", "--seed", 1, "--out", runs[-1], "--max-steps", 6)
    capsys.readouterr()
    assert cli("report", *runs, "--out", tmp_path / "report") == 0
    printed = capsys.readouterr().out
    text = (tmp_path / "report" / "report.md").read_text()
    assert printed.strip() in text
    table = [line for line in printed.splitlines() if line.startswith("| adding")]
    assert len(table) == 3
    assert "lstm (seed 0)" in printed and "lstm (seed 1)" in printed and "μ 0.6, s 0.6" in printed
    png = tmp_path / "report" / "adding_curves.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and "adding_curves.png" in text
    assert "input-blind baseline (chance level): loss 0.1667" in text
    # `report runs/*` also matches the report folder: skipped with a warning
    assert cli("report", *runs, tmp_path / "report", "--out", tmp_path / "report") == 0
    assert "skipping" in capsys.readouterr().err


def test_report_of_a_missing_run(tmp_path, capsys):
    assert cli("report", tmp_path / "nope", "--out", tmp_path / "report") == 1
    assert "not a run directory" in capsys.readouterr().err


def test_published_figures_sit_beside_our_runs(tmp_path):
    from momentumrnn.experiments.presets import published
    from momentumrnn.experiments.report import table

    assert published("smnist", "lstm", 128)["value"] == "98.90"
    assert published("timit", "momentum-lstm", 120)["value"] == "7.85"
    assert published("timit", "momentum-lstm", 84) is None and published("adding", "lstm", 128) is None
    run = {"dir": tmp_path, "metrics": [],
           "config": {"task": "smnist", "model": "lstm", "hidden_size": 128, "optimizer": "rmsprop", "lr": 1e-3,
                      "batch_size": 128, "init": "paper", "seed": 0},
           "summary": {"parameters": 67850, "selection": {"metric": "accuracy"}, "best_val": 0.5,
                       "test_at_best_val": 0.25, "best_val_step": 10, "best_val_epoch": 0.1, "steps": 10,
                       "epochs": 0.1, "wall_time_s": 3.0, "status": "finished"}}
    row = table([run]).splitlines()[-1]
    assert "accuracy 50.00%" in row and "25.00%" in row and "98.90" in row and "67,850" in row
