"""Momentum layers through torch's fused RNN kernels (oneDNN on CPU, cuDNN on CUDA).

For a rule whose velocity is a linear filter of the input drive with input-independent
coefficients (``Rule.commutes_with_input_weights``: momentum, input-only restart)::

    v_t = a_t v_{t-1} + s (W x_t + b_ih)

the filter commutes with the input weights. With the filtered input and the filtered bias
weight (both computed in parallel over time by ``ops.linear_scan``)::

    x~_t = a_t x~_{t-1} + s x_t,     beta_t = a_t beta_{t-1} + s,     x~_0 = beta_0 = 0

the velocity is ``v_t = W x~_t + beta_t b_ih + P_t v_0`` with ``P_t = a_1 ... a_t``. So the
layer is torch's own fused layer run on the input ``[x~_t, beta_t]`` with input weights
``[W | b_ih]`` and ``bias_ih = 0`` (``bias_hh`` unchanged): the kernel's ``W' x'_t`` is exactly
``v_t``. This holds for LSTM, GRU and RNN alike (the GRU's reset gate acts on the recurrent
term only).

Decisions (see also the README, Performance):

* **Carried velocity** (``rule_state`` given): ``P_t v_0`` is not in W's span, but it is in
  the span of the batch's carried velocities. B more input channels carry it exactly:
  channel b of sequence b is ``P_t`` (zero for the other sequences) and its weight column
  is ``v_0[b]``. This costs ``B / (input_size + 1)`` more input GEMM, nothing else.
* **Restart rule**: the coefficient ``(k'-1)/(k'+2)`` follows each sequence's own step
  counter; with carried counters that differ, the filter runs with a coefficient per step
  and sequence (``linear_scan`` handles both).
* **Reverse direction**: it needs its own filtered input (the filter runs backwards in time
  within each sequence), so a bidirectional layer is one fused call per direction on the
  time-reversed input, not one bidirectional call. **Multi-layer**: one call per layer and
  direction (each layer filters its own input); dropout between layers as the reference.
* **Packed sequences**: the filtered input is packed with the sequences' lengths and the
  fused kernel runs on the ``PackedSequence``, which stops every sequence at its own end.
* **Learnable momentum and step size**: ``x~`` and ``beta`` are differentiable in them, and
  the fused kernel returns input gradients, so their gradients flow.
* torch's fused kernels are reached through ``torch._VF.lstm``/``gru``/``rnn_tanh``/
  ``rnn_relu``, what ``torch.nn.LSTM`` itself calls, with the weights built per call.

All of this is exact algebra; the results equal the per-step reference to rounding
(float64: about 1e-15 relative), values and gradients.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, _VF
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .recurrences import Recurrence
from .paths import scan_backend
from .rules import Rule
from .custom_backward import first_order, unmaterialized
from .ops.linear_scan import default_block, scan_

__all__ = ["fused_direction", "fused_kernel", "drive_kernel"]

#: torch's CPU GRU and RNN (unlike its LSTM, not oneDNN) take the input weights' gradient as
#: one GEMM ``dG^T x'`` whose narrow side is the input width. MKL runs that GEMM about 10x
#: slower for widths 2 to 11 than for 1 or 16 (1 thread, K = 50,176 rows: 120-155 ms against
#: 13-16 ms at 3H = 384), and pixel-MNIST input is 1 channel + beta = 2. Such inputs get zero
#: channels (with zero weight columns) up to ``PADDED_WIDTH``; exact, a little more GEMM.
NARROW = (2, 11)
PADDED_WIDTH = 16


def _function(recurrence: Recurrence):
    if recurrence.name == "lstm":
        return _VF.lstm
    if recurrence.name == "gru":
        return _VF.gru
    return _VF.rnn_tanh if recurrence.nonlinearity == "tanh" else _VF.rnn_relu


def fused_kernel(recurrence: Recurrence, x: Tensor, hidden: tuple[Tensor, ...], weights: list[Tensor],
                 has_biases: bool, lengths: Tensor | None):
    """One layer, one direction of torch's fused RNN/LSTM/GRU on ``x`` (T, B, I).

    ``hidden``: ``(h0,)`` or ``(h0, c0)``, each (B, H); ``weights``: ``[w_ih, w_hh(, b_ih, b_hh)]``;
    ``lengths`` (B,) on the CPU for packed sequences (else None). Returns the output
    (T, B, H), zero at padded steps, and the final state per sequence as a tuple.
    """
    function = _function(recurrence)
    train = torch.is_grad_enabled()          # keeps what the backward needs (cuDNN's reserve)
    time = x.size(0)
    sorted_indices = unsorted_indices = None
    if x.size(1) == 0:          # no sequences: nothing to pack (torch refuses to), the dense call is empty too
        lengths = None
    if lengths is not None:
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        sorted_indices, unsorted_indices = packed.sorted_indices, packed.unsorted_indices
        hidden = tuple(h.index_select(0, sorted_indices) for h in hidden)
    hx = tuple(h.unsqueeze(0) for h in hidden)
    hx = hx if len(hx) == 2 else hx[0]
    with warnings.catch_warnings():
        if x.is_cuda:   # our weights are built per call, so cuDNN copies them into its buffer
            warnings.filterwarnings("ignore", message="RNN module weights are not part of single contiguous")
        if lengths is None:
            result = function(x, hx, weights, has_biases, 1, 0.0, train, False, False)
        else:
            result = function(packed.data, packed.batch_sizes, hx, weights, has_biases, 1, 0.0, train, False)
    output, final = result[0], tuple(h.squeeze(0) for h in result[1:])
    if lengths is not None:
        output, _ = pad_packed_sequence(PackedSequence(output, packed.batch_sizes, sorted_indices,
                                                       unsorted_indices), total_length=time)
        final = tuple(h.index_select(0, unsorted_indices) for h in final)
    return output, final


def fused_direction(recurrence: Recurrence, rule: Rule, x: Tensor, weights: tuple, hp: dict,
                    hidden: tuple[Tensor, ...], velocity: Tensor | None, steps: Tensor,
                    lengths: Tensor | None, final_velocity: bool = True):
    """One layer and direction of a momentum/restart layer through the fused kernel.

    ``x`` (T, B, I) in processing order (already reversed within each sequence for the
    reverse direction); ``weights`` ``(W, U, b_ih, b_hh)``; ``hidden`` the initial state;
    ``velocity`` (B, G*H) the carried velocity, or None when it is zero; ``steps`` (B,) the
    steps already taken; ``lengths`` (B,) for packed sequences; ``weights`` may end with the LSTM
    projection ``W_hr`` (or None), which torch's kernel applies. Returns the output (T, B, H),
    the final state and the final velocity (at each sequence's last valid step; None unless
    ``final_velocity``: it costs a GEMM).
    """
    weight_ih, weight_hh, bias_ih, bias_hh, *projection = weights
    time, batch, _ = x.shape
    coefficient = rule.state_coefficients(hp, steps, time, None, x.dtype)["velocity"]
    filtered = filter_inputs(coefficient, hp["step_size"], x, bias_ih is not None)      # [x~, beta]
    weight = [weight_ih, bias_ih[:, None]] if bias_ih is not None else [weight_ih]
    if velocity is not None:   # carried v_0: B channels, P_t on sequence b's own channel
        products = _products(coefficient, time, x)                              # (T, Bc)
        eye = torch.eye(batch, dtype=x.dtype, device=x.device)
        filtered = torch.cat([filtered, products[..., None] * eye], dim=-1)
        weight.append(velocity.t())
    weight = _Columns.apply(*weight) if len(weight) > 1 else weight[0]
    if recurrence.name != "lstm" and not x.is_cuda and NARROW[0] <= filtered.size(-1) <= NARROW[1]:
        padding = PADDED_WIDTH - filtered.size(-1)              # zero channels, zero weight columns
        filtered = F.pad(filtered, (0, padding))
        weight = F.pad(weight, (0, padding))
    if bias_hh is not None:
        flat = [weight, weight_hh, torch.zeros_like(bias_hh), bias_hh]
    else:
        flat = [weight, weight_hh]
    flat += [p for p in projection if p is not None]            # torch's order: w_ih, w_hh, b_ih, b_hh, w_hr
    output, final = fused_kernel(recurrence, filtered, hidden, flat, bias_hh is not None, lengths)
    if not final_velocity:
        return output, final, None
    if lengths is None:
        last = filtered[time - 1]
    else:
        index = (lengths.to(x.device) - 1)[None, :, None].expand(1, batch, filtered.size(-1))
        last = filtered.gather(0, index)[0]
    return output, final, F.linear(last, weight)


class _Columns(torch.autograd.Function):
    """``torch.cat(pieces, dim=1)`` whose backward gives every piece a contiguous gradient
    (``cat``'s backward gives column slices of one tensor: ``weight_ih.grad`` and
    ``bias_ih.grad`` would be strided views, where torch's layers give contiguous ones)."""

    @staticmethod
    def forward(*pieces):
        return torch.cat(pieces, dim=1)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.widths = [piece.size(1) for piece in inputs]

    @staticmethod
    def backward(ctx, grad):
        return tuple(piece.contiguous() for piece in grad.split(ctx.widths, dim=1))


class _Filter(torch.autograd.Function):
    """``[x~, beta]`` in one output buffer: ``x~_t = a_t x~_{t-1} + s x_t``, ``beta_t =
    a_t beta_{t-1} + s``, in place (one Triton kernel, or the two-level scan of torch ops,
    as ``paths.scan_backend`` says); the backward is the adjoint scan. No autograd
    temporaries: the one extra tensor of the fused path is its input."""

    @staticmethod
    @unmaterialized
    def forward(ctx, a, step_size, x, ones, triton):
        time, batch, features = x.shape
        out = x.new_empty(time, batch, features + int(ones))
        torch.mul(x, step_size, out=out[..., :features])
        if ones:
            out[..., features] = step_size
        if a is not None:
            _scan_in_place(a, out, triton, reverse=False)
        ctx.save_for_backward(a, step_size, out if ctx.needs_input_grad[0] else None,
                              x if ctx.needs_input_grad[1] else None)
        ctx.features, ctx.triton = features, triton
        return out

    @staticmethod
    @first_order
    def backward(ctx, grad):
        a, step_size, out, x = ctx.saved_tensors
        features = ctx.features
        g = grad
        if a is not None:
            g = _scan_in_place(a, grad.clone(memory_format=torch.contiguous_format), ctx.triton, reverse=True)
        d_a = d_s = None
        if ctx.needs_input_grad[0]:                      # sum_t g_t . y_{t-1} (a learnable momentum)
            d_a = torch.dot(g[1:].reshape(-1), out[:-1].reshape(-1))
        ones = g.size(-1) > features
        g_x = g[..., :features] if ones else g       # not a full slice: vmap has no rule for its alias
        if ctx.needs_input_grad[1]:                      # sum_t g_t . [x_t, 1]
            d_s = (g_x * x).sum() + (g[..., features:].sum() if ones else 0.0)
        d_x = g_x * step_size if ctx.needs_input_grad[2] else None
        return d_a, d_s, d_x, None, None


def _scan_in_place(a: Tensor, y: Tensor, triton: bool, reverse: bool) -> Tensor:
    """The filter's recurrence in place: one Triton kernel (``ops.linear_scan.triton.scan_``)
    or the two-level scan of torch ops (``ops.linear_scan.scan_``)."""
    if triton:
        from .ops.linear_scan import triton as kernels

        return kernels.scan_(a, y, reverse)
    return scan_(a, y, default_block(y.size(0)), reverse=reverse)


def filter_inputs(coefficient, step_size, x: Tensor, ones: bool) -> Tensor:
    """``[x~, beta]`` (T, B, I + 1), or ``x~`` alone without ``ones``; ``coefficient`` a number,
    a 0-d tensor (learnable) or (T, B)/(T, 1), ``step_size`` a number or a 0-d tensor."""
    if not isinstance(coefficient, Tensor):     # a fixed momentum of 0 (the PTB setting): no filter
        coefficient = (None if float(coefficient) == 0.0
                       else torch.full((), float(coefficient), dtype=x.dtype, device=x.device))
    elif coefficient.dim() == 2 and coefficient.requires_grad:
        raise ValueError("a per-step coefficient cannot be learnable")
    step_size = (step_size.to(x.dtype) if isinstance(step_size, Tensor)
                 else torch.full((), float(step_size), dtype=x.dtype, device=x.device))
    coefficient = None if coefficient is None else coefficient.to(x.dtype).contiguous()
    return _Filter.apply(coefficient, step_size, x, ones, scan_backend(x) == "triton")


def _products(coefficient, time: int, like: Tensor) -> Tensor:
    """``P_t = a_1 ... a_t`` for t = 1..T, (T, 1) or (T, B)."""
    if isinstance(coefficient, (int, float)):
        coefficient = like.new_full((1, 1), float(coefficient))
    if coefficient.dim() == 0:
        coefficient = coefficient.reshape(1, 1)
    return torch.cumprod(coefficient.to(like.dtype).expand(time, coefficient.size(-1)), dim=0)


def drive_kernel(recurrence: Recurrence, drives: Tensor, weight_hh: Tensor, bias_hh: Tensor | None,
                 hidden: tuple[Tensor, ...], lengths: Tensor | None, projection: Tensor | None = None):
    """Torch's fused kernel run on a rule's drive ``d`` (T, B, G*H) of all steps: input weights
    ``I`` (G*H x G*H) and a zero input bias, so that the kernel's input term ``I d_t + 0`` is
    exactly ``d_t`` (a product with the identity adds only zeros; cuDNN's TF32 mode, where
    enabled, rounds ``d_t`` as it rounds ``W x_t`` in ``torch.nn.LSTM``). Its input gradient
    is then dL/dd. Holds for the LSTM, the GRU (torch adds the n gate's input term outside
    the reset gate, as ``GRURecurrence``) and the RNN; ``projection``: the LSTM's ``W_hr``.
    Returns the output and final state."""
    identity = _identity(drives.size(-1), drives.dtype, drives.device)
    if bias_hh is not None:
        flat = [identity, weight_hh, torch.zeros_like(bias_hh), bias_hh]
    else:
        flat = [identity, weight_hh]
    if projection is not None:
        flat.append(projection)
    return fused_kernel(recurrence, drives, hidden, flat, bias_hh is not None, lengths)


@functools.lru_cache(maxsize=8)
def _identity(size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The identity input weight, made once per size, dtype and device (kept: at G*H = 4,600
    it is 85 MB in float32, and a new one per call would cost an allocation and a fill)."""
    with torch.inference_mode(False):           # usable with autograd even if first made under inference
        return torch.eye(size, dtype=dtype, device=device)
