"""CUDA graphs of the per-step programs of ``momentumrnn.triton_loop``.

A program walks the steps of one window (a GEMM and a Triton kernel per step, on tensors
whose addresses never change), so it can be captured once as a CUDA graph and replayed for
every later window of that shape: the GPU then runs the steps without Python launching each
kernel. ``Programs.run`` does this per window and program:

* the first full window runs the program eagerly (compiling the kernels and warming
  cuBLAS), then captures it; later full windows replay the graph;
* a shorter window (the last one of a sequence whose length is not a multiple of the
  window), a non-CUDA tensor, an outer capture already under way (the user's own graph
  records our launches) and ``use_cuda_graphs(False)`` run the program eagerly;
* a capture that fails is not tried again for that window: the program runs eagerly, with
  one warning.

``capture`` is the only function that touches ``torch.cuda.CUDAGraph``; the tests replace it
to check the bookkeeping on the CPU.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable

import torch

__all__ = ["Programs", "capture", "use_cuda_graphs", "graphs_apply"]

_enabled: list[bool] = [True]


@contextlib.contextmanager
def use_cuda_graphs(enabled: bool):
    """Within the block, capture and replay the per-step programs as CUDA graphs (the
    default) or launch every step from Python (``False``; what the benchmarks compare)."""
    _enabled.append(bool(enabled))
    try:
        yield
    finally:
        _enabled.pop()


def graphs_apply(device: torch.device) -> bool:
    """Whether programs on ``device`` are captured: CUDA, graphs enabled, and no capture of
    the current stream under way (an outer capture records the eager launches instead)."""
    return _enabled[-1] and device.type == "cuda" and not torch.cuda.is_current_stream_capturing()


def capture(run: Callable[[], None]):
    """A CUDA graph of ``run()``: an object whose ``replay()`` repeats its kernels."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        run()
    return graph


_FAILED = object()


class Programs:
    """The captured programs of one window, by name ("forward", "backward")."""

    def __init__(self, device: torch.device, steps: int):
        self.device, self.steps = device, steps
        self.graphs: dict[str, object] = {}

    def run(self, name: str, program: Callable[[int], None], steps: int) -> None:
        """``program(steps)``: replayed from its graph when ``steps`` fills the window."""
        if steps != self.steps or not graphs_apply(self.device):
            program(steps)
            return
        graph = self.graphs.get(name)
        if graph is _FAILED:
            program(steps)
        elif graph is not None:
            graph.replay()
        else:
            program(steps)                    # this window's result; compiles and warms up
            try:
                self.graphs[name] = capture(lambda: program(steps))
            except Exception as error:        # noqa: BLE001 - any capture failure falls back
                self.graphs[name] = _FAILED
                warnings.warn(f"momentumrnn: the {name} steps could not be captured as a CUDA graph "
                              f"({type(error).__name__}: {error}); they run launch by launch", RuntimeWarning,
                              stacklevel=3)
