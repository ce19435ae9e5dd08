"""The authors' settings and the figures they published, as data.

``paper_preset(task, model)`` returns the configuration keys that ``--preset paper``
sets for a (task, model) pair, and notes saying where a setting was carried over from
another task or model because the paper gives none for this pair. Explicit command-line
flags override every key.
"""

from __future__ import annotations

__all__ = ["PAPER_TRAINING", "PAPER_RULES", "PAPER_RULES_DTRIV", "PAPER_TASK", "PUBLISHED", "NAMED_PRESETS",
           "paper_preset", "published", "named_preset"]

#: Training recipe per paper experiment.
PAPER_TRAINING = {
    "mnist": {"optimizer": "rmsprop", "lr": 1e-3, "alpha": 0.9, "batch_size": 128, "epochs": 150, "clip": 1.0,
              "init": "paper", "forget_bias": 1.0, "hidden_size": 128},
    "pmnist": {"optimizer": "rmsprop", "lr": 1e-3, "alpha": 0.9, "batch_size": 128, "epochs": 150, "clip": 1.0,
               "init": "paper", "forget_bias": 1.0, "hidden_size": 128},
    # For the speech and Penn Treebank tasks (a later issue).
    "timit": {"optimizer": "adam", "lr": 1e-4, "batch_size": 32, "epochs": 700, "init": "paper",
              "forget_bias": -4.0, "hidden_size": 158},
    "ptb": {"optimizer": "sgd", "lr": 30.0, "batch_size": 20, "epochs": 500, "clip": 0.25, "init": "paper",
            "forget_bias": 1.0, "hidden_size": 1150, "num_layers": 3},
}
# The 3-layer AWD-LSTM of the authors' Penn Treebank experiment (Merity et al. 2018's PTB
# command): SGD then NT-ASGD, variable bptt around 70, tied weights, the four dropouts,
# weight drop .5 on the recurrent weights, AR 2, TAR 1, weight decay 1.2e-6.
PAPER_TRAINING["ptb"].update(optimizer="ntasgd", nonmono=5, emb_size=400, tied=True, bptt=70, variable_bptt=True,
                             dropout=0.4, dropouth=0.25, dropouti=0.4, dropoute=0.1, wdrop=0.5, ar=2.0, tar=1.0,
                             weight_decay=1.2e-6, eval_batch_size=10)

#: Rule hyperparameters per paper experiment and rule (mu = momentum, s = step_size).
#: "nesterov" is the paper's SRLSTM; on Penn Treebank the authors' NesterovLSTM is our
#: input-only "restart" rule (settings not published).
PAPER_RULES = {
    "mnist": {"momentum": {"momentum": 0.6, "step_size": 0.6},
              "adam": {"momentum": 0.6, "step_size": 0.6, "beta": 0.1},
              "rmsprop": {"step_size": 0.6, "beta": 0.9},
              "nesterov": {"step_size": 1.0, "restart": 2}},
    "pmnist": {"momentum": {"momentum": 0.6, "step_size": 1.0},
               "adam": {"momentum": 0.6, "step_size": 1.0, "beta": 0.01},
               "rmsprop": {"step_size": 1.0, "beta": 0.01},
               "nesterov": {"step_size": 0.9, "restart": 40}},
    "timit": {"momentum": {"momentum": 0.3, "step_size": 0.1},
              "adam": {"momentum": 0.3, "step_size": 0.1, "beta": 0.999},
              "rmsprop": {"step_size": 0.1, "beta": 0.999},
              "nesterov": {"step_size": 0.1, "restart": 2}},
    "ptb": {"momentum": {"momentum": 0.0, "step_size": 0.6}},
}

#: Rule settings of the orthogonal (DTRIV) models per experiment (the paper's
#: PMNIST runs at H 170; at H 360/512 the authors used mu .3, s .3).
PAPER_RULES_DTRIV = {
    "pmnist": {"momentum": {"momentum": 0.6, "step_size": 0.9}},
    "timit": {"momentum": {"momentum": 0.3, "step_size": 0.1}},
}

#: Our task -> the paper experiment whose settings it takes, and a note when it is borrowed.
PAPER_TASK = {
    "smnist": ("mnist", None),
    "psmnist": ("pmnist", None),
    "copy": ("mnist", "the paper has no copy-task settings: using its pixel-MNIST settings"),
    "adding": ("mnist", "the paper has no adding-task settings: using its pixel-MNIST settings"),
    "speech": ("timit", "speech runs the paper's TIMIT settings on the Free Spoken Digit Dataset"),
    "timit": ("timit", None),
    "ptb": ("ptb", None),
}

#: Presets other than "paper": (task, name) -> (settings, the paper experiment whose rule
#: settings apply, a description). ``small`` is the classic small word-level PTB model
#: (the PyTorch word-language-model example's: 2 x 200 LSTM, bptt 35, batch 20, SGD lr 20
#: divided by 4 when validation stalls, clip 0.25, dropout 0.2, 40 epochs).
NAMED_PRESETS = {
    ("ptb", "small"): ({"optimizer": "sgd", "lr": 20.0, "lr_anneal": 4.0, "batch_size": 20, "eval_batch_size": 10,
                        "epochs": 40, "clip": 0.25, "init": "torch", "hidden_size": 200, "num_layers": 2,
                        "emb_size": 200, "tied": False, "bptt": 35, "variable_bptt": False, "dropout": 0.2,
                        "dropouth": 0.2, "dropouti": 0.2, "dropoute": 0.0, "wdrop": 0.0, "ar": 0.0, "tar": 0.0},
                       "ptb", "2 layers of 200 units, bptt 35, SGD lr 20 (/4 on a stalled validation), dropout 0.2"),
}

#: Figures the authors published, shown beside ours by ``report``.
#: ``value`` is in the unit of ``metric``; ``hidden`` None means any hidden size.
PUBLISHED = [
    {"task": "smnist", "model": "lstm", "hidden": None, "metric": "test accuracy %", "value": "98.90",
     "note": "ablation grid, mu 0 s 1.0; best test epoch"},
    {"task": "smnist", "model": "momentum-lstm", "hidden": None, "metric": "test accuracy %",
     "value": "99.00-99.08", "note": "ablation grid, mu .6, s in {.3,.6,.9,1.0}; best test epoch"},
    {"task": "timit", "model": "lstm", "hidden": 158, "metric": "test MSE", "value": "9.11", "note": "mean of 5"},
    {"task": "timit", "model": "momentum-lstm", "hidden": 158, "metric": "test MSE", "value": "5.67",
     "note": "mean of 5"},
    {"task": "timit", "model": "adam-lstm", "hidden": 158, "metric": "test MSE", "value": "8.39", "note": "mean of 5"},
    {"task": "timit", "model": "rmsprop-lstm", "hidden": 158, "metric": "test MSE", "value": "8.87",
     "note": "mean of 5"},
    {"task": "timit", "model": "nesterov-lstm", "hidden": 158, "metric": "test MSE", "value": "5.64",
     "note": "mean of 5"},
    {"task": "timit", "model": "lstm", "hidden": 120, "metric": "test MSE", "value": "11.49", "note": "mean of 5"},
    {"task": "timit", "model": "momentum-lstm", "hidden": 120, "metric": "test MSE", "value": "7.85",
     "note": "mean of 5"},
    {"task": "timit", "model": "adam-lstm", "hidden": 120, "metric": "test MSE", "value": "10.71",
     "note": "mean of 5"},
    {"task": "timit", "model": "rmsprop-lstm", "hidden": 120, "metric": "test MSE", "value": "11.61",
     "note": "mean of 5"},
    {"task": "timit", "model": "nesterov-lstm", "hidden": 120, "metric": "test MSE", "value": "7.98",
     "note": "mean of 5"},
    {"task": "ptb", "model": "lstm", "hidden": None, "metric": "test perplexity", "value": "59.71", "note": ""},
    {"task": "ptb", "model": "momentum-lstm", "hidden": None, "metric": "test perplexity", "value": "58.62",
     "note": "mu 0, s .6"},
]


def published(task: str, model: str, hidden: int | None) -> dict | None:
    """The paper's figure for this task, model and hidden size, if it published one."""
    for entry in PUBLISHED:
        if entry["task"] == task and entry["model"] == model and entry["hidden"] in (None, hidden):
            return entry
    return None


def named_preset(task: str, name: str, recurrence: str | None, rule: str | None) -> tuple[dict, list[str]]:
    """Configuration keys and notes of ``--preset NAME`` (not "paper") for a task and model."""
    if (task, name) not in NAMED_PRESETS:
        names = ["paper"] + sorted(n for t, n in NAMED_PRESETS if t == task)
        raise ValueError(f"unknown preset {name!r} for task {task!r}; choose from {', '.join(names)}")
    settings, experiment, _ = NAMED_PRESETS[task, name]
    settings, notes = dict(settings), []
    if rule is not None:
        rules = PAPER_RULES[experiment]
        if rule in rules:
            settings.update(rules[rule])
            notes.append(f"{rule} settings of the paper's {experiment} experiment")
        else:
            notes.append(f"the paper gives no {rule}-rule settings for {experiment}: using the library defaults")
    return settings, notes


def paper_preset(task: str, recurrence: str | None, rule: str | None) -> tuple[dict, list[str]]:
    """Configuration keys of ``--preset paper`` for a task and a model given as its
    recurrence and rule (``rule`` None for torch's plain layers), and notes."""
    if task not in PAPER_TASK:
        raise ValueError(f"--preset paper: no paper settings for task {task!r}")
    experiment, note = PAPER_TASK[task]
    settings = dict(PAPER_TRAINING[experiment])
    notes = [note] if note else []
    if recurrence == "orthogonal":
        settings["lr_orth"] = settings["lr"] / 10
        notes.append("the paper gives no learning rates for DTRIV: lr as for the LSTM, lr_orth = lr / 10")
        rules = PAPER_RULES_DTRIV.get(experiment, {})
        if rule in rules:
            settings.update(rules[rule])
        elif rule != "none":
            notes.append(f"the paper gives no {rule}-DTRIV settings for {experiment}: using the library defaults")
    elif rule is not None:
        rules = PAPER_RULES[experiment]
        if rule in rules:
            settings.update(rules[rule])
            if recurrence != "lstm":
                notes.append(f"the paper's {rule} settings are for the LSTM; applied to the {recurrence.upper()} as is")
        else:
            notes.append(f"the paper gives no {rule}-rule settings for {experiment}: using the library defaults")
    return settings, notes
