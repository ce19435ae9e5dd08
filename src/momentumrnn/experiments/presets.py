"""The authors' recipes as one table of data, and the figures they published.

Every row of ``RECIPES`` is one configuration the authors ran: the experiment (``mnist``,
``pmnist``, ``timit``, ``ptb``), the model in our names, the hidden sizes they ran it at,
and every setting their scripts used (optimizers and learning rates, RMSprop's alpha,
batch, epochs, clipping, initialization, rule hyperparameters, the orthogonal models' K,
skew initialization and ``lr_orth``). ``paper_preset(task, model, hidden_size)`` resolves
``--preset paper`` from it:

* the task's experiment (``TASK_EXPERIMENT``; copy and adding take pixel MNIST's, speech
  takes TIMIT's, with a note);
* the row of that model, at ``hidden_size`` when the authors ran that size (their settings
  differ per size for the orthogonal models), else at the size at which they ran every
  model of that table (``DEFAULT_HIDDEN``); a size they never ran takes the nearest row's
  settings and is recorded as not one of their runs;
* a model they did not run on that experiment takes the nearest recipe (``_nearest``)
  with a note saying which.

The notes land in ``config.json`` (``preset_notes``), as do explicit flags that override a
setting of the recipe (``config.resolve_config``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Recipe", "RECIPES", "TASK_EXPERIMENT", "EXPERIMENT_TASK", "RECIPE_NOTES", "DEFAULT_HIDDEN", "PUBLISHED", "NAMED_PRESETS", "LOGGED_RULES",
           "REMAINING_DIFFERENCES", "remaining_differences",
           "paper_preset", "published", "named_preset", "recipe_table"]


@dataclass(frozen=True)
class Recipe:
    """One run configuration of the authors: ``model`` on ``experiment`` at each of
    ``hidden`` (the hidden sizes they ran it at), with ``settings``."""

    experiment: str
    model: str
    hidden: tuple[int, ...]
    settings: dict


# Settings shared by the rows of one table.
_MNIST = {"optimizer": "rmsprop", "lr": 1e-3, "alpha": 0.9, "batch_size": 128, "epochs": 150, "clip": 1.0,
          "init": "paper", "forget_bias": 1.0}
# Permuted MNIST: the authors' permutation, numpy's RandomState(seed).permutation(784), from
# the run's seed (their script has one seed for everything).
_PERMUTATION = {"permutation": "authors", "permutation_seed": None}
_PMNIST = {**_MNIST, **_PERMUTATION}
# Orthogonal models: RMSprop (torch's alpha 0.99) at lr on everything but U, RMSprop at
# lr_orth on U's parameters; trivialization K: change of base every K steps, 0 = never.
# Their change of base happens inside the forward pass: "authors" takes the gradient of the
# step after it as their code does (``OrthogonalRNN``, base_change_gradient).
_PMNIST_DTRIV = {"optimizer": "rmsprop", "alpha": 0.99, "batch_size": 128, "epochs": 150, "clip": 1.0,
                 "orthogonal_init": "cayley", "base_change_gradient": "authors", **_PERMUTATION}
_TIMIT = {"optimizer": "adam", "lr": 1e-4, "batch_size": 32, "epochs": 700, "clip": 0.0, "init": "paper",
          "forget_bias": -4.0}
_TIMIT_DTRIV = {"optimizer": "adam", "lr": 1e-3, "lr_orth": 2e-4, "alpha": 0.99, "batch_size": 128, "epochs": 700,
                "clip": 1.0, "orthogonal_init": "henaff", "trivialization": 0, "base_change_gradient": "authors"}
# The 3-layer AWD-LSTM (SGD lr 30, then NT-ASGD), variable bptt around 70, tied weights,
# the recipe's dropouts, weight drop .5 on the recurrent weights, AR 2, TAR 1; validation
# in batches of 10, test in batches of 1; the restarted rule's step counter starts again
# at every bptt chunk while its velocity carries over; chunk lengths without AWD-LSTM's cap at
# bptt + 40 (their script has none).
_PTB = {"optimizer": "ntasgd", "lr": 30.0, "nonmono": 5, "batch_size": 20, "epochs": 500, "clip": 0.25,
        "weight_decay": 1.2e-6, "init": "paper", "forget_bias": 1.0, "num_layers": 3, "emb_size": 400,
        "tied": True, "bptt": 70, "variable_bptt": True, "dropout": 0.4, "dropouth": 0.25, "dropouti": 0.4,
        "dropoute": 0.1, "wdrop": 0.5, "ar": 2.0, "tar": 1.0, "eval_batch_size": 10, "test_batch_size": 1,
        "restart_counter": "reset", "bptt_cap": False}

#: The authors' runs, one row per (experiment, model, settings).
RECIPES = [
    # pixel MNIST
    Recipe("mnist", "lstm", (128, 256), _MNIST),
    Recipe("mnist", "momentum-lstm", (128, 256), {**_MNIST, "momentum": 0.6, "step_size": 0.6}),
    Recipe("mnist", "adam-lstm", (256,), {**_MNIST, "momentum": 0.6, "step_size": 0.6, "beta": 0.1}),
    Recipe("mnist", "rmsprop-lstm", (256,), {**_MNIST, "step_size": 0.6, "beta": 0.9}),
    Recipe("mnist", "nesterov-lstm", (256,), {**_MNIST, "step_size": 1.0, "restart": 2}),
    # permuted MNIST
    Recipe("pmnist", "lstm", (128, 256), _PMNIST),
    Recipe("pmnist", "momentum-lstm", (128, 256), {**_PMNIST, "momentum": 0.6, "step_size": 1.0}),
    Recipe("pmnist", "adam-lstm", (256,), {**_PMNIST, "momentum": 0.6, "step_size": 1.0, "beta": 0.01}),
    Recipe("pmnist", "rmsprop-lstm", (256,), {**_PMNIST, "step_size": 1.0, "beta": 0.01}),
    Recipe("pmnist", "nesterov-lstm", (256,), {**_PMNIST, "step_size": 0.9, "restart": 40}),
    Recipe("pmnist", "dtriv", (170,), {**_PMNIST_DTRIV, "lr": 7e-4, "lr_orth": 2e-4, "trivialization": 1}),
    Recipe("pmnist", "dtriv", (360,), {**_PMNIST_DTRIV, "lr": 7e-4, "lr_orth": 5e-5, "trivialization": 0}),
    Recipe("pmnist", "dtriv", (512,), {**_PMNIST_DTRIV, "lr": 3e-4, "lr_orth": 7e-5, "trivialization": 0}),
    Recipe("pmnist", "momentum-dtriv", (170,), {**_PMNIST_DTRIV, "lr": 7e-4, "lr_orth": 2e-4, "trivialization": 1,
                                                "momentum": 0.6, "step_size": 0.9}),
    Recipe("pmnist", "momentum-dtriv", (360,), {**_PMNIST_DTRIV, "lr": 7e-4, "lr_orth": 5e-5, "trivialization": 0,
                                                "momentum": 0.3, "step_size": 0.3}),
    Recipe("pmnist", "momentum-dtriv", (512,), {**_PMNIST_DTRIV, "lr": 3e-4, "lr_orth": 7e-5, "trivialization": 0,
                                                "momentum": 0.3, "step_size": 0.3}),
    # TIMIT next-frame prediction
    Recipe("timit", "lstm", (84, 120, 158), _TIMIT),
    Recipe("timit", "momentum-lstm", (84, 120, 158), {**_TIMIT, "momentum": 0.3, "step_size": 0.1}),
    Recipe("timit", "adam-lstm", (158,), {**_TIMIT, "momentum": 0.3, "step_size": 0.1, "beta": 0.999}),
    Recipe("timit", "rmsprop-lstm", (158,), {**_TIMIT, "step_size": 0.1, "beta": 0.999}),
    Recipe("timit", "nesterov-lstm", (158,), {**_TIMIT, "step_size": 0.1, "restart": 2}),
    Recipe("timit", "dtriv", (224, 322), _TIMIT_DTRIV),
    Recipe("timit", "momentum-dtriv", (224, 322), {**_TIMIT_DTRIV, "momentum": 0.3, "step_size": 0.1}),
    # Penn Treebank
    Recipe("ptb", "lstm", (1150,), _PTB),
    Recipe("ptb", "momentum-lstm", (1150,), {**_PTB, "momentum": 0.0, "step_size": 0.6}),
]

#: Our task -> the experiment whose recipes it takes, and a note when it borrows them.
TASK_EXPERIMENT = {
    "smnist": ("mnist", None),
    "psmnist": ("pmnist", None),
    "copy": ("mnist", "the paper has no copy-task settings: using its pixel-MNIST recipes"),
    "adding": ("mnist", "the paper has no adding-task settings: using its pixel-MNIST recipes"),
    "speech": ("timit", "speech runs the paper's TIMIT recipes on the Free Spoken Digit Dataset"),
    "timit": ("timit", None),
    "ptb": ("ptb", None),
}

#: The hidden size of a preset without --hidden-size: the size at which the authors ran
#: every model of the table, per experiment and family ("lstm" for the LSTM family and
#: the GRU/RNN variants that borrow its recipes, "orthogonal").
DEFAULT_HIDDEN = {("mnist", "lstm"): 256, ("pmnist", "lstm"): 256, ("pmnist", "orthogonal"): 170,
                  ("timit", "lstm"): 158, ("timit", "orthogonal"): 224, ("ptb", "lstm"): 1150}

#: Rule settings of the authors' Penn Treebank script for models no published run uses
#: (its argparse defaults).
_PTB_UNPUBLISHED_RULES = {"momentum": 0.9, "step_size": 0.1, "beta": 0.999, "restart": 0}
#: Runs the authors logged but published no recipe for: (experiment, rule) -> the rule
#: settings their logs show. One rule for every such model: it takes these rule settings,
#: on top of the training settings of its nearest recipe, and a note says so.
LOGGED_RULES = {
    ("ptb", "restart"): {"step_size": 0.6, "restart": 2},
    ("pmnist", "adam"): {"momentum": 0.3, "step_size": 0.3, "beta": 0.8},
    ("pmnist", "rmsprop"): {"step_size": 0.3, "beta": 0.9},
    ("pmnist", "restart"): {"step_size": 0.3, "restart": 2},
}


def _settings_text(settings: dict) -> str:
    names = {"momentum": "mu", "step_size": "s", "beta": "beta", "restart": "r"}
    return ", ".join(f"{names[k]} {v}" for k, v in settings.items())

#: Presets other than "paper": (task, name) -> (settings, the experiment whose rule
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
#: ``value`` is in the unit of ``metric``; ``hidden`` None means any hidden size;
#: ``settings``: the rule settings of the published runs (a run with other values, e.g. a
#: mu = 0 control, is not what the figure measured).
PUBLISHED = [
    {"task": "smnist", "model": "lstm", "hidden": None, "metric": "test accuracy %", "value": "98.90",
     "note": "ablation grid, mu 0 s 1.0; best test epoch"},
    {"task": "smnist", "model": "momentum-lstm", "hidden": None, "metric": "test accuracy %",
     "value": "99.00-99.08", "note": "ablation grid, mu .6, s in {.3,.6,.9,1.0}; best test epoch",
     "settings": {"momentum": 0.6}},
    {"task": "timit", "model": "lstm", "hidden": 158, "metric": "test MSE", "value": "9.11", "note": "mean of 5"},
    {"task": "timit", "model": "momentum-lstm", "hidden": 158, "metric": "test MSE", "value": "5.67",
     "note": "mean of 5", "settings": {"momentum": 0.3, "step_size": 0.1}},
    {"task": "timit", "model": "adam-lstm", "hidden": 158, "metric": "test MSE", "value": "8.39", "note": "mean of 5",
     "settings": {"momentum": 0.3, "step_size": 0.1, "beta": 0.999}},
    {"task": "timit", "model": "rmsprop-lstm", "hidden": 158, "metric": "test MSE", "value": "8.87",
     "note": "mean of 5", "settings": {"step_size": 0.1, "beta": 0.999}},
    {"task": "timit", "model": "nesterov-lstm", "hidden": 158, "metric": "test MSE", "value": "5.64",
     "note": "mean of 5", "settings": {"step_size": 0.1, "restart": 2}},
    {"task": "timit", "model": "lstm", "hidden": 120, "metric": "test MSE", "value": "11.49", "note": "mean of 5"},
    {"task": "timit", "model": "momentum-lstm", "hidden": 120, "metric": "test MSE", "value": "7.85",
     "note": "mean of 5", "settings": {"momentum": 0.3, "step_size": 0.1}},
    {"task": "timit", "model": "adam-lstm", "hidden": 120, "metric": "test MSE", "value": "10.71",
     "note": "mean of 5", "settings": {"momentum": 0.3, "step_size": 0.1, "beta": 0.999}},
    {"task": "timit", "model": "rmsprop-lstm", "hidden": 120, "metric": "test MSE", "value": "11.61",
     "note": "mean of 5", "settings": {"step_size": 0.1, "beta": 0.999}},
    {"task": "timit", "model": "nesterov-lstm", "hidden": 120, "metric": "test MSE", "value": "7.98",
     "note": "mean of 5", "settings": {"step_size": 0.1, "restart": 2}},
    {"task": "ptb", "model": "lstm", "hidden": None, "metric": "test perplexity", "value": "59.71", "note": ""},
    {"task": "ptb", "model": "momentum-lstm", "hidden": None, "metric": "test perplexity", "value": "58.62",
     "note": "mu 0, s .6", "settings": {"momentum": 0.0, "step_size": 0.6}},
]


def published(task: str, model: str, hidden: int | None, config: dict | None = None) -> dict | None:
    """The paper's figure for this task, model and hidden size, if it published one; with
    ``config``, only where the run's rule settings are those of the published runs."""
    for entry in PUBLISHED:
        if entry["task"] == task and entry["model"] == model and entry["hidden"] in (None, hidden):
            if config is not None and any(config.get(k) != v for k, v in entry.get("settings", {}).items()):
                continue
            return entry
    return None


def _family(model: str) -> str:
    return "orthogonal" if model == "dtriv" or model.endswith("-dtriv") else "lstm"


def _rule(model: str) -> str | None:
    """The rule part of a model name (None for torch's plain layers and ``dtriv``)."""
    return model.rsplit("-", 1)[0] if "-" in model else None


def _nearest(experiment: str, model: str, rows: dict) -> tuple[str, dict, str]:
    """For a model without a row on ``experiment``: the model whose rows it takes, rule
    settings to put on top, and the note saying so."""
    rule, recurrence = _rule(model), model.rsplit("-", 1)[-1]
    lstm_model = "lstm" if rule is None else f"{rule}-lstm"
    logged = LOGGED_RULES.get((experiment, rule))
    if _family(model) == "orthogonal" and logged:
        return ("dtriv", dict(logged), f"the authors published no recipe for {model} on {experiment}: the "
                f"training settings of their DTRIV runs with the rule settings of their logged runs "
                f"({_settings_text(logged)})")
    if _family(model) == "orthogonal":
        return ("dtriv", {}, f"the authors did not run {model} on {experiment}: the training settings of their "
                f"DTRIV runs with the library's {rule} settings (no logged run of theirs gives any)")
    if logged and experiment == "ptb":
        return ("lstm", dict(logged), f"no published Penn Treebank recipe uses the {rule} rule: the AWD-LSTM "
                f"recipe with the rule settings of the authors' logged runs ({_settings_text(logged)})")
    if rule == "restart":                               # the input-only restarted rule: the SRLSTM's s and r
        return ("nesterov-lstm", {}, f"the authors did not run {model} on {experiment}: the settings of their "
                f"SRLSTM (nesterov-lstm) row, s and r included")
    if lstm_model in rows:
        return (lstm_model, {}, f"the authors ran the {rule or 'plain'} rule on {experiment} with the LSTM only: "
                f"their {lstm_model} settings, applied to the {recurrence.upper()} as they are")
    if experiment == "ptb":
        return ("lstm", dict(_PTB_UNPUBLISHED_RULES), f"no published Penn Treebank run uses {model}: the AWD-LSTM "
                f"recipe with the rule settings the authors' script defaults to (mu 0.9, s 0.1, beta 0.999, r 0)")
    raise ValueError(f"--preset paper: no recipe of the authors fits {model!r} on {experiment}")


def _rows(experiment: str) -> dict[str, list[Recipe]]:
    rows: dict[str, list[Recipe]] = {}
    for recipe in RECIPES:
        if recipe.experiment == experiment:
            rows.setdefault(recipe.model, []).append(recipe)
    return rows


def paper_preset(task: str, model: str, hidden_size: int | None = None) -> tuple[dict, list[str]]:
    """Configuration keys of ``--preset paper`` for ``model`` on ``task`` (at ``hidden_size``
    when given), and notes saying where the settings depart from an authors' run."""
    if task not in TASK_EXPERIMENT:
        raise ValueError(f"--preset paper: no paper settings for task {task!r}")
    experiment, note = TASK_EXPERIMENT[task]
    notes = [note] if note else []
    family = _family(model)
    if family == "orthogonal" and experiment == "ptb":
        raise ValueError(f"--preset paper: the authors ran no orthogonal model on Penn Treebank")
    if family == "orthogonal" and experiment == "mnist":
        experiment = "pmnist"
        notes.append("the authors ran the orthogonal models on permuted MNIST and TIMIT only: their permuted-MNIST "
                     "recipe")
    rows = _rows(experiment)
    source, extra = model, {}
    if model not in rows:
        source, extra, why = _nearest(experiment, model, rows)
        notes.append(why)
    candidates = rows[source]
    sizes = sorted(h for r in candidates for h in r.hidden)
    default = DEFAULT_HIDDEN[experiment, family]
    if hidden_size is None:
        hidden_size = default if default in sizes else max(sizes)
        recipe = next(r for r in candidates if hidden_size in r.hidden)
    else:
        recipe = next((r for r in candidates if hidden_size in r.hidden), None)
        if recipe is None:
            nearest = min(sizes, key=lambda h: (abs(h - hidden_size), h))
            recipe = next(r for r in candidates if nearest in r.hidden)
            notes.append(f"hidden size {hidden_size} is not one of the authors' runs (they ran {source} on "
                         f"{experiment} at H {', '.join(map(str, sizes))}): the settings of their H {nearest} run")
    settings = {**recipe.settings, **extra, "hidden_size": hidden_size}
    return settings, notes


#: Where a ``--preset paper`` run still trains differently from the authors' scripts:
#: (what differs, why it is kept). ``momentumrnn list --preset paper`` prints them.
REMAINING_DIFFERENCES = [
    ("Model selection: MNIST and permuted MNIST hold out 5,000 training images and keep the weights of the best "
     "validation, evaluating test once with them; the authors train on all 60,000 and report the best test "
     "accuracy over epochs",
     "selecting on test overstates the result; the library never selects on test"),
    ("Random draws: initialization, data order, dropout masks and Penn Treebank chunk lengths come from the "
     "library's seeded generators, not from the authors' global numpy/torch streams (same distributions, other "
     "draws; the permuted-MNIST permutation alone is theirs)",
     "each stream is seeded per purpose, so that a resumed run continues exactly"),
    ("DTRIV schedule: the authors' end-of-epoch evaluation also counts as a forward for the change of base "
     "(with K = 1 it changes the base, and the first training step after it takes the clean gradient; with a "
     "finite K > 1 the schedule shifts by one step per epoch); the library counts optimizer steps only",
     "an evaluation should not change the trained model"),
    ("DTRIV base: re-orthogonalized by QR at every change of base; the authors project it by SVD every 100 "
     "changes",
     "differs by rounding only"),
    ("Penn Treebank NT-ASGD: at the switch torch.optim.ASGD takes the current SGD rate; the authors' takes the "
     "initial --lr",
     "the same under the preset (no --lr-anneal); differs only where the rate was annealed"),
    ("Penn Treebank epoch end: the last chunk may be a single token and its rate is scaled by its clamped "
     "length; the authors stop one token earlier and scale by the drawn length",
     "one step per epoch"),
]


#: The task of each experiment's recipes, the name a user gives ``--task``.
EXPERIMENT_TASK = {"mnist": "smnist", "pmnist": "psmnist", "timit": "timit", "ptb": "ptb"}

#: A word on recipe settings that look like a slip: (experiment, model) -> note.
RECIPE_NOTES = {
    ("ptb", "momentum-lstm"): "momentum=0.0 is the authors' setting, not a missing value: their published "
                              "Penn Treebank MomentumLSTM (test perplexity 58.62) ran with mu 0 and s .6, so "
                              "v_t = s u_t, an LSTM whose input drive is scaled by s",
}

#: Width of ``momentumrnn list`` rows.
WIDTH = 100


def wrapped(head: str, text: str, width: int = WIDTH) -> str:
    """``head`` then ``text`` wrapped at ``width``, continued under the text's first column."""
    import textwrap

    lines = textwrap.wrap(text, max(20, width - len(head)), break_on_hyphens=False) or [""]
    return "\n".join([head + lines[0], *(" " * len(head) + line for line in lines[1:])])


def remaining_differences() -> list[str]:
    """``REMAINING_DIFFERENCES``, one item each, wrapped (``momentumrnn list --preset paper``)."""
    return [wrapped("  - ", f"{what} (kept: {why})") for what, why in REMAINING_DIFFERENCES]


def recipe_table() -> list[str]:
    """The recipes, one item each, wrapped (``momentumrnn list --preset paper``), by task
    name; a note under a setting that needs one."""
    lines = []
    for recipe in RECIPES:
        sizes = ", ".join(map(str, recipe.hidden))
        settings = ", ".join(f"{k}={v}" for k, v in recipe.settings.items())
        head = f"  {EXPERIMENT_TASK[recipe.experiment]:8s} {recipe.model:15s} H {sizes:12s} "
        note = RECIPE_NOTES.get((recipe.experiment, recipe.model))
        lines.append(wrapped(head, settings) + ("\n" + wrapped(" " * len(head) + "note: ", note) if note else ""))
    return lines


def named_preset(task: str, name: str, model: str) -> tuple[dict, list[str]]:
    """Configuration keys and notes of ``--preset NAME`` (not "paper") for a task and model."""
    if (task, name) not in NAMED_PRESETS:
        names = ["paper"] + sorted(n for t, n in NAMED_PRESETS if t == task)
        raise ValueError(f"unknown preset {name!r} for task {task!r}; choose from {', '.join(names)}")
    settings, experiment, _ = NAMED_PRESETS[task, name]
    settings, notes = dict(settings), []
    rule = _rule(model)
    if rule is not None:
        rows = _rows(experiment)
        lstm_model = f"{rule}-lstm"
        if lstm_model in rows:
            recipe = rows[lstm_model][0]
            rule_keys = ("momentum", "step_size", "beta", "restart")
            settings.update({k: v for k, v in recipe.settings.items() if k in rule_keys})
            notes.append(f"{rule} settings of the paper's {experiment} recipe")
        else:
            notes.append(f"the paper gives no {rule}-rule settings for {experiment}: using the library defaults")
    return settings, notes
