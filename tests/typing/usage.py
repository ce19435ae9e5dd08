"""Typical use of momentumrnn, checked with mypy (tests/test_typing.py): the package ships its
types (py.typed), and this file must type-check without errors."""

from __future__ import annotations

import torch
from torch import Tensor

import momentumrnn as mrnn
from momentumrnn import RuleState


def run_layer(x: Tensor) -> tuple[Tensor, RuleState]:
    layer: mrnn.RecurrentLayer = mrnn.AdamLSTM(8, 16, num_layers=2, batch_first=True, momentum=0.5, beta=0.2,
                                                impl="auto", device="cpu", dtype=torch.float32)
    out, _, rule_state = layer(x, return_rule_state=True)
    out, _, rule_state = layer(x, rule_state=rule_state.detach(), return_rule_state=True)
    return out, rule_state


def run_cell(x: Tensor) -> Tensor:
    cell = mrnn.NesterovLSTMCell(8, 16, step_size=1.0, restart=2)
    h, c = cell(x[0])
    (h, c), state = cell(x[1], (h, c), return_rule_state=True)
    assert isinstance(state, RuleState)
    return h


def build_orthogonal() -> torch.nn.Module:
    layer = mrnn.MomentumOrthogonalRNN(1, 170, trivialization=100, init="henaff")
    groups: mrnn.ParameterGroups = mrnn.split_orthogonal_parameters(layer)
    assert groups.orthogonal
    return layer


def catch(layer: torch.nn.Module, x: Tensor) -> str:
    try:
        layer(x)
    except mrnn.InputError as error:       # also a ValueError and a RuntimeError
        return str(error)
    return ""


LAYER: type[mrnn.RecurrentLayer] = mrnn.LAYERS["lstm", "momentum"]


def typed_calls(x: Tensor) -> Tensor:
    layer = mrnn.MomentumGRU(8, 16, momentum=0.3, step_size=0.5)
    out, h_n = layer(x)
    out_again, _, state = layer(x, h_n, return_rule_state=True)
    steps: Tensor = state.steps
    cell = mrnn.AdamLSTMCell(8, 16, beta=0.2)
    (h, c), cell_state = cell(x[0], return_rule_state=True)
    assert isinstance(cell_state, RuleState)
    return out + out_again + steps.sum() + h
