"""A rule and a recurrence written outside the library, as a user writes them, run on
``impl="auto"`` with the layer's features, equal to a per-step reference written here."""

import re

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from momentumrnn import RecurrentLayer, RuleState
from momentumrnn.recurrences import LSTMRecurrence, Recurrence
from momentumrnn.rules import MomentumRule, Rule


class DampedRule(Rule):
    """``v_t = mu v_{t-1} + s tanh(u_t)``; ``d_t = v_t``: not in the paper, not in the tables."""

    name = "damped"
    defaults = {"momentum": 0.5, "step_size": 0.7}
    learnable = ("momentum", "step_size")

    def drive(self, u, state, hp, k):
        v = hp["momentum"] * state["velocity"] + hp["step_size"] * torch.tanh(u)
        return v, {"velocity": v}


class DampedLSTM(RecurrentLayer):
    recurrence_type, rule_type = LSTMRecurrence, DampedRule


class MinGRURecurrence(Recurrence):
    """``z = sigma(d_z + r_z)``; ``h_t = (1 - z) h_{t-1} + z tanh(d_n + r_n)``."""

    name = "mingru"
    gates = 2
    additive = False

    def step(self, drive, recurrent, state):
        d_z, d_n = drive.chunk(2, -1)
        r_z, r_n = recurrent.chunk(2, -1)
        z = torch.sigmoid(d_z + r_z)
        return ((1 - z) * state[0] + z * torch.tanh(d_n + r_n),)


class MomentumMinGRU(RecurrentLayer):
    recurrence_type, rule_type = MinGRURecurrence, MomentumRule


def reference(layer, x, lengths, velocity0):
    """Every layer and direction step by step from the equations; (T, B, ...) float64."""
    lstm = layer.recurrence_type is LSTMRecurrence
    T, B = x.shape[:2]
    inputs, finals, velocities = x, [], []
    for n in range(layer.num_layers):
        outputs = []
        for d in range(layer.num_directions):
            sfx = f"_l{n}" + ("_reverse" if d else "")
            hp = layer.hyperparameters(n, reverse=bool(d))
            W, U = getattr(layer, "weight_ih" + sfx), getattr(layer, "weight_hh" + sfx)
            b_ih, b_hh = getattr(layer, "bias_ih" + sfx), getattr(layer, "bias_hh" + sfx)
            H = layer.hidden_size
            out = torch.zeros(T, B, H, dtype=x.dtype)
            h_end, v_end = torch.zeros(B, H, dtype=x.dtype), torch.zeros(B, W.shape[0], dtype=x.dtype)
            for b in range(B):
                h, c = torch.zeros(H, dtype=x.dtype), torch.zeros(H, dtype=x.dtype)
                index = n * layer.num_directions + d
                v = velocity0[index, b]
                order = range(lengths[b]) if d == 0 else reversed(range(lengths[b]))
                for t in order:
                    u = W @ inputs[t, b] + b_ih
                    if isinstance(layer.rule_type(), DampedRule):
                        v = hp["momentum"] * v + hp["step_size"] * torch.tanh(u)
                    else:
                        v = hp["momentum"] * v + hp["step_size"] * u
                    r = U @ h + b_hh
                    if lstm:
                        i, f, g, o = (v + r).chunk(4)
                        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                        h = torch.sigmoid(o) * torch.tanh(c)
                    else:
                        z = torch.sigmoid(v[:H] + r[:H])
                        h = (1 - z) * h + z * torch.tanh(v[H:] + r[H:])
                    out[t, b] = h
                h_end[b], v_end[b] = h, v
            outputs.append(out)
            finals.append(h_end)
            velocities.append(v_end)
        inputs = torch.cat(outputs, -1)
    return inputs, torch.stack(finals), torch.stack(velocities)


@pytest.mark.parametrize("layer_type, path", [(DampedLSTM, "loop"), (MomentumMinGRU, "reference")])
def test_a_user_rule_and_recurrence_run_on_auto_as_their_equations(layer_type, path):
    torch.manual_seed(0)
    layer = layer_type(3, 4, num_layers=2, bidirectional=True, learnable=True, dtype=torch.float64)
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    lengths = [6, 4, 2]
    velocity0 = 0.3 * torch.randn(4, 3, layer.recurrence_type.gates * 4, dtype=torch.float64)
    carried = RuleState(velocity0, None, torch.zeros(3, dtype=torch.int64))        # from an earlier chunk
    with torch.no_grad():                               # learnable hyperparameters away from their defaults
        for name, value in layer.named_parameters():
            if "momentum" in name or "step_size" in name:
                value.mul_(torch.empty_like(value).uniform_(0.8, 1.2))
    out, hidden, rule_state = layer(pack_padded_sequence(x, lengths), rule_state=carried, return_rule_state=True)
    assert layer.path == path == layer.last_plan.path    # what impl="auto" took, by declared capabilities
    assert ("declared capabilities" if path == "loop" else "has no kernel") in layer.last_plan.reason
    out, _ = pad_packed_sequence(out)
    expected, h_n, v_n = reference(layer, x, lengths, velocity0)
    mask = (torch.arange(6)[:, None] < torch.tensor(lengths))[..., None]
    torch.testing.assert_close(out, expected * mask, rtol=1e-10, atol=1e-10)
    h = hidden[0] if isinstance(hidden, tuple) else hidden
    torch.testing.assert_close(h, h_n, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(rule_state.velocity, v_n, rtol=1e-10, atol=1e-10)
    out.sum().backward()                                 # gradients reach the learnable hyperparameters
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


def test_paths_a_user_recurrence_cannot_take_are_refused():
    with pytest.raises(ValueError, match="recurrence 'mingru' takes 'auto' or 'reference'"):
        MomentumMinGRU(3, 4, impl="fused")


# ----------------------------------------------------------------------------- check_rule
from momentumrnn.rules import AdamRule, NesterovRule, PlainRule, RestartRule, RMSPropRule  # noqa: E402
from momentumrnn.testing import check_rule  # noqa: E402


@pytest.mark.parametrize("rule", [MomentumRule, AdamRule, RMSPropRule, NesterovRule, RestartRule, PlainRule,
                                  DampedRule], ids=lambda r: r.__name__)
def test_the_library_rules_and_a_user_rule_keep_the_contract(rule):
    check_rule(rule)


class WrongParallelForm(MomentumRule):
    name = "wrong-parallel"

    def state_inputs(self, u, hp):                       # forgets the step size
        return {"velocity": u}


class WrongShape(DampedRule):
    name = "wrong-shape"

    def drive(self, u, state, hp, k):
        d, state = super().drive(u, state, hp, k)
        return d[..., :1], state


class OwnField(DampedRule):
    name = "own-field"
    state_fields = ("trace",)


class LearnsGamma(DampedRule):
    name = "learns-gamma"
    defaults = {**DampedRule.defaults, "gamma": 0.5}
    learnable = ("gamma",)


class NoStep(Rule):
    name = "no-step"
    defaults = {}
    learnable = ()


@pytest.mark.parametrize("rule, message", [
    (WrongParallelForm, "parallel form (state_coefficients, state_inputs, drive_from_state) disagrees with its step"),
    (WrongShape, "WrongShape.drive must return a drive shaped and typed as u"),
    (OwnField, "a layer's RuleState carries only ('velocity', 'second_moment')"),
    (LearnsGamma, "LearnsGamma.learnable names ['gamma']: only momentum and step_size can be learnable"),
    (NoStep, "NoStep implements neither drive() nor couples_to_hidden = True"),
], ids=lambda value: value.__name__ if isinstance(value, type) else "")
def test_check_rule_names_the_broken_promise(rule, message):
    with pytest.raises(AssertionError, match=re.escape(message)):
        check_rule(rule)
