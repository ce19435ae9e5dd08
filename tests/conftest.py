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
