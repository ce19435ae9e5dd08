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
