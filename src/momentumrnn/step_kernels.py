"""Triton kernels for one time step of the recurrences torch's fused kernels do not have.

Imported only by ``momentumrnn.triton_loop`` (the ``"triton-loop"`` path), so CPU users need
no Triton. A step is one GEMM ``z = U h_{t-1}`` (torch's, outside these kernels) and one
of these kernels, which does everything elementwise that the step does. Each program owns
a block of units ``n = b * H + j`` (sequence b, hidden unit j) and, for the LSTM, all four
gates of its units. The cells (``CELL``):

* ``LSTM`` (Nesterov): ``v_t = z + a_t`` with ``a_t = b_hh - s u_t`` precomputed,
  ``pre_t = v_t + c_t (v_t - v_{t-1})``, then torch's LSTM on ``pre_t`` (gates i, f, g, o).
* ``TANH``, ``RELU`` (Nesterov): the same ``v``, ``pre``, then ``h_t = tanh(pre_t)`` or
  ``relu(pre_t)``.
* ``MODRELU``: ``pre_t = z + d_t`` (``d_t`` the rule's drive), ``h_t = sign(pre_t) relu(|pre_t| + b)``.

With a mask (packed sequences) a step whose ``keep`` is 0 holds every state (h, c, v).

The backward kernel of a step takes the gradient reaching ``h_t`` and returns the gradient
reaching ``z``, which is also that of ``a_t`` (``d_t``): ``dz_t``; the next GEMM,
``dh_{t-1} = base + dz_t U``, starts from ``base``, which the kernel writes: the output's
gradient ``grad_out[t-1]`` plus, at a held step, the gradient that passes ``h`` unchanged.
The Nesterov adjoint carries ``passed`` (the gradient reaching ``v_{t-1}`` through the
extrapolation): ``dv_t = (1 + c_t) dpre_t + passed``, ``passed <- -c_t dpre_t``.

Arrays are step windows (``triton_loop.Window``): the kernels take a window and the step's
index ``i`` in it. ``tanh`` is ``sign(x) (1 - e) / (1 + e)`` with ``e = exp(-2|x|)``, sigmoid
``1 / (1 + exp(-x))``, with the correctly rounded division in float32 (plain ``/`` is
approximate there); results agree with torch's to rounding.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["CELLS", "forward_step", "backward_step"]

#: The cells, as the kernels' ``CELL`` constant.
CELLS = {"lstm": 0, "tanh": 1, "relu": 2, "modrelu": 3}
LSTM, TANH, RELU, MODRELU = (tl.constexpr(CELLS[name]) for name in ("lstm", "tanh", "relu", "modrelu"))

#: Units per program.
BLOCK_UNITS = 128


@triton.jit
def _div(a, b, FP32: tl.constexpr):
    if FP32:
        return tl.math.div_rn(a, b)
    return a / b


@triton.jit
def _sigmoid(x, FP32: tl.constexpr):
    return _div(1.0, 1.0 + tl.exp(-x), FP32)


@triton.jit
def _tanh(x, FP32: tl.constexpr):
    e = tl.exp(-2.0 * tl.abs(x))
    magnitude = _div(1.0 - e, 1.0 + e, FP32)
    return tl.where(x < 0, -magnitude, magnitude)


@triton.jit
def _rnn_activation(pre, CELL: tl.constexpr, FP32: tl.constexpr):
    """``tanh(pre)`` (TANH) or ``relu(pre)`` (RELU)."""
    if CELL == TANH:
        return _tanh(pre, FP32)
    return tl.maximum(pre, 0.0)


@triton.jit
def _nesterov(z_ptr, a_ptr, v_ptr, at, keep, c, HAS_MASK: tl.constexpr, inside):
    """``v_t = z + a_t`` (held where not ``keep``), stored in place of ``v_{t-1}``;
    returns ``pre_t = v_t + c (v_t - v_{t-1})``."""
    v_prev = tl.load(v_ptr + at)
    v = tl.load(z_ptr + at) + tl.load(a_ptr + at)
    if HAS_MASK:
        v = tl.where(keep, v, v_prev)
    tl.store(v_ptr + at, v, mask=inside)
    return v + c * (v - v_prev)


@triton.jit(do_not_specialize=["i"])
def forward_kernel(z_ptr, a_ptr, v_ptr, coef_ptr, coef_stride_t, coef_stride_b, keep_ptr, h_ptr, c_ptr, acts_ptr,
                   pre_ptr, bias_ptr, i, B, H, CELL: tl.constexpr, HAS_MASK: tl.constexpr, FP32: tl.constexpr,
                   BLOCK: tl.constexpr):
    """Step ``i`` of the window: reads ``h[i]`` (and ``c[i]``), writes ``h[i + 1]`` (``c[i + 1]``,
    the LSTM's gate activations ``acts[i]``, modReLU's ``pre[i]``); Nesterov's ``v`` in place."""
    units = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = units < B * H
    units = tl.where(inside, units, 0)                   # out-of-range lanes compute on unit 0, store nothing
    b = units // H
    j = units % H
    i64 = i.to(tl.int64)
    BH = B * H
    keep = units >= 0
    if HAS_MASK:
        keep = tl.load(keep_ptr + i64 * B + b) != 0
    h_prev = tl.load(h_ptr + i64 * BH + units)
    if CELL == LSTM:
        G = 4 * H
        row = b * G + j                                   # gate k of unit j: row + k H
        step_row = i64 * B * G + row
        c = tl.load(coef_ptr + i64 * coef_stride_t + b * coef_stride_b)
        p_i = _nesterov(z_ptr, a_ptr + i64 * B * G, v_ptr, row, keep, c, HAS_MASK, inside)
        p_f = _nesterov(z_ptr, a_ptr + i64 * B * G, v_ptr, row + H, keep, c, HAS_MASK, inside)
        p_g = _nesterov(z_ptr, a_ptr + i64 * B * G, v_ptr, row + 2 * H, keep, c, HAS_MASK, inside)
        p_o = _nesterov(z_ptr, a_ptr + i64 * B * G, v_ptr, row + 3 * H, keep, c, HAS_MASK, inside)
        gi = _sigmoid(p_i, FP32)
        gf = _sigmoid(p_f, FP32)
        gg = _tanh(p_g, FP32)
        go = _sigmoid(p_o, FP32)
        tl.store(acts_ptr + step_row, gi, mask=inside)
        tl.store(acts_ptr + step_row + H, gf, mask=inside)
        tl.store(acts_ptr + step_row + 2 * H, gg, mask=inside)
        tl.store(acts_ptr + step_row + 3 * H, go, mask=inside)
        c_prev = tl.load(c_ptr + i64 * BH + units)
        cell = gf * c_prev + gi * gg
        if HAS_MASK:
            cell = tl.where(keep, cell, c_prev)
        tl.store(c_ptr + (i64 + 1) * BH + units, cell, mask=inside)
        h = go * _tanh(cell, FP32)
    elif CELL == MODRELU:
        pre = tl.load(z_ptr + units) + tl.load(a_ptr + i64 * BH + units)
        tl.store(pre_ptr + i64 * BH + units, pre, mask=inside)
        magnitude = tl.maximum(tl.abs(pre) + tl.load(bias_ptr + j), 0.0)
        h = tl.where(pre > 0, magnitude, tl.where(pre < 0, -magnitude, 0.0))
    else:
        c = tl.load(coef_ptr + i64 * coef_stride_t + b * coef_stride_b)
        h = _rnn_activation(_nesterov(z_ptr, a_ptr + i64 * BH, v_ptr, units, keep, c, HAS_MASK, inside), CELL, FP32)
    if HAS_MASK:
        h = tl.where(keep, h, h_prev)
    tl.store(h_ptr + (i64 + 1) * BH + units, h, mask=inside)


@triton.jit
def _nesterov_adjoint(dpre, passed_ptr, at, keep, c, HAS_MASK: tl.constexpr, inside):
    """``dv = (1 + c) dpre + passed`` into ``dz`` (0 at a held step, where ``passed`` goes on);
    ``passed <- -c dpre``."""
    passed = tl.load(passed_ptr + at)
    total = dpre * (1.0 + c) + passed
    reaching_earlier = -c * dpre
    if HAS_MASK:
        reaching_earlier = tl.where(keep, reaching_earlier, total)
        total = tl.where(keep, total, 0.0)
    tl.store(passed_ptr + at, reaching_earlier, mask=inside)
    return total


@triton.jit(do_not_specialize=["i"])
def backward_kernel(dh_ptr, base_ptr, go_ptr, dc_ptr, passed_ptr, dz_ptr, coef_ptr, coef_stride_t, coef_stride_b,
                    keep_ptr, h_ptr, c_ptr, acts_ptr, pre_ptr, bias_ptr, i, B, H, CELL: tl.constexpr,
                    HAS_MASK: tl.constexpr, FP32: tl.constexpr, BLOCK: tl.constexpr):
    """Step ``i`` of the window, backwards: ``dh`` reaches ``h[i + 1]``; writes ``dz[i]``,
    ``base = go[i] + (dh where held)`` for the GEMM of ``dh`` of the step before, and
    ``dc``, ``passed`` in place."""
    units = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = units < B * H
    units = tl.where(inside, units, 0)
    b = units // H
    j = units % H
    i64 = i.to(tl.int64)
    BH = B * H
    dh = tl.load(dh_ptr + units)
    keep = units >= 0
    held_h = tl.zeros_like(dh)
    if HAS_MASK:
        keep = tl.load(keep_ptr + i64 * B + b) != 0
        held_h = tl.where(keep, 0.0, dh)
        dh = tl.where(keep, dh, 0.0)
    tl.store(base_ptr + units, tl.load(go_ptr + i64 * BH + units) + held_h, mask=inside)
    if CELL == LSTM:
        G = 4 * H
        row = b * G + j
        dz_row = dz_ptr + i64 * B * G
        acts_row = acts_ptr + i64 * B * G + row
        gi = tl.load(acts_row)
        gf = tl.load(acts_row + H)
        gg = tl.load(acts_row + 2 * H)
        go = tl.load(acts_row + 3 * H)
        dc = tl.load(dc_ptr + units)
        held_c = tl.zeros_like(dc)
        if HAS_MASK:
            held_c = tl.where(keep, 0.0, dc)
            dc = tl.where(keep, dc, 0.0)
        tanh_c = _tanh(tl.load(c_ptr + (i64 + 1) * BH + units), FP32)
        c_prev = tl.load(c_ptr + i64 * BH + units)
        dc = dc + dh * (go * (1.0 - tanh_c * tanh_c))
        d_i = dc * (gg * (gi * (1.0 - gi)))
        d_f = dc * (c_prev * (gf * (1.0 - gf)))
        d_g = dc * (gi * (1.0 - gg * gg))
        d_o = dh * (tanh_c * (go * (1.0 - go)))
        tl.store(dc_ptr + units, dc * gf + held_c, mask=inside)
        c = tl.load(coef_ptr + i64 * coef_stride_t + b * coef_stride_b)
        tl.store(dz_row + row, _nesterov_adjoint(d_i, passed_ptr, row, keep, c, HAS_MASK, inside),
                 mask=inside)
        tl.store(dz_row + row + H,
                 _nesterov_adjoint(d_f, passed_ptr, row + H, keep, c, HAS_MASK, inside), mask=inside)
        tl.store(dz_row + row + 2 * H,
                 _nesterov_adjoint(d_g, passed_ptr, row + 2 * H, keep, c, HAS_MASK, inside), mask=inside)
        tl.store(dz_row + row + 3 * H,
                 _nesterov_adjoint(d_o, passed_ptr, row + 3 * H, keep, c, HAS_MASK, inside), mask=inside)
    elif CELL == MODRELU:
        pre = tl.load(pre_ptr + i64 * BH + units)
        active = (tl.abs(pre) + tl.load(bias_ptr + j) > 0) & (pre != 0)
        tl.store(dz_ptr + i64 * BH + units, tl.where(active, dh, 0.0), mask=inside)
    else:
        h = tl.load(h_ptr + (i64 + 1) * BH + units)
        if CELL == TANH:
            dpre = dh * (1.0 - h * h)
        else:
            dpre = tl.where(h > 0, dh, 0.0)
        c = tl.load(coef_ptr + i64 * coef_stride_t + b * coef_stride_b)
        dz_row = dz_ptr + i64 * BH
        tl.store(dz_row + units, _nesterov_adjoint(dpre, passed_ptr, units, keep, c, HAS_MASK, inside),
                 mask=inside)


def _grid(window):
    return (triton.cdiv(window.batch * window.hidden, BLOCK_UNITS),)


def forward_step(window, i: int) -> None:
    """Launch the forward kernel for step ``i`` of ``window`` (after the GEMM into ``window.z``)."""
    w = window
    forward_kernel[_grid(w)](
        w.z, w.terms, w.velocity, w.coefficient, *w.coefficient_strides, w.keep, w.h, w.c, w.acts, w.pre, w.bias,
        i, w.batch, w.hidden, CELL=CELLS[w.cell], HAS_MASK=w.has_mask, FP32=w.fp32, BLOCK=BLOCK_UNITS)


def backward_step(window, i: int) -> None:
    """Launch the backward kernel for step ``i`` of ``window`` (before the GEMM from ``window.base``)."""
    w = window
    backward_kernel[_grid(w)](
        w.dh, w.base, w.grad_before, w.dc, w.passed, w.dz, w.coefficient, *w.coefficient_strides, w.keep, w.h, w.c,
        w.acts, w.pre, w.bias, i, w.batch, w.hidden, CELL=CELLS[w.cell], HAS_MASK=w.has_mask, FP32=w.fp32,
        BLOCK=BLOCK_UNITS)
