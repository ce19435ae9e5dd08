"""Triton kernels that walk all time steps in one launch: the persistent alternative.

The other engine of the ``"triton-loop"`` path (``momentumrnn.triton_loop``): instead of a
GEMM and a kernel per step (``momentumrnn.step_kernels``, replayed as CUDA graphs), one
launch per call and direction. Sequences do not interact, so each program owns ``BB``
sequences (rows of the batch) and all ``H`` units, keeps ``h`` (and ``c``, the velocity)
in registers and walks time: per step ``z = h U_k^T`` for each gate block ``k`` with
``tl.dot`` (``U`` read from the L2 cache at every step), then the same elementwise step as
``step_kernels`` (whose helpers it uses). The backward walks time in reverse with the
same adjoint and ``dh_{t-1} = held + sum_k dz_k U_k``. Units are padded to ``HP``, a power
of two (the padded units stay 0), and ``tl.dot`` needs at least 16 rows and columns, so
this engine serves small hidden sizes only (``fits``): the products stage ``U`` in shared
memory.

float32 products use ``input_precision="ieee"`` (no TF32), as torch's float32 GEMMs by default.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .ops.linear_scan.triton import coefficient_strides
from .step_kernels import CELLS, LSTM, MODRELU, TANH, _rnn_activation, _sigmoid, _tanh

__all__ = ["fits", "persistent_forward", "persistent_backward", "ROWS", "MAX_UNITS", "SHARED_MEMORY"]

#: Sequences per program.
ROWS = 16
#: The largest padded hidden size per gate block (LSTM: four blocks) that the engine takes,
#: by cell and bytes per number: the products stage ``U`` in shared memory, and these are
#: the largest sizes whose kernels need at most ``SHARED_MEMORY`` bytes of it (compiled for
#: sm_90: e.g. 193 KB for the LSTM's backward at 64 float32 units, 172 KB for modReLU's at 128).
MAX_UNITS = {"lstm": {4: 64, 8: 32}, "tanh": {4: 128, 8: 64}, "relu": {4: 128, 8: 64}, "modrelu": {4: 128, 8: 64}}
#: Shared memory per block on an H100/H200 (227 KB); a GPU with less refuses the larger
#: kernels at launch, and the path then takes the windows engine (``triton_loop``).
SHARED_MEMORY = 232448


def padded(hidden: int) -> int:
    return max(16, triton.next_power_of_2(hidden))


def _warps(cell: str, hidden: int) -> int:
    """Warps per program: 8 once a program holds 256 or more numbers per sequence and
    state (four gate blocks for the LSTM), so that each thread holds fewer registers."""
    return 8 if padded(hidden) * (4 if cell == "lstm" else 1) >= 256 else 4


def fits(cell: str, hidden: int, itemsize: int) -> bool:
    """Whether the persistent kernels take this cell, hidden size and bytes per number."""
    return padded(hidden) <= MAX_UNITS[cell].get(itemsize, 0)


@triton.jit
def _block(B, H, BB: tl.constexpr, HP: tl.constexpr):
    """The program's BB sequences and all units: (rows, units, row and unit masks, both,
    offsets of (b, j) in a (B, H) array)."""
    rows = tl.program_id(0) * BB + tl.arange(0, BB)
    units = tl.arange(0, HP)
    in_rows = rows < B
    in_units = units < H
    rows64 = rows.to(tl.int64)
    return rows64, units, in_rows, in_units, in_rows[:, None] & in_units[None, :], rows64[:, None] * H + units[None, :]


@triton.jit
def _load_gates(ptr, at, H, inside):
    """The four gate blocks at ``at`` (block 0) of a (..., 4H) array."""
    return (tl.load(ptr + at, mask=inside, other=0.0), tl.load(ptr + at + H, mask=inside, other=0.0),
            tl.load(ptr + at + 2 * H, mask=inside, other=0.0), tl.load(ptr + at + 3 * H, mask=inside, other=0.0))


@triton.jit
def _step_mask_and_coefficient(t64, keep_ptr, coef_ptr, coef_stride_t, coef_stride_b, rows64, in_rows, inside, B,
                               CELL: tl.constexpr, HAS_MASK: tl.constexpr):
    """Step t's mask (``inside`` without one) and Nesterov coefficient (BB, 1) (0 for modReLU,
    which has none)."""
    keep = inside
    if HAS_MASK:
        keep = inside & (tl.load(keep_ptr + t64 * B + rows64, mask=in_rows, other=0) != 0)[:, None]
    c_t = 0.0
    if CELL != MODRELU:
        c_t = tl.load(coef_ptr + t64 * coef_stride_t + rows64 * coef_stride_b, mask=in_rows, other=0.0)[:, None]
    return keep, c_t


@triton.jit
def _store_gates(ptr, at, H, a, b, c, d, inside):
    tl.store(ptr + at, a, mask=inside)
    tl.store(ptr + at + H, b, mask=inside)
    tl.store(ptr + at + 2 * H, c, mask=inside)
    tl.store(ptr + at + 3 * H, d, mask=inside)


@triton.jit
def _gate_product(h, w_ptr, k, H, units, in_units, FP32: tl.constexpr):
    """``h U_k^T`` (BB, HP) for the gate block k of ``U`` (G, H)."""
    w = tl.load(w_ptr + (k * H + units[None, :]).to(tl.int64) * H + units[:, None],
                mask=in_units[:, None] & in_units[None, :], other=0.0)          # (HP in, HP out) = U_k^T
    if FP32:
        return tl.dot(h, w, input_precision="ieee")
    return tl.dot(h, w)


@triton.jit
def _back_product(dz, w_ptr, k, H, units, in_units, FP32: tl.constexpr):
    """``dz_k U_k`` (BB, HP): the gradient reaching h_{t-1} through gate block k."""
    w = tl.load(w_ptr + (k * H + units[:, None]).to(tl.int64) * H + units[None, :],
                mask=in_units[:, None] & in_units[None, :], other=0.0)          # (HP out, HP in) = U_k
    if FP32:
        return tl.dot(dz, w, input_precision="ieee")
    return tl.dot(dz, w)


@triton.jit
def _extrapolate(z, a_ptr, v, offsets, inside, keep, c, HAS_MASK: tl.constexpr):
    """Nesterov: ``v_t = z + a_t`` (held where not keep); returns (pre_t, v_t)."""
    v_new = z + tl.load(a_ptr + offsets, mask=inside, other=0.0)
    if HAS_MASK:
        v_new = tl.where(keep, v_new, v)
    return v_new + c * (v_new - v), v_new


@triton.jit
def persistent_forward_kernel(a_ptr, w_ptr, v_ptr, coef_ptr, coef_stride_t, coef_stride_b, keep_ptr, h_ptr, c_ptr,
                              acts_ptr, pre_ptr, bias_ptr, T, B, H, CELL: tl.constexpr, HAS_MASK: tl.constexpr,
                              FP32: tl.constexpr, BB: tl.constexpr, HP: tl.constexpr):
    """All T steps for the program's BB sequences: reads ``a`` (T, B, G), ``h[0]`` (``c[0]``),
    ``v`` (B, G); writes ``h[1..T]``, ``c[1..T]``, ``acts`` (T, B, 4H) or ``pre`` (T, B, H),
    and the final ``v`` in place."""
    rows64, units, in_rows, in_units, inside, state = _block(B, H, BB, HP)
    BH = B * H
    h = tl.load(h_ptr + state, mask=inside, other=0.0)
    if CELL == LSTM:
        G = 4 * H
        gate = rows64[:, None] * G + units[None, :]               # (b, j) of gate block 0 in a (B, G) array
        c = tl.load(c_ptr + state, mask=inside, other=0.0)
        v_i, v_f, v_g, v_o = _load_gates(v_ptr, gate, H, inside)
    elif CELL != MODRELU:
        v = tl.load(v_ptr + state, mask=inside, other=0.0)
    if CELL == MODRELU:
        bias = tl.load(bias_ptr + units, mask=in_units, other=0.0)
    for t in range(0, T):
        t64 = tl.full((), 0, tl.int64) + t
        keep, c_t = _step_mask_and_coefficient(t64, keep_ptr, coef_ptr, coef_stride_t, coef_stride_b, rows64, in_rows,
                                               inside, B, CELL, HAS_MASK)
        if CELL == LSTM:
            step_gate = t64 * B * G + gate
            p_i, v_i = _extrapolate(_gate_product(h, w_ptr, 0, H, units, in_units, FP32), a_ptr, v_i, step_gate,
                                    inside, keep, c_t, HAS_MASK)
            p_f, v_f = _extrapolate(_gate_product(h, w_ptr, 1, H, units, in_units, FP32), a_ptr, v_f, step_gate + H,
                                    inside, keep, c_t, HAS_MASK)
            p_g, v_g = _extrapolate(_gate_product(h, w_ptr, 2, H, units, in_units, FP32), a_ptr, v_g,
                                    step_gate + 2 * H, inside, keep, c_t, HAS_MASK)
            p_o, v_o = _extrapolate(_gate_product(h, w_ptr, 3, H, units, in_units, FP32), a_ptr, v_o,
                                    step_gate + 3 * H, inside, keep, c_t, HAS_MASK)
            gi = _sigmoid(p_i, FP32)
            gf = _sigmoid(p_f, FP32)
            gg = _tanh(p_g, FP32)
            go = _sigmoid(p_o, FP32)
            _store_gates(acts_ptr, step_gate, H, gi, gf, gg, go, inside)
            cell = gf * c + gi * gg
            if HAS_MASK:
                cell = tl.where(keep, cell, c)
            c = cell
            tl.store(c_ptr + (t64 + 1) * BH + state, c, mask=inside)
            h_new = go * _tanh(c, FP32)
        elif CELL == MODRELU:
            pre = _gate_product(h, w_ptr, 0, H, units, in_units, FP32) + tl.load(a_ptr + t64 * BH + state,
                                                                                mask=inside, other=0.0)
            tl.store(pre_ptr + t64 * BH + state, pre, mask=inside)
            magnitude = tl.maximum(tl.abs(pre) + bias[None, :], 0.0)
            h_new = tl.where(pre > 0, magnitude, tl.where(pre < 0, -magnitude, 0.0))
        else:
            pre, v = _extrapolate(_gate_product(h, w_ptr, 0, H, units, in_units, FP32), a_ptr, v, t64 * BH + state,
                                  inside, keep, c_t, HAS_MASK)
            h_new = _rnn_activation(pre, CELL, FP32)
        if HAS_MASK:
            h_new = tl.where(keep, h_new, h)
        h = tl.where(inside, h_new, 0.0)                         # padded units and rows stay 0
        tl.store(h_ptr + (t64 + 1) * BH + state, h, mask=inside)
    if CELL == LSTM:
        _store_gates(v_ptr, gate, H, v_i, v_f, v_g, v_o, inside)
    elif CELL != MODRELU:
        tl.store(v_ptr + state, v, mask=inside)


@triton.jit
def _adjoint(dpre, passed, keep, c, HAS_MASK: tl.constexpr):
    """Nesterov's adjoint: returns (dz, passed for the step before)."""
    total = dpre * (1.0 + c) + passed
    earlier = -c * dpre
    if HAS_MASK:
        earlier = tl.where(keep, earlier, total)
        total = tl.where(keep, total, 0.0)
    return total, earlier


@triton.jit
def persistent_backward_kernel(go_ptr, dh_ptr, dc_ptr, passed_ptr, dz_ptr, w_ptr, coef_ptr, coef_stride_t,
                               coef_stride_b, keep_ptr, h_ptr, c_ptr, acts_ptr, pre_ptr, bias_ptr, T, B, H,
                               CELL: tl.constexpr, HAS_MASK: tl.constexpr, FP32: tl.constexpr, BB: tl.constexpr,
                               HP: tl.constexpr):
    """All T steps backwards: ``dh`` (B, H) holds the gradient reaching h_T on entry and that
    reaching h_0 on exit; ``dc``, ``passed`` likewise for c and v; ``go`` (T, B, H) the
    outputs' gradient; writes ``dz`` (T, B, G)."""
    rows64, units, in_rows, in_units, inside, state = _block(B, H, BB, HP)
    BH = B * H
    dh_rec = tl.load(dh_ptr + state, mask=inside, other=0.0)
    if CELL == LSTM:
        G = 4 * H
        gate = rows64[:, None] * G + units[None, :]
        dc = tl.load(dc_ptr + state, mask=inside, other=0.0)
        q_i, q_f, q_g, q_o = _load_gates(passed_ptr, gate, H, inside)
    elif CELL != MODRELU:
        q = tl.load(passed_ptr + state, mask=inside, other=0.0)
    if CELL == MODRELU:
        bias = tl.load(bias_ptr + units, mask=in_units, other=0.0)
    for back in range(0, T):
        t64 = tl.full((), 0, tl.int64) + (T - 1 - back)
        dh = dh_rec + tl.load(go_ptr + t64 * BH + state, mask=inside, other=0.0)
        keep, c_t = _step_mask_and_coefficient(t64, keep_ptr, coef_ptr, coef_stride_t, coef_stride_b, rows64, in_rows,
                                               inside, B, CELL, HAS_MASK)
        held_h = tl.zeros_like(dh)
        if HAS_MASK:
            held_h = tl.where(keep, 0.0, dh)
            dh = tl.where(keep, dh, 0.0)
        if CELL == LSTM:
            step_gate = t64 * B * G + gate
            gi, gf, gg, go = _load_gates(acts_ptr, step_gate, H, inside)
            held_c = tl.zeros_like(dc)
            if HAS_MASK:
                held_c = tl.where(keep, 0.0, dc)
                dc = tl.where(keep, dc, 0.0)
            tanh_c = _tanh(tl.load(c_ptr + (t64 + 1) * BH + state, mask=inside, other=0.0), FP32)
            c_prev = tl.load(c_ptr + t64 * BH + state, mask=inside, other=0.0)
            dc = dc + dh * (go * (1.0 - tanh_c * tanh_c))
            dz_i, q_i = _adjoint(dc * (gg * (gi * (1.0 - gi))), q_i, keep, c_t, HAS_MASK)
            dz_f, q_f = _adjoint(dc * (c_prev * (gf * (1.0 - gf))), q_f, keep, c_t, HAS_MASK)
            dz_g, q_g = _adjoint(dc * (gi * (1.0 - gg * gg)), q_g, keep, c_t, HAS_MASK)
            dz_o, q_o = _adjoint(dh * (tanh_c * (go * (1.0 - go))), q_o, keep, c_t, HAS_MASK)
            dc = dc * gf + held_c
            _store_gates(dz_ptr, step_gate, H, dz_i, dz_f, dz_g, dz_o, inside)
            dh_rec = (held_h + _back_product(dz_i, w_ptr, 0, H, units, in_units, FP32)
                      + _back_product(dz_f, w_ptr, 1, H, units, in_units, FP32)
                      + _back_product(dz_g, w_ptr, 2, H, units, in_units, FP32)
                      + _back_product(dz_o, w_ptr, 3, H, units, in_units, FP32))
        else:
            if CELL == MODRELU:
                pre = tl.load(pre_ptr + t64 * BH + state, mask=inside, other=0.0)
                dz = tl.where((tl.abs(pre) + bias[None, :] > 0) & (pre != 0), dh, 0.0)
            else:
                h = tl.load(h_ptr + (t64 + 1) * BH + state, mask=inside, other=0.0)
                if CELL == TANH:
                    dpre = dh * (1.0 - h * h)
                else:
                    dpre = tl.where(h > 0, dh, 0.0)
                dz, q = _adjoint(dpre, q, keep, c_t, HAS_MASK)
            dz = tl.where(inside, dz, 0.0)
            tl.store(dz_ptr + t64 * BH + state, dz, mask=inside)
            dh_rec = held_h + _back_product(dz, w_ptr, 0, H, units, in_units, FP32)
    tl.store(dh_ptr + state, dh_rec, mask=inside)
    if CELL == LSTM:
        tl.store(dc_ptr + state, dc, mask=inside)
        _store_gates(passed_ptr, gate, H, q_i, q_f, q_g, q_o, inside)
    elif CELL != MODRELU:
        tl.store(passed_ptr + state, q, mask=inside)


def _grid(batch: int):
    return (triton.cdiv(batch, ROWS),)


def _or(placeholder, tensor):
    return placeholder if tensor is None else tensor


def persistent_forward(cell, terms, weight, velocity, coefficient, keep, h, c, acts, pre, bias) -> None:
    """Launch the forward over all steps (see ``persistent_forward_kernel``); absent arrays
    (None) are passed as a one-element placeholder."""
    time, batch, _ = terms.shape
    hidden = h.size(-1)
    empty = terms.new_zeros(1)
    persistent_forward_kernel[_grid(batch)](
        terms, weight, _or(empty, velocity), _or(empty, coefficient), *_strides(coefficient), _or(empty, keep), h,
        _or(empty, c), _or(empty, acts), _or(empty, pre), _or(empty, bias), time, batch, hidden, CELL=CELLS[cell],
        HAS_MASK=keep is not None, FP32=terms.dtype.itemsize == 4, BB=ROWS, HP=padded(hidden),
        num_warps=_warps(cell, hidden))


def persistent_backward(cell, grad_out, dh, dc, passed, dz, weight, coefficient, keep, h, c, acts, pre,
                        bias) -> None:
    """Launch the backward over all steps (see ``persistent_backward_kernel``); as ``persistent_forward``."""
    time, batch, hidden = grad_out.shape
    empty = grad_out.new_zeros(1)
    persistent_backward_kernel[_grid(batch)](
        grad_out, dh, _or(empty, dc), _or(empty, passed), dz, weight, _or(empty, coefficient), *_strides(coefficient),
        _or(empty, keep), h, _or(empty, c), _or(empty, acts), _or(empty, pre), _or(empty, bias), time, batch,
        hidden, CELL=CELLS[cell], HAS_MASK=keep is not None, FP32=grad_out.dtype.itemsize == 4, BB=ROWS,
        HP=padded(hidden), num_warps=_warps(cell, hidden))


def _strides(coefficient):
    return (0, 0) if coefficient is None else coefficient_strides(coefficient)
