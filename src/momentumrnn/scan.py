"""Linear recurrences over time, computed in parallel: the filters of the input-only rules.

Every input-only rule's state follows a first-order linear recurrence whose coefficient
does not depend on the inputs::

    y_t = a_t y_{t-1} + x_t,        t = 1..T,   y_0 = initial (zero if None)

(momentum: ``a_t = mu``, ``x_t = s u_t``; Adam's second moment: ``a_t = beta``,
``x_t = (1 - beta) u_t**2``; restart: ``a_t = (k'-1)/(k'+2)``). ``linear_scan`` computes all
T states without a Python loop over time steps. Two exact methods:

* ``"matmul"`` (blocked transfer matrices): time is cut into blocks of C steps; inside a
  block ``y = L x + P y_prev`` with the lower-triangular transfer matrix
  ``L[t, j] = a_{j+1} ... a_t`` (built by ``cumprod``, so a zero coefficient is exact) and
  ``P[t] = a_1 ... a_t``. All blocks are one batched matrix multiply; only the T/C block
  boundaries are carried in a loop. Cost ``T * C * B * F`` multiply-adds, in a GEMM.
* ``"chunked"`` (two-level scan): the C steps inside every block run as a loop that is
  vectorized over all T/C blocks at once, then the block boundaries are carried as above.
  Cost a few elementwise passes over ``T * B * F`` and about ``C + T/C`` small ops.

Both sum the same terms as the step-by-step recurrence in a different order, so they agree
with it to rounding (about 1e-16 relative in float64), values and gradients; both are
differentiable in the coefficient (learnable momentum). ``"sequential"`` is the plain loop,
kept as the reference. ``"auto"`` takes ``"matmul"`` for few features (the input-side
filter of the fused path: ``F = input_size + 1``) and ``"chunked"`` for wide ones (a rule's
state over all gates: ``F = G * hidden_size``), the faster of the two in
``benchmarks/scan.py`` at T = 784 and T = 35.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

__all__ = ["linear_scan", "step_indices", "SCAN_METHODS"]

SCAN_METHODS = ("auto", "matmul", "chunked", "sequential")

#: Block length of the "matmul" method.
MATMUL_BLOCK = 64
#: "auto" uses "matmul" while the number of features (per sequence) is at most this.
MATMUL_MAX_FEATURES = 32


def step_indices(steps: Tensor, time: int, mask: Tensor | None = None) -> Tensor:
    """The 1-based index ``k`` of every step, shaped (T, B) or (T, 1).

    ``steps`` (B,) counts the steps each sequence took before this call. Where ``mask``
    (T, B) is False a step is skipped and the count does not advance. Without a mask and
    with all sequences at the same count the result is (T, 1), shared by the batch.
    """
    if mask is not None:
        taken = mask.long()
        return steps[None, :] + torch.cumsum(taken, 0) - taken + 1
    t = torch.arange(1, time + 1, device=steps.device)[:, None]
    if steps.numel() == 0 or bool((steps == steps[:1]).all()):
        return t + steps[:1][None, :] if steps.numel() else t
    return t + steps[None, :]


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
        method = "matmul" if inputs.size(-1) <= MATMUL_MAX_FEATURES else "chunked"
    if method == "sequential":
        return _sequential(coefficient, inputs, initial)
    a, constant = _time_batch(coefficient, time, inputs)
    if method == "matmul":
        return _matmul(a, constant, inputs, initial, block or MATMUL_BLOCK)
    return _chunked(a, inputs, initial, block or max(1, math.isqrt(time)))


def _sequential(coefficient, inputs, initial):
    """The plain recurrence, one step at a time (the reference)."""
    if isinstance(coefficient, Tensor) and coefficient.dim() == 2:
        coefficient = coefficient.to(inputs.dtype)[..., None]
    out = []
    y = initial
    for t in range(inputs.size(0)):
        a = coefficient[t] if isinstance(coefficient, Tensor) and coefficient.dim() == 3 else coefficient
        y = inputs[t] if y is None else a * y + inputs[t]
        out.append(y)
    return torch.stack(out)


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
    carries = []
    carry = initial
    for k in range(blocks):
        carries.append(carry if carry is not None else local.new_zeros(local.shape[2:]))
        last = local[k, -1]
        carry = last if carry is None else torch.addcmul(last, prefix[k, -1, :, None], carry)
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


def _chunked(a: Tensor, x: Tensor, initial: Tensor | None, block: int) -> Tensor:
    time, batch, features = x.shape
    size = min(block, time)
    blocks = -(-time // size)
    length = blocks * size
    x_blocks = _pad_time(x, length, 0.0).view(blocks, size, batch, features)
    a_blocks = _pad_time(a, length, 1.0).reshape(blocks, size, a.size(1))
    # inside every block at once: C steps, each vectorized over the T/C blocks
    y = x_blocks[:, 0]
    states = [y]
    for i in range(1, size):
        y = torch.addcmul(x_blocks[:, i], a_blocks[:, i, :, None], y)
        states.append(y)
    local = torch.stack(states, dim=1)                                                  # (n, C, B, F)
    prefix = torch.cumprod(a_blocks, dim=1)
    return _carry(local, prefix, initial).reshape(length, batch, features)[:time]
