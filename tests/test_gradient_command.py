"""`momentumrnn gradients`: at initialization and from a trained run's checkpoint."""

import json

import pytest
import torch

from momentumrnn.experiments.cli import main
from toolkit_helpers import TINY_ADDING, cli


def test_gradients_command_compares_models_at_init(tmp_path, capsys):
    code = main(["gradients", "--task", "adding", "--length", "30", "--hidden-size", "6", "--dtype", "float64",
                 "--model", "lstm", "--model", "momentum-lstm", "--model", "rnn",
                 "--batches", "2", "--batch-size", "4", "--out", str(tmp_path / "g")])
    assert code == 0
    record = json.loads((tmp_path / "g" / "gradients.json").read_text())
    assert set(record["models"]) == {"lstm (init)", "momentum-lstm (init)", "rnn (init)"}
    assert record["dtype"] == "float64"
    for result in record["models"].values():
        assert len(result["hidden_mean"]) == len(result["input_mean"]) == 30
        assert result["examples"] == 8
        assert all(v >= 0 for v in result["hidden_mean"])
        assert result["first_to_last_hidden"] == pytest.approx(result["hidden_mean"][0] / result["hidden_mean"][-1])
    assert (tmp_path / "g" / "gradients.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "momentum-lstm (init)" in printed and "|dL/dh_1| / |dL/dh_T|" in printed


def test_gradients_command_reads_a_trained_checkpoint(tmp_path):
    run = tmp_path / "run"
    assert cli("train", *TINY_ADDING, "--model", "momentum-lstm", "--out", run, "--max-steps", "3") == 0
    torch.manual_seed(0)
    assert main(["gradients", "--checkpoint", str(run), "--batches", "1", "--batch-size", "4",
                 "--out", str(tmp_path / "g")]) == 0
    record = json.loads((tmp_path / "g" / "gradients.json").read_text())
    (label, result), = record["models"].items()
    assert result["model"] == "momentum-lstm" and result["step"] == 3 and "step 3" in label
    assert len(result["hidden_mean"]) == 12


def test_gradients_command_errors(tmp_path, capsys):
    assert main(["gradients", "--out", str(tmp_path)]) == 2
    assert "at least one --model or --checkpoint" in capsys.readouterr().err
    assert main(["gradients", "--model", "lstm", "--out", str(tmp_path)]) == 2
    assert "--model needs --task" in capsys.readouterr().err
    assert main(["gradients", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_per_model_settings(tmp_path):
    from momentumrnn.experiments.gradient_analysis import parse_model_spec
    assert parse_model_spec("momentum-dtriv:momentum=0.999,step_size=0.6,trivialization=3") == (
        "momentum-dtriv", {"momentum": 0.999, "step_size": 0.6, "trivialization": 3})
    assert main(["gradients", "--task", "adding", "--length", "10", "--hidden-size", "4", "--batches", "1",
                 "--batch-size", "2", "--model", "dtriv", "--model", "momentum-dtriv:momentum=0.999,step_size=0.6",
                 "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "gradients.json").read_text())
    assert set(record["models"]) == {"dtriv (init)", "momentum-dtriv:momentum=0.999,step_size=0.6 (init)"}
    assert main(["gradients", "--task", "adding", "--model", "dtriv:momentum=0.5", "--out", str(tmp_path)]) == 2
