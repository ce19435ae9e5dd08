"""Tight per-step loops for the recurrences that cannot go through torch's fused layers.

Used by ``impl="loop"`` (and by ``impl="auto"`` for Adam, RMSProp and Nesterov). The rule's
part that does not depend on h is computed beforehand (one GEMM for the input drive; the
rule state by ``Rule.drives``, or for Adam/RMSProp on the CPU by ``ops.adam_drive.AdamChunks`` one
chunk of steps at a time inside the loop, see ``adam_loop``), so only the recurrence itself
runs step by step. Each loop is one ``torch.autograd.Function`` with a hand-written
backward (backpropagation through time), which is what makes it tight. Time runs in
cache-sized chunks of steps:

* forward, per step: one ``addmm`` of ``U h_{t-1}`` onto the step's terms, to which each
  chunk of steps has added ``b_hh`` (Nesterov: ``-s u_t + b_hh``) in one op; for Nesterov
  the extrapolation; and the gate nonlinearities written into preallocated buffers, with no
  autograd graph. The buffers' per-step views are made once per call (a slice inside the
  loop costs about as much as one of its small ops), with Python's cyclic garbage collector
  paused meanwhile (``_without_cyclic_gc``);
* backward, per step: a handful of elementwise ops with factors computed per chunk, and one
  GEMM for ``dh_{t-1}``; the weight gradient ``dU = sum_t dz_t^T h_{t-1}`` and ``db_hh`` are
  GEMMs and sums over whole chunks (or all steps) after their steps.

On the CPU (``paths.loop_engine``) an LSTM loop without a mask runs each chunk's steps in one
call of the C++ step kernels (``cpu_kernels``), forward and backward, and ``ops.adam_drive.AdamChunks``
runs Adam's states there too; the per-step torch ops below serve everything else and are
the kernels' reference in the tests.

Measured against the alternatives in ``benchmarks/loops.py`` (README, Performance): the same
loop recorded by autograd op by op, TorchScript (deprecated in torch 2.13) and
``torch.compile`` of the step (on the CPU it is slower here and recompiles when shapes
change).

Padded steps of packed sequences (``mask`` False) hold the state, as in the reference: the
forward keeps the old state with ``torch.where``, the backward passes the gradient through.
All arithmetic is torch's; results equal the per-step reference to rounding.
"""

from __future__ import annotations

import contextlib
import gc
import threading

import torch
from torch import Tensor

from . import cpu_kernels
from .paths import loop_engine
from .custom_backward import first_order, unmaterialized
from .ops.adam_drive.chunked import AdamChunks, _time_chunks, adam_arguments

__all__ = ["lstm_loop", "rnn_loop", "gru_loop", "adam_loop"]


_gc_lock = threading.Lock()
_gc_depth = 0
_gc_was_enabled = False


@contextlib.contextmanager
def _without_cyclic_gc():
    """Python's cyclic garbage collector paused while the loops run. Their lists of per-step
    views hold thousands of live tensor objects, which would trigger full collections of
    every object in the process (about 0.15 s each, measured at T = 5000); the loops create
    no reference cycles. Nested and concurrent uses restore the collector once, at the end
    of the last one."""
    global _gc_depth, _gc_was_enabled
    with _gc_lock:
        if _gc_depth == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_depth += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_depth -= 1
            if _gc_depth == 0 and _gc_was_enabled:
                gc.enable()


def _keep(mask: Tensor | None, t: int):
    return None if mask is None else mask[t, :, None]


def _keeps(mask: Tensor | None):
    """The mask of every step as (B, 1) views, made at once (None without a mask)."""
    return None if mask is None else mask[..., None].unbind(0)


def _previous(outs: Tensor, h0: Tensor) -> Tensor:
    """h_{t-1} of every step: h0 then the outputs but the last."""
    return torch.cat([h0[None], outs[:-1]])


def _previous_chunk(outs: Tensor, h0: Tensor, start: int, stop: int) -> Tensor:
    """h_{t-1} of steps start..stop-1."""
    return outs[start - 1:stop - 1] if start > 0 else _previous(outs[:stop], h0)


class _LSTMActivations:
    """The LSTM gate nonlinearities over preallocated buffers (gate order i, f, g, o). Their
    per-step views are made once, as lists: slicing a tensor inside the loop costs about as
    much as one of its small ops."""

    def __init__(self, time, batch, hidden, like, c0, pre, per_step=True):
        """``time`` None: buffers for one step (the C++ kernels' inference ring: cell states
        alternate between two rows)."""
        self.hidden = hidden
        self.ring = time is None
        self.acts = like.new_empty(1 if self.ring else time, batch, 4 * hidden)      # sigmoid(i, f, o), tanh(g)
        self.cells = like.new_empty(2 if self.ring else time + 1, batch, hidden)
        self.cells[0] = c0
        self.tanh_cells = like.new_empty(1 if self.ring else time, batch, hidden)
        if not per_step:            # the C++ step kernels index the buffers themselves
            return
        self.step_acts = self.acts.unbind(0)
        self.step_gates = tuple(gate.unbind(0) for gate in self.acts.split(hidden, dim=-1))
        self.step_cells = self.cells.unbind(0)
        self.step_tanh_cells = self.tanh_cells.unbind(0)
        self.pre_g = pre[:, 2 * hidden:3 * hidden]                # ``pre``: the loop's one buffer

    def forward(self, t, pre, out, keep):
        i, f, g, o = self.step_gates
        g_t, c, c_prev, tanh_c = g[t], self.step_cells[t + 1], self.step_cells[t], self.step_tanh_cells[t]
        torch.sigmoid(pre, out=self.step_acts[t])
        torch.tanh(self.pre_g, out=g_t)
        torch.mul(f[t], c_prev, out=c)
        c.addcmul_(i[t], g_t)
        if keep is not None:
            torch.where(keep, c, c_prev, out=c)
        torch.tanh(c, out=tanh_c)
        torch.mul(o[t], tanh_c, out=out)

    def factors(self, outs, start, stop):
        """Factors of the backward step for steps ``start:stop`` at once (two passes each),
        as lists of per-step views indexed from ``start``."""
        H = self.hidden
        i, f, g, o = self.acts[start:stop].split(H, dim=-1)
        tc = self.tanh_cells[start:stop]
        to_ifg = self.acts.new_empty(stop - start, self.acts.size(1), 3, H)
        torch.addcmul(i, i, i, value=-1.0, out=to_ifg[:, :, 0]).mul_(g)                  # dc -> d(pre_i): g i (1-i)
        torch.addcmul(f, f, f, value=-1.0, out=to_ifg[:, :, 1]).mul_(self.cells[start:stop])  # dc -> d(pre_f)
        torch.addcmul(i, i * g, g, value=-1.0, out=to_ifg[:, :, 2])                      # dc -> d(pre_g): i (1-g^2)
        factors = {"to_c": torch.addcmul(o, o * tc, tc, value=-1.0),                    # dh -> dc: o (1 - tanh(c)^2)
                   "to_o": torch.addcmul(o, o, o, value=-1.0).mul_(tc),                  # dh -> d(pre_o)
                   "to_ifg": to_ifg, "forget": f}
        return {name: factor.unbind(0) for name, factor in factors.items()}

    def gradient_views(self, d_pre):
        """Per step, where ``backward`` writes d(pre-activation): the (B, 3, H) view of the
        i, f, g gates and the (B, H) view of the o gate of ``d_pre`` (T, B, 4H)."""
        H = self.hidden
        return list(zip(d_pre[..., :3 * H].unflatten(-1, (3, H)).unbind(0), d_pre[..., 3 * H:].unbind(0)))

    def backward(self, factors, t, dh, dc, dgates, keep):
        """Write d(pre-activation) of step t into ``dgates`` (``gradient_views``); return the
        gradient reaching c_{t-1}. ``dh``, ``dc``: the gradients reaching h_t and c_t."""
        d_ifg, d_o = dgates
        if keep is not None:
            held_c = torch.where(keep, 0.0, dc)
            dh = dh * keep
            dc = dc * keep
        dc = torch.addcmul(dc, dh, factors["to_c"][t])
        torch.mul(dc.unsqueeze(1), factors["to_ifg"][t], out=d_ifg)
        torch.mul(dh, factors["to_o"][t], out=d_o)
        dc = dc * factors["forget"][t]
        return dc if keep is None else dc + held_c


class _RNNActivations:
    def __init__(self, nonlinearity):
        self.relu = nonlinearity == "relu"

    def forward(self, t, pre, out, keep):
        torch.clamp(pre, min=0.0, out=out) if self.relu else torch.tanh(pre, out=out)

    def factors(self, outs, start, stop):
        outs = outs[start:stop]
        return {"derivative": ((outs > 0).to(outs.dtype) if self.relu else 1.0 - outs * outs).unbind(0)}

    def gradient_views(self, d_pre):
        return d_pre.unbind(0)

    def backward(self, factors, t, dh, dc, dgates, keep):
        torch.mul(dh, factors["derivative"][t], out=dgates)
        if keep is not None:
            dgates.mul_(keep)
        return None


class _Drives:
    """The drive of the loop, one cache-sized chunk of steps at a time: ``terms`` itself, or
    (``adam`` = (beta, eps, moving)) Adam's drive of ``terms`` = u, made by ``AdamChunks``
    just before the loop reaches the chunk. Kept on the autograd context for the backward,
    which runs the Adam adjoint chunk by chunk (``start_backward``, ``backward``,
    ``gradients``)."""

    def __init__(self, terms: Tensor, v0, m0, momentum, step_size, adam):
        time, batch, gates = terms.shape
        self.terms = terms
        self.rule = None if adam is None else AdamChunks(terms, momentum, step_size, *adam)
        self.chunks = _time_chunks(time, batch * gates) if self.rule is None else self.rule.chunks
        if self.rule is not None:
            self.buffer = terms.new_empty(self.chunks[0][1], batch, gates)
            self.state = (v0, m0)           # the rule state leaving the last chunk made

    def __iter__(self):
        """(start, stop, drive of steps start..stop-1 indexed from 0) per chunk, in order."""
        for index, (start, stop) in enumerate(self.chunks):
            if self.rule is None:
                yield start, stop, self.terms[start:stop]
            else:
                self.state = self.rule.forward(index, self.terms[start:stop], *self.state,
                                               self.buffer[:stop - start])
                yield start, stop, self.buffer

    def saved(self) -> list[Tensor]:
        """The tensors to save for the backward: the rule states entering each chunk."""
        return [] if self.rule is None else [t for pair in self.rule.entering for t in pair]

    def start_backward(self, u: Tensor, entering: list[Tensor], grad_v: Tensor, grad_m: Tensor,
                       need_momentum: bool, need_step_size: bool):
        self.terms, self.needs = u, (need_momentum, need_step_size)
        self.rule.start_backward(entering)
        self.to_v, self.to_h = grad_v, grad_m * -2.0     # reaching v_T and (as Hm) m_T

    def backward(self, index: int, grad: Tensor):
        """Chunk ``index``: dL/d(drive) in ``grad`` becomes dL/du, in place."""
        start, stop = self.chunks[index]
        self.to_v, self.to_h = self.rule.backward(index, self.terms[start:stop], grad, self.to_v, self.to_h,
                                                  *self.needs, grad)

    def gradients(self, like: Tensor):
        """dL/dv0, dL/dm0, dL/dmomentum, dL/dstep_size once every chunk is done."""
        rule = self.rule
        return (self.to_v if rule.moving else torch.zeros_like(like)), self.to_h * -0.5, rule.d_mu, rule.d_s


class _AdditiveLoop(torch.autograd.Function):
    """RNN or LSTM over precomputed terms ``A`` (T, B, G*H) with the recurrent term
    ``r_t = U h_{t-1} + b_hh`` computed as the reference computes it:

    plain:     pre_t = A_t + r_t                                       (A = the drive)
    nesterov:  v_t = r_t + scale A_t;  pre_t = v_t + c_t (v_t - v_{t-1})   (A = u, scale = -s)
    adam:      pre_t = d_t + r_t, d_t Adam's drive of A = u (``ops.adam_drive.AdamChunks``, momentum,
               step_size = scale, state v0, m0), made one chunk of steps at a time just
               before the loop needs it, so no drive tensor of all steps exists

    Time runs in cache-sized chunks (``_time_chunks``). Returns the outputs (T, B, H), h_T,
    c_T (LSTM; else None), v_T (nesterov, adam; else None) and m_T (adam; else None). The
    backward computes its factors per chunk; with adam it turns each chunk's gradient of the
    drive into that of ``u`` in place (the only buffer of all steps is the gradient of ``A``).
    """

    @staticmethod
    @unmaterialized
    def forward(ctx, terms, scale, bias, h0, c0, weight_hh, coefficient, v0, mask, kind, m0, momentum, adam,
                recording):
        with _without_cyclic_gc():
            return _AdditiveLoop._forward(ctx, terms, scale, bias, h0, c0, weight_hh, coefficient, v0, mask, kind,
                                          m0, momentum, adam, recording)

    @staticmethod
    def _forward(ctx, terms, scale, bias, h0, c0, weight_hh, coefficient, v0, mask, kind, m0, momentum, adam,
                 recording):
        time, batch, gates = terms.shape
        hidden = h0.size(-1)
        lstm = kind == "lstm"
        nesterov = coefficient is not None
        cpp = loop_engine(terms, supported=lstm and mask is None) == "cpp"
        outs = terms.new_empty(time, batch, hidden)
        pre = terms.new_empty(batch, gates)
        # without a backward to come the kernels keep one step's activations and two cell states
        acts = _LSTMActivations(time if recording or not cpp else None, batch, hidden, terms, c0, pre,
                                per_step=not cpp) if lstm else _RNNActivations(kind)
        drives = _Drives(terms, v0, m0, momentum, scale, adam)
        if nesterov:
            coefficient = coefficient.to(terms.dtype)
            v_prev = v0.clone(memory_format=torch.contiguous_format) if cpp else v0
        if not cpp:                                                      # per-step views, made once
            step_outs, keeps = outs.unbind(0), _keeps(mask)
            if nesterov:
                step_coefficients = coefficient[..., None].unbind(0)
        u_t = weight_hh.t()
        h = h0
        for start, stop, block in drives:
            # the chunk's terms with the recurrent bias (Nesterov: scaled first) in one op, so
            # that each step adds U h_{t-1} in its one addmm
            if nesterov:
                block = block * scale if bias is None else torch.addcmul(bias, block, scale)
            elif bias is not None:        # Adam's chunk buffer is ours to change; the drive is not
                block = block.add_(bias) if adam is not None else block + bias
            if cpp:                       # the chunk's steps in one call (v_prev: v_{t-1} in, v_t out)
                cpu_kernels.ops().lstm_forward_steps(block[:stop - start], h, u_t, outs, acts.acts, acts.cells,
                                                     acts.tanh_cells, pre, start, coefficient if nesterov else None,
                                                     v_prev if nesterov else None)
                h = outs[stop - 1]
                continue
            step_block = block.unbind(0)
            for t in range(start, stop):
                keep = None if keeps is None else keeps[t]
                if nesterov:                      # v_t = (scale A_t + b) + U h_{t-1}
                    v = torch.addmm(step_block[t - start], h, u_t)
                    if keep is not None:
                        v = torch.where(keep, v, v_prev)
                    torch.addcmul(v, step_coefficients[t], v - v_prev, out=pre)
                    v_prev = v
                else:                             # pre_t = (A_t + b) + U h_{t-1}
                    torch.addmm(step_block[t - start], h, u_t, out=pre)
                h = step_outs[t]
                acts.forward(t, pre, h, keep)
                if keep is not None:
                    torch.where(keep, h, step_outs[t - 1] if t > 0 else h0, out=h)
        ctx.acts, ctx.lstm, ctx.nesterov, ctx.has_bias, ctx.cpp = acts, lstm, nesterov, bias is not None, cpp
        ctx.drives = drives
        ctx.save_for_backward(outs, h0, weight_hh, coefficient, mask, scale,
                              terms if nesterov or adam is not None else None, *drives.saved())
        h_n = outs[time - 1].clone()
        c_n = acts.cells[time % 2 if acts.ring else time].clone() if lstm else None
        # v_prev is the loop's own v_T (time >= 1, as h_n above assumes): returned without a copy
        v_n, m_n = drives.state if adam is not None else (v_prev if nesterov else None, None)
        drives.terms = drives.state = None          # the saved tensors serve the backward
        return outs, h_n, c_n, v_n, m_n

    @staticmethod
    @first_order
    def backward(ctx, grad_out, grad_h, grad_c, grad_v, grad_m):
        with _without_cyclic_gc():
            return _AdditiveLoop._backward(ctx, grad_out, grad_h, grad_c, grad_v, grad_m)

    @staticmethod
    def _backward(ctx, grad_out, grad_h, grad_c, grad_v, grad_m):
        outs, h0, weight_hh, coefficient, mask, scale, terms, *entering = ctx.saved_tensors
        acts, lstm, nesterov, drives = ctx.acts, ctx.lstm, ctx.nesterov, ctx.drives
        adam = drives.rule is not None
        time, batch, hidden = outs.shape
        gates = weight_hh.size(0)
        d_pre = outs.new_empty(time, batch, gates)   # nesterov: d_pre[t] becomes dv_t once used; adam: du_t
        dh = grad_out[time - 1] + grad_h
        dc = (grad_c if grad_c is not None else outs.new_zeros(batch, hidden)) if lstm else None
        if nesterov:
            passed = grad_v if grad_v is not None else outs.new_zeros(batch, gates)
        if ctx.cpp:                   # buffers the step kernels update in place
            dh, dc = dh.contiguous(), dc.clone(memory_format=torch.contiguous_format)
            if nesterov:
                passed = passed.clone(memory_format=torch.contiguous_format)
        elif nesterov:
            one_plus = 1.0 + coefficient[..., None]
            minus = -coefficient[..., None]
        need_weight, need_bias = ctx.needs_input_grad[5], ctx.has_bias and ctx.needs_input_grad[2]
        if adam:
            drives.start_backward(terms, entering, grad_v, grad_m, ctx.needs_input_grad[11], ctx.needs_input_grad[1])
            d_weight = outs.new_zeros(gates, hidden) if need_weight else None
            d_bias = outs.new_zeros(gates) if need_bias else None
        if not ctx.cpp:       # per-step views, made once (a slice in the loop costs as much as a small op)
            step_d_pre, step_grad_out, keeps = d_pre.unbind(0), grad_out.unbind(0), _keeps(mask)
            step_dgates = acts.gradient_views(d_pre)
            if nesterov:
                step_one_plus, step_minus = one_plus.unbind(0), minus.unbind(0)
        for index in range(len(drives.chunks) - 1, -1, -1):
            start, stop = drives.chunks[index]
            if ctx.cpp:
                cpu_kernels.ops().lstm_backward_steps(acts.acts, acts.cells, acts.tanh_cells, weight_hh, grad_out,
                                                      d_pre, dh, dc, start, stop,
                                                      coefficient if nesterov else None,
                                                      passed if nesterov else None)
                if adam:
                    _AdditiveLoop._adam_chunk(ctx, index, d_pre, outs, h0, d_weight, d_bias)
                continue
            factors = acts.factors(outs, start, stop)
            for t in range(stop - 1, start - 1, -1):
                keep = None if keeps is None else keeps[t]
                dc = acts.backward(factors, t - start, dh, dc, step_dgates[t], keep)
                d_t = step_d_pre[t]
                if nesterov:                                # d_t becomes the gradient reaching v_t
                    if keep is None:
                        reaching_earlier = d_t * step_minus[t]
                        torch.addcmul(passed, d_t, step_one_plus[t], out=d_t)
                        passed = reaching_earlier
                    else:
                        total = torch.addcmul(passed, d_t, step_one_plus[t])
                        passed = torch.where(keep, d_t * step_minus[t], total)
                        torch.mul(total, keep, out=d_t)
                held = None if keep is None else torch.where(keep, 0.0, dh)
                if t > 0:
                    dh = torch.addmm(step_grad_out[t - 1], d_t, weight_hh)
                else:
                    dh = torch.mm(d_t, weight_hh)
                if held is not None:
                    dh = dh + held
            del factors
            if adam:
                _AdditiveLoop._adam_chunk(ctx, index, d_pre, outs, h0, d_weight, d_bias)
        if adam:
            d_v0, d_m0, d_momentum, d_step_size = drives.gradients(grad_v)
            return (d_pre, d_step_size, d_bias, dh, dc, d_weight, None, d_v0, None, None, d_m0, d_momentum, None,
                    None)
        flat = d_pre.view(time * batch, gates)
        d_weight = None
        if need_weight:             # sum_t dz_t^T h_{t-1}, without a copy of all h_{t-1}
            d_weight = d_pre[0].t().mm(h0)
            if time > 1:
                d_weight.addmm_(flat[batch:].t(), outs[:-1].reshape(-1, hidden))
        d_bias = flat.sum(0) if need_bias else None
        d_scale = None
        if nesterov:
            if ctx.needs_input_grad[1]:
                d_scale = torch.dot(flat.reshape(-1), terms.reshape(-1))
            d_terms = d_pre.mul_(scale) if ctx.needs_input_grad[0] else None
        else:
            d_terms = d_pre
        return (d_terms, d_scale, d_bias, dh, dc, d_weight, None, (passed if nesterov else None), None, None,
                None, None, None, None)

    @staticmethod
    def _adam_chunk(ctx, index, d_pre, outs, h0, d_weight, d_bias):
        """Adam, after the steps of chunk ``index``: its share of dU and db, then d(drive) -> du in place."""
        start, stop = ctx.drives.chunks[index]
        flat = d_pre[start:stop].view(-1, d_pre.size(-1))
        if d_weight is not None:
            d_weight.addmm_(flat.t(), _previous_chunk(outs, h0, start, stop).reshape(-1, outs.size(-1)))
        if d_bias is not None:
            d_bias += flat.sum(0)
        ctx.drives.backward(index, d_pre[start:stop])


class _GRULoop(torch.autograd.Function):
    """torch's GRU over a precomputed drive d (T, B, 3H) (in place of W x + b_ih), or over
    Adam's drive of ``drive`` = u made chunk by chunk (``adam`` as in ``_AdditiveLoop``).
    Time runs in cache-sized chunks; the backward's factors and the recurrent term's
    gradient exist for one chunk at a time (``dU``, ``db_hh`` summed per chunk)."""

    @staticmethod
    @unmaterialized
    def forward(ctx, drive, h0, weight_hh, bias_hh, mask, v0, m0, momentum, step_size, adam):
        time, batch, gates = drive.shape
        H = h0.size(-1)
        outs = drive.new_empty(time, batch, H)
        rec = drive.new_empty(batch, gates)                      # U h_{t-1} + b_hh of one step
        recurrent_n = drive.new_empty(time, batch, H)            # its candidate part, for the backward
        gate = drive.new_empty(time, batch, 2 * H)               # reset, update
        new = drive.new_empty(time, batch, H)                    # candidate n
        drives = _Drives(drive, v0, m0, momentum, step_size, adam)
        u_t = weight_hh.t()
        h_prev = h0
        for start, stop, block in drives:
            for t in range(start, stop):
                d = block[t - start]
                if bias_hh is None:
                    torch.mm(h_prev, u_t, out=rec)
                else:
                    torch.addmm(bias_hh, h_prev, u_t, out=rec)
                g = gate[t]
                torch.add(d[:, :2 * H], rec[:, :2 * H], out=g)
                g.sigmoid_()
                n = new[t]
                torch.addcmul(d[:, 2 * H:], g[:, :H], rec[:, 2 * H:], out=n)
                n.tanh_()
                recurrent_n[t] = rec[:, 2 * H:]
                h = outs[t]
                torch.sub(h_prev, n, out=h)
                torch.addcmul(n, g[:, H:], h, out=h)                 # n + z (h_{t-1} - n), as torch
                keep = _keep(mask, t)
                if keep is not None:
                    torch.where(keep, h, h_prev, out=h)
                h_prev = h
        ctx.drives, ctx.has_bias = drives, bias_hh is not None
        ctx.save_for_backward(outs, h0, recurrent_n, gate, new, weight_hh, mask,
                              drive if adam is not None else None, *drives.saved())
        v_n, m_n = drives.state if adam is not None else (None, None)
        drives.terms = drives.state = None          # the saved tensors serve the backward
        return outs, outs[time - 1].clone(), v_n, m_n

    @staticmethod
    @first_order
    def backward(ctx, grad_out, grad_h, grad_v, grad_m):
        outs, h0, recurrent_n, gate, new, weight_hh, mask, u, *entering = ctx.saved_tensors
        drives = ctx.drives
        adam = drives.rule is not None
        time, batch, H = grad_out.shape
        need_weight, need_bias = ctx.needs_input_grad[2], ctx.has_bias and ctx.needs_input_grad[3]
        d_weight = grad_out.new_zeros(3 * H, H) if need_weight else None
        d_bias = grad_out.new_zeros(3 * H) if need_bias else None
        if adam:
            drives.start_backward(u, entering, grad_v, grad_m, ctx.needs_input_grad[7], ctx.needs_input_grad[8])
        d_drive = grad_out.new_empty(time, batch, 3 * H)
        d_rec = grad_out.new_empty(drives.chunks[0][1], batch, 3 * H)
        dh = grad_out[time - 1] + grad_h
        for index in range(len(drives.chunks) - 1, -1, -1):
            start, stop = drives.chunks[index]
            previous = _previous_chunk(outs, h0, start, stop)
            reset, update = gate[start:stop].split(H, dim=-1)
            candidate = new[start:stop]
            to_n = (1.0 - update) * (1.0 - candidate * candidate)              # dh -> d(drive_n)
            to_z = (previous - candidate) * (update * (1.0 - update))          # dh -> d(drive_z)
            to_r = recurrent_n[start:stop] * (reset * (1.0 - reset))           # d(drive_n) -> d(drive_r)
            for t in range(stop - 1, start - 1, -1):
                i = t - start
                keep = _keep(mask, t)
                held = None
                if keep is not None:
                    held = torch.where(keep, 0.0, dh)
                    dh = dh * keep
                dd, dr = d_drive[t], d_rec[i]
                torch.mul(dh, to_n[i], out=dd[:, 2 * H:])
                torch.mul(dh, to_z[i], out=dd[:, H:2 * H])
                torch.mul(dd[:, 2 * H:], to_r[i], out=dd[:, :H])
                dr[:, :2 * H] = dd[:, :2 * H]
                torch.mul(dd[:, 2 * H:], reset[i], out=dr[:, 2 * H:])
                direct = dh * update[i]
                if t > 0:
                    direct.add_(grad_out[t - 1])
                if held is not None:
                    direct.add_(held)
                dh = torch.addmm(direct, dr, weight_hh)
            flat = d_rec[:stop - start].view(-1, 3 * H)
            if need_weight:
                d_weight.addmm_(flat.t(), previous.reshape(-1, H))
            if need_bias:
                d_bias += flat.sum(0)
            if adam:                      # d(drive) -> du in place
                drives.backward(index, d_drive[start:stop])
        if not adam:
            return d_drive, dh, d_weight, d_bias, None, None, None, None, None, None
        d_v0, d_m0, d_momentum, d_step_size = drives.gradients(grad_v)
        return d_drive, dh, d_weight, d_bias, None, d_v0, d_m0, d_momentum, d_step_size, None


def _recording(*tensors) -> bool:
    """Whether autograd records a call on ``tensors`` (its backward may come)."""
    return torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad for t in tensors)


def lstm_loop(terms: Tensor, h0: Tensor, c0: Tensor, weight_hh: Tensor, bias_hh: Tensor | None,
              mask: Tensor | None = None, coefficient: Tensor | None = None, v0: Tensor | None = None,
              scale: Tensor | None = None):
    """LSTM over ``terms`` (T, B, 4H): the drive (plain), or ``u`` with the Nesterov
    ``coefficient`` (T, B or 1), velocity ``v0`` and ``scale = -s``. Returns (out, h_n, c_n, v_n)."""
    out, h_n, c_n, v_n, _ = _AdditiveLoop.apply(terms, scale, bias_hh, h0, c0, weight_hh, coefficient, v0, mask,
                                                "lstm", None, None, None,
                                                _recording(terms, scale, bias_hh, h0, c0, weight_hh, v0))
    return out, h_n, c_n, v_n


def rnn_loop(terms: Tensor, h0: Tensor, weight_hh: Tensor, bias_hh: Tensor | None, nonlinearity: str,
             mask: Tensor | None = None, coefficient: Tensor | None = None, v0: Tensor | None = None,
             scale: Tensor | None = None):
    """tanh/relu RNN over ``terms`` (T, B, H), as ``lstm_loop``. Returns (out, h_n, v_n)."""
    out, h_n, _, v_n, _ = _AdditiveLoop.apply(terms, scale, bias_hh, h0, None, weight_hh, coefficient, v0, mask,
                                              nonlinearity, None, None, None,
                                              _recording(terms, scale, bias_hh, h0, weight_hh, v0))
    return out, h_n, v_n


def adam_loop(kind: str, u: Tensor, state: tuple[Tensor, ...], weight_hh: Tensor, bias_hh: Tensor | None,
              velocity: Tensor, second_moment: Tensor, momentum, step_size, beta: float, eps: float):
    """LSTM, GRU (``kind`` "lstm", "gru") or tanh/relu RNN driven by Adam's (RMSProp's: ``momentum`` 0)
    drive of ``u`` (T, B, G*H), made chunk by chunk inside the loop; no mask. ``state``:
    ``(h0, c0)`` or ``(h0,)``. Returns (out, final state tuple, v_T, m_T)."""
    momentum, step_size, settings = adam_arguments(momentum, step_size, beta, eps, u)
    if kind == "gru":
        out, h_n, v_n, m_n = _GRULoop.apply(u, state[0], weight_hh, bias_hh, None, velocity, second_moment, momentum,
                                            step_size, settings)
        return out, (h_n,), v_n, m_n
    c0 = state[1] if kind == "lstm" else None
    out, h_n, c_n, v_n, m_n = _AdditiveLoop.apply(u, step_size, bias_hh, state[0], c0, weight_hh, None, velocity,
                                                  None, kind, second_moment, momentum, settings,
                                                  _recording(u, step_size, bias_hh, *state, weight_hh, velocity,
                                                             second_moment, momentum))
    return out, ((h_n, c_n) if kind == "lstm" else (h_n,)), v_n, m_n


def gru_loop(drive: Tensor, h0: Tensor, weight_hh: Tensor, bias_hh: Tensor | None, mask: Tensor | None = None):
    """torch's GRU over the drive (T, B, 3H). Returns (out, h_n)."""
    out, h_n, _, _ = _GRULoop.apply(drive, h0, weight_hh, bias_hh, mask, None, None, None, None, None)
    return out, h_n
