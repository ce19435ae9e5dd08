"""Penn Treebank: data, the language model and its regularizers, truncated BPTT with the
carried hidden and momentum states, NT-ASGD, presets, and resume."""

import json
import math

import pytest
import torch
from torch.nn.utils import parametrize

import momentumrnn as mrnn
from momentumrnn.experiments.config import ConfigError, resolve_config
from momentumrnn.experiments.models import MODELS
from momentumrnn.experiments.optim import NTASGD
from momentumrnn.experiments.ptb import PTB, DropConnect, LanguageModel, batchify, detach_state, load_ptb
from momentumrnn.experiments.train import build_optimizer
from toolkit_helpers import SHARED_DATA, cli, deterministic, rows, summary

HAVE_PTB = (SHARED_DATA / "ptb" / "ptb.train.txt").exists()
needs_ptb = pytest.mark.skipif(not HAVE_PTB, reason="needs ../shared/data/ptb")

#: A tiny language model: every regularizer on, so that each code path runs.
TINY = {"hidden_size": 12, "emb_size": 8, "num_layers": 2, "bptt": 6}


def tiny_config(model, **extra):
    return resolve_config("ptb", model, {**TINY, **extra})


@needs_ptb
def test_ptb_data():
    data = load_ptb(SHARED_DATA)
    assert len(data["vocabulary"]) == 10000 and "<unk>" in data["vocabulary"]
    assert [data[s].numel() for s in ("train", "valid", "test")] == [929589, 73760, 82430]
    eos = data["vocabulary"].index("<eos>")
    assert (data["train"] == eos).sum() == 42068
    columns = batchify(data["valid"], 10)
    assert columns.shape == (10, 7376) and torch.equal(columns[1, :5], data["valid"][7376:7381])


def test_ptb_missing_or_altered_files(tmp_path):
    from momentumrnn.experiments.data import DataError

    with pytest.raises(DataError, match="ptb.train.txt is missing"):
        load_ptb(tmp_path)
    (tmp_path / "ptb").mkdir()
    for name in ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"):
        (tmp_path / "ptb" / name).write_text("a b c\n")
    with pytest.raises(DataError, match="checksum mismatch for .*ptb.train.txt"):
        load_ptb(tmp_path)


@pytest.mark.parametrize("name", ["lstm", "momentum-lstm", "gru", "adam-gru", "nesterov-rnn", "restart-lstm"])
def test_tbptt_with_carried_state_equals_one_pass(name):
    """Two chunks with the hidden and rule states carried (detached) give the one-pass
    outputs; dropping the carried rule state gives something else for momentum layers."""
    config = tiny_config(name, momentum=0.5, step_size=0.6) if name == "momentum-lstm" else tiny_config(name)
    torch.manual_seed(0)
    model = LanguageModel(config, 50).eval()
    tokens = torch.randint(0, 50, (3, 10))
    whole = model(tokens).logits
    first = model(tokens[:, :4])
    second = model(tokens[:, 4:], detach_state(first.state))
    assert torch.allclose(torch.cat([first.logits, second.logits], 1), whole, atol=1e-5)
    if name == "momentum-lstm":
        reset = [(hx, None) for hx, _ in detach_state(first.state)]
        assert not torch.allclose(model(tokens[:, 4:], reset).logits, second.logits, atol=1e-3)


@pytest.mark.parametrize("name", ["lstm", "momentum-lstm", "gru"])
def test_weight_drop_masks_recurrent_weights_in_training_only(name):
    config = tiny_config(name, wdrop=0.5)
    torch.manual_seed(0)
    model = LanguageModel(config, 30)
    layer = model.layers[0]
    original = layer.parametrizations.weight_hh_l0.original
    assert isinstance(layer.parametrizations.weight_hh_l0[0], DropConnect)
    model.eval()
    assert torch.equal(layer.weight_hh_l0, original)                      # identity in evaluation
    tokens = torch.randint(0, 30, (2, 5))
    assert torch.equal(model(tokens).logits, model(tokens).logits)
    model.train()
    dropped = layer.weight_hh_l0
    zeros = dropped == 0
    assert 0.3 < zeros.float().mean() < 0.7 and torch.allclose(dropped[~zeros], 2 * original[~zeros])
    with parametrize.cached():                                              # one mask per forward pass
        assert torch.equal(layer.weight_hh_l0, layer.weight_hh_l0)
    # the layer computes with the dropped matrix: dropping everything = a zero recurrent matrix
    layer.parametrizations.weight_hh_l0[0].p = 1.0
    for module in model.modules():
        if isinstance(module, DropConnect):
            module.p = 1.0
    model.dropout = model.dropouth = model.dropouti = model.dropoute = 0.0
    out = model(tokens).logits
    model.eval()
    with torch.no_grad():
        for module in model.layers:
            module.parametrizations.weight_hh_l0.original.zero_()
    assert torch.allclose(out, model(tokens).logits, atol=1e-6)
    out.sum().backward()                                                   # gradients reach the original
    assert original.grad is not None


def test_paper_preset_builds_the_awd_lstm():
    config = resolve_config("ptb", "lstm", preset="paper")
    expected = {"optimizer": "ntasgd", "lr": 30.0, "batch_size": 20, "bptt": 70, "variable_bptt": True, "clip": 0.25,
                "hidden_size": 1150, "num_layers": 3, "emb_size": 400, "tied": True, "dropout": 0.4, "dropouth": 0.25,
                "dropouti": 0.4, "dropoute": 0.1, "wdrop": 0.5, "ar": 2.0, "tar": 1.0, "weight_decay": 1.2e-6,
                "epochs": 500, "init": "paper", "forget_bias": 1.0}
    assert {k: config[k] for k in expected} == expected
    model = LanguageModel(config, 10000)
    sizes = [(layer.input_size, layer.hidden_size) for layer in model.layers]
    assert sizes == [(400, 1150), (1150, 1150), (1150, 400)] and model.decoder_weight is None
    assert sum(p.numel() for p in model.parameters()) == 24_221_600                # AWD-LSTM's 24M
    momentum = resolve_config("ptb", "momentum-lstm", preset="paper")
    assert (momentum["momentum"], momentum["step_size"]) == (0.0, 0.6)
    assert isinstance(LanguageModel({**momentum, **TINY}, 20).layers[0], mrnn.MomentumLSTM)


def test_small_preset_and_option_errors():
    config = resolve_config("ptb", "momentum-lstm", preset="small")
    assert (config["num_layers"], config["hidden_size"], config["emb_size"], config["bptt"], config["batch_size"],
            config["optimizer"], config["lr"], config["lr_anneal"], config["momentum"], config["step_size"]) == \
        (2, 200, 200, 35, 20, "sgd", 20.0, 4.0, 0.0, 0.6)
    assert resolve_config("ptb", "lstm", {"lr": 5.0}, preset="small")["lr"] == 5.0
    with pytest.raises(ConfigError, match="unknown preset 'small' for task 'speech'"):
        resolve_config("speech", "lstm", preset="small")
    with pytest.raises(ConfigError, match="wdrop must be in"):
        resolve_config("ptb", "lstm", {"wdrop": 1.5})
    with pytest.raises(ConfigError, match="bptt must be a positive integer"):
        resolve_config("ptb", "lstm", {"bptt": 0})


def test_variable_bptt_plan_is_seeded_and_covers_the_data():
    task = PTB.__new__(PTB)
    task.config = {**tiny_config("lstm"), "bptt": 20, "variable_bptt": True, "batch_size": 4}
    task.splits, task._columns = {"train": (torch.arange(4000),)}, {}
    steps = task.plan_epoch(0)
    plan = list(task.plan)
    assert steps == len(plan) and plan[0][0] == 0 and sum(n for _, n in plan) == 999
    assert all(a + n == b for (a, n), (b, _) in zip(plan, plan[1:]))
    assert all(5 <= n <= 60 for _, n in plan[:-1]) and len({n for _, n in plan}) > 5
    assert task.plan_epoch(0) == steps and task.plan == plan and (task.plan_epoch(1), task.plan) != (steps, plan)


def test_ntasgd_switches_on_a_stalled_validation_and_averages():
    w = torch.nn.Parameter(torch.zeros(2))
    opt = NTASGD([w], lr=0.5, nonmono=2)
    for value in (5.0, 4.0, 3.0, 3.5):
        assert not opt.observe(value)                                       # 3.5 is not worse than min(5)
    assert opt.observe(6.0) and opt.averaging                              # 6 > min(5, 4): 3 and 3.5 are the last 2
    iterates = []
    for step in range(3):
        w.grad = torch.tensor([1.0, -2.0])
        opt.step()
        iterates.append(w.detach().clone())
    restore = opt.swap_in_average()
    assert torch.allclose(w, torch.stack(iterates[1:]).mean(0))          # torch's ASGD: from the 2nd iterate
    restore()
    assert torch.equal(w, iterates[-1])
    other = NTASGD([torch.nn.Parameter(torch.zeros(2))], lr=0.5)
    other.load_state_dict(opt.state_dict())
    assert other.averaging and other.history == [5.0, 4.0, 3.0, 3.5, 6.0]


@needs_ptb
def test_paper_preset_runs_on_a_tiny_slice(tmp_path):
    run = tmp_path / "run"
    assert cli("train", "--task", "ptb", "--model", "momentum-lstm", "--preset", "paper", "--data-dir", SHARED_DATA,
               "--hidden-size", 16, "--emb-size", 8, "--train-subset", 3000, "--val-subset", 400, "--test-subset", 400,
               "--max-steps", 2, "--out", run) == 0
    s = summary(run)
    assert s["steps"] == 2 and s["selection"] == {"metric": "perplexity", "mode": "min"}
    assert s["test_at_best_val"] == pytest.approx(math.exp(s["test_metrics"]["loss"]))
    assert 1000 < s["best_val"] < 20000                                    # near chance (10k words) after 2 steps


@needs_ptb
@pytest.mark.parametrize("model", ["momentum-lstm", "lstm"])
def test_resume_mid_epoch_carries_the_tbptt_state(tmp_path, model):
    """Stopping mid-epoch and resuming gives the uninterrupted run: the carried hidden and
    momentum states are part of the checkpoint."""
    common = ["--task", "ptb", "--model", model, "--data-dir", SHARED_DATA, "--preset", "small", "--hidden-size", 10,
              "--emb-size", 6, "--bptt", 5, "--batch-size", 4, "--train-subset", 300, "--val-subset", 200,
              "--test-subset", 200, "--log-every", 1, "--lr", 1.0, "--dropouth", 0.3]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert cli("train", *common, "--out", whole, "--max-steps", 20) == 0
    assert cli("train", *common, "--out", parts, "--max-steps", 9) == 0          # 14 steps an epoch
    assert cli("train", "--out", parts, "--resume", "--max-steps", 20) == 0
    after = lambda run: [deterministic(r) for r in rows(run) if r["step"] > 9]  # noqa: E731
    assert after(parts) == after(whole) and len(after(whole)) >= 11


@needs_ptb
def test_lr_anneal_after_a_stalled_validation(tmp_path):
    run = tmp_path / "run"
    assert cli("train", "--task", "ptb", "--model", "lstm", "--data-dir", SHARED_DATA, "--preset", "small",
               "--hidden-size", 8, "--emb-size", 4, "--bptt", 5, "--batch-size", 4, "--train-subset", 200,
               "--val-subset", 100, "--test-subset", 100, "--lr", 200.0, "--epochs", 4, "--log-every", 1,
               "--out", run) == 0
    metrics = rows(run)
    val = [(r["step"], r["perplexity"]) for r in metrics if r["split"] == "val"]
    stalled = [step for i, (step, v) in enumerate(val) if i and v > min(p for _, p in val[:i])]
    assert stalled, "no validation stalled: the test shows nothing"
    for row in (r for r in metrics if r["split"] == "train"):      # annealed once per stall before the row
        assert row["lr"] == 200.0 / 4 ** sum(step < row["step"] for step in stalled), row
    assert json.loads((run / "config.json").read_text())["config"]["lr_anneal"] == 4.0


def test_optimizers_build():
    model = torch.nn.Linear(1, 1)
    assert isinstance(build_optimizer({"optimizer": "ntasgd", "lr": 1.0, "weight_decay": 0.0, "nonmono": 3}, model),
                      NTASGD)


@pytest.mark.parametrize("name", sorted(n for n, (recurrence, _) in MODELS.items() if recurrence != "orthogonal"))
def test_every_model_is_a_language_model_with_weight_drop(name):
    config = tiny_config(name, wdrop=0.3, dropout=0.1, dropouth=0.1, dropouti=0.1, dropoute=0.1, tied=True,
                         init="paper")
    model = LanguageModel(config, 20)
    out = model(torch.randint(0, 20, (2, 4)))
    assert out.logits.shape == (2, 4, 20) and out.raw.shape == (2, 4, 8)
    out.logits.sum().backward()
    assert all(layer.parametrizations.weight_hh_l0.original.grad is not None for layer in model.layers)
    carried = [rs is not None for _, rs in out.state]
    assert carried == [name not in ("lstm", "gru", "rnn")] * 2


def test_orthogonal_models_are_refused_with_a_clear_error():
    from momentumrnn.experiments.config import ConfigError, resolve_config
    with pytest.raises(ConfigError, match="the ptb task runs the LSTM, GRU and RNN families, not the orthogonal"):
        resolve_config("ptb", "momentum-dtriv", {}, "small")


@needs_ptb
def test_input_blind_baseline_is_the_unigram_model():
    baseline = PTB.baseline(resolve_config("ptb", "lstm", {"data_dir": str(SHARED_DATA)}))
    assert baseline["perplexity"] == pytest.approx(687.03, abs=0.01)
    assert baseline["perplexity"] == pytest.approx(math.exp(baseline["loss"]))
