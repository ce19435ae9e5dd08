"""The ``"triton-loop"`` path: the recurrences coupled to h on the GPU, with no Python per step.

For the recurrences torch's fused kernels do not have: the Nesterov-coupled LSTM and RNN
(``v_t = U h_{t-1} + b_hh - s u_t``, ``pre_t = v_t + c_t (v_t - v_{t-1})``, then the cell)
and the orthogonal layers' modReLU recurrence (``h_t = modReLU(U h_{t-1} + d_t)``). Per step:

* forward: one GEMM ``z = h_{t-1} U^T`` and one Triton kernel for everything elementwise
  (``momentumrnn.step_kernels``);
* backward: one Triton kernel (the cell's adjoint, and Nesterov's) and one GEMM
  ``dh_{t-1} = base + dz_t U``; the weight gradients ``dU = sum_t dz_t^T h_{t-1}`` (and
  modReLU's bias) are whole-sequence GEMMs and sums after the loop.

Time runs in windows of ``WINDOW_STEPS`` steps over fixed buffers (``Window``, cached by
shape, dtype and device, at most ``MAX_WINDOWS``): each window's inputs are copied in, its
steps run, its results are copied out. Because the buffers never move, the steps of a window
are captured once as a CUDA graph per step count (full windows, and the last window's
remainder) and replayed (``momentumrnn.cuda_graphs``), so no Python runs per step on the GPU
and the graphs depend on the sequence length only through the remainder.

That is the ``"windows"`` engine. The other, ``"persistent"`` (``use_engine``;
``momentumrnn.persistent_kernels``), walks all steps in one launch per call and direction,
with ``h`` in registers and ``U`` read from the cache at every step; it takes small hidden
sizes only. Both fill the same tensors for the backward and give the same numbers to rounding.

Padded steps of packed sequences (``mask`` False) hold every state, as in the reference.
On the CPU the kernels run only under Triton's interpreter (the tests); the layers refuse
this path for CPU tensors otherwise (``check_device``).
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading

import torch
from torch import Tensor

from .checks import InputError
from .cuda_graphs import Programs
from .custom_backward import first_order, unmaterialized

__all__ = ["nesterov_lstm", "nesterov_rnn", "modrelu_rnn", "check_device", "clear_windows", "cached_bytes",
           "use_engine", "chosen_engine", "ENGINES", "WINDOW_STEPS", "MAX_WINDOWS"]

#: Steps per window (and per captured graph).
WINDOW_STEPS = 64
#: Windows kept (least recently used dropped first); each holds about
#: ``WINDOW_STEPS * B * (3 G + 3 H)`` numbers and its two graphs.
MAX_WINDOWS = 8

_DTYPES = (torch.float32, torch.float64)


def _interpreting() -> bool:
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    import triton
    runtime = getattr(getattr(triton, "knobs", None), "runtime", None)
    return bool(runtime is not None and runtime.interpret)


def check_device(x: Tensor, layer_name: str, cpu_impl: str = "loop") -> None:
    """Refuse what the path cannot run: a non-CUDA tensor (unless Triton interprets), no
    Triton, a dtype other than float32/float64. ``cpu_impl``: the layer's fast path on the CPU."""
    from .paths import triton_available
    if not triton_available():
        raise InputError(f"{layer_name}: impl='triton-loop' needs Triton (pip install triton); "
                         f"impl='auto' or 'reference' run without it")
    if x.device.type != "cuda" and not _interpreting():
        raise InputError(f"{layer_name}: impl='triton-loop' runs on CUDA tensors, got a {x.device.type} tensor; "
                         f"on the CPU use impl={cpu_impl!r} (or 'auto')")
    if x.dtype not in _DTYPES:
        raise InputError(f"{layer_name}: impl='triton-loop' computes in float32 or float64, got {x.dtype}; "
                         f"use impl='reference' for other dtypes")


class Window:
    """Fixed buffers for ``steps`` time steps of one recurrence (names as the kernels' arguments):

    forward: ``terms`` (steps, B, G) the per-step terms ``a_t`` (or drives ``d_t``),
    ``coefficient`` (steps, Bc), ``keep`` (steps, B) uint8, ``h`` and ``c`` (steps + 1, B, H)
    with row 0 the state entering the window, ``acts`` (steps, B, 4H), ``pre`` (steps, B, H),
    ``velocity`` and ``z`` (B, G), ``weight`` U (G, H), ``bias`` (H);
    backward: ``dh``, ``base``, ``dc`` (B, H), ``passed`` (B, G), ``grad_before`` (steps, B, H)
    (``grad_out`` one step behind), ``dz`` (steps, B, G).

    Absent buffers are one-element placeholders, since the kernels take every pointer."""

    def __init__(self, cell: str, batch: int, hidden: int, coefficient_width: int, has_mask: bool,
                 dtype: torch.dtype, device: torch.device, steps: int):
        from .ops.linear_scan.triton import coefficient_strides
        self.cell, self.batch, self.hidden, self.steps = cell, batch, hidden, steps
        self.has_mask, self.fp32 = has_mask, dtype == torch.float32
        lstm, nesterov = cell == "lstm", cell != "modrelu"
        self.gates = gates = (4 if lstm else 1) * hidden
        new = lambda *shape: torch.zeros(*shape, dtype=dtype, device=device)  # noqa: E731
        placeholder = new(1)
        self.lock = threading.Lock()
        self.terms, self.z, self.weight = new(steps, batch, gates), new(batch, gates), new(gates, hidden)
        self.h = new(steps + 1, batch, hidden)
        self.c = new(steps + 1, batch, hidden) if lstm else placeholder
        self.acts = new(steps, batch, gates) if lstm else placeholder
        self.pre = new(steps, batch, hidden) if cell == "modrelu" else placeholder
        self.bias = new(hidden) if cell == "modrelu" else placeholder
        self.velocity = new(batch, gates) if nesterov else placeholder
        self.passed = new(batch, gates) if nesterov else placeholder
        self.coefficient = new(steps, coefficient_width) if nesterov else placeholder
        self.coefficient_strides = coefficient_strides(self.coefficient) if nesterov else (0, 0)
        self.keep = torch.zeros(steps, batch, dtype=torch.uint8, device=device) if has_mask else placeholder
        self.dh, self.base, self.dz = new(batch, hidden), new(batch, hidden), new(steps, batch, gates)
        self.dc = new(batch, hidden) if lstm else placeholder
        self.grad_before = new(steps, batch, hidden)
        # per-step views, made once: the programs index them at every step
        self.h_rows, self.dz_rows, self.weight_t = self.h.unbind(0), self.dz.unbind(0), self.weight.t()
        self.programs = Programs(device)

    def take_weights(self, weight_hh: Tensor, bias: Tensor | None) -> None:
        """This call's ``U`` (and modReLU's ``b``)."""
        self.weight.copy_(weight_hh)
        if self.cell == "modrelu":
            self.bias.copy_(bias)

    def take_steps(self, coefficient: Tensor | None, keep: Tensor | None, start: int, stop: int) -> None:
        """The extrapolation coefficients (Nesterov) and the mask of steps ``start..stop-1``."""
        if self.cell != "modrelu":
            self.coefficient[:stop - start].copy_(coefficient[start:stop])
        if keep is not None:
            self.keep[:stop - start].copy_(keep[start:stop])

    def forward_program(self, steps: int) -> None:
        from .step_kernels import forward_step
        for i in range(steps):
            torch.mm(self.h_rows[i], self.weight_t, out=self.z)
            forward_step(self, i)

    def backward_program(self, steps: int) -> None:
        from .step_kernels import backward_step
        for i in range(steps - 1, -1, -1):
            backward_step(self, i)
            torch.addmm(self.base, self.dz_rows[i], self.weight, out=self.dh)


_windows: collections.OrderedDict = collections.OrderedDict()
_windows_lock = threading.Lock()


def _window(cell: str, h_all: Tensor, coefficient: Tensor | None, keep: Tensor | None) -> Window:
    """The cached window for ``cell`` with the shape, dtype and device of ``h_all`` (T + 1, B, H)."""
    batch, hidden = h_all.shape[1:]
    coefficient_width = 0 if coefficient is None else coefficient.size(1)
    has_mask, dtype, device = keep is not None, h_all.dtype, h_all.device
    key = (cell, batch, hidden, coefficient_width, has_mask, dtype, device, WINDOW_STEPS)
    with _windows_lock:
        window = _windows.pop(key, None)
        if window is None:
            with torch.inference_mode(False):        # buffers that later calls outside inference mode may write
                window = Window(cell, batch, hidden, coefficient_width, has_mask, dtype, device, WINDOW_STEPS)
        _windows[key] = window
        while len(_windows) > MAX_WINDOWS:
            _windows.popitem(last=False)
    return window


def clear_windows() -> None:
    """Drop every cached window and its graphs (frees their memory)."""
    with _windows_lock:
        _windows.clear()


_engines: list[str] = ["windows"]
ENGINES = ("windows", "persistent")


@contextlib.contextmanager
def use_engine(engine: str):
    """Within the block, run the path with ``engine``: "windows" (the default: a GEMM and a
    kernel per step, windows replayed as CUDA graphs) or "persistent" (one launch walking all
    steps, ``momentumrnn.persistent_kernels``, for the hidden sizes it ``fits``; larger ones
    keep "windows")."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    _engines.append(engine)
    try:
        yield
    finally:
        _engines.pop()


#: (cell, hidden, dtype, device) whose persistent kernels a GPU refused (too little shared
#: memory): they take the windows engine from then on.
_refused: set = set()


def chosen_engine(cell: str, hidden: int, dtype: torch.dtype = torch.float32, device=None) -> str:
    """The engine a call of ``cell`` with ``hidden`` units takes (``use_engine``)."""
    if _engines[-1] == "persistent" and (cell, hidden, dtype, device) not in _refused:
        from .persistent_kernels import fits
        if fits(cell, hidden, dtype.itemsize):
            return "persistent"
    return "windows"


def _run(ctx, key, persistent, windows, *args):
    """``persistent(*args)`` for the persistent engine, else (or where the GPU refuses its
    kernel for want of shared memory, which is remembered) ``windows(*args)``."""
    if ctx.engine == "persistent":
        from triton.runtime.errors import OutOfResources
        try:
            return persistent(*args)
        except OutOfResources:
            _refused.add(key)
            ctx.engine = "windows"
    return windows(*args)


def cached_bytes() -> int:
    """Bytes held by the cached windows' buffers (memory this path keeps between calls)."""
    with _windows_lock:
        tensors = {id(t): t for w in _windows.values() for t in vars(w).values() if isinstance(t, Tensor)}
    return sum(t.untyped_storage().nbytes() for t in tensors.values() if t._base is None)


def _chunks(time: int, steps: int):
    return [(start, min(start + steps, time)) for start in range(0, time, steps)]


class _TritonLoop(torch.autograd.Function):
    """The recurrence ``cell`` over ``terms`` (T, B, G): returns the outputs (T, B, H), h_T,
    c_T (LSTM, else None) and v_T (Nesterov, else None). The engine (``use_engine``) is
    chosen per call; the backward takes the forward's."""

    @staticmethod
    @unmaterialized
    def forward(ctx, terms, h0, c0, weight_hh, bias, coefficient, v0, mask, cell):
        time, batch, _ = terms.shape
        hidden = h0.size(-1)
        lstm = cell == "lstm"
        h_all = terms.new_empty(time + 1, batch, hidden)
        h_all[0] = h0
        cells = acts = pre = None
        if lstm:
            cells = terms.new_empty(time + 1, batch, hidden)
            cells[0] = c0
            acts = terms.new_empty(time, batch, 4 * hidden)
        if cell == "modrelu":
            pre = terms.new_empty(time, batch, hidden)
        keep = None if mask is None else mask.to(torch.uint8).contiguous()
        saved = (h_all, cells, acts, pre, weight_hh, bias, coefficient, keep)
        ctx.key = (cell, hidden, terms.dtype, terms.device)
        ctx.engine = chosen_engine(*ctx.key)
        with torch.cuda.device_of(terms):      # Triton launches and CUDA graphs use the current device
            v_n = _run(ctx, ctx.key, _forward_persistent, _forward_windows, cell, terms, v0, *saved)
        ctx.save_for_backward(*saved)
        c_n = cells[time].clone() if lstm else None
        return h_all[1:], h_all[time].clone(), c_n, v_n

    @staticmethod
    @first_order
    def backward(ctx, grad_out, grad_h, grad_c, grad_v):
        h_all, cells, acts, pre, weight_hh, bias, coefficient, keep = saved = ctx.saved_tensors
        cell = ctx.key[0]
        time, batch, hidden = grad_out.shape
        gates = (4 if cell == "lstm" else 1) * hidden
        dz = h_all.new_empty(time, batch, gates)
        with torch.cuda.device_of(dz):
            d_h0, d_c0, d_v0 = _run(ctx, ctx.key, _backward_persistent, _backward_windows, cell, grad_out, grad_h,
                                    grad_c, grad_v, dz, *saved)
        needs = ctx.needs_input_grad
        flat = dz.view(time * batch, gates)
        d_weight = flat.t().mm(h_all[:time].reshape(time * batch, hidden)) if needs[3] else None
        d_bias = None
        if cell == "modrelu" and needs[4]:
            d_bias = (dz * torch.sign(pre)).sum((0, 1))
        return dz, d_h0, d_c0, d_weight, d_bias, None, d_v0, None, None


def _forward_windows(cell, terms, v0, h_all, cells, acts, pre, weight_hh, bias, coefficient, keep):
    """The forward window by window (replayed as CUDA graphs where ``cuda_graphs`` applies);
    fills ``h_all``, ``cells``, ``acts``, ``pre``; returns v_T (Nesterov, else None)."""
    time = terms.size(0)
    lstm, nesterov = cell == "lstm", cell != "modrelu"
    window = _window(cell, h_all, coefficient, keep)
    with window.lock:
        window.take_weights(weight_hh, bias)
        if nesterov:
            window.velocity.copy_(v0)
        for start, stop in _chunks(time, window.steps):
            n = stop - start
            window.terms[:n].copy_(terms[start:stop])
            window.take_steps(coefficient, keep, start, stop)
            window.h[0].copy_(h_all[start])
            if lstm:
                window.c[0].copy_(cells[start])
            window.programs.run("forward", window.forward_program, n)
            h_all[start + 1:stop + 1].copy_(window.h[1:n + 1])
            if lstm:
                cells[start + 1:stop + 1].copy_(window.c[1:n + 1])
                acts[start:stop].copy_(window.acts[:n])
            if pre is not None:
                pre[start:stop].copy_(window.pre[:n])
        return window.velocity.clone() if nesterov else None


def _backward_windows(cell, grad_out, grad_h, grad_c, grad_v, dz, h_all, cells, acts, pre, weight_hh, bias,
                      coefficient, keep):
    """The backward window by window, last window first; fills ``dz``; returns the
    gradients reaching h_0, c_0 (LSTM) and v_0 (Nesterov)."""
    time = grad_out.size(0)
    lstm, nesterov = cell == "lstm", cell != "modrelu"
    window = _window(cell, h_all, coefficient, keep)
    with window.lock:
        window.take_weights(weight_hh, bias)
        torch.add(grad_out[time - 1], grad_h, out=window.dh)
        if lstm:
            _copy_or_zero(window.dc, grad_c)
        if nesterov:
            _copy_or_zero(window.passed, grad_v)
        for start, stop in reversed(_chunks(time, window.steps)):
            n = stop - start
            window.take_steps(coefficient, keep, start, stop)
            if start > 0:
                window.grad_before[:n].copy_(grad_out[start - 1:stop - 1])
            else:
                window.grad_before[0].zero_()
                window.grad_before[1:n].copy_(grad_out[:n - 1])
            if lstm:
                window.c[:n + 1].copy_(cells[start:stop + 1])
                window.acts[:n].copy_(acts[start:stop])
            elif cell == "modrelu":
                window.pre[:n].copy_(pre[start:stop])
            else:
                window.h[1:n + 1].copy_(h_all[start + 1:stop + 1])
            window.programs.run("backward", window.backward_program, n)
            dz[start:stop].copy_(window.dz[:n])
        return window.dh.clone(), window.dc.clone() if lstm else None, window.passed.clone() if nesterov else None


def _copy_or_zero(buffer: Tensor, value: Tensor | None) -> None:
    if value is None:
        buffer.zero_()
    else:
        buffer.copy_(value)


def _forward_persistent(cell, terms, v0, h_all, cells, acts, pre, weight_hh, bias, coefficient, keep):
    """The forward in one launch (``persistent_kernels``); as ``_forward_windows``."""
    from .persistent_kernels import persistent_forward
    velocity = None if cell == "modrelu" else v0.clone()
    persistent_forward(cell, terms, weight_hh.contiguous(), velocity, coefficient, keep, h_all, cells, acts, pre,
                       bias)
    return velocity


def _backward_persistent(cell, grad_out, grad_h, grad_c, grad_v, dz, h_all, cells, acts, pre, weight_hh, bias,
                         coefficient, keep):
    """The backward in one launch (``persistent_kernels``); as ``_backward_windows``."""
    from .persistent_kernels import persistent_backward
    batch, hidden = grad_out.shape[1:]
    d_h = grad_h.clone()
    d_c = None if cell != "lstm" else (grad_c.clone() if grad_c is not None else grad_out.new_zeros(batch, hidden))
    d_v = None
    if cell != "modrelu":
        d_v = grad_v.clone() if grad_v is not None else grad_out.new_zeros(dz.shape[1:])
    persistent_backward(cell, grad_out.contiguous(), d_h, d_c, d_v, dz, weight_hh.contiguous(), coefficient, keep,
                        h_all, cells, acts, pre, bias)
    return d_h, d_c, d_v


def nesterov_lstm(terms: Tensor, h0: Tensor, c0: Tensor, weight_hh: Tensor, coefficient: Tensor, v0: Tensor,
                  mask: Tensor | None = None):
    """Nesterov-coupled LSTM over ``terms`` (T, B, 4H) ``= b_hh - s u_t``, with the
    extrapolation ``coefficient`` (T, 1 or B) and velocity ``v0`` (B, 4H). Returns
    (out, h_n, c_n, v_n)."""
    return _TritonLoop.apply(terms.contiguous(), h0.contiguous(), c0.contiguous(), weight_hh, None,
                             coefficient.contiguous(), v0.contiguous(), mask, "lstm")


def nesterov_rnn(terms: Tensor, h0: Tensor, weight_hh: Tensor, coefficient: Tensor, v0: Tensor,
                 nonlinearity: str, mask: Tensor | None = None):
    """Nesterov-coupled tanh or relu RNN over ``terms`` (T, B, H), as ``nesterov_lstm``.
    Returns (out, h_n, v_n)."""
    out, h_n, _, v_n = _TritonLoop.apply(terms.contiguous(), h0.contiguous(), None, weight_hh, None,
                                         coefficient.contiguous(), v0.contiguous(), mask, nonlinearity)
    return out, h_n, v_n


def modrelu_rnn(drives: Tensor, h0: Tensor, weight_hh: Tensor, bias: Tensor, mask: Tensor | None = None):
    """``h_t = modReLU(U h_{t-1} + d_t; b)`` over the drives (T, B, H). Returns (out, h_n)."""
    out, h_n, _, _ = _TritonLoop.apply(drives.contiguous(), h0.contiguous(), None, weight_hh, bias, None, None,
                                       mask, "modrelu")
    return out, h_n
