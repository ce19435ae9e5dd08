"""CUDA graphs of the per-step programs of ``momentumrnn.triton_loop``.

A program walks the first n steps of one window (a GEMM and a Triton kernel per step, on
tensors whose addresses never change), so it can be captured once as a CUDA graph and
replayed whenever n steps of that window run again: the GPU then runs the steps without
Python launching each kernel. ``Programs.run`` does this per window, program and n (full
windows, and the shorter last window of a sequence whose length is not a multiple of it):

* the first run of n steps runs the program eagerly (compiling the kernels and warming
  cuBLAS), then captures it; later runs of n steps replay the graph. A window keeps
  ``MAX_GRAPHS`` graphs (least recently used dropped first); a graph holds no memory of its
  own, as the programs allocate nothing;
* a non-CUDA tensor, an outer capture already under way (the user's own graph records our
  launches) and ``use_cuda_graphs(False)`` run the program eagerly;
* a capture that fails is not tried again for that program of that window: it runs
  eagerly from then on, with one warning.

``capture`` is the only function that touches ``torch.cuda.CUDAGraph``; the tests replace it
to check the bookkeeping on the CPU.
"""

from __future__ import annotations

import collections
import contextlib
import warnings
from collections.abc import Callable

import torch

__all__ = ["Programs", "capture", "use_cuda_graphs", "graphs_apply", "MAX_GRAPHS"]

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


#: Graphs a window keeps (forward and backward, by step count).
MAX_GRAPHS = 16


class Programs:
    """The captured programs of one window, by (name, steps); ``failed``: the names whose
    capture failed."""

    def __init__(self, device: torch.device):
        self.device = device
        self.graphs: collections.OrderedDict = collections.OrderedDict()
        self.failed: set[str] = set()

    def run(self, name: str, program: Callable[[int], None], steps: int) -> None:
        """``program(steps)``, replayed from its graph where one was captured."""
        if name in self.failed or not graphs_apply(self.device):
            program(steps)
            return
        key = (name, steps)
        graph = self.graphs.pop(key, None)
        if graph is not None:
            self.graphs[key] = graph          # most recently used last
            graph.replay()
            return
        program(steps)                        # this window's result; compiles and warms up
        try:
            self.graphs[key] = capture(lambda: program(steps))
        except Exception as error:            # noqa: BLE001 - any capture failure falls back
            self.failed.add(name)
            warnings.warn(f"momentumrnn: the {name} steps could not be captured as a CUDA graph "
                          f"({type(error).__name__}: {error}); they run launch by launch", RuntimeWarning,
                          stacklevel=3)
            return
        while len(self.graphs) > MAX_GRAPHS:
            self.graphs.popitem(last=False)
