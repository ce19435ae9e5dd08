"""Adam's (and RMSProp's) drive of all steps in cache-sized chunks of time, in torch ops or
the C++ step kernels on the CPU; the reference is ``naive.adam_drive_ref``."""

from __future__ import annotations

import torch
from torch import Tensor

from ... import cpu_kernels
from ...custom_backward import first_order, unmaterialized
from ...paths import loop_engine
from ..linear_scan.parallel import _is_zero

__all__ = ["AdamChunks", "adam_scan", "adam_arguments"]


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
