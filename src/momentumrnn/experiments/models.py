"""The model registry: a model name is a recurrent layer plus a linear head.

``lstm``, ``gru`` and ``rnn`` are torch's own layers; ``dtriv`` and ``RULE-dtriv`` are the
orthogonal layers (``momentumrnn.ORTHOGONAL_LAYERS``); every other name is a
``momentumrnn.LAYERS[(recurrence, rule)]`` layer. The head reads the last step
(classification, regression) or every step (``task.per_step``).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from .. import LAYERS, ORTHOGONAL_LAYERS
from ..initialization import initialize
from ..recurrences import GRURecurrence, LSTMRecurrence, RNNRecurrence

__all__ = ["MODELS", "ORTHOGONAL_OPTIONS", "LAYER_OPTIONS", "SequenceModel", "build_model", "model_spec",
           "model_options", "rule_hyperparameters", "count_parameters"]

#: Model name -> (recurrence, rule); rule None means torch's plain layer.
MODELS: dict[str, tuple[str, str | None]] = {
    "lstm": ("lstm", None), "gru": ("gru", None), "rnn": ("rnn", None),
    **{f"{rule}-{recurrence}": (recurrence, rule) for recurrence, rule in sorted(LAYERS)},
    **{("dtriv" if rule == "none" else f"{rule}-dtriv"): ("orthogonal", rule) for rule in ORTHOGONAL_LAYERS},
}

#: Settings of the orthogonal models only: initialization of the skew-symmetric matrix,
#: change of base every K optimizer steps (0 = never, expRNN), the learning rate of the
#: RMSprop optimizer for the orthogonal parameters (the two-optimizer recipe), and the
#: gradient on the step after a change of base ("clean" at A = 0, or "authors": at the
#: absorbed A, as the authors' in-place change of base gives it; ``OrthogonalRNN``).
ORTHOGONAL_OPTIONS = {"orthogonal_init": "cayley", "trivialization": 100, "lr_orth": 1e-4,
                      "base_change_gradient": "clean"}
#: Settings of every momentumrnn model (not torch's layers): the computation path
#: (``momentumrnn.paths``; every path gives the same numbers to rounding).
LAYER_OPTIONS = {"impl": "auto"}

_TORCH_LAYERS = {"lstm": (nn.LSTM, LSTMRecurrence), "gru": (nn.GRU, GRURecurrence), "rnn": (nn.RNN, RNNRecurrence)}


def model_spec(name: str) -> tuple[str, str | None]:
    """``(recurrence, rule)`` of a model name, with a clear error for unknown names."""
    if name in MODELS:
        return MODELS[name]
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


def rule_hyperparameters(name: str) -> dict:
    """The rule hyperparameters a model takes, with the library defaults ({} for torch's layers)."""
    recurrence, rule = model_spec(name)
    if rule is None:
        return {}
    if recurrence == "orthogonal":
        layer = ORTHOGONAL_LAYERS[rule]
        return {**layer.rule_type.defaults, **layer.orthogonal_defaults}
    return dict(LAYERS[recurrence, rule].rule_type.defaults)


def model_options(name: str) -> dict:
    """Settings that only some models take (momentumrnn's layers; the orthogonal ones), with defaults."""
    recurrence, rule = model_spec(name)
    if rule is None:
        return {}
    return {**LAYER_OPTIONS, **(ORTHOGONAL_OPTIONS if recurrence == "orthogonal" else {})}


class SequenceModel(nn.Module):
    """``rnn`` (batch-first) followed by a linear ``head`` on the last step or every step."""

    def __init__(self, rnn: nn.Module, hidden_size: int, output_size: int, per_step: bool):
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(hidden_size, output_size)
        self.per_step = per_step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        if isinstance(out, PackedSequence):        # variable-length batches: padded, zeros past each length
            out = pad_packed_sequence(out, batch_first=True)[0]
        return self.head(out if self.per_step else out[:, -1])


def build_model(config: dict, input_size: int, output_size: int, per_step: bool) -> SequenceModel:
    """Build ``config["model"]`` with the config's hidden size, layers, init and rule settings."""
    recurrence, rule = model_spec(config["model"])
    hidden, layers = config["hidden_size"], config.get("num_layers", 1)
    if rule is None:
        layer_type, recurrence_type = _TORCH_LAYERS[recurrence]
        rnn = layer_type(input_size, hidden, layers, batch_first=True)
        if config["init"] == "paper":
            for index in range(layers):
                weights = [getattr(rnn, f"{w}_l{index}") for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
                initialize(*weights, recurrence_type(), hidden, "paper", config["forget_bias"])
    elif recurrence == "orthogonal":
        hp = {k: config[k] for k in rule_hyperparameters(config["model"])}
        rnn = ORTHOGONAL_LAYERS[rule](input_size, hidden, layers, batch_first=True, init=config["orthogonal_init"],
                                      trivialization=config["trivialization"] or math.inf,
                                      # runs recorded before the option existed took the clean gradient
                                      base_change_gradient=config.get("base_change_gradient", "clean"),
                                      impl=config.get("impl", "auto"), **hp)
    else:
        hp = {k: config[k] for k in rule_hyperparameters(config["model"])}
        rnn = LAYERS[recurrence, rule](input_size, hidden, layers, batch_first=True, init=config["init"],
                                       forget_bias=config["forget_bias"], impl=config.get("impl", "auto"), **hp)
    return SequenceModel(rnn, hidden, output_size, per_step)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
