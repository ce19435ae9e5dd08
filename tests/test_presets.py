"""``--preset paper`` resolves every run of the authors to exactly their settings.

The expected settings below are written out from the authors' published command lines and
script defaults, independently of ``presets.RECIPES``: one table per experiment, checked
field by field for every (model, hidden size) they ran.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import momentumrnn as mrnn
from momentumrnn.experiments.config import resolve_config
from momentumrnn.experiments.presets import RECIPES, paper_preset, recipe_table
from momentumrnn.experiments.ptb import LanguageModel

MNIST = dict(optimizer="rmsprop", lr=1e-3, alpha=0.9, batch_size=128, epochs=150, clip=1.0, init="paper",
             forget_bias=1.0)
PMNIST_DTRIV = dict(optimizer="rmsprop", alpha=0.99, batch_size=128, epochs=150, clip=1.0, orthogonal_init="cayley",
                    base_change_gradient="authors", permutation="authors", permutation_seed=None)
TIMIT = dict(optimizer="adam", lr=1e-4, batch_size=32, epochs=700, clip=0.0, init="paper", forget_bias=-4.0)
TIMIT_DTRIV = dict(optimizer="adam", lr=1e-3, lr_orth=2e-4, alpha=0.99, batch_size=128, epochs=700, clip=1.0,
                   orthogonal_init="henaff", trivialization=0, base_change_gradient="authors")
PTB = dict(optimizer="ntasgd", lr=30.0, nonmono=5, batch_size=20, epochs=500, clip=0.25, weight_decay=1.2e-6,
           num_layers=3, emb_size=400, hidden_size=1150, tied=True, bptt=70, variable_bptt=True, dropout=0.4,
           dropouth=0.25, dropouti=0.4, dropoute=0.1, wdrop=0.5, ar=2.0, tar=1.0, eval_batch_size=10,
           test_batch_size=1, restart_counter="reset", bptt_cap=False)
PMNIST = {**MNIST, "permutation": "authors", "permutation_seed": None}

#: (task, model, hidden size, every setting of that run of the authors)
AUTHORS_RUNS = [
    *[("smnist", "lstm", h, MNIST) for h in (128, 256)],
    *[("smnist", "momentum-lstm", h, {**MNIST, "momentum": 0.6, "step_size": 0.6}) for h in (128, 256)],
    ("smnist", "adam-lstm", 256, {**MNIST, "momentum": 0.6, "step_size": 0.6, "beta": 0.1}),
    ("smnist", "rmsprop-lstm", 256, {**MNIST, "step_size": 0.6, "beta": 0.9}),
    ("smnist", "nesterov-lstm", 256, {**MNIST, "step_size": 1.0, "restart": 2}),
    *[("psmnist", "lstm", h, PMNIST) for h in (128, 256)],
    *[("psmnist", "momentum-lstm", h, {**PMNIST, "momentum": 0.6, "step_size": 1.0}) for h in (128, 256)],
    ("psmnist", "adam-lstm", 256, {**PMNIST, "momentum": 0.6, "step_size": 1.0, "beta": 0.01}),
    ("psmnist", "rmsprop-lstm", 256, {**PMNIST, "step_size": 1.0, "beta": 0.01}),
    ("psmnist", "nesterov-lstm", 256, {**PMNIST, "step_size": 0.9, "restart": 40}),
    ("psmnist", "dtriv", 170, {**PMNIST_DTRIV, "trivialization": 1, "lr": 7e-4, "lr_orth": 2e-4}),
    ("psmnist", "dtriv", 360, {**PMNIST_DTRIV, "trivialization": 0, "lr": 7e-4, "lr_orth": 5e-5}),
    ("psmnist", "dtriv", 512, {**PMNIST_DTRIV, "trivialization": 0, "lr": 3e-4, "lr_orth": 7e-5}),
    ("psmnist", "momentum-dtriv", 170, {**PMNIST_DTRIV, "trivialization": 1, "lr": 7e-4, "lr_orth": 2e-4,
                                        "momentum": 0.6, "step_size": 0.9}),
    ("psmnist", "momentum-dtriv", 360, {**PMNIST_DTRIV, "trivialization": 0, "lr": 7e-4, "lr_orth": 5e-5,
                                        "momentum": 0.3, "step_size": 0.3}),
    ("psmnist", "momentum-dtriv", 512, {**PMNIST_DTRIV, "trivialization": 0, "lr": 3e-4, "lr_orth": 7e-5,
                                        "momentum": 0.3, "step_size": 0.3}),
    *[("timit", "lstm", h, TIMIT) for h in (84, 120, 158)],
    *[("timit", "momentum-lstm", h, {**TIMIT, "momentum": 0.3, "step_size": 0.1}) for h in (84, 120, 158)],
    ("timit", "adam-lstm", 158, {**TIMIT, "momentum": 0.3, "step_size": 0.1, "beta": 0.999}),
    ("timit", "rmsprop-lstm", 158, {**TIMIT, "step_size": 0.1, "beta": 0.999}),
    ("timit", "nesterov-lstm", 158, {**TIMIT, "step_size": 0.1, "restart": 2}),
    *[("timit", "dtriv", h, TIMIT_DTRIV) for h in (224, 322)],
    *[("timit", "momentum-dtriv", h, {**TIMIT_DTRIV, "momentum": 0.3, "step_size": 0.1}) for h in (224, 322)],
    ("ptb", "lstm", 1150, {**PTB, "init": "paper", "forget_bias": 1.0}),
    ("ptb", "momentum-lstm", 1150, {**PTB, "init": "paper", "forget_bias": 1.0, "momentum": 0.0, "step_size": 0.6}),
]


def run_id(run):
    return f"{run[0]}-{run[1]}-{run[2]}"


@pytest.mark.parametrize("run", AUTHORS_RUNS, ids=run_id)
def test_each_run_of_the_authors_resolves_to_their_settings(run):
    task, model, hidden, settings = run
    config = resolve_config(task, model, {"hidden_size": hidden}, preset="paper")
    assert {k: config[k] for k in settings} == settings
    assert config["hidden_size"] == hidden and config["preset_notes"] == []


def test_the_recipe_table_covers_exactly_the_authors_runs():
    experiment = {"smnist": "mnist", "psmnist": "pmnist", "timit": "timit", "ptb": "ptb"}
    ours = {(r.experiment, r.model, h) for r in RECIPES for h in r.hidden}
    assert ours == {(experiment[t], m, h) for t, m, h, _ in AUTHORS_RUNS}
    assert len(recipe_table()) == len(RECIPES)


@pytest.mark.parametrize("task, model, hidden", [
    ("smnist", "lstm", 256), ("smnist", "adam-lstm", 256), ("psmnist", "nesterov-lstm", 256),
    ("psmnist", "dtriv", 170), ("psmnist", "momentum-dtriv", 170), ("timit", "lstm", 158),
    ("timit", "rmsprop-lstm", 158), ("timit", "dtriv", 224), ("ptb", "momentum-lstm", 1150),
])
def test_without_hidden_size_the_size_at_which_they_ran_every_model(task, model, hidden):
    config = resolve_config(task, model, preset="paper")
    assert config["hidden_size"] == hidden and config["preset_notes"] == []


def test_a_size_they_never_ran_is_recorded_and_takes_the_nearest_run():
    config = resolve_config("psmnist", "dtriv", {"hidden_size": 400}, preset="paper")
    assert (config["lr"], config["lr_orth"], config["trivialization"]) == (7e-4, 5e-5, 0)      # the H 360 run
    assert any("hidden size 400 is not one of the authors' runs" in n and "H 170, 360, 512" in n
               for n in config["preset_notes"])
    small = resolve_config("smnist", "adam-lstm", {"hidden_size": 128}, preset="paper")
    assert small["beta"] == 0.1 and "not one of the authors' runs" in small["preset_notes"][0]


def test_explicit_overrides_are_recorded():
    config = resolve_config("smnist", "momentum-lstm", {"lr": 3e-4, "momentum": 0.6, "epochs": 2}, preset="paper")
    assert config["lr"] == 3e-4 and config["epochs"] == 2
    assert "--lr 0.0003 overrides the recipe's 0.001" in config["preset_notes"]
    assert "--epochs 2 overrides the recipe's 150" in config["preset_notes"]
    assert not any("--momentum" in n for n in config["preset_notes"])           # the recipe's own value


@pytest.mark.parametrize("task, model, expected, note", [
    ("copy", "lstm", {**MNIST, "hidden_size": 256}, "no copy-task settings"),
    ("adding", "momentum-lstm", {"momentum": 0.6, "step_size": 0.6}, "no adding-task settings"),
    ("speech", "momentum-lstm", {**TIMIT, "momentum": 0.3, "step_size": 0.1}, "Free Spoken Digit Dataset"),
    ("smnist", "momentum-gru", {**MNIST, "momentum": 0.6, "step_size": 0.6}, "applied to the GRU"),
    ("smnist", "gru", MNIST, "the plain rule on mnist with the LSTM only"),
    ("psmnist", "restart-lstm", {**MNIST, "step_size": 0.9, "restart": 40}, "SRLSTM (nesterov-lstm) row"),
    ("psmnist", "adam-dtriv", {**PMNIST_DTRIV, "lr": 7e-4, "lr_orth": 2e-4, "hidden_size": 170, "momentum": 0.3,
                               "step_size": 0.3, "beta": 0.8}, "their logged runs (mu 0.3, s 0.3, beta 0.8)"),
    ("psmnist", "rmsprop-dtriv", {**PMNIST_DTRIV, "step_size": 0.3, "beta": 0.9}, "their logged runs (s 0.3, beta 0.9)"),
    ("psmnist", "restart-dtriv", {**PMNIST_DTRIV, "step_size": 0.3, "restart": 2}, "their logged runs (s 0.3, r 2)"),
    ("timit", "adam-dtriv", {**TIMIT_DTRIV, "momentum": 0.6, "step_size": 0.6, "beta": 0.1},
     "the library's adam settings (no logged run"),
    ("smnist", "dtriv", {**{k: v for k, v in PMNIST_DTRIV.items() if not k.startswith("permutation")},
                         "trivialization": 1}, "orthogonal models on permuted MNIST and TIMIT"),
    ("ptb", "restart-lstm", {"step_size": 0.6, "restart": 2, "restart_counter": "reset"},
     "the authors' logged runs (s 0.6, r 2)"),
    ("ptb", "adam-lstm", {"momentum": 0.9, "step_size": 0.1, "beta": 0.999}, "script defaults to"),
])
def test_models_they_did_not_run_take_the_nearest_recipe_with_a_note(task, model, expected, note):
    config = resolve_config(task, model, preset="paper")
    assert {k: config[k] for k in expected} == expected
    assert any(note in n for n in config["preset_notes"]), config["preset_notes"]


def test_no_orthogonal_recipe_on_penn_treebank():
    with pytest.raises(ValueError, match="no orthogonal model on Penn Treebank"):
        paper_preset("ptb", "dtriv")


# ----------------------------------------------------------------------------- PTB step counter
def tiny_language_model(counter):
    config = resolve_config("ptb", "restart-lstm", {"hidden_size": 5, "emb_size": 4, "num_layers": 1, "bptt": 3,
                                                     "step_size": 0.6, "restart": 4, "restart_counter": counter})
    torch.manual_seed(0)
    return LanguageModel(config, 11).double().eval()


def test_ptb_counter_reset_equals_a_per_step_implementation():
    """The authors' PTB cell: k = 1, 2, ... restarting every r steps and starting again at
    1 in every call, while the velocity, h and c carry over."""
    model = tiny_language_model("reset")
    tokens = torch.randint(0, 11, (2, 7))
    chunks = (tokens[:, :3], tokens[:, 3:])
    with torch.no_grad():
        first = model(chunks[0])
        second = model(chunks[1], first.state)
    got = torch.cat([first.logits, second.logits], dim=1)

    layer = model.layers[0]
    w, u, b_ih, b_hh = layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0, layer.bias_hh_l0
    h = c = torch.zeros(2, 5, dtype=torch.float64)
    v = torch.zeros(2, 20, dtype=torch.float64)
    logits = []
    for chunk in chunks:
        k = 0
        for x in model.encoder.weight[chunk].unbind(1):
            k += 1
            v = (k - 1) / (k + 2) * v + 0.6 * (x @ w.T + b_ih)
            i, f, g, o = (v + h @ u.T + b_hh).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            logits.append(F.linear(h, model.decoder_weight, model.decoder_bias))
            if k % 4 == 0:
                k = 0
    torch.testing.assert_close(got, torch.stack(logits, 1), atol=1e-12, rtol=1e-12)


def test_ptb_counter_carry_equals_one_long_run():
    model = tiny_language_model("carry")
    tokens = torch.randint(0, 11, (2, 7))
    with torch.no_grad():
        whole = model(tokens).logits
        first = model(tokens[:, :3])
        second = model(tokens[:, 3:], first.state)
    torch.testing.assert_close(torch.cat([first.logits, second.logits], 1), whole, atol=1e-12, rtol=1e-12)
    reset = tiny_language_model("reset")
    with torch.no_grad():
        split = torch.cat([reset(tokens[:, :3]).logits, reset(tokens[:, 3:], reset(tokens[:, :3]).state).logits], 1)
    assert not torch.allclose(split, whole)                   # the two options differ


def test_ptb_counter_option_is_checked():
    from momentumrnn.experiments.config import ConfigError

    with pytest.raises(ConfigError, match="restart_counter must be 'carry'"):
        resolve_config("ptb", "restart-lstm", {"restart_counter": "sometimes"})
    assert resolve_config("ptb", "restart-lstm")["restart_counter"] == "carry"
    assert math.isclose(resolve_config("ptb", "lstm", preset="paper")["weight_decay"], 1.2e-6)


def test_list_paper_shows_the_remaining_differences_with_their_reasons(capsys):
    from momentumrnn.experiments.cli import main
    from momentumrnn.experiments.presets import REMAINING_DIFFERENCES

    assert main(["list", "--preset", "paper"]) == 0
    out = " ".join(capsys.readouterr().out.split())             # rows are wrapped
    assert REMAINING_DIFFERENCES and all(what in out and why in out for what, why in REMAINING_DIFFERENCES)
    assert "base_change_gradient=authors" in out and "permutation=authors" in out and "bptt_cap=False" in out


def test_list_paper_speaks_of_tasks_in_rows_a_terminal_holds(capsys):
    """The recipes by task name (smnist, not the authors' mnist), rows of at most 100
    characters, and a word on the Penn Treebank MomentumLSTM's momentum 0."""
    from momentumrnn.experiments.cli import main

    assert main(["list", "--preset", "paper"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(map(len, lines)) <= 100
    tasks = {line.split()[0] for line in lines if line.startswith("  ") and not line.startswith("   ")
             and not line.startswith("  - ")}
    assert tasks == {"smnist", "psmnist", "timit", "ptb"}
    ptb = "\n".join(lines[next(i for i, line in enumerate(lines) if "ptb      momentum-lstm" in line):])
    assert "momentum=0.0" in ptb and "note: momentum=0.0 is the authors' setting" in ptb
