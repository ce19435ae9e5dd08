"""Regression against saved outputs: a tiny layer per variant, with deterministic weights
and inputs (no random generator involved), whose outputs in float64 are stored in
``tests/data/regression.json``. Any change that alters the numerics of any path fails here.

Regenerate (only when a change of numerics is intended, from the reference path)::

    PYTHONPATH=src python tests/test_regression.py --regenerate
"""

import json
import math
import pathlib
import sys

import pytest
import torch

import momentumrnn as mrnn

DATA = pathlib.Path(__file__).parent / "data" / "regression.json"
#: The settings the saved outputs were made with: a frozen copy of conftest.ACTIVE on purpose,
#: so that changing the other tests' settings cannot silently change what is compared here.
HYPERPARAMETERS = {
    "momentum": {"momentum": 0.7, "step_size": 0.4},
    "adam": {"momentum": 0.5, "step_size": 0.3, "beta": 0.6},
    "rmsprop": {"step_size": 0.7, "beta": 0.4},
    "nesterov": {"step_size": 0.8, "restart": 3},
    "restart": {"step_size": 0.6, "restart": 3},
}
KEYS = sorted(mrnn.LAYERS)


def case(key, impl):
    """The layer and its outputs (a flat list of tensors) for one variant and path."""
    layer = mrnn.LAYERS[key](2, 3, 2, bidirectional=True, dtype=torch.float64, impl=impl, **HYPERPARAMETERS[key[1]])
    with torch.no_grad():
        for index, (name, p) in enumerate(layer.named_parameters()):
            phase = torch.arange(p.numel(), dtype=torch.float64) * 0.37 + index
            p.copy_((0.5 * torch.sin(phase)).view_as(p))
    t = torch.arange(6 * 2 * 2, dtype=torch.float64)
    x = torch.cos(0.3 * t + 0.1 * t * t / 24).view(6, 2, 2)
    out, hidden, rs = layer(x, return_rule_state=True)
    hidden = list(hidden) if isinstance(hidden, tuple) else [hidden]
    return [out] + hidden + [rs.velocity] + ([rs.second_moment] if rs.second_moment is not None else [])


def name(key):
    return mrnn.LAYERS[key].__name__


@pytest.mark.parametrize("key", KEYS, ids=name)
@pytest.mark.parametrize("impl", ["reference", "loop", "fused", "auto"])
def test_outputs_match_the_saved_ones(key, impl):
    if impl == "fused" and not mrnn.LAYERS[key].rule_type.commutes_with_input_weights:
        pytest.skip("no fused path for this rule")
    saved = json.loads(DATA.read_text())[name(key)]
    got = case(key, impl)
    assert len(got) == len(saved)
    for tensor, values in zip(got, saved):
        torch.testing.assert_close(tensor, torch.tensor(values, dtype=torch.float64), atol=1e-12, rtol=1e-11)


def regenerate():
    with torch.no_grad():
        data = {name(key): [t.tolist() for t in case(key, "reference")] for key in KEYS}
    DATA.parent.mkdir(exist_ok=True)
    DATA.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    count = sum(math.prod(torch.tensor(v).shape) for layer in data.values() for v in layer)
    print(f"wrote {DATA} ({count} numbers)")


if __name__ == "__main__" and "--regenerate" in sys.argv:
    regenerate()
