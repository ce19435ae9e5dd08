"""The resolved configuration of a run: defaults < ``--preset paper`` < explicit flags.

A configuration is a flat JSON-able dict. Keys that only limit or place a run (epochs,
step and time budgets, device, threads, logging) may change when a run is resumed; every
other key identifies the run, and a checkpoint from a different identity is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers

import torch

from .models import model_options, model_spec, rule_hyperparameters
from .presets import named_preset, paper_preset
from .tasks import TASKS

__all__ = ["DEFAULTS", "RESUMABLE", "ConfigError", "resolve_config", "identity", "setting", "RESULT_NEUTRAL",
           "fingerprint", "describe_difference",
           "parse_device", "MAX_SEED"]


class ConfigError(ValueError):
    """A configuration that cannot run: unknown names, flags that do not apply, bad values."""


#: Defaults for every task and model (tasks add their own options, models their rule's).
DEFAULTS = {
    "seed": 0,
    "data_seed": 0,
    "hidden_size": 128,
    "num_layers": 1,
    "init": "torch",
    "forget_bias": 1.0,
    "optimizer": "rmsprop",
    "lr": 1e-3,
    "alpha": 0.99,               # RMSprop smoothing (torch's default; the paper's preset uses 0.9)
    "weight_decay": 0.0,
    "clip": 1.0,                 # gradient-norm clipping; 0 turns it off
    "batch_size": 128,
    "eval_batch_size": 256,
    "epochs": 10,
    "max_steps": None,
    "time_budget": None,         # seconds of training, summed over resumes
    "train_subset": None,
    "val_subset": None,
    "test_subset": None,
    "eval_every": None,          # steps between validations; None: at the end of each epoch
    "log_every": 50,
    "checkpoint_every": 100,
    "device": "auto",
    "threads": None,
    "download": True,
    "data_dir": None,
}

#: Keys that may differ when a run is resumed.
RESUMABLE = {"epochs", "max_steps", "time_budget", "device", "threads", "log_every", "checkpoint_every",
             "download", "data_dir", "impl"}
#: Keys that describe a run but do not identify it.
_BOOKKEEPING = {"preset", "preset_notes"}
#: Keys that cannot change a run's result beyond rounding: where it ran, how it logged and
#: checkpointed, where its data came from, which computation path ran (every path gives the
#: same numbers to rounding), and how its settings were given (the preset's resolved values
#: are in the configuration). Runs that differ only in these and the seed are one setting
#: in a report; every other key, the budgets included, splits them.
RESULT_NEUTRAL = {"device", "threads", "log_every", "checkpoint_every", "download", "data_dir", "impl",
                  "preset", "preset_notes"}

OPTIMIZERS = ("rmsprop", "adam", "sgd", "ntasgd")
_POSITIVE_INTS = ("hidden_size", "num_layers", "batch_size", "eval_batch_size", "epochs", "max_steps",
                  "train_subset", "val_subset", "test_subset", "eval_every", "log_every", "threads", "delay",
                  "length", "train_size", "val_size", "test_size")
_NON_NEGATIVE = ("clip", "weight_decay", "checkpoint_every")
_SEEDS = ("seed", "data_seed", "permutation_seed")
#: Seeds are integers in [0, MAX_SEED].
MAX_SEED = 2**32 - 1


def resolve_config(task: str, model: str, overrides: dict | None = None, preset: str | None = None) -> dict:
    """The full configuration of a run of ``model`` on ``task``.

    ``overrides`` holds the flags the user gave (None values are ignored): they win over
    the preset, which wins over the defaults. Raises ``ConfigError`` for unknown names
    and for flags that do not apply to this task or model.
    """
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    try:
        recurrence, _ = model_spec(model)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    task_type = TASKS[task]
    hyperparameters = rule_hyperparameters(model)
    config = {"task": task, "model": model, **DEFAULTS, **task_type.options, **hyperparameters,
              **model_options(model)}
    if recurrence == "orthogonal":          # the orthogonal layers have their own initializations
        del config["init"], config["forget_bias"]
    notes: list[str] = []
    settings: dict = {}
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if preset is not None:
        try:
            if preset == "paper":
                settings, notes = paper_preset(task, model, overrides.get("hidden_size"))
            else:
                settings, notes = named_preset(task, preset, model)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        settings = {k: v for k, v in settings.items() if k in config}
        config.update(settings)
    for key, value in overrides.items():
        if key not in config:
            raise ConfigError(_not_applicable(key, task, model, task_type, hyperparameters))
        if key in settings and key != "hidden_size" and settings[key] != value:      # recorded, as they depart
            notes.append(f"--{key.replace('_', '-')} {value} overrides the recipe's {settings[key]}")
        config[key] = value
    config["preset"] = preset
    config["preset_notes"] = notes
    check_config(config)
    return config


def _not_applicable(key: str, task: str, model: str, task_type, hyperparameters: dict) -> str:
    flag = "--" + key.replace("_", "-")
    if key in ("momentum", "step_size", "beta", "restart"):
        takes = ", ".join("--" + k.replace("_", "-") for k in hyperparameters) or "no rule hyperparameters"
        return f"{flag} does not apply to model {model!r}, which takes {takes}"
    if key in ("init", "forget_bias") and model_spec(model)[0] == "orthogonal":
        return f"{flag} does not apply to the orthogonal model {model!r}: use --orthogonal-init cayley|henaff"
    if key in ("orthogonal_init", "trivialization", "lr_orth", "base_change_gradient"):
        return f"{flag} applies to the orthogonal models (dtriv, momentum-dtriv, ...), not {model!r}"
    if key == "impl":
        return f"{flag} does not apply to model {model!r}: torch's layers have one path; momentumrnn's models take it"
    owners = [name for name, t in TASKS.items() if key in t.options]
    if owners:
        return f"{flag} does not apply to task {task!r} (it is an option of {', '.join(owners)})"
    return f"unknown setting {key!r}"


def parse_device(name) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` as a ``torch.device``; anything else is a ``ConfigError``."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return device


def check_config(config: dict) -> None:
    """Raise ``ConfigError`` naming the key for values out of range."""
    for key, value in config.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value}")
    for key in _SEEDS:
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)
                                  or not 0 <= value <= MAX_SEED):
            raise ConfigError(f"{key} must be an integer in [0, 2**32 - 1], got {value!r}")
    if config.get("device", "auto") != "auto":
        parse_device(config["device"])
    for key in _POSITIVE_INTS:
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    for key in _NON_NEGATIVE:
        value = config.get(key)
        if value is not None and (not isinstance(value, numbers.Real) or value < 0 or math.isnan(value)):
            raise ConfigError(f"{key} must be a number >= 0, got {value!r}")
    if config.get("time_budget") is not None and not (isinstance(config["time_budget"], numbers.Real)
                                                      and config["time_budget"] > 0):
        raise ConfigError(f"time_budget must be a number of seconds > 0 (leave it out for no budget), "
                          f"got {config['time_budget']!r}")
    if not (isinstance(config["lr"], numbers.Real) and config["lr"] > 0):
        raise ConfigError(f"lr must be a number > 0, got {config['lr']!r}")
    if not (isinstance(config["alpha"], numbers.Real) and 0 <= config["alpha"] < 1):
        raise ConfigError(f"alpha (RMSprop's smoothing constant) must be in [0, 1), got {config['alpha']!r}")
    if config["optimizer"] not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {config['optimizer']!r}")
    if config.get("init", "torch") not in ("torch", "paper"):
        raise ConfigError(f"init must be 'torch' or 'paper', got {config['init']!r}")
    if hasattr(TASKS[config["task"]], "check_options"):       # task options (speech, ptb)
        try:
            TASKS[config["task"]].check_options(config)
        except ValueError as error:
            raise ConfigError(str(error)) from None
    recurrence, rule = model_spec(config["model"])
    if recurrence == "orthogonal":
        from ..orthogonal import ORTHOGONAL_LAYERS
        rule_type = ORTHOGONAL_LAYERS[rule].rule_type
        if config["orthogonal_init"] not in ORTHOGONAL_LAYERS[rule].valid_inits:
            raise ConfigError(f"orthogonal_init must be one of {ORTHOGONAL_LAYERS[rule].valid_inits}, "
                              f"got {config['orthogonal_init']!r}")
        trivialization = config["trivialization"]
        if isinstance(trivialization, bool) or not isinstance(trivialization, numbers.Integral) or trivialization < 0:
            raise ConfigError(f"trivialization must be an integer K >= 1, or 0 for never, got {trivialization!r}")
        if not (isinstance(config["lr_orth"], numbers.Real) and config["lr_orth"] > 0):
            raise ConfigError(f"lr_orth must be a number > 0, got {config['lr_orth']!r}")
        from ..orthogonal import BASE_CHANGE_GRADIENTS
        if config.get("base_change_gradient", "clean") not in BASE_CHANGE_GRADIENTS:
            raise ConfigError(f"base_change_gradient must be one of {BASE_CHANGE_GRADIENTS}, "
                              f"got {config['base_change_gradient']!r}")
    elif rule is not None:
        from .. import LAYERS
        rule_type = LAYERS[recurrence, rule].rule_type
    if rule is not None:
        from ..paths import check_impl
        layer_type = ORTHOGONAL_LAYERS[rule] if recurrence == "orthogonal" else LAYERS[recurrence, rule]
        try:
            check_impl(config.get("impl", "auto"), rule_type, layer_type.__name__,
                       recurrence=layer_type.recurrence_type.name)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        try:
            rule_type.validate({k: config[k] for k in rule_hyperparameters(config["model"])})
        except (TypeError, ValueError) as error:
            raise ConfigError(str(error)) from None


def setting(config: dict) -> dict:
    """The keys that can change a run's result, without the seed: what runs must share to
    be taken together as seeds of one setting."""
    return {k: v for k, v in config.items() if k not in RESULT_NEUTRAL and k != "seed"}


def identity(config: dict) -> dict:
    """The keys that identify a run (what a checkpoint must agree with)."""
    return {k: v for k, v in config.items() if k not in RESUMABLE and k not in _BOOKKEEPING}


def fingerprint(config: dict, files: dict | None = None) -> str:
    """A short hash of ``identity(config)`` and of ``files`` (name -> digest of the run's
    task files, such as its permutation)."""
    text = json.dumps({**identity(config), **(files or {})}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def describe_difference(saved: dict, current: dict) -> str:
    """``key: saved -> current`` for every identity key that differs."""
    a, b = identity(saved), identity(current)
    keys = sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))
    return ", ".join(f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in keys)
