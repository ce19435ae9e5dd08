import os
import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import momentumrnn as mrnn  # noqa: E402

#: Non-neutral hyperparameters for every rule, chosen so that each term matters.
ACTIVE = {
    "momentum": {"momentum": 0.7, "step_size": 0.4},
    "adam": {"momentum": 0.5, "step_size": 0.3, "beta": 0.6},
    "rmsprop": {"step_size": 0.7, "beta": 0.4},
    "nesterov": {"step_size": 0.8, "restart": 3},
    "restart": {"step_size": 0.6, "restart": 3},
}

LAYER_KEYS = sorted(mrnn.LAYERS)
CELL_KEYS = sorted(mrnn.CELLS)


def layer_id(key):
    return mrnn.LAYERS[key].__name__


def cpu_impls(cls):
    """The values of ``impl`` that layer class ``cls`` takes on the CPU (all but "triton-loop")."""
    impls = []
    for impl in mrnn.paths.IMPLS:
        try:
            mrnn.paths.check_impl(impl, cls.rule_type, cls.__name__, recurrence=cls.recurrence_type.name)
        except ValueError:
            continue
        if impl != "triton-loop":
            impls.append(impl)
    return impls


#: Every layer with every ``impl`` it takes on the CPU, as ``(key, impl)``.
LAYER_IMPLS = [(key, impl) for key in LAYER_KEYS for impl in cpu_impls(mrnn.LAYERS[key])]


def layer_impl_id(case):
    key, impl = case
    return f"{layer_id(key)}-{impl}"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", choices=("cpu", "cuda"),
                     help="cuda: also run tests/test_cuda.py (every path on the GPU against the CPU reference)")


def pytest_configure(config):
    if config.getoption("--device") == "cuda":
        if not torch.cuda.is_available():
            raise pytest.UsageError("--device cuda: torch sees no CUDA device")
    else:
        # Triton's interpreter (tests/test_triton_kernels.py) must be chosen before triton is imported.
        os.environ.setdefault("TRITON_INTERPRET", "1")
