"""Multi-layer, bidirectional layers with ``torch.nn.RNN``/``LSTM``/``GRU``'s contract.

Same constructor arguments, parameter names and shapes (``weight_ih_l0``,
``bias_hh_l1_reverse``, ...), input and output shapes, ``batch_first``, unbatched input
and ``PackedSequence``. The rule state (velocity, second moment, step counter) starts at
zero on every call unless carried explicitly::

    out, hx = layer(x)                                        # torch's convention
    out, hx, rs = layer(x, hx, return_rule_state=True)        # also return the rule state
    out, hx, rs = layer(x2, hx, rule_state=rs, return_rule_state=True)   # continue it

Computation paths (``impl``: "auto", "fused", "fused-drive", "loop", "triton-loop", "reference"), all
equal to rounding, values and gradients, are described and chosen in ``momentumrnn.paths``;
``layer.plan`` tells which one a layer takes and why, ``layer.last_plan`` what the last call
ran. Each path is one ``_run_*`` method with the
same signature, run per layer and direction.
"""

from __future__ import annotations

import numbers
import warnings
from typing import TYPE_CHECKING, Any, Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from .autocast import autocast_boundary
from .base import RuleModule
from .checks import (InputError, check_hidden, check_packed_sequence, check_rule_state, expect_input,
                     expect_positive_int, expect_tensor, stacklevel_outside, zero_rule_state)
from .fused import drive_kernel, fused_direction
from .loops import adam_loop, gru_loop, lstm_loop, rnn_loop
from .paths import Plan, check_impl, is_exporting, plan, plan_for_call, warn_if_experimental
from .projection import input_drive
from .recurrences import GRURecurrence, LSTMRecurrence, RNNRecurrence
from .rules import AdamRule, MomentumRule, NesterovRule, RestartRule, RMSPropRule
from .time_steps import masked, step_indices
from .second_order import differentiable_twice
from .state import RuleState
from .step import cell_step, over_time
from .triton_loop import check_device, nesterov_lstm, nesterov_rnn

__all__ = [
    "RecurrentLayer",
    "MomentumRNN", "AdamRNN", "RMSPropRNN", "NesterovRNN", "RestartRNN",
    "MomentumLSTM", "AdamLSTM", "RMSPropLSTM", "NesterovLSTM", "RestartLSTM",
    "MomentumGRU", "AdamGRU", "RMSPropGRU", "RestartGRU",
]

class RecurrentLayer(RuleModule):
    """A stack of ``recurrence_type`` cells driven by ``rule_type``, over whole sequences.

    Args: ``input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, device=None, dtype=None`` exactly as torch's layers.
    Keyword-only: the rule's hyperparameters (``momentum``, ``step_size``, ``beta``,
    ``restart``: each rule takes its own, defaults are the paper's pixel-MNIST settings; the
    class's signature, as ``help()`` shows it, lists them),
    ``learnable`` (momentum and step size become trainable, one scalar per layer and
    direction), ``init`` ("torch" or "paper"), ``forget_bias`` (LSTM, paper init),
    ``impl`` (computation path, see ``momentumrnn.paths``).

    Every layer applies its rule to its own input drive; the reverse direction runs its
    own rule over each sequence's reversed valid steps.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device: torch.device | str | int | None = None, dtype: torch.dtype | None = None, *,
                 nonlinearity: str | None = None, learnable: bool = False, init: str = "torch",
                 forget_bias: float = 1.0, impl: str = "auto", proj_size: int = 0, **hyperparameters: float):
        super().__init__()
        for name, value in (("bias", bias), ("batch_first", batch_first)):
            if not isinstance(value, bool):                # torch's check: "False" must not mean True
                raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")
        if isinstance(proj_size, bool) or not isinstance(proj_size, numbers.Integral) or proj_size < 0:
            raise ValueError(f"proj_size must be an int >= 0 (0: no projections), got {proj_size!r}")
        self.input_size = expect_positive_int("input_size", input_size)
        self.hidden_size = expect_positive_int("hidden_size", hidden_size)
        if proj_size and self.recurrence_type is not LSTMRecurrence:           # torch's checks
            raise ValueError(f"proj_size argument is only supported for LSTM, not RNN or GRU (got "
                             f"{type(self).__name__})")
        if proj_size >= self.hidden_size:
            raise ValueError(f"proj_size has to be smaller than hidden_size, got {proj_size} >= {self.hidden_size}")
        self.proj_size = int(proj_size)
        self.num_layers = expect_positive_int("num_layers", num_layers)
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be a number in [0, 1], got {dropout!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout acts between layers: with num_layers=1 it does nothing", stacklevel=2)
        check_impl(impl, self.rule_type, type(self).__name__, projections=self.proj_size > 0,
                   recurrence=self.recurrence_type.name)
        warn_if_experimental(impl, type(self).__name__, stacklevel=stacklevel_outside(("momentumrnn",)) + 1)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        self.impl = impl
        directions = 2 if self.bidirectional else 1
        suffixes = [f"_l{layer}{'_reverse' if d else ''}" for layer in range(num_layers) for d in range(directions)]
        self._configure(nonlinearity=nonlinearity or "tanh", init=init, forget_bias=forget_bias,
                        learnable=learnable, hyperparameters=hyperparameters, suffixes=suffixes,
                        device=device, dtype=dtype)
        for index, suffix in enumerate(suffixes):
            layer_input = self.input_size if index < directions else self.output_size * directions
            self._register_weights(suffix, layer_input, self.bias, {"device": device, "dtype": dtype})
            if self.proj_size:
                self.register_parameter("weight_hr" + suffix, nn.Parameter(
                    torch.empty(self.proj_size, self.hidden_size, device=device, dtype=dtype)))
        self.reset_parameters()

    @property
    def output_size(self) -> int:
        return self.proj_size or self.hidden_size

    def reset_parameters(self) -> None:
        """Re-initialize weights (``init``; the projections ``weight_hr`` as torch's, uniform in
        ``[-1/sqrt(H), 1/sqrt(H)]``, with either init) and learnable hyperparameters."""
        super().reset_parameters()
        bound = 1.0 / self.hidden_size ** 0.5
        with torch.no_grad():
            for suffix in self._suffixes:
                projection = self._projection(suffix)
                if projection is not None:
                    projection.uniform_(-bound, bound)

    def _projection(self, suffix: str) -> Tensor | None:
        """``weight_hr`` of one layer and direction (LSTM projections), else None."""
        return getattr(self, "weight_hr" + suffix, None) if self.proj_size else None

    #: Whether the reference path runs in plain torch ops (twice differentiable, batchable).
    _reference_is_plain = True

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def nonlinearity(self) -> str:
        """The RNN's nonlinearity, "tanh" or "relu" (torch's attribute; LSTM and GRU: "tanh")."""
        return getattr(self.recurrence, "nonlinearity", "tanh")

    @property
    def mode(self) -> str:
        """torch's name of the recurrence: "LSTM", "GRU", "RNN_TANH" or "RNN_RELU"."""
        name = self.recurrence.name.upper()
        return f"RNN_{self.nonlinearity.upper()}" if name == "RNN" else name

    @property
    def all_weights(self) -> list[list[Tensor]]:
        """Weights per layer and direction, as ``torch.nn.LSTM.all_weights``."""
        return [[w for w in (*group[1:], self._projection(group[0])) if w is not None]
                for group in self._weight_groups()]

    @property
    def _flat_weights_names(self) -> list[str]:
        """Parameter names in torch's flat order (per layer and direction: w_ih, w_hh, b_ih,
        b_hh, w_hr), as ``torch.nn.LSTM._flat_weights_names``."""
        names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if self.bias else [])
        names += ["weight_hr"] if self.proj_size else []
        return [name + suffix for suffix in self._suffixes for name in names]

    @property
    def _flat_weights(self) -> list[Tensor]:
        """The parameters in torch's flat order (``_flat_weights_names``)."""
        return [getattr(self, name) for name in self._flat_weights_names]

    def flatten_parameters(self) -> None:
        """No-op, for code written against cuDNN-backed torch layers."""

    @property
    def plan(self) -> Plan:
        """The computation path ``impl`` resolves to on the weights' device, and why
        (``momentumrnn.paths.plan``). What a call ran in the end is ``last_plan``."""
        return plan(self.impl, self.rule_type, self.weight_ih_l0.device, self.proj_size > 0, self.recurrence.name)

    @property
    def path(self) -> str:
        """The computation path ``impl`` resolves to on the weights' device: "fused",
        "fused-drive", "loop", "triton-loop" or "reference" (``plan.path``)."""
        return self.plan.path

    #: The plan the last call ran (None before the first call): ``plan`` at the time of the
    #: call, or the path it took instead for its input and why (``paths.plan_for_call``).
    last_plan: Plan | None = None

    def hyperparameters(self, layer: int = 0, reverse: bool = False) -> dict:
        """Hyperparameters in force for one layer and direction (tensors where learnable)."""
        return self._hyperparameters(f"_l{layer}{'_reverse' if reverse else ''}")

    # ------------------------------------------------------------------ forward
    if TYPE_CHECKING:       # a call's result by its input and return_rule_state (h_n: Tensor, LSTM (h_n, c_n))
        @overload
        def __call__(self, input: Tensor, hx: Any = None, *, rule_state: RuleState | None = None,
                     return_rule_state: Literal[False] = False) -> tuple[Tensor, Any]: ...

        @overload
        def __call__(self, input: PackedSequence, hx: Any = None, *, rule_state: RuleState | None = None,
                     return_rule_state: Literal[False] = False) -> tuple[PackedSequence, Any]: ...

        @overload
        def __call__(self, input: Tensor, hx: Any = None, *, rule_state: RuleState | None = None,
                     return_rule_state: Literal[True]) -> tuple[Tensor, Any, RuleState]: ...

        @overload
        def __call__(self, input: PackedSequence, hx: Any = None, *, rule_state: RuleState | None = None,
                     return_rule_state: Literal[True]) -> tuple[PackedSequence, Any, RuleState]: ...

        @overload
        def __call__(self, input: Tensor | PackedSequence, hx: Any = None, *, rule_state: RuleState | None = None,
                     return_rule_state: bool) -> tuple[Any, ...]: ...

        def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def forward(self, input, hx=None, *, rule_state: RuleState | None = None, return_rule_state: bool = False):
        """``(output, h_n)`` (LSTM: ``(output, (h_n, c_n))``), and the final ``RuleState``
        with ``return_rule_state=True``. Under ``torch.compile`` the call is one opaque op
        (``momentumrnn.compiled``) that runs this forward eagerly: no graph break, no graph of
        the per-step work, no recompilation per sequence length once it is dynamic."""
        if torch.compiler.is_compiling() and not is_exporting():
            from .compiled import compiled_call
            return compiled_call(self, input, hx, rule_state, return_rule_state)
        if torch._C._functorch.peek_interpreter_stack() is not None:
            from .transforms import runs_below, transformed_call
            if runs_below(self, input, hx, rule_state):
                return transformed_call(self, input, hx, rule_state, return_rule_state)

        def call(input, hx, rule_state):
            return self._forward(input, hx, rule_state=rule_state, return_rule_state=return_rule_state)

        return differentiable_twice(self, call, input, hx, rule_state)

    @autocast_boundary
    def _forward(self, input, hx=None, *, rule_state: RuleState | None = None, return_rule_state: bool = False):
        self.rule_type.check_dtype(self.hyperparameter_values, self.weight_ih_l0.dtype)    # after .half(), .to()
        x, lengths, packed, unbatched = self._time_major(input)
        steps_in_call, batch = x.size(0), x.size(1)
        stacks = self.num_layers * self.num_directions
        gates = self.recurrence.gates * self.hidden_size
        like = self.weight_ih_l0

        widths = (self.output_size, self.hidden_size)[:self.recurrence.state_tensors]      # h, c
        if hx is None:
            hidden = tuple(x.new_zeros(stacks, batch, width) for width in widths)
        else:
            shapes = [(stacks, width) if unbatched else (stacks, batch, width) for width in widths]
            hidden = check_hidden(hx, self.recurrence.state_tensors, shapes[0], like, shapes[-1])
            hidden = tuple(h.unsqueeze(1) for h in hidden) if unbatched else hidden
        if rule_state is None:
            rules, steps = zero_rule_state(self.rule_type.state_fields, (stacks, batch, gates), (batch,), x)
        else:
            shape, steps_shape = ((stacks, gates), ()) if unbatched else ((stacks, batch, gates), (batch,))
            rules, steps = check_rule_state(rule_state, self.rule_type.state_fields, shape, steps_shape, like)
            if unbatched:
                rules, steps = {k: v.unsqueeze(1) for k, v in rules.items()}, steps.unsqueeze(0)

        mask = None
        if lengths is not None:
            mask = torch.arange(steps_in_call, device=x.device)[:, None] < lengths.to(x.device)[None, :]

        final_states, final_rules = [], []
        current = plan_for_call(self.plan, rules.get("velocity") if rule_state is not None else None,
                                self.proj_size > 0)
        self.last_plan = current
        run = {"reference": self._run_reference, "fused": self._run_fused, "fused-drive": self._run_fused_drive,
               "loop": self._run_loop, "triton-loop": self._run_triton_loop}[current.path]
        layer_input = x
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.num_directions):
                index = layer * self.num_directions + direction
                suffix = self._suffixes[index]
                weights = (*self._weights(suffix), self._projection(suffix))
                stack_state = tuple(h[index] for h in hidden)
                stack_rules = {k: v[index] for k, v in rules.items()}
                sequence = layer_input if direction == 0 else reverse_sequences(layer_input, lengths)
                output, state, rule_out = run(sequence, weights, self._hyperparameters(suffix), stack_state,
                                              stack_rules, steps, mask, lengths, rule_state is not None,
                                              return_rule_state)
                if direction == 1:
                    output = reverse_sequences(output, lengths)
                outputs.append(output)
                final_states.append(state)
                final_rules.append(rule_out)
            layer_input = torch.cat(outputs, dim=-1) if len(outputs) > 1 else outputs[0]
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)

        hidden_out = tuple(torch.stack([s[i] for s in final_states]) for i in range(self.recurrence.state_tensors))
        if return_rule_state:
            rules_out = {k: torch.stack([r[k] for r in final_rules]) for k in rules}
            steps_out = steps + (lengths.to(steps.device) if lengths is not None else steps_in_call)

        output = layer_input
        if packed is not None:
            output = pack_like(output, packed, lengths)
        elif unbatched:
            output = output.squeeze(1)
            hidden_out = tuple(h.squeeze(1) for h in hidden_out)
            if return_rule_state:
                rules_out, steps_out = {k: v.squeeze(1) for k, v in rules_out.items()}, steps_out.squeeze(0)
        elif self.batch_first:
            output = output.transpose(0, 1)
        result = (output, hidden_out if self.recurrence.state_tensors == 2 else hidden_out[0])
        if return_rule_state:
            result += (RuleState.of(rules_out, steps_out),)
        return result

    def _output_shapes(self, input: Tensor, return_rule_state: bool) -> list[tuple[tuple[int, ...], torch.dtype]]:
        """Shapes and dtypes of what ``forward`` returns for a tensor ``input``, flat: output,
        hidden state(s), and with ``return_rule_state`` the rule state's tensors and counter."""
        unbatched = input.dim() == 2
        time, batch = (input.size(0), 1) if unbatched else \
            (input.size(1), input.size(0)) if self.batch_first else (input.size(0), input.size(1))
        stacks, dtype = self.num_layers * self.num_directions, self.weight_ih_l0.dtype
        per_sequence = (lambda *shape: shape) if not unbatched else (lambda stack, _, *rest: (stack, *rest))
        if unbatched:
            output = (time, self.num_directions * self.output_size)
        elif self.batch_first:
            output = (batch, time, self.num_directions * self.output_size)
        else:
            output = (time, batch, self.num_directions * self.output_size)
        widths = (self.output_size, self.hidden_size)[:self.recurrence.state_tensors]
        shapes = [(output, dtype)] + [(per_sequence(stacks, batch, width), dtype) for width in widths]
        if return_rule_state:
            gates = self.recurrence.gates * self.hidden_size
            shapes += [(per_sequence(stacks, batch, gates), dtype) for _ in self.rule_type.state_fields]
            shapes += [(() if unbatched else (batch,), torch.long)]
        return shapes

    def _pack_outputs(self, flat: list[Tensor], return_rule_state: bool):
        """``forward``'s result from the flat list ``_output_shapes`` describes."""
        count = self.recurrence.state_tensors
        output, hidden = flat[0], tuple(flat[1:1 + count])
        result = (output, hidden if count == 2 else hidden[0])
        if return_rule_state:
            fields = dict(zip(self.rule_type.state_fields, flat[1 + count:-1]))
            result += (RuleState.of(fields, flat[-1]),)
        return result

    def _flatten_outputs(self, result) -> list[Tensor]:
        """The flat list ``_pack_outputs`` takes, from ``forward``'s result for a tensor input."""
        output, hidden = result[:2]
        flat = [output, *(hidden if isinstance(hidden, tuple) else (hidden,))]
        if len(result) == 3:
            fields = result[2].fields()
            flat += [fields[f] for f in self.rule_type.state_fields] + [result[2].steps]
        return flat

    def _time_major(self, input):
        """Return ``(x, lengths, packed, unbatched)`` with x shaped (time, batch, features)."""
        if isinstance(input, PackedSequence):
            check_packed_sequence(input)                           # before torch unpacks it
            x, lengths = pad_packed_sequence(input)                # original batch order
            expect_input(x, self.input_size, self.weight_ih_l0)
            return x, lengths, input, False
        expect_tensor("input", input)
        if input.dim() not in (2, 3):
            raise InputError(f"input must be 2-D (unbatched: time, input_size) or 3-D (batched), got "
                             f"{input.dim()}-D of shape {tuple(input.shape)}")
        expect_input(input, self.input_size, self.weight_ih_l0)
        unbatched = input.dim() == 2
        if unbatched:
            x = input.unsqueeze(1)
        else:
            x = input.transpose(0, 1) if self.batch_first else input
        if x.size(0) == 0:
            raise InputError(f"Expected sequence length to be larger than 0 in RNN, got input of shape "   # torch's words
                             f"{tuple(input.shape)}")
        return x, None, None, unbatched

    # Each path: ``x`` (T, B, I) of one layer and direction in processing order (reversed
    # within each sequence for the reverse direction), its weights ``(W, U, b_ih, b_hh, W_hr)``
    # (biases and the LSTM projection ``W_hr`` may be None),
    # hyperparameters, initial state and rule state, step counters (B,), the mask and lengths
    # of packed input (else None), whether the rule state was given and whether the final
    # one is wanted; returns the output (T, B, H), the final state (a tuple) and the final
    # rule state (a dict; its values may be None where it is not wanted).
    def _run_reference(self, x, weights, hp, state, rules, steps, mask, lengths, carried, wanted):
        """The per-step path. The input drive of all steps in one GEMM, then at every step
        ``cell_step`` (the rule and the cell); with LSTM projections ``h_t = W_hr (o * tanh(c_t))``.
        Padded steps of packed sequences change no state. The steps run in ``over_time``."""
        weight_ih, weight_hh, bias_ih, bias_hh, projection = weights
        u = F.linear(x, weight_ih, bias_ih)
        fields, count = self.rule_type.state_fields, len(state)

        def step(carry, inputs):
            u_t, k_t, keep = inputs if mask is not None else (*inputs, None)
            state, rules = carry[:count], dict(zip(fields, carry[count:]))
            new_state, new_rules = cell_step(self.recurrence, self.rule, hp, u_t, state, rules, k_t,
                                             weight_hh, bias_hh)
            if projection is not None:
                new_state = (F.linear(new_state[0], projection), *new_state[1:])
            state, rules = masked(keep, new_state, state), masked(keep, new_rules, rules)
            return (*state, *(rules[f] for f in fields)), state[0]

        inputs = (u, step_indices(steps, x.size(0), mask, per_sequence=True), *(() if mask is None else (mask,)))
        carry, outputs = over_time(step, (*state, *(rules[f] for f in fields)), inputs)
        return outputs, carry[:count], dict(zip(fields, carry[count:]))

    def _run_fused(self, x, weights, hp, state, rules, steps, mask, lengths, carried, wanted):
        """Momentum and restart rules through torch's fused kernel (``momentumrnn.fused``); a
        carried velocity must be finite (``paths.plan_for_call`` sends other calls elsewhere)."""
        velocity = rules["velocity"] if carried else None
        output, state, velocity = fused_direction(self.recurrence, self.rule, x, weights, hp, state,
                                                  velocity, steps, lengths, wanted)
        return output, state, {"velocity": velocity}

    def _run_fused_drive(self, x, weights, hp, state, rules, steps, mask, lengths, carried, wanted):
        """The rule's drive of all steps from the input drive ``W x + b_ih`` (one GEMM;
        ``Rule.drives_of_inputs``), then torch's fused kernel with identity input weights
        (``fused.drive_kernel``)."""
        weight_ih, weight_hh, bias_ih, bias_hh, projection = weights
        drives, rules = self.rule.drives_of_inputs(x, weight_ih, bias_ih, rules, hp, steps, mask)
        output, state = drive_kernel(self.recurrence, drives, weight_hh, bias_hh, state, lengths, projection)
        return output, state, rules

    def _run_loop(self, x, weights, hp, state, rules, steps, mask, lengths, carried, wanted):
        """The input drive in one GEMM, the rule's input side for all steps in parallel, then
        the recurrence in a tight loop with a hand-written backward (``momentumrnn.loops``; no
        LSTM projections: ``paths.check_impl`` and ``choose_path`` keep them off this path)."""
        weight_ih, weight_hh, bias_ih, bias_hh, _ = weights
        u = input_drive(x, weight_ih, bias_ih)
        recurrence = self.recurrence
        if self.rule.couples_to_hidden:          # Nesterov: v_t = (U h_{t-1} + b_hh) - s u_t, ...
            scale = hp["step_size"]
            scale = -scale if isinstance(scale, torch.Tensor) else u.new_tensor(-float(scale))
            coefficient = self.rule.extrapolation(hp, steps, x.size(0), x.dtype)
            velocity = rules["velocity"]
            if recurrence.name == "lstm":
                output, h_n, c_n, v_n = lstm_loop(u, *state, weight_hh, bias_hh, mask, coefficient, velocity, scale)
                return output, (h_n, c_n), {"velocity": v_n}
            output, h_n, v_n = rnn_loop(u, state[0], weight_hh, bias_hh, recurrence.nonlinearity, mask,
                                        coefficient, velocity, scale)
            return output, (h_n,), {"velocity": v_n}
        settings = self.rule.chunk_kernel_settings(hp, u, mask)
        if settings is not None:
            # Adam/RMSProp on the CPU: the drive made chunk by chunk inside the loop (no tensor of all steps)
            kind = recurrence.nonlinearity if recurrence.name == "rnn" else recurrence.name
            output, state, v_n, m_n = adam_loop(kind, u, state, weight_hh, bias_hh, rules["velocity"],
                                                rules["second_moment"], **settings)
            return output, state, {"velocity": v_n, "second_moment": m_n}
        drives, rules = self.rule.drives(u, rules, hp, steps, mask)
        if recurrence.name == "gru":
            output, h_n = gru_loop(drives, state[0], weight_hh, bias_hh, mask)
            return output, (h_n,), rules
        if recurrence.name == "lstm":
            output, h_n, c_n, _ = lstm_loop(drives, *state, weight_hh, bias_hh, mask)
            return output, (h_n, c_n), rules
        output, h_n, _ = rnn_loop(drives, state[0], weight_hh, bias_hh, recurrence.nonlinearity, mask)
        return output, (h_n,), rules

    def _run_triton_loop(self, x, weights, hp, state, rules, steps, mask, lengths, carried, wanted):
        """The rule coupled to h (Nesterov) on CUDA: the input drive in one GEMM and the
        per-step terms ``b_hh - s u_t`` in one op, then one GEMM and one Triton kernel a step,
        forward and backward (``momentumrnn.triton_loop``)."""
        weight_ih, weight_hh, bias_ih, bias_hh, _ = weights
        check_device(x, type(self).__name__)
        u = F.linear(x, weight_ih, bias_ih)
        scale = hp["step_size"]
        terms = -scale * u if bias_hh is None else bias_hh - scale * u
        coefficient = self.rule.extrapolation(hp, steps, x.size(0), x.dtype)
        velocity = rules["velocity"]
        if self.recurrence.name == "lstm":
            output, h_n, c_n, v_n = nesterov_lstm(terms, *state, weight_hh, coefficient, velocity, mask)
            return output, (h_n, c_n), {"velocity": v_n}
        output, h_n, v_n = nesterov_rnn(terms, state[0], weight_hh, coefficient, velocity,
                                        self.recurrence.nonlinearity, mask)
        return output, (h_n,), {"velocity": v_n}

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.recurrence.name == "rnn" and self.recurrence.nonlinearity != "tanh":
            s += f", nonlinearity={self.recurrence.nonlinearity!r}"
        for name, default in (("bias", True), ("batch_first", False), ("dropout", 0.0), ("bidirectional", False),
                              ("proj_size", 0), ("impl", "auto")):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)!r}" if name == "impl" else f", {name}={getattr(self, name)}"
        return f"{s}, {self._rule_repr()}"


def reverse_sequences(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each sequence of a (time, batch, ...) tensor within its own length."""
    if lengths is None:
        return x.flip(0)
    time = torch.arange(x.size(0), device=x.device)[:, None]
    lengths = lengths.to(x.device)[None, :]
    index = torch.where(time < lengths, lengths - 1 - time, time)
    return x.gather(0, index[..., None].expand_as(x))


def pack_like(output: Tensor, packed: PackedSequence, lengths: Tensor) -> PackedSequence:
    """Pack a padded (time, batch, ...) output with the batch layout of ``packed``."""
    if packed.sorted_indices is not None:
        output = output.index_select(1, packed.sorted_indices)
        lengths = lengths[packed.sorted_indices.cpu()]
    valid = torch.arange(output.size(0))[:, None] < lengths[None, :]
    data = output[valid.to(output.device)]              # row-major over (time, batch): packed order
    return PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)


class _RNNLayer(RecurrentLayer):
    """RNN layers take ``nonlinearity`` fourth, as ``torch.nn.RNN`` does."""

    recurrence_type = RNNRecurrence

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device: torch.device | str | int | None = None, dtype: torch.dtype | None = None, **kwargs):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device, dtype, nonlinearity=nonlinearity, **kwargs)


class MomentumRNN(_RNNLayer):
    """``v_t = mu v_{t-1} + s (W x_t + b_ih)``;  ``h_t = tanh(v_t + U h_{t-1} + b_hh)``."""
    rule_type = MomentumRule

    if TYPE_CHECKING:                       # the constructor's arguments, for type checkers
        def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                     bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                     device: torch.device | str | int | None = None, dtype: torch.dtype | None = None, *,
                     learnable: bool = False, init: str = "torch", forget_bias: float = 1.0, impl: str = "auto",
                     proj_size: int = 0, momentum: float = 0.6, step_size: float = 0.6) -> None: ...


class AdamRNN(_RNNLayer):
    """Adam rule (``AdamRule``) on the RNN drive."""
    rule_type = AdamRule

    if TYPE_CHECKING:                       # the constructor's arguments, for type checkers
        def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                     bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                     device: torch.device | str | int | None = None, dtype: torch.dtype | None = None, *,
                     learnable: bool = False, init: str = "torch", forget_bias: float = 1.0, impl: str = "auto",
                     proj_size: int = 0, momentum: float = 0.6, step_size: float = 0.6, beta: float = 0.1) -> None: ...


class RMSPropRNN(_RNNLayer):
    """RMSProp rule (``RMSPropRule``) on the RNN drive."""
    rule_type = RMSPropRule

    if TYPE_CHECKING:                       # the constructor's arguments, for type checkers
        def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                     bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                     device: torch.device | str | int | None = None, dtype: torch.dtype | None = None, *,
                     learnable: bool = False, init: str = "torch", forget_bias: float = 1.0, impl: str = "auto",
                     proj_size: int = 0, step_size: float = 0.6, beta: float = 0.9) -> None: ...


class NesterovRNN(_RNNLayer):
    """NAG with scheduled restart (``NesterovRule``), coupled to h."""
    rule_type = NesterovRule

    if TYPE_CHECKING:                       # the constructor's arguments, for type checkers
        def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                     bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                     device: torch.device | str | int | None = None, dtype: torch.dtype | None = None, *,
                     learnable: bool = False, init: str = "torch", forget_bias: float = 1.0, impl: str = "auto",
                     proj_size: int = 0, step_size: float = 1.0, restart: int = 2) -> None: ...


class RestartRNN(_RNNLayer):
    """Input-only restarted momentum (``RestartRule``)."""
    rule_type = RestartRule

    if TYPE_CHECKING:                       # the constructor's arguments, for type checkers
        def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                     bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                     device: torch.device | str | int | None = None, dtype: torch.dtype | None = None, *,
                     learnable: bool = False, init: str = "torch", forget_bias: float = 1.0, impl: str = "auto",
                     proj_size: int = 0, step_size: float = 1.0, restart: int = 2) -> None: ...


class MomentumLSTM(RecurrentLayer):
    """``v_t = mu v_{t-1} + s (W x_t + b_ih)``;  ``gates = v_t + U h_{t-1} + b_hh``; LSTM."""
    recurrence_type, rule_type = LSTMRecurrence, MomentumRule

    if TYPE_CHECKING:                       # the constructor's arguments, for type checkers
        def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                     batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                     device: torch.device | str | int | None = None, dtype: torch.dtype | None = None, *,
                     nonlinearity: str | None = None, learnable: bool = False, init: str = "torch",
                     forget_bias: float = 1.0, impl: str = "auto", proj_size: int = 0, momentum: float = 0.6,
                     step_size: float = 0.6) -> None: ...


class AdamLSTM(RecurrentLayer):
    """Adam rule (``AdamRule``) on the four gate drives."""
    recurrence_type, rule_type = LSTMRecurrence, AdamRule

    if TYPE_CHECKING:                       # the constructor's arguments, for type checkers
        def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                     batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                     device: torch.device | str | int | None = None, dtype: torch.dtype | None = None, *,
                     nonlinearity: str | None = None, learnable: bool = False, init: str = "torch",
                     forget_bias: float = 1.0, impl: str = "auto", proj_size: int = 0, momentum: float = 0.6,
                     step_size: float = 0.6, beta: float = 0.1) -> None: ...


class RMSPropLSTM(RecurrentLayer):
    """RMSProp rule (``RMSPropRule``) on the four gate drives."""
    recurrence_type, rule_type = LSTMRecurrence, RMSPropRule

    if TYPE_CHECKING:                       # the constructor's arguments, for type checkers
        def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                     batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                     device: torch.device | str | int | None = None, dtype: torch.dtype | None = None, *,
                     nonlinearity: str | None = None, learnable: bool = False, init: str = "torch",
                     forget_bias: float = 1.0, impl: str = "auto", proj_size: int = 0, step_size: float = 0.6,
                     beta: float = 0.9) -> None: ...


class NesterovLSTM(RecurrentLayer):
    """The paper's SRLSTM: NAG with scheduled restart (``NesterovRule``), coupled to h."""
    recurrence_type, rule_type = LSTMRecurrence, NesterovRule

    if TYPE_CHECKING:                       # the constructor's arguments, for type checkers
        def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                     batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                     device: torch.device | str | int | None = None, dtype: torch.dtype | None = None, *,
                     nonlinearity: str | None = None, learnable: bool = False, init: str = "torch",
                     forget_bias: float = 1.0, impl: str = "auto", proj_size: int = 0, step_size: float = 1.0,
                     restart: int = 2) -> None: ...


class RestartLSTM(RecurrentLayer):
    """The authors' Penn Treebank NesterovLSTM: input-only restarted momentum (``RestartRule``)."""
    recurrence_type, rule_type = LSTMRecurrence, RestartRule

    if TYPE_CHECKING:                       # the constructor's arguments, for type checkers
        def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                     batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                     device: torch.device | str | int | None = None, dtype: torch.dtype | None = None, *,
                     nonlinearity: str | None = None, learnable: bool = False, init: str = "torch",
                     forget_bias: float = 1.0, impl: str = "auto", proj_size: int = 0, step_size: float = 1.0,
                     restart: int = 2) -> None: ...


class MomentumGRU(RecurrentLayer):
    """Momentum on the three GRU input drives (``MomentumRule``, ``GRURecurrence``)."""
    recurrence_type, rule_type = GRURecurrence, MomentumRule

    if TYPE_CHECKING:                       # the constructor's arguments, for type checkers
        def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                     batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                     device: torch.device | str | int | None = None, dtype: torch.dtype | None = None, *,
                     nonlinearity: str | None = None, learnable: bool = False, init: str = "torch",
                     forget_bias: float = 1.0, impl: str = "auto", proj_size: int = 0, momentum: float = 0.6,
                     step_size: float = 0.6) -> None: ...


class AdamGRU(RecurrentLayer):
    """Adam rule on the three GRU input drives."""
    recurrence_type, rule_type = GRURecurrence, AdamRule

    if TYPE_CHECKING:                       # the constructor's arguments, for type checkers
        def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                     batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                     device: torch.device | str | int | None = None, dtype: torch.dtype | None = None, *,
                     nonlinearity: str | None = None, learnable: bool = False, init: str = "torch",
                     forget_bias: float = 1.0, impl: str = "auto", proj_size: int = 0, momentum: float = 0.6,
                     step_size: float = 0.6, beta: float = 0.1) -> None: ...


class RMSPropGRU(RecurrentLayer):
    """RMSProp rule on the three GRU input drives."""
    recurrence_type, rule_type = GRURecurrence, RMSPropRule

    if TYPE_CHECKING:                       # the constructor's arguments, for type checkers
        def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                     batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                     device: torch.device | str | int | None = None, dtype: torch.dtype | None = None, *,
                     nonlinearity: str | None = None, learnable: bool = False, init: str = "torch",
                     forget_bias: float = 1.0, impl: str = "auto", proj_size: int = 0, step_size: float = 0.6,
                     beta: float = 0.9) -> None: ...


class RestartGRU(RecurrentLayer):
    """Input-only restarted momentum on the three GRU input drives."""
    recurrence_type, rule_type = GRURecurrence, RestartRule

    if TYPE_CHECKING:                       # the constructor's arguments, for type checkers
        def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                     batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                     device: torch.device | str | int | None = None, dtype: torch.dtype | None = None, *,
                     nonlinearity: str | None = None, learnable: bool = False, init: str = "torch",
                     forget_bias: float = 1.0, impl: str = "auto", proj_size: int = 0, step_size: float = 1.0,
                     restart: int = 2) -> None: ...
