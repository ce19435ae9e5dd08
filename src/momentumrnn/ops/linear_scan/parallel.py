"""The linear scan in torch ops, in parallel over time: the filters of the input-only rules.

Every input-only rule's state follows a first-order linear recurrence whose coefficient
does not depend on the inputs::

    y_t = a_t y_{t-1} + x_t,        t = 1..T,   y_0 = initial (zero if None)

(momentum: ``a_t = mu``, ``x_t = s u_t``; Adam's second moment: ``a_t = beta``,
``x_t = (1 - beta) u_t**2``; restart: ``a_t = (k'-1)/(k'+2)``). ``linear_scan`` computes all
T states without a Python loop over time steps. Three exact methods:

* ``"matmul"`` (blocked transfer matrices): time is cut into blocks of C steps; inside a
  block ``y = L x + P y_prev`` with the lower-triangular transfer matrix
  ``L[t, j] = a_{j+1} ... a_t`` (built by ``cumprod``, so a zero coefficient is exact) and
  ``P[t] = a_1 ... a_t``. All blocks are one batched matrix multiply; only the T/C block
  boundaries are carried in a loop. Cost ``T * C * B * F`` multiply-adds, in a GEMM.
* ``"chunked"`` (two-level scan): the C steps inside every block run as a loop that is
  vectorized over all T/C blocks at once, then the block boundaries are carried as above.
  Cost a few elementwise passes over ``T * B * F`` and about ``C + T/C`` small ops.
* ``"triton"``: one Triton kernel that streams time in tiles (``triton.py`` beside this file);
  ``"auto"`` takes it for CUDA tensors when Triton is installed (``paths.scan_backend``).

All three sum the same terms as the step-by-step recurrence in a different order, so they agree
with it to rounding (about 1e-16 relative in float64), values and gradients; all are
differentiable in the coefficient (learnable momentum). ``"sequential"`` is the plain loop,
the reference (``naive.linear_scan_ref``); ``"loop"`` the same loop in place with a
hand-written adjoint.
``"auto"`` takes ``"triton"`` where ``paths.scan_backend`` says so, else on the CPU
``"loop"`` for wide states (more than ``LOOP_MIN_FEATURES`` features) and ``"chunked"``
otherwise.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from ...custom_backward import first_order, unmaterialized
from .naive import linear_scan_ref

__all__ = ["linear_scan", "scan_", "default_block", "SCAN_METHODS"]

SCAN_METHODS = ("auto", "matmul", "chunked", "loop", "sequential", "triton")

#: Block length of the "matmul" method.
MATMUL_BLOCK = 64
#: On the CPU "auto" uses "loop" above this many features per sequence, else "chunked".
LOOP_MIN_FEATURES = 32


def _is_zero(coefficient) -> bool:
    return isinstance(coefficient, numbers.Real) and float(coefficient) == 0.0


def _time_batch(coefficient, time: int, like: Tensor) -> tuple[Tensor, bool]:
    """``coefficient`` as a (T, Bc) tensor and whether it is one constant."""
    if isinstance(coefficient, numbers.Real):
        return like.new_full((1, 1), float(coefficient)).expand(time, 1), True
    if coefficient.dim() == 0:
        return coefficient.to(like.dtype).reshape(1, 1).expand(time, 1), True
    if coefficient.dim() != 2 or coefficient.size(0) != time:
        raise ValueError(f"coefficient must be a number, a 0-d tensor or a (T, B) tensor with T = {time}, "
                         f"got shape {tuple(coefficient.shape)}")
    return coefficient.to(like.dtype), False


def linear_scan(coefficient, inputs: Tensor, initial: Tensor | None = None, *, method: str = "auto",
                block: int | None = None) -> Tensor:
    """All states of ``y_t = a_t y_{t-1} + x_t`` (t = 1..T) with ``y_0 = initial``.

    ``coefficient``: a number, a 0-d tensor (learnable momentum), or a tensor (T, B) or
    (T, 1) (per step and sequence); ``inputs`` (T, B, F); ``initial`` (B, F) or None (zero).
    Returns (T, B, F). ``method``: one of ``SCAN_METHODS`` (see the module docstring);
    ``block``: the block length C of "matmul"/"chunked".
    """
    if method not in SCAN_METHODS:
        raise ValueError(f"method must be one of {SCAN_METHODS}, got {method!r}")
    time = inputs.size(0)
    if _is_zero(coefficient):                       # mu = 0: the filter is the identity
        return inputs
    if method == "auto":
        from ...paths import scan_backend
        if scan_backend(inputs) == "triton":
            method = "triton"
        else:
            method = "loop" if inputs.device.type == "cpu" and inputs.size(-1) > LOOP_MIN_FEATURES else "chunked"
    if method == "triton":
        from . import triton
        return triton.linear_scan(coefficient, inputs, initial)
    if method == "sequential":
        return linear_scan_ref(coefficient, inputs, initial)
    if method == "matmul":
        a, constant = _time_batch(coefficient, time, inputs)
        return _matmul(a, constant, inputs, initial, block or MATMUL_BLOCK)
    if method == "loop":
        block = time
    a = coefficient if isinstance(coefficient, Tensor) else inputs.new_tensor(float(coefficient))
    return _Scan.apply(a.to(inputs.dtype), inputs, initial, block or default_block(time))


def _pad_time(x: Tensor, length: int, value: float) -> Tensor:
    if x.size(0) == length:
        return x
    pad = x.new_full((length - x.size(0), *x.shape[1:]), value)
    return torch.cat([x, pad])


def _carry(local: Tensor, prefix: Tensor, initial: Tensor | None) -> Tensor:
    """Add the state entering each block: ``local`` (n, C, B, F) are the block-local states,
    ``prefix`` (n, C, Bc) the products of coefficients from each block's start."""
    blocks = local.size(0)
    if blocks == 1 and initial is None:
        return local
    lasts, through = local[:, -1].unbind(0), prefix[:, -1, :, None].unbind(0)
    carries = [initial if initial is not None else local.new_zeros(local.shape[2:])]
    for k in range(blocks - 1):
        carries.append(torch.addcmul(lasts[k], through[k], carries[k]))
    entering = torch.stack(carries)                                  # (n, B, F)
    return torch.addcmul(local, prefix[..., None], entering[:, None])


def _matmul(a: Tensor, constant: bool, x: Tensor, initial: Tensor | None, block: int) -> Tensor:
    time, batch, features = x.shape
    size = min(block, time)
    blocks = -(-time // size)
    length = blocks * size
    x_blocks = _pad_time(x, length, 0.0).view(blocks, size, batch, features)
    # Transfer matrices L[k, t, j] = prod_{j < i <= t} a[k, i]; one for all blocks if constant.
    a_blocks = (a[:size] if constant else _pad_time(a, length, 1.0)).reshape(-1, size, a.size(1))
    index = torch.arange(size, device=x.device)
    later = (index[:, None] > index[None, :])[None, :, :, None]                       # t > j
    one = torch.ones((), dtype=a.dtype, device=a.device)
    transfer = torch.cumprod(torch.where(later, a_blocks[:, :, None, :], one), dim=1)
    transfer = transfer * (index[:, None] >= index[None, :]).to(a.dtype)[None, :, :, None]   # (n|1, C, C, Bc)
    prefix = torch.cumprod(a_blocks, dim=1)                                            # (n or 1, C, Bc)
    if a.size(1) == 1:
        local = torch.matmul(transfer[..., 0], x_blocks.reshape(blocks, size, batch * features))
        local = local.view(blocks, size, batch, features)
    else:   # a coefficient per sequence: one (C, C) matrix per block and sequence
        local = torch.matmul(transfer.permute(0, 3, 1, 2), x_blocks.permute(0, 2, 1, 3)).permute(0, 2, 1, 3)
    if constant:
        prefix = prefix.expand(blocks, size, prefix.size(-1))
    return _carry(local, prefix, initial).reshape(length, batch, features)[:time]


def default_block(time: int) -> int:
    """Block length of the two-level scan: about sqrt(T), so that ~2 sqrt(T) ops run."""
    return max(1, math.isqrt(time - 1) + 1) if time > 1 else 1


def scan_(a: Tensor, y: Tensor, block: int, reverse: bool = False) -> Tensor:
    """In place, without autograd: turn ``y`` (T, B, F) holding the inputs x into the states.

    forward:  ``y_t = x_t + a_t y_{t-1}``  (t = 1..T-1; ``y_0 = x_0``)
    reverse:  ``y_t = x_t + a_{t+1} y_{t+1}``  (t = T-2..0; the adjoint recurrence)

    ``a``: a 0-d tensor or (T, Bc). Two levels: the C steps inside all T // C blocks at once
    (C ops, each over every block), then the block boundaries (T // C ops, each over one
    block), then the tail of fewer than C steps one by one. With ``block >= T`` it is the
    plain loop, one op per step.
    """
    time = y.size(0)
    per_step = a.dim() == 2
    if per_step:
        a = a[..., None]                                   # (T, Bc, 1)
        if reverse:                                        # the coefficient of the step after
            a = torch.cat([a[1:], torch.ones_like(a[:1])])
    size = min(block, time)
    blocks = time // size
    main = blocks * size

    def coefficient(t):
        return a[t] if per_step else a

    if reverse:
        for t in range(time - 2, main - 1, -1):           # the tail, from the end
            y[t].addcmul_(coefficient(t), y[t + 1])
    if size > 1 and blocks > 0:
        yb = y[:main].view(blocks, size, *y.shape[1:])
        ab = a[:main].view(blocks, size, *a.shape[1:]) if per_step else a
        steps = range(size - 2, -1, -1) if reverse else range(1, size)
        for i in steps:                                    # inside every block at once
            neighbour = i + 1 if reverse else i - 1
            yb[:, i].addcmul_(ab[:, i] if per_step else ab, yb[:, neighbour])
        if blocks > 1 or (reverse and main < time):
            if per_step:                                   # products of coefficients within a block
                factors = ab.flip(1).cumprod(1).flip(1) if reverse else ab.cumprod(1)
            else:
                powers = a.expand(size).cumprod(0)[:, None, None]
                factors = (powers.flip(0) if reverse else powers)[None].expand(blocks, *powers.shape)
            if reverse:
                for k in range(blocks - 1, -1, -1):        # the state entering from the next block
                    if k + 1 < blocks:
                        yb[k].addcmul_(factors[k], yb[k + 1, 0])
                    elif main < time:
                        yb[k].addcmul_(factors[k], y[main])
            else:
                for k in range(1, blocks):                 # the state entering from the previous block
                    yb[k].addcmul_(factors[k], yb[k - 1, -1])
    if not reverse:
        for t in range(max(main, 1), time):               # the tail
            y[t].addcmul_(coefficient(t), y[t - 1])
    elif size == 1 or blocks == 0:
        pass
    return y


class _Scan(torch.autograd.Function):
    """``linear_scan`` for the "chunked" and "loop" methods: ``scan_`` in place into one
    output tensor, and the adjoint recurrence ``g_t = dy_t + a_{t+1} g_{t+1}`` (``scan_``
    reversed) as backward; no autograd temporaries."""

    @staticmethod
    @unmaterialized
    def forward(ctx, a, x, initial, block):
        y = x.clone(memory_format=torch.contiguous_format)
        if initial is not None:
            y[0].addcmul_(a[0][:, None] if a.dim() == 2 else a, initial)
        scan_(a, y, block)
        ctx.save_for_backward(a, y if ctx.needs_input_grad[0] else None, initial)
        ctx.block = block
        return y

    @staticmethod
    @first_order
    def backward(ctx, grad):
        a, y, initial = ctx.saved_tensors
        g = scan_(a, grad.clone(memory_format=torch.contiguous_format), ctx.block, reverse=True)
        first = a[0][:, None] if a.dim() == 2 else a
        d_initial = None if initial is None else g[0] * first
        d_a = None
        if ctx.needs_input_grad[0]:                        # sum_t g_t . y_{t-1}
            if a.dim() == 0:
                d_a = torch.dot(g[1:].reshape(-1), y[:-1].reshape(-1))
                if initial is not None:
                    d_a = d_a + torch.dot(g[0].reshape(-1), initial.reshape(-1))
            else:
                before = torch.cat([initial[None] if initial is not None else torch.zeros_like(y[:1]), y[:-1]])
                d_a = (g * before).sum(-1).sum_to_size(a.shape)
        return d_a, g, d_initial, None
