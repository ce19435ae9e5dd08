"""Linear recurrences over time, computed in parallel: the filters of the input-only rules.

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
* ``"triton"``: one Triton kernel that streams time in tiles (``momentumrnn.kernels``);
  ``"auto"`` takes it for CUDA tensors when Triton is installed (``paths.scan_backend``).

All three sum the same terms as the step-by-step recurrence in a different order, so they agree
with it to rounding (about 1e-16 relative in float64), values and gradients; all are
differentiable in the coefficient (learnable momentum). ``"sequential"`` is the plain loop,
kept as the reference; ``"loop"`` the same loop in place with a hand-written adjoint.
``"auto"`` takes ``"triton"`` where ``paths.scan_backend`` says so, else on the CPU
``"loop"`` for wide states (more than ``LOOP_MIN_FEATURES`` features) and ``"chunked"``
otherwise.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from . import cpu_kernels
from .custom_backward import first_order, unmaterialized
from .paths import loop_engine

__all__ = ["linear_scan", "step_indices", "masked", "adam_scan", "SCAN_METHODS"]

SCAN_METHODS = ("auto", "matmul", "chunked", "loop", "sequential", "triton")

#: Block length of the "matmul" method.
MATMUL_BLOCK = 64
#: On the CPU "auto" uses "loop" above this many features per sequence, else "chunked".
LOOP_MIN_FEATURES = 32


def step_indices(steps: Tensor, time: int, mask: Tensor | None = None, per_sequence: bool = False) -> Tensor:
    """The 1-based index ``k`` of every step, shaped (T, B) or (T, 1).

    ``steps`` (B,) counts the steps each sequence took before this call. Where ``mask``
    (T, B) is False a step is skipped and the count does not advance. Without a mask and
    with all sequences at the same count the result is (T, 1), shared by the batch, unless
    ``per_sequence`` (always (T, B), without looking at the counts' values).
    """
    if mask is not None:
        taken = mask.long()
        return steps[None, :] + torch.cumsum(taken, 0) - taken + 1
    t = torch.arange(1, time + 1, device=steps.device)[:, None]
    if per_sequence:
        return t + steps[None, :]
    if steps.numel() == 0 or bool((steps == steps[:1]).all()):
        return t + steps[:1][None, :] if steps.numel() else t
    return t + steps[None, :]


def masked(keep: Tensor | None, new, old):
    """Where ``keep`` (batch,) is False keep ``old``: padded steps of packed sequences
    change no state. ``new``/``old`` are tensors, tuples of tensors or dicts of tensors."""
    if keep is None:
        return new
    keep = keep.unsqueeze(-1)
    if isinstance(new, dict):
        return {k: torch.where(keep, new[k], old[k]) for k in new}
    if isinstance(new, tuple):
        return tuple(torch.where(keep, n, o) for n, o in zip(new, old))
    return torch.where(keep, new, old)


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
        from .paths import scan_backend
        if scan_backend(inputs) == "triton":
            method = "triton"
        else:
            method = "loop" if inputs.device.type == "cpu" and inputs.size(-1) > LOOP_MIN_FEATURES else "chunked"
    if method == "triton":
        from . import kernels
        return kernels.linear_scan(coefficient, inputs, initial)
    if method == "sequential":
        return _sequential(coefficient, inputs, initial)
    if method == "matmul":
        a, constant = _time_batch(coefficient, time, inputs)
        return _matmul(a, constant, inputs, initial, block or MATMUL_BLOCK)
    if method == "loop":
        block = time
    a = coefficient if isinstance(coefficient, Tensor) else inputs.new_tensor(float(coefficient))
    return _Scan.apply(a.to(inputs.dtype), inputs, initial, block or default_block(time))


def _sequential(coefficient, inputs, initial):
    """The plain recurrence, one step at a time (the reference)."""
    per_step = isinstance(coefficient, Tensor) and coefficient.dim() == 2
    coefficients = coefficient.to(inputs.dtype)[..., None].unbind(0) if per_step else None
    out = []
    y = initial
    for t, x in enumerate(inputs.unbind(0)):     # unbind: one backward node, not T selects
        a = coefficients[t] if per_step else coefficient
        y = x if y is None else a * y + x
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


def _time_chunks(time: int, width: int):
    """Chunks of time steps of at most about 2^18 elements (1 MB in float32: they stay in
    cache) and at most an eighth of the sequence (the buffers of one chunk add little
    memory), but at least 8 steps (fewer ops)."""
    size = max(8, min(time, (1 << 18) // max(width, 1), -(-time // 8)))
    return [(start, min(start + size, time)) for start in range(0, time, size)]


class AdamChunks:
    """Adam's state recurrences over time in cache-sized chunks, forward and adjoint; used by
    ``adam_scan`` and by the loops that compute the drive chunk by chunk (``loops.py``)::

        v_t = mu v_{t-1} + s u_t,   m_t = beta m_{t-1} + (1 - beta) u_t^2,   d_t = v_t / q_t
        with q_t = sqrt(m_t + eps)

    In each chunk the two recurrences take one op per step and everything elementwise one op
    over the chunk. The adjoint (``backward``) runs backwards in time the same way::

        Gv_t = dd_t / q_t + mu Gv_{t+1}
        Hm_t = dd_t v_t / (q_t q_t^2) + beta Hm_{t+1}        (Hm = -2 Gm)
        du_t = s Gv_t - (1 - beta) u_t Hm_t

    ``keep``: keep ``v``, ``q`` and ``q^2`` of all steps for the backward (faster); without it
    only the state entering each chunk is kept and ``backward`` recomputes the chunk (three
    fewer tensors the size of ``u``, a few more passes over it).

    On the CPU (``paths.loop_engine``) each chunk is one call of the C++ kernels
    (``cpu_kernels``): one fused pass per step forward, and in the adjoint, which recomputes
    the chunk's states (``keep`` does not apply), one per step each way.
    """

    def __init__(self, u: Tensor, momentum: Tensor, step_size: Tensor, beta: float, eps: float,
                 moving: bool, keep: bool = False):
        self.momentum, self.step_size, self.beta, self.eps, self.moving = momentum, step_size, beta, eps, moving
        self.chunks = _time_chunks(u.size(0), u[0].numel())
        self.cpp = loop_engine(u) == "cpp"      # a chunk in one call of the C++ kernels (no buffers kept)
        self.keep = keep and not self.cpp
        length = u.size(0) if self.keep else self.chunks[0][1]
        self.buffers = () if self.cpp else tuple(u.new_empty(length, *u.shape[1:]) for _ in range(3))  # v, q^2, q
        self.entering = []                                  # (v, m) entering each chunk
        self.d_mu = self.d_s = None

    def _views(self, start, stop):
        where = slice(start, stop) if self.keep else slice(0, stop - start)
        return tuple(b[where] for b in self.buffers)

    def _states(self, u, v_prev, m_prev, v, q2, q):
        """v, q^2 = m + eps and q of one chunk (u: its steps), into the given buffers; m_T."""
        torch.mul(u, self.step_size, out=v)
        torch.mul(u, u, out=q2)
        q2.mul_(1.0 - self.beta)
        for v_t, q2_t in zip(v.unbind(0), q2.unbind(0)):      # per-step views made at once
            if self.moving:
                v_t.addcmul_(v_prev, self.momentum)
            q2_t.add_(m_prev, alpha=self.beta)
            v_prev, m_prev = v_t, q2_t
        last_m = q2[-1].clone()
        q2.add_(self.eps)
        torch.sqrt(q2, out=q)
        return last_m

    def forward(self, index: int, u: Tensor, v_prev: Tensor, m_prev: Tensor, out: Tensor):
        """Chunk ``index`` (``u``: its steps) from the entering state: the drive into ``out``;
        returns the state leaving it (v, m)."""
        self.entering.append((v_prev, m_prev))
        if self.cpp:
            v_next, m_next = u.new_empty(u.shape[1:]), u.new_empty(u.shape[1:])
            cpu_kernels.ops().adam_chunk_forward(u, v_prev, m_prev, v_next, m_next, out, self.momentum,
                                                 self.step_size, self.beta, self.eps, self.moving)
            return v_next, m_next
        v, q2, q = self._views(*self.chunks[index])
        m_last = self._states(u, v_prev, m_prev, v, q2, q)
        torch.div(v, q, out=out)
        return (v[-1] if self.keep else v[-1].clone()), m_last

    def start_backward(self, entering: list[Tensor]):
        """Before each backward pass (there may be several: ``retain_graph``): the entering
        states as saved (flat: v, m, v, m, ...), and the gradient sums reset."""
        self.entering = list(zip(entering[0::2], entering[1::2]))
        self.d_mu = self.d_s = None

    def backward(self, index: int, u: Tensor, grad: Tensor, to_v: Tensor | None, to_h: Tensor,
                 need_mu: bool, need_s: bool, out: Tensor):
        """The adjoint over chunk ``index``: ``grad`` = dL/dd of its steps, ``to_v``/``to_h``
        what reaches its last v (None: nothing) and m (as Hm) from later; writes dL/du into
        ``out`` (may be ``grad`` itself) and returns what reaches the entering v and m (as Hm).
        Accumulates ``d_mu``, ``d_s``."""
        momentum, beta, moving = self.momentum, self.beta, self.moving
        v_prev, m_prev = self.entering[index]
        if self.cpp:
            need_mu = need_mu and moving
            to_v, to_h, d_mu, d_s = cpu_kernels.ops().adam_chunk_backward(
                u, v_prev, m_prev, grad, out, torch.zeros_like(to_h) if to_v is None else to_v, to_h, momentum,
                self.step_size, beta, self.eps, moving, need_mu, need_s)
            if need_s:
                self.d_s = d_s if self.d_s is None else self.d_s + d_s
            if need_mu:
                self.d_mu = d_mu if self.d_mu is None else self.d_mu + d_mu
            return (to_v if moving else None), to_h
        v, q2, q = self._views(*self.chunks[index])
        if not self.keep:
            self._states(u, v_prev, m_prev, v, q2, q)
        gv = torch.div(grad, q)                                     # dd_t / q_t
        hm = torch.mul(gv, v).div_(q2)                              # dd_t v_t / q_t^3
        last = u.size(0) - 1
        if to_v is not None:
            gv[last].add_(to_v)
        hm[last].add_(to_h)
        step_gv, step_hm = gv.unbind(0), hm.unbind(0)
        for t in range(last - 1, -1, -1):
            if moving:
                step_gv[t].addcmul_(step_gv[t + 1], momentum)
            step_hm[t].add_(step_hm[t + 1], alpha=beta)
        if need_s:
            part = torch.dot(gv.reshape(-1), u.reshape(-1))
            self.d_s = part if self.d_s is None else self.d_s + part
        if need_mu and moving:                                      # sum_t Gv_t . v_{t-1}
            part = torch.dot(gv[0].reshape(-1), v_prev.reshape(-1))
            if last > 0:
                part = part + torch.dot(gv[1:].reshape(-1), v[:-1].reshape(-1))
            self.d_mu = part if self.d_mu is None else self.d_mu + part
        torch.mul(gv, self.step_size, out=out)
        out.addcmul_(hm, u, value=-(1.0 - beta))
        return (gv[0] * momentum if moving else None), hm[0] * beta


class _AdamScan(torch.autograd.Function):
    """Adam's drive of all steps (``AdamChunks`` over the whole sequence)."""

    @staticmethod
    @unmaterialized
    def forward(ctx, u, v0, m0, momentum, step_size, beta, eps, moving, keep):
        adam = AdamChunks(u, momentum, step_size, beta, eps, moving, keep)
        drive = torch.empty_like(u)
        v_prev, m_prev = v0, m0
        for index, (start, stop) in enumerate(adam.chunks):
            v_prev, m_prev = adam.forward(index, u[start:stop], v_prev, m_prev, drive[start:stop])
        ctx.save_for_backward(u, *adam.buffers if adam.keep else (), *[t for pair in adam.entering for t in pair])
        ctx.adam, ctx.keep = adam, adam.keep
        return drive, v_prev.clone() if adam.keep else v_prev, m_prev

    @staticmethod
    @first_order
    def backward(ctx, grad_drive, grad_v, grad_m):
        u, *rest = ctx.saved_tensors
        adam = ctx.adam
        if ctx.keep:
            adam.buffers, rest = tuple(rest[:3]), rest[3:]
        adam.start_backward(rest)
        d_u = torch.empty_like(u)
        to_v, to_h = grad_v, grad_m * -2.0     # the gradients reaching v_t and (as Hm) m_t from later
        for index in range(len(adam.chunks) - 1, -1, -1):
            start, stop = adam.chunks[index]
            to_v, to_h = adam.backward(index, u[start:stop], grad_drive[start:stop], to_v, to_h,
                                       ctx.needs_input_grad[3], ctx.needs_input_grad[4], d_u[start:stop])
        d_v0 = to_v if adam.moving else torch.zeros_like(grad_v)
        return d_u, d_v0, to_h * -0.5, adam.d_mu, adam.d_s, None, None, None, None


def adam_arguments(momentum, step_size, beta: float, eps: float, like: Tensor):
    """Adam's settings as the chunk kernel takes them: ``momentum`` and ``step_size`` as 0-d
    tensors of ``like``'s dtype and device, and ``(beta, eps, moving)`` with ``moving`` False
    for a fixed momentum of 0 (RMSProp: no velocity recurrence)."""
    moving = not _is_zero(momentum)
    momentum = torch.as_tensor(momentum, dtype=like.dtype, device=like.device)
    step_size = torch.as_tensor(step_size, dtype=like.dtype, device=like.device)
    return momentum, step_size, (float(beta), float(eps), moving)


def adam_scan(u: Tensor, v0: Tensor, m0: Tensor, momentum, step_size, beta: float, eps: float,
              keep: bool = False):
    """Adam's (and RMSProp's, ``momentum = 0``) drive for all steps of ``u`` (T, B, G) from
    the state ``v0``, ``m0`` (B, G): returns ``(d, v_T, m_T)``. ``momentum``, ``step_size``:
    numbers or 0-d tensors (learnable). ``keep``: keep the states for the backward (faster)
    or recompute them (less memory; see ``_AdamScan``). The recurrences take one op per step,
    everything else one op per cache-sized chunk of steps (on the CPU this beats the
    parallel scans for states over all gates; see ``benchmarks/scan.py``)."""
    momentum, step_size, settings = adam_arguments(momentum, step_size, beta, eps, u)
    return _AdamScan.apply(u, v0, m0, momentum, step_size, *settings, bool(keep))


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
