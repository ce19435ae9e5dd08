"""What the evidence reports say about the runs: the paper's figure only beside runs of
its settings, and the epochs the runs trained rather than a budget they did not reach."""

from momentumrnn.experiments.presets import published
from momentumrnn.experiments.seeds import Group, _common_settings


def run(model, momentum=None, epochs=150, trained=13.04):
    config = {"task": "smnist", "model": model, "hidden_size": 128, "optimizer": "rmsprop", "lr": 1e-3,
              "batch_size": 128, "epochs": epochs, "max_steps": None, "time_budget": 200.0, "seed": 0}
    if momentum is not None:
        config.update(momentum=momentum, step_size=0.6)
    return {"config": config, "summary": {"epochs": trained}}


def test_the_papers_figure_stands_beside_runs_of_its_settings_only():
    mu6, mu0 = run("momentum-lstm", 0.6)["config"], run("momentum-lstm", 0.0)["config"]
    assert published("smnist", "momentum-lstm", 128, mu6)["value"] == "99.00-99.08"
    assert published("smnist", "momentum-lstm", 128, mu0) is None                   # the mu = 0 control
    assert published("smnist", "momentum-lstm", 128)["value"] == "99.00-99.08"      # without a config: as before
    assert published("smnist", "lstm", 128, run("lstm")["config"])["value"] == "98.90"
    ptb = {"momentum": 0.0, "step_size": 0.6}
    assert published("ptb", "momentum-lstm", 1150, ptb)["value"] == "58.62"
    assert published("ptb", "momentum-lstm", 1150, {**ptb, "step_size": 1.0}) is None


def test_shared_settings_name_the_epochs_trained_not_an_unreached_budget():
    stopped = [Group("smnist", "lstm", {}, [run("lstm", trained=23.63)]),
               Group("smnist", "momentum-lstm", {}, [run("momentum-lstm", 0.6, trained=13.04)])]
    text = _common_settings(stopped)
    assert "epochs 150" not in text and "13-24 epochs trained" in text
    finished = [Group("smnist", "lstm", {}, [run("lstm", epochs=10, trained=10.0)])]
    assert "epochs 10" in _common_settings(finished) and "trained" not in _common_settings(finished)
