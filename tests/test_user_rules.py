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


class TracedRule(Rule):
    """A rule with a state field of its own: ``e_t = 0.5 e_{t-1} + u_t`` (a trace of the
    input drive), ``v_t = mu v_{t-1} + s u_t``; ``d_t = v_t + 0.1 e_t``. Linear, so parallel."""

    name = "traced"
    defaults = {"momentum": 0.5, "step_size": 0.7}
    learnable = ("momentum", "step_size")
    state_fields = ("velocity", "trace")
    parallel = True

    def drive(self, u, state, hp, k):
        v = hp["momentum"] * state["velocity"] + hp["step_size"] * u
        e = 0.5 * state["trace"] + u
        return v + 0.1 * e, {"velocity": v, "trace": e}

    def state_coefficients(self, hp, steps, time, mask=None, dtype=torch.float64):
        return {"velocity": hp["momentum"], "trace": 0.5}

    def state_inputs(self, u, hp):
        return {"velocity": hp["step_size"] * u, "trace": u}

    def drive_from_state(self, states, hp):
        return states["velocity"] + 0.1 * states["trace"]


class TracedLSTM(RecurrentLayer):
    recurrence_type, rule_type = LSTMRecurrence, TracedRule


def rule_equations(rule, hp, state, u):
    """One step of the layer's rule, from its equations: (drive, new state)."""
    v = hp["momentum"] * state["velocity"] + hp["step_size"] * (torch.tanh(u) if isinstance(rule, DampedRule) else u)
    if isinstance(rule, TracedRule):
        e = 0.5 * state["trace"] + u
        return v + 0.1 * e, {"velocity": v, "trace": e}
    return v, {"velocity": v}


def reference(layer, x, lengths, state0):
    """Every layer and direction step by step from the equations; (T, B, ...) float64."""
    lstm = layer.recurrence_type is LSTMRecurrence
    T, B = x.shape[:2]
    inputs, finals, rule_finals = x, [], []
    for n in range(layer.num_layers):
        outputs = []
        for d in range(layer.num_directions):
            sfx = f"_l{n}" + ("_reverse" if d else "")
            hp = layer.hyperparameters(n, reverse=bool(d))
            W, U = getattr(layer, "weight_ih" + sfx), getattr(layer, "weight_hh" + sfx)
            b_ih, b_hh = getattr(layer, "bias_ih" + sfx), getattr(layer, "bias_hh" + sfx)
            H = layer.hidden_size
            out = torch.zeros(T, B, H, dtype=x.dtype)
            h_end = torch.zeros(B, H, dtype=x.dtype)
            rule_end = {f: torch.zeros(B, W.shape[0], dtype=x.dtype) for f in state0}
            for b in range(B):
                h, c = torch.zeros(H, dtype=x.dtype), torch.zeros(H, dtype=x.dtype)
                index = n * layer.num_directions + d
                state = {f: tensor[index, b] for f, tensor in state0.items()}
                order = range(lengths[b]) if d == 0 else reversed(range(lengths[b]))
                for t in order:
                    drive, state = rule_equations(layer.rule, hp, state, W @ inputs[t, b] + b_ih)
                    r = U @ h + b_hh
                    if lstm:
                        i, f, g, o = (drive + r).chunk(4)
                        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                        h = torch.sigmoid(o) * torch.tanh(c)
                    else:
                        z = torch.sigmoid(drive[:H] + r[:H])
                        h = (1 - z) * h + z * torch.tanh(drive[H:] + r[H:])
                    out[t, b] = h
                h_end[b] = h
                for f in state0:
                    rule_end[f][b] = state[f]
            outputs.append(out)
            finals.append(h_end)
            rule_finals.append(rule_end)
        inputs = torch.cat(outputs, -1)
    return inputs, torch.stack(finals), {f: torch.stack([r[f] for r in rule_finals]) for f in state0}


@pytest.mark.parametrize("layer_type, path", [(DampedLSTM, "loop"), (TracedLSTM, "loop"),
                                              (MomentumMinGRU, "reference")])
def test_a_user_rule_and_recurrence_run_on_auto_as_their_equations(layer_type, path):
    torch.manual_seed(0)
    layer = layer_type(3, 4, num_layers=2, bidirectional=True, learnable=True, dtype=torch.float64)
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    lengths = [6, 4, 2]
    state0 = {f: 0.3 * torch.randn(4, 3, layer.recurrence_type.gates * 4, dtype=torch.float64)
              for f in layer.rule_type.state_fields}
    carried = RuleState.of(state0, torch.zeros(3, dtype=torch.int64))        # from an earlier chunk
    with torch.no_grad():                               # learnable hyperparameters away from their defaults
        for name, value in layer.named_parameters():
            if "momentum" in name or "step_size" in name:
                value.mul_(torch.empty_like(value).uniform_(0.8, 1.2))
    out, hidden, rule_state = layer(pack_padded_sequence(x, lengths), rule_state=carried, return_rule_state=True)
    assert layer.path == path == layer.last_plan.path    # what impl="auto" took, by declared capabilities
    assert ("declared capabilities" if path == "loop" else "has no kernel") in layer.last_plan.reason
    out, _ = pad_packed_sequence(out)
    expected, h_n, rule_n = reference(layer, x, lengths, state0)
    mask = (torch.arange(6)[:, None] < torch.tensor(lengths))[..., None]
    torch.testing.assert_close(out, expected * mask, rtol=1e-10, atol=1e-10)
    h = hidden[0] if isinstance(hidden, tuple) else hidden
    torch.testing.assert_close(h, h_n, rtol=1e-10, atol=1e-10)
    assert rule_state.fields().keys() == rule_n.keys()   # every field the rule declares, carried out
    for field, expected_field in rule_n.items():
        torch.testing.assert_close(getattr(rule_state, field), expected_field, rtol=1e-10, atol=1e-10)
    out.sum().backward()                                 # gradients reach the learnable hyperparameters
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


def test_paths_a_user_recurrence_cannot_take_are_refused():
    with pytest.raises(ValueError, match="recurrence 'mingru' takes 'auto' or 'reference'"):
        MomentumMinGRU(3, 4, impl="fused")


# ----------------------------------------------------------------------------- check_rule
from momentumrnn.rules import AdamRule, NesterovRule, PlainRule, RestartRule, RMSPropRule  # noqa: E402
from momentumrnn.testing import check_rule  # noqa: E402


@pytest.mark.parametrize("rule", [MomentumRule, AdamRule, RMSPropRule, NesterovRule, RestartRule, PlainRule,
                                  DampedRule, TracedRule], ids=lambda r: r.__name__)
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


class TakenField(DampedRule):
    name = "taken-field"
    state_fields = ("steps",)


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
    (TakenField, "TakenField.state_fields ('steps',): each field needs a distinct identifier that is not an "
                 "attribute of RuleState ['steps']"),
    (LearnsGamma, "LearnsGamma.learnable names 'gamma', whose range is not declared: LearnsGamma.ranges must map "
                  "it to one of 'unit', 'positive', 'real'"),
    (NoStep, "NoStep implements neither drive() nor couples_to_hidden = True"),
], ids=lambda value: value.__name__ if isinstance(value, type) else "")
def test_check_rule_names_the_broken_promise(rule, message):
    with pytest.raises(AssertionError, match=re.escape(message)):
        check_rule(rule)


class GatedDampedRule(DampedRule):
    """``v_t = mu v_{t-1} + s tanh(g u_t)``; ``d_t = v_t``, with a learnable gain ``g > 0``."""

    name = "gated-damped"
    defaults = {**DampedRule.defaults, "gain": 1.5}
    learnable = ("momentum", "step_size", "gain")
    ranges = {**DampedRule.ranges, "gain": "positive"}

    def drive(self, u, state, hp, k):
        return super().drive(hp["gain"] * u, state, hp, k)


class GatedDampedLSTM(RecurrentLayer):
    recurrence_type, rule_type = LSTMRecurrence, GatedDampedRule


def test_a_user_rule_learns_a_hyperparameter_of_its_own():
    import torch.nn.functional as F

    check_rule(GatedDampedRule)
    layer = GatedDampedLSTM(3, 4, bias=False, learnable=True, dtype=torch.float64)
    assert "gain_raw_l0" in layer.state_dict()
    assert layer.hyperparameters()["gain"].item() == pytest.approx(1.5)
    with torch.no_grad():
        layer.gain_raw_l0.fill_(-3.0)                     # any free value maps into (0, inf)
    assert layer.hyperparameters()["gain"].item() == pytest.approx(F.softplus(torch.tensor(-3.0)).item())
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    plain = DampedLSTM(3, 4, bias=False, dtype=torch.float64)
    plain.load_state_dict({k: v for k, v in layer.state_dict().items() if "_raw" not in k})
    gain = layer.hyperparameters()["gain"].item()
    torch.testing.assert_close(layer(x)[0], plain(gain * x)[0], rtol=1e-12, atol=1e-12)  # tanh(g W x) = tanh(W (g x))
    layer(x)[0].sum().backward()
    assert layer.gain_raw_l0.grad is not None and layer.gain_raw_l0.grad != 0
    with pytest.raises(ValueError, match=r"a learnable gain must start in \(0, inf\), got -1.0"):
        GatedDampedLSTM(3, 4, learnable=True, gain=-1.0)
