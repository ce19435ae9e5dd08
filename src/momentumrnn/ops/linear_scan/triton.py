"""Triton kernel of the linear scan (CUDA): ``y_t = a_t y_{t-1} + x_t`` streamed over time.

Imported only when a CUDA path needs it (``momentumrnn.paths.scan_backend``), so CPU users
need no Triton. Each program owns a block of channels (a channel is one feature of one
sequence: ``n = b * F + f`` in a (T, B, F) tensor) and walks time in tiles of ``BT``
steps; inside a tile the recurrence is one ``tl.associative_scan`` over the pairs
(a_t, x_t) with the combine ``(a1, x1) o (a2, x2) = (a1 a2, a2 x1 + x2)``, and the state
leaving the tile is carried to the next one in registers. Memory traffic is one read of the
inputs and one write of the outputs; one launch per call, forward and backward.

``linear_scan``: ``y_t = a_t y_{t-1} + x_t`` with ``y_0 = a_1 y_init + x_1``; ``a`` a 0-d
tensor or (T, Bc) with Bc in {1, B}. Backward: the adjoint ``g_t = dy_t + a_{t+1} g_{t+1}``
by the same kernel walking time backwards. Tested against ``naive.linear_scan_ref``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ...custom_backward import first_order, unmaterialized

__all__ = ["linear_scan", "scan_", "coefficient_strides"]

#: Time steps per tile and channels per program.
TILE_STEPS = 32
TILE_CHANNELS = 64


@triton.jit
def _combine(a1, x1, a2, x2):
    """(a1, x1) then (a2, x2): y = a2 (a1 y + x1) + x2."""
    return a1 * a2, a2 * x1 + x2


@triton.jit
def _row(tile, rows, index):
    """Row ``index`` of a (BT, BC) tile as a (BC,) vector."""
    return tl.sum(tl.where(rows[:, None] == index, tile, 0.0), axis=0)


@triton.jit
def _scan_kernel(x_ptr, y_ptr, a_ptr, a_stride_t, a_stride_b, init_ptr, T, N, F,
                 REVERSE: tl.constexpr, HAS_INIT: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
    """Forward: y_t = a_t y_{t-1} + x_t. REVERSE: y_t = x_t + a_{t+1} y_{t+1} (t from T-1 down)."""
    cols = tl.program_id(0) * BC + tl.arange(0, BC)
    in_cols = cols < N
    seq = cols // F
    rows = tl.arange(0, BT)
    carry = tl.zeros((BC,), dtype=y_ptr.dtype.element_ty)
    if HAS_INIT:
        carry = tl.load(init_ptr + cols, mask=in_cols, other=0.0).to(y_ptr.dtype.element_ty)
    for tile in range(0, tl.cdiv(T, BT)):
        step = tile * BT + rows                      # position in processing order
        if REVERSE:
            t = T - 1 - step
            t_a = t + 1                              # the coefficient of the step after
        else:
            t = step
            t_a = t
        in_time = step < T
        inside = in_time[:, None] & in_cols[None, :]
        offsets = t[:, None].to(tl.int64) * N + cols[None, :]
        x = tl.load(x_ptr + offsets, mask=inside, other=0.0)
        a_mask = inside & (t_a < T)[:, None]
        a = tl.load(a_ptr + t_a[:, None] * a_stride_t + seq[None, :] * a_stride_b, mask=a_mask, other=1.0)
        a_scan, x_scan = tl.associative_scan((a, x), 0, _combine)
        y = x_scan + a_scan * carry[None, :]
        tl.store(y_ptr + offsets, y, mask=inside)
        carry = _row(y, rows, BT - 1)


def _grid(channels: int):
    return (triton.cdiv(channels, TILE_CHANNELS),)


def coefficient_strides(a: Tensor) -> tuple[int, int]:
    """Strides (time, sequence) of a 0-d or (T, Bc) coefficient, Bc in {1, B}: 0 where it is shared."""
    if a.dim() == 0:
        return 0, 0
    return a.stride(0), (0 if a.size(1) == 1 else a.stride(1))


def scan_(a: Tensor, y: Tensor, reverse: bool = False) -> Tensor:
    """In place, without autograd: ``y`` (T, B, F, contiguous) holding the inputs becomes the
    states (forward) or the adjoint states (``reverse``); ``a`` 0-d or (T, Bc), contiguous.
    Each program reads a tile before it writes it, so in place is safe."""
    return _launch_scan(a, y, None, reverse, out=y)


def _launch_scan(a: Tensor, x: Tensor, initial: Tensor | None, reverse: bool, out: Tensor | None = None) -> Tensor:
    time, batch, features = x.shape
    y = torch.empty_like(x) if out is None else out
    stride_t, stride_b = coefficient_strides(a)
    with torch.cuda.device_of(x):            # Triton launches on the current device
        _scan_kernel[_grid(batch * features)](
            x, y, a, stride_t, stride_b, x if initial is None else initial, time, batch * features, features,
            REVERSE=reverse, HAS_INIT=initial is not None, BT=TILE_STEPS, BC=TILE_CHANNELS)
    return y


class _LinearScan(torch.autograd.Function):
    @staticmethod
    @unmaterialized
    def forward(ctx, a, x, initial):
        y = _launch_scan(a, x, initial, reverse=False)
        ctx.save_for_backward(a, y if ctx.needs_input_grad[0] else None, initial)
        return y

    @staticmethod
    @first_order
    def backward(ctx, grad):
        a, y, initial = ctx.saved_tensors
        g = _launch_scan(a, grad.contiguous(), None, reverse=True)
        first = a if a.dim() == 0 else a[0][:, None]
        d_initial = None if initial is None else g[0] * first
        d_a = None
        if ctx.needs_input_grad[0] and a.dim() == 0:         # learnable momentum: sum_t g_t . y_{t-1}
            d_a = torch.dot(g[1:].reshape(-1), y[:-1].reshape(-1))
            if initial is not None:
                d_a = d_a + torch.dot(g[0].reshape(-1), initial.reshape(-1))
        elif ctx.needs_input_grad[0]:                        # per step (a learnable momentum held by a mask)
            before = torch.cat([torch.zeros_like(y[:1]) if initial is None else initial[None], y[:-1]])
            d_a = (g * before).sum(-1).sum_to_size(a.shape)
        return d_a, g, d_initial


def linear_scan(a, x: Tensor, initial: Tensor | None = None) -> Tensor:
    """All states of ``y_t = a_t y_{t-1} + x_t`` for ``x`` (T, B, F); ``a`` a number, a 0-d
    tensor or (T, 1)/(T, B), differentiable; ``initial`` (B, F) or None (zero)."""
    a = _scalar(a, x).contiguous()
    initial = None if initial is None else initial.contiguous()
    return _LinearScan.apply(a, x.contiguous(), initial)


def _scalar(value, like: Tensor) -> Tensor:
    """A 0-d tensor of ``like``'s dtype and device (``torch.full`` for a number: no host copy)."""
    if isinstance(value, Tensor):
        return value.to(like.dtype)
    return torch.full((), float(value), dtype=like.dtype, device=like.device)
