"""Triton kernels of Adam's drive (CUDA): the states and the drive in one pass over time.

Built on the linear scan's kernel (``..linear_scan.triton``: its tiles, its combine).

``adam_drive``: Adam's (RMSProp's: ``mu = 0``) two states and the drive in one pass::

      v_t = mu v_{t-1} + s u_t,   m_t = beta m_{t-1} + (1 - beta) u_t^2,   d_t = v_t / sqrt(m_t + eps)

  It stores the states entering each tile (two rows per tile: little memory); the backward
  walks the tiles in reverse, recomputes each tile's states from them and runs the adjoint
  (``Gv_t = dd_t / q_t + mu Gv_{t+1}``, ``Hm_t = dd_t v_t / q_t^3 + beta Hm_{t+1}``,
  ``du_t = s Gv_t - (1 - beta) u_t Hm_t``, with ``q_t = sqrt(m_t + eps)``) as reverse scans.
  Optional ``lengths`` (B,): steps ``t >= lengths[b]`` (the padding of packed sequences,
  always at the end) hold the state, so the final state is each sequence's own; the drive
  there is the held state's (the layers never read it). ``adam_drive_of_inputs`` takes
  ``x, W, b`` instead of ``u = x W^T + b`` and makes ``u`` again in the backward, so that it
  is not kept.

Scalars (mu, s, beta, eps) travel as a small tensor of the data's dtype, so float64 runs
keep float64 constants. Division and square root are the correctly rounded ones.

Tested against ``naive.adam_drive_ref``.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

from ...custom_backward import first_order, unmaterialized
from ..linear_scan import triton as scans
from ..linear_scan.triton import _combine, _row, _scalar

__all__ = ["adam_drive", "adam_drive_of_inputs"]


@triton.jit
def _div(a, b, FP32: tl.constexpr):
    if FP32:
        return tl.math.div_rn(a, b)          # plain "/" is approximate in float32
    return a / b


@triton.jit
def _sqrt(a, FP32: tl.constexpr):
    if FP32:
        return tl.math.sqrt_rn(a)
    return tl.sqrt(a)


@triton.jit
def _adam_states(u, valid, v_in, m_in, mu, s, beta, one_minus_beta):
    """v, m of a tile from the states entering it (held where not ``valid``)."""
    a_v = tl.where(valid, mu, 1.0)
    a_m = tl.where(valid, beta, 1.0)
    b_v = tl.where(valid, s * u, 0.0)
    b_m = tl.where(valid, one_minus_beta * u * u, 0.0)
    av, bv = tl.associative_scan((a_v, b_v), 0, _combine)
    am, bm = tl.associative_scan((a_m, b_m), 0, _combine)
    return bv + av * v_in[None, :], bm + am * m_in[None, :]


@triton.jit
def _settings(params_ptr):
    """mu, s, beta, 1 - beta, eps."""
    return (tl.load(params_ptr), tl.load(params_ptr + 1), tl.load(params_ptr + 2), tl.load(params_ptr + 3),
            tl.load(params_ptr + 4))


@triton.jit
def _adam_forward_kernel(u_ptr, d_ptr, params_ptr, v0_ptr, m0_ptr, v_out_ptr, m_out_ptr, saved_ptr, len_ptr,
                         T, N, F, HAS_LENGTHS: tl.constexpr, FP32: tl.constexpr, BT: tl.constexpr,
                         BC: tl.constexpr):
    cols = tl.program_id(0) * BC + tl.arange(0, BC)
    in_cols = cols < N
    rows = tl.arange(0, BT)
    mu, s, beta, one_minus_beta, eps = _settings(params_ptr)
    length = T                                        # steps at or past a sequence's length hold the state
    if HAS_LENGTHS:
        length = tl.load(len_ptr + cols // F, mask=in_cols, other=0)
    v = tl.load(v0_ptr + cols, mask=in_cols, other=0.0)
    m = tl.load(m0_ptr + cols, mask=in_cols, other=0.0)
    for tile in range(0, tl.cdiv(T, BT)):
        tl.store(saved_ptr + (2 * tile) * N + cols, v, mask=in_cols)
        tl.store(saved_ptr + (2 * tile + 1) * N + cols, m, mask=in_cols)
        t = tile * BT + rows
        inside = (t < T)[:, None] & in_cols[None, :]
        valid = inside & (t[:, None] < length)
        offsets = t[:, None].to(tl.int64) * N + cols[None, :]
        u = tl.load(u_ptr + offsets, mask=inside, other=0.0)
        vt, mt = _adam_states(u, valid, v, m, mu, s, beta, one_minus_beta)
        d = _div(vt, _sqrt(mt + eps, FP32), FP32)
        tl.store(d_ptr + offsets, d, mask=inside)
        v = _row(vt, rows, BT - 1)
        m = _row(mt, rows, BT - 1)
    tl.store(v_out_ptr + cols, v, mask=in_cols)
    tl.store(m_out_ptr + cols, m, mask=in_cols)


@triton.jit
def _adam_backward_kernel(u_ptr, dd_ptr, du_ptr, params_ptr, saved_ptr, gv_ptr, gm_ptr, dv0_ptr, dm0_ptr,
                          partial_ptr, len_ptr, T, N, F, HAS_LENGTHS: tl.constexpr, NEED_MU: tl.constexpr,
                          NEED_S: tl.constexpr, FP32: tl.constexpr, BT: tl.constexpr,
                          BC: tl.constexpr):
    cols = tl.program_id(0) * BC + tl.arange(0, BC)
    in_cols = cols < N
    rows = tl.arange(0, BT)
    mu, s, beta, one_minus_beta, eps = _settings(params_ptr)
    length = T                                        # steps at or past a sequence's length hold the state
    if HAS_LENGTHS:
        length = tl.load(len_ptr + cols // F, mask=in_cols, other=0)
    gv = tl.load(gv_ptr + cols, mask=in_cols, other=0.0)             # reaching v_T, m_T from after the call
    hm = -2.0 * tl.load(gm_ptr + cols, mask=in_cols, other=0.0)      # Hm = -2 Gm
    sum_mu = tl.zeros((BC,), dtype=gv.dtype)
    sum_s = tl.zeros((BC,), dtype=gv.dtype)
    tiles = tl.cdiv(T, BT)
    for back in range(0, tiles):
        tile = tiles - 1 - back
        v_in = tl.load(saved_ptr + (2 * tile) * N + cols, mask=in_cols, other=0.0)
        m_in = tl.load(saved_ptr + (2 * tile + 1) * N + cols, mask=in_cols, other=0.0)
        t = tile * BT + rows
        inside = (t < T)[:, None] & in_cols[None, :]
        valid = inside & (t[:, None] < length)
        offsets = t[:, None].to(tl.int64) * N + cols[None, :]
        u = tl.load(u_ptr + offsets, mask=inside, other=0.0)
        vt, mt = _adam_states(u, valid, v_in, m_in, mu, s, beta, one_minus_beta)
        q2 = mt + eps
        q = _sqrt(q2, FP32)
        dd = tl.load(dd_ptr + offsets, mask=inside, other=0.0)
        c_v = _div(dd, q, FP32)
        c_m = _div(c_v * vt, q2, FP32)
        # coefficients of the step after t (1 past the end: the gradient from after the call passes as is)
        after = inside & ((t + 1)[:, None] < length) & ((t + 1) < T)[:, None]
        a_v, g_v = tl.associative_scan((tl.where(after, mu, 1.0), c_v), 0, _combine, reverse=True)
        a_m, h_m = tl.associative_scan((tl.where(after, beta, 1.0), c_m), 0, _combine, reverse=True)
        g_v = g_v + a_v * gv[None, :]
        h_m = h_m + a_m * hm[None, :]
        du = tl.where(valid, s * g_v - one_minus_beta * u * h_m, 0.0)
        if NEED_S:
            sum_s += tl.sum(tl.where(valid, g_v * u, 0.0), axis=0)
        if NEED_MU:
            # v_{t-1} of the tile: the same scan one step behind, starting from the state entering it
            before = inside & (t >= 1)[:, None]
            u_prev = tl.load(u_ptr + offsets - N, mask=before & (rows >= 1)[:, None], other=0.0)
            valid_prev = before & (rows >= 1)[:, None] & ((t - 1)[:, None] < length)
            a_p = tl.where(rows[:, None] == 0, 0.0, tl.where(valid_prev, mu, 1.0))
            b_p = tl.where(rows[:, None] == 0, v_in[None, :], tl.where(valid_prev, s * u_prev, 0.0))
            _, v_prev = tl.associative_scan((a_p, b_p), 0, _combine)
            sum_mu += tl.sum(tl.where(valid, g_v * v_prev, 0.0), axis=0)
        tl.store(du_ptr + offsets, du, mask=inside)
        gv = _row(g_v, rows, 0)
        hm = _row(h_m, rows, 0)
    first_valid = in_cols & (length > 0)
    tl.store(dv0_ptr + cols, tl.where(first_valid, mu, 1.0) * gv, mask=in_cols)
    tl.store(dm0_ptr + cols, -0.5 * tl.where(first_valid, beta, 1.0) * hm, mask=in_cols)
    if NEED_MU:
        tl.store(partial_ptr + cols, sum_mu, mask=in_cols)
    if NEED_S:
        tl.store(partial_ptr + N + cols, sum_s, mask=in_cols)


def _parameters(momentum, step_size, beta: float, eps: float, like: Tensor) -> Tensor:
    """``[mu, s, beta, 1 - beta, eps]`` as one tensor of ``like``'s dtype and device; made
    once per set of numbers (fixed hyperparameters: no work per call), or stacked from
    learnable 0-d tensors."""
    if isinstance(momentum, Tensor) or isinstance(step_size, Tensor):
        momentum, step_size = (_scalar(value, like) for value in (momentum, step_size))
        return torch.stack([momentum, step_size, torch.full_like(step_size, beta),
                            torch.full_like(step_size, 1.0 - beta), torch.full_like(step_size, eps)])
    return _constants((float(momentum), float(step_size), beta, 1.0 - beta, eps), like.dtype, like.device)


@functools.lru_cache(maxsize=64)
def _constants(values: tuple, dtype: torch.dtype, device: torch.device) -> Tensor:
    with torch.inference_mode(False):
        return torch.tensor(values, dtype=dtype, device=device)


def _adam_forward(u, v0, m0, params, lengths):
    """Launch the forward kernel: ``(d, v_T, m_T, saved)`` (saved: the states entering each tile)."""
    time, batch, gates = u.shape
    d = torch.empty_like(u)
    v_out, m_out = torch.empty_like(v0), torch.empty_like(m0)
    saved = u.new_empty(triton.cdiv(time, scans.TILE_STEPS), 2, batch, gates)
    with torch.cuda.device_of(u):
        _adam_forward_kernel[scans._grid(batch * gates)](
            u, d, params, v0, m0, v_out, m_out, saved, u if lengths is None else lengths,
            time, batch * gates, gates, HAS_LENGTHS=lengths is not None, FP32=u.dtype == torch.float32,
            BT=scans.TILE_STEPS, BC=scans.TILE_CHANNELS)
    return d, v_out, m_out, saved


def _adam_backward(u, grads, params, saved, lengths, need_mu, need_s, out):
    """Launch the adjoint kernel: dL/du into ``out`` and ``(dL/dv0, dL/dm0, dL/dmu, dL/ds)``."""
    time, batch, gates = u.shape
    grad_d, grad_v, grad_m = grads
    grad_d = torch.zeros_like(u) if grad_d is None else grad_d.contiguous()
    grad_v = torch.zeros_like(u[0]) if grad_v is None else grad_v.contiguous()
    grad_m = torch.zeros_like(u[0]) if grad_m is None else grad_m.contiguous()
    d_v0, d_m0 = torch.empty_like(grad_v), torch.empty_like(grad_m)
    partial = u.new_empty(2, batch * gates) if (need_mu or need_s) else u
    with torch.cuda.device_of(u):
        _adam_backward_kernel[scans._grid(batch * gates)](
            u, grad_d, out, params, saved, grad_v, grad_m, d_v0, d_m0, partial,
            u if lengths is None else lengths, time, batch * gates, gates, HAS_LENGTHS=lengths is not None,
            NEED_MU=need_mu, NEED_S=need_s, FP32=u.dtype == torch.float32, BT=scans.TILE_STEPS, BC=scans.TILE_CHANNELS)
    return d_v0, d_m0, partial[0].sum() if need_mu else None, partial[1].sum() if need_s else None


class _AdamDrive(torch.autograd.Function):
    """Adam's drive of ``u``; keeps ``u`` for the backward."""

    @staticmethod
    @unmaterialized
    def forward(ctx, u, v0, m0, momentum, step_size, beta, eps, lengths):
        params = _parameters(momentum, step_size, beta, eps, u)
        d, v_out, m_out, saved = _adam_forward(u, v0, m0, params, lengths)
        ctx.save_for_backward(u, params, saved, lengths)
        return d, v_out, m_out

    @staticmethod
    @first_order
    def backward(ctx, grad_d, grad_v, grad_m):
        u, params, saved, lengths = ctx.saved_tensors
        d_u = torch.empty_like(u)      # not into grad_d: a caller may reuse it (autograd.grad's grad_outputs)
        d_v0, d_m0, d_mu, d_s = _adam_backward(u, (grad_d, grad_v, grad_m), params, saved, lengths,
                                               ctx.needs_input_grad[3], ctx.needs_input_grad[4], d_u)
        return d_u, d_v0, d_m0, d_mu, d_s, None, None, None


class _InputAdamDrive(torch.autograd.Function):
    """Adam's drive of ``u = x W^T + b``, made inside: ``u`` is not kept but made again in
    the backward (one GEMM), so it does not live through the backward of the recurrence
    (where torch's fused kernel already holds the drive and its gradient)."""

    @staticmethod
    @unmaterialized
    def forward(ctx, x, weight, bias, v0, m0, momentum, step_size, beta, eps, lengths):
        u = torch.nn.functional.linear(x, weight, bias)
        params = _parameters(momentum, step_size, beta, eps, u)
        d, v_out, m_out, saved = _adam_forward(u, v0, m0, params, lengths)
        ctx.save_for_backward(x, weight, bias, params, saved, lengths)
        return d, v_out, m_out

    @staticmethod
    @first_order
    def backward(ctx, grad_d, grad_v, grad_m):
        x, weight, bias, params, saved, lengths = ctx.saved_tensors
        u = torch.nn.functional.linear(x, weight, bias)
        needs = ctx.needs_input_grad
        d_u = torch.empty_like(u)
        d_v0, d_m0, d_mu, d_s = _adam_backward(u, (grad_d, grad_v, grad_m), params, saved, lengths,
                                               needs[5], needs[6], d_u)
        del u
        d_u = d_u.reshape(-1, d_u.size(-1))
        rows = x.reshape(-1, x.size(-1))
        d_x = (d_u @ weight).view_as(x) if needs[0] else None
        d_weight = d_u.t() @ rows if needs[1] else None
        d_bias = d_u.sum(0) if bias is not None and needs[2] else None
        return d_x, d_weight, d_bias, d_v0, d_m0, d_mu, d_s, None, None, None


def adam_drive(u: Tensor, v0: Tensor, m0: Tensor, momentum, step_size, beta: float, eps: float,
               lengths: Tensor | None = None):
    """Adam's drive of all steps of ``u`` (T, B, G) from ``v0``, ``m0`` (B, G): returns
    ``(d, v_T, m_T)``. ``momentum``, ``step_size``: numbers or 0-d tensors (learnable);
    ``momentum = 0`` is RMSProp. ``lengths`` (B,): steps past a sequence's length hold its state."""
    if lengths is not None:
        lengths = lengths.to(device=u.device, dtype=torch.int32).contiguous()
    return _AdamDrive.apply(u.contiguous(), v0.contiguous(), m0.contiguous(), momentum, step_size,
                            float(beta), float(eps), lengths)


def adam_drive_of_inputs(x: Tensor, weight: Tensor, bias: Tensor | None, v0: Tensor, m0: Tensor, momentum,
                         step_size, beta: float, eps: float, lengths: Tensor | None = None):
    """``adam_drive`` of ``u = x W^T + b`` (``x`` (T, B, I)), with ``u`` made again in the
    backward rather than kept (less memory, one more GEMM)."""
    if lengths is not None:
        lengths = lengths.to(device=x.device, dtype=torch.int32).contiguous()
    return _InputAdamDrive.apply(x.contiguous(), weight, bias, v0.contiguous(), m0.contiguous(), momentum,
                                 step_size, float(beta), float(eps), lengths)
