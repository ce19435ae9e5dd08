"""Which computation path a layer takes, and which kernels run the rules' scans: decided here.

Paths (``impl``), all equal to the per-step reference to rounding, values and gradients:

* ``"reference"``: the input drive ``u_t = W x_t + b_ih`` of all steps in one GEMM, then the
  rule and the cell step by step, recorded by autograd (``RecurrentLayer._run_reference``).
* ``"fused"`` (momentum, restart: rules that commute with the input weights): torch's fused
  RNN/LSTM/GRU kernel on the filtered input ``[x~_t, beta_t]`` (``momentumrnn.fused``).
* ``"fused-drive"`` (every input-only rule): the rule's drive ``d_t`` of all steps, then
  torch's fused kernel with identity input weights and a zero input bias, so that the
  kernel's input term is ``I d_t = d_t`` (``fused.drive_kernel``).
* ``"loop"`` (every rule): the recurrence in a loop with a hand-written backward
  (``momentumrnn.loops``); the CPU's fast path of the Nesterov rule, which is coupled to h.
* ``"triton-loop"`` (the Nesterov RNN and LSTM, and the orthogonal layers' modReLU
  recurrence; CUDA): one GEMM and one Triton kernel a step, forward and backward, the steps
  replayed as CUDA graphs, or for small hidden sizes one persistent kernel per call
  (``momentumrnn.triton_loop``, its engines). Experimental (``EXPERIMENTAL_IMPLS``): chosen
  explicitly, with a warning; ``"auto"`` does not take it until it has been measured against
  the other paths on a GPU.

Under ``torch.func`` transforms (``jvp``, and any two at once, as in per-sample gradients),
``torch.jit.trace`` (and the ONNX exporter built on it) and ``torch.export``, every ``impl``
takes the reference path (``plain_ops_required``): the fast paths' hand-written backward
passes, in-place buffers and Triton kernels are opaque to those tools, which would fail or
record constants. Under one ``torch.func.grad`` or one ``vmap`` alone the layer runs below
the transform (``momentumrnn.transforms``), where its path is chosen here as always.

``plan`` makes the choice and returns it as a ``Plan`` (the path and the reason for it;
``layer.plan``), and ``plan_for_call`` the one a call runs (``layer.last_plan``).
``impl="auto"`` looks the path up in ``AUTO`` by device and rule (a rule or recurrence the
table does not name gets the fastest path its declared capabilities allow,
``allowed_paths``; a recurrence outside ``KERNEL_RECURRENCES`` the reference), as measured with
``benchmarks/layers.py``: on the CPU the loops beat the identity GEMMs of ``"fused-drive"``
(AdamLSTM at PTB small 1.58x ``nn.LSTM`` against 2.82x); on CUDA a Python loop launches
kernels at every step (the Nesterov loop: 44-50x cuDNN at pixel MNIST) while cuDNN runs the
whole recurrence (AdamLSTM 1.41x), so every input-only rule goes through cuDNN; momentum
keeps its filtered narrow input there (1.12x against 1.29x through identity weights).

Loop engines (``loop_engine``): on the CPU the loop path runs an LSTM's steps (plain drive,
Adam's and RMSProp's drive, Nesterov) a chunk at a time in the C++ step kernels of
``momentumrnn.cpu_kernels`` (built on first use), one GEMM and one fused pass per step, and
Adam's and RMSProp's states (``ops.adam_drive.AdamChunks``) one fused pass per step; with a mask
(packed sequences) in the loop, another dtype than float32/float64, the RNN and GRU
recurrences, or where the kernels cannot be built, one torch op per elementary step.

Scans (``scan_backend``): the rules' input-side recurrences over time (momentum's filter,
Adam's states) run as Triton kernels on CUDA when Triton can be imported
(``triton.py`` of ``momentumrnn.ops.linear_scan`` and ``ops.adam_drive``: one launch per call and
direction), else as torch ops (``ops.linear_scan.parallel``: parallel over blocks of time on
CUDA, chunked loops on the CPU; ``ops.adam_drive.chunked``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
import warnings

import torch

__all__ = ["IMPLS", "AUTO", "AUTO_WITH_PROJECTIONS", "ORTHOGONAL_IMPLS", "AUTO_ORTHOGONAL", "LOOP_ENGINES",
           "KERNEL_RECURRENCES", "EXPERIMENTAL_IMPLS", "Plan", "plan", "plan_for_call", "choose_path",
           "allowed_paths", "check_impl", "warn_if_experimental", "plain_ops", "plain_ops_required",
           "scan_backend", "scan_backend_override", "loop_engine", "loop_engine_override"]

#: Every value of a layer's ``impl``.
IMPLS = ("auto", "fused", "fused-drive", "loop", "triton-loop", "reference")

# --8<-- [start:AUTO-table]
#: The path ``impl="auto"`` takes, by device type and rule name. Devices other than CUDA
#: take the CPU row.
AUTO = {
    "cpu": {"momentum": "fused", "restart": "fused", "adam": "loop", "rmsprop": "loop", "nesterov": "loop"},
    "cuda": {"momentum": "fused", "restart": "fused", "adam": "fused-drive", "rmsprop": "fused-drive",
             "nesterov": "loop"},
}
# --8<-- [end:AUTO-table]


#: With LSTM projections (``proj_size > 0``) the loops do not apply: ``impl="auto"`` takes
#: torch's kernel (which has projections) where the rule allows, else the reference.
AUTO_WITH_PROJECTIONS = {"momentum": "fused", "restart": "fused", "adam": "fused-drive", "rmsprop": "fused-drive",
                         "nesterov": "reference"}

#: The paths of the orthogonal layers (modReLU recurrence), whatever their rule, and what
#: ``impl="auto"`` takes there on every device.
ORTHOGONAL_IMPLS = ("auto", "triton-loop", "reference")
AUTO_ORTHOGONAL = "reference"


#: Paths that have not run on a GPU yet, with what they lack: ``"auto"`` never takes them,
#: and choosing one explicitly warns once per call site (``warn_if_experimental``).
EXPERIMENTAL_IMPLS = {
    "triton-loop": "its kernels have run under Triton's interpreter and compile for sm_90, but have not been "
                   "timed or checked on a GPU",
}


def warn_if_experimental(impl: str, layer_name: str, stacklevel: int = 3) -> None:
    """A ``UserWarning`` when ``impl`` is one of ``EXPERIMENTAL_IMPLS``."""
    if impl in EXPERIMENTAL_IMPLS:
        warnings.warn(f"{layer_name}(impl={impl!r}) is experimental: {EXPERIMENTAL_IMPLS[impl]}; impl='auto' takes "
                      f"the measured paths", UserWarning, stacklevel=stacklevel)


#: The recurrences (by name) that torch's fused kernels and the library's loops implement;
#: a recurrence written outside the library runs on the reference path.
KERNEL_RECURRENCES = ("rnn", "lstm", "gru")


def allowed_paths(rule_type, projections: bool = False, recurrence: str = "lstm") -> list[str]:
    """The paths a rule (by its declared capabilities) and a recurrence (by name) can take,
    fastest kinds first; ``"auto"`` is not among them."""
    if recurrence == "modrelu":
        return [p for p in ORTHOGONAL_IMPLS if p != "auto"]
    if recurrence not in KERNEL_RECURRENCES:
        return ["reference"]
    allowed = ["fused"] if rule_type.commutes_with_input_weights else []
    if not rule_type.couples_to_hidden:
        allowed.append("fused-drive")
    if not projections:
        allowed += ["loop"] + (["triton-loop"] if rule_type.couples_to_hidden else [])
    return allowed + ["reference"]


def check_impl(impl: str, rule_type, layer_name: str, projections: bool = False, recurrence: str = "") -> None:
    """Refuse an ``impl`` the layer's rule (and ``recurrence``, by name) cannot take, naming
    the ones it can."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if recurrence == "modrelu":
        if impl not in ORTHOGONAL_IMPLS:
            raise ValueError(f"{layer_name} takes impl in {ORTHOGONAL_IMPLS}, got {impl!r}")
        return
    if recurrence and recurrence not in KERNEL_RECURRENCES and impl not in ("auto", "reference"):
        raise ValueError(f"impl={impl!r} runs the recurrences {', '.join(KERNEL_RECURRENCES)} only; {layer_name}'s "
                         f"recurrence {recurrence!r} takes 'auto' or 'reference'")
    if projections and impl in ("loop", "triton-loop"):
        raise ValueError(f"impl={impl!r} has no LSTM projections; with proj_size > 0 {layer_name} takes 'auto', "
                         f"'reference'" + ("" if rule_type.couples_to_hidden else " or a fused path"))
    allowed = ["auto"] + allowed_paths(rule_type, False, recurrence or "lstm")
    if impl == "fused" and impl not in allowed:
        raise ValueError(f"impl='fused' needs a rule that commutes with the input weights (momentum, restart); "
                         f"{layer_name} takes {', '.join(map(repr, allowed))}, got {impl!r}")
    if impl == "fused-drive" and impl not in allowed:
        raise ValueError(f"impl='fused-drive' needs an input-only rule (not coupled to the hidden state); "
                         f"{layer_name} takes {', '.join(map(repr, allowed))}, got {impl!r}")
    if impl == "triton-loop" and impl not in allowed:
        raise ValueError(f"impl='triton-loop' runs the rule coupled to h (Nesterov) and the orthogonal layers; "
                         f"{layer_name} takes {', '.join(map(repr, allowed))}, got {impl!r}")


#: ``torch.compiler.is_exporting`` (torch >= 2.7); before it, export is not detected here.
is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)


_plain = threading.local()


@contextlib.contextmanager
def plain_ops():
    """Within the block (in this thread), every layer takes the reference path, as under the
    tools below: the recomputation of a call for its second derivatives runs in one."""
    depth = getattr(_plain, "depth", 0)
    _plain.depth = depth + 1
    try:
        yield
    finally:
        _plain.depth = depth


def plain_ops_required() -> bool:
    """Whether the call must run in plain torch ops: inside ``plain_ops()``, or under a tool
    that must see them: a ``torch.func`` transform, ``torch.jit.trace`` (the ONNX exporter's
    ``dynamo=False`` mode) or ``torch.export`` (the ONNX exporter's default mode)."""
    return bool(_plain_ops_tool())


def _plain_ops_tool() -> str:
    """What requires plain torch ops now (see ``plain_ops_required``), in words; "" if nothing."""
    if getattr(_plain, "depth", 0) > 0:
        return "paths.plain_ops()"
    if torch.jit.is_tracing():
        return "torch.jit.trace"
    if is_exporting():
        return "torch.export"
    if torch._C._functorch.peek_interpreter_stack() is not None:
        return "a torch.func transform"
    return ""


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a layer's call runs: the computation ``path`` and why it was chosen."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def plan(impl: str, rule_type, device: torch.device | str, projections: bool = False,
         recurrence: str = "") -> Plan:
    """The path a layer with this ``impl``, rule and ``recurrence`` (by name) takes on
    ``device`` (with LSTM ``projections`` or not), and why."""
    tool = _plain_ops_tool()
    if tool:
        return Plan("reference", f"{tool} needs plain torch ops")
    if impl != "auto":
        return Plan(impl, f"impl={impl!r} chosen")
    if recurrence == "modrelu":
        return Plan(AUTO_ORTHOGONAL, "impl='auto': the orthogonal layers' measured path on every device")
    if recurrence and recurrence not in KERNEL_RECURRENCES:
        return Plan("reference", f"impl='auto': the recurrence {recurrence!r} has no kernel")
    allowed = allowed_paths(rule_type, projections, recurrence or "lstm")
    kind = "cuda" if torch.device(device).type == "cuda" else "cpu"
    measured = (AUTO_WITH_PROJECTIONS if projections else AUTO[kind]).get(rule_type.name)
    where = "with LSTM projections" if projections else f"on {kind.upper()}"
    if measured in allowed:
        return Plan(measured, f"impl='auto': the measured path of rule {rule_type.name!r} {where}")
    return Plan(_fastest_declared(allowed, kind),
                f"impl='auto': rule {rule_type.name!r} is not in the measured table; the fastest path its declared "
                f"capabilities allow {where}")


def _fastest_declared(allowed: list[str], kind: str) -> str:
    """``impl="auto"`` for a rule or recurrence the tables do not name (one written outside
    the library): the path its declared capabilities allow that the tables prefer for such
    rules: torch's kernel for a rule that commutes with the input weights; for another
    input-only rule the loop on the CPU and torch's kernel on CUDA; the loop for a rule
    coupled to h; the reference where nothing else applies."""
    if "fused" in allowed:
        return "fused"
    preference = ("fused-drive", "loop") if kind == "cuda" else ("loop", "fused-drive")
    return next((path for path in preference if path in allowed), "reference")


def choose_path(impl: str, rule_type, device: torch.device | str, projections: bool = False,
                recurrence: str = "") -> str:
    """``plan(...).path``."""
    return plan(impl, rule_type, device, projections, recurrence).path


def plan_for_call(planned: Plan, carried_velocity: torch.Tensor | None, projections: bool = False) -> Plan:
    """The plan a call runs, given the rule state it carries in. On ``"fused"`` a carried
    velocity enters as weight columns that the whole batch multiplies (by zero for the other
    sequences), so a non-finite one would reach every sequence (0 * inf = nan): such a call
    takes the loop (with LSTM projections the reference), which keeps sequences apart."""
    if planned.path != "fused" or carried_velocity is None or bool(torch.isfinite(carried_velocity).all()):
        return planned
    return Plan("reference" if projections else "loop",
                f"{planned.path} planned ({planned.reason}), but the carried velocity has non-finite entries, "
                f"which torch's kernel would spread to every sequence")


_overrides = threading.local()       # per thread: the stacks of scan_backend_override, loop_engine_override


def _stack(name: str) -> list[str]:
    if not hasattr(_overrides, name):
        setattr(_overrides, name, [])
    return getattr(_overrides, name)


@contextlib.contextmanager
def _overriding(name: str, value: str):
    stack = _stack(name)
    stack.append(value)
    try:
        yield
    finally:
        stack.pop()


def scan_backend_override(backend: str):
    """Within the block (in this thread), run the scans with ``backend`` ("triton" or
    "torch") on every device (tests run the Triton kernels on the CPU under Triton's
    interpreter this way)."""
    if backend not in ("triton", "torch"):
        raise ValueError(f"backend must be 'triton' or 'torch', got {backend!r}")
    return _overriding("scan", backend)


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def scan_backend(tensor: torch.Tensor) -> str:
    """"triton" for CUDA tensors when Triton can be imported, else "torch"."""
    override = _stack("scan")
    if override:
        return override[-1]
    return "triton" if tensor.is_cuda and triton_available() else "torch"


#: How the loop path runs an LSTM's steps and Adam's states: the C++ step kernels, or torch ops.
LOOP_ENGINES = ("cpp", "torch")


def loop_engine_override(engine: str):
    """Within the block (in this thread), the loops run an LSTM's steps and Adam's states
    with ``engine``: "torch" (torch ops) or "cpp" (the C++ step kernels where they apply, as by
    default, but an error where they cannot be built)."""
    if engine not in LOOP_ENGINES:
        raise ValueError(f"engine must be one of {LOOP_ENGINES}, got {engine!r}")
    return _overriding("engine", engine)


def loop_engine(tensor: torch.Tensor, supported: bool = True) -> str:
    """"cpp" where the C++ step kernels take the caller's case (``supported``: an LSTM loop
    without a mask, or Adam's chunked states), ``tensor`` is a float32/float64 CPU tensor and
    the kernels build; else "torch"."""
    override = _stack("engine")
    engine = override[-1] if override else "cpp"
    if engine == "torch" or not supported or tensor.device.type != "cpu" \
            or tensor.dtype not in (torch.float32, torch.float64):
        return "torch"
    from . import cpu_kernels
    if cpu_kernels.available():
        return "cpp"
    if override:
        raise RuntimeError("loop_engine_override('cpp'): the CPU step kernels could not be built (see the warning)")
    return "torch"
