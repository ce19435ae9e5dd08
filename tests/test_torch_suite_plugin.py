"""``tools/torch_rnn_suite.py`` puts the momentum classes in the place of torch's RNN classes
for PyTorch's own tests, and only when it is loaded."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch.testing._internal.common_modules", reason="torch's module tests need expecttest")

ROOT = Path(__file__).resolve().parents[1]
PROBE = '''
import pickle

import torch
from torch import nn
from torch.testing._internal.common_modules import module_db
import momentumrnn


def test_substituted():
    for name in ("RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"):
        module = getattr(nn, name)(3, 4)
        assert isinstance(module, getattr(momentumrnn, "Momentum" + name)), name
        assert module.hyperparameters() == {"momentum": 0.0, "step_size": 1.0}
    infos = {info.name: info.module_cls for info in module_db}
    assert infos["nn.LSTM"] is nn.LSTM and infos["nn.GRUCell"] is nn.GRUCell
    assert nn.LSTM(3, 4)(torch.randn(5, 2, 3))[0].shape == (5, 2, 4)
    assert type(pickle.loads(pickle.dumps(nn.GRUCell(3, 4)))) is nn.GRUCell      # torch's tests pickle them
'''


def _run(tmp_path, *plugin, test="test_probe.py"):
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tools"), str(ROOT / "src"),
                                                        os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin,
                           str(tmp_path / test)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)


def test_plugin_substitutes_the_momentum_classes(tmp_path):
    result = _run(tmp_path, "-p", "torch_rnn_suite")
    assert result.returncode == 0, result.stdout + result.stderr


def test_plugin_passes_the_impl(tmp_path):
    (tmp_path / "test_impl.py").write_text("from torch import nn\n\ndef test_impl():\n"
                                           "    assert nn.LSTM(3, 4).impl == 'reference'\n")
    result = _run(tmp_path, "-p", "torch_rnn_suite", "--momentumrnn-impl", "reference", test="test_impl.py")
    assert result.returncode == 0, result.stdout + result.stderr


def test_without_the_plugin_torch_classes_stay(tmp_path):
    result = _run(tmp_path)
    assert result.returncode == 1 and "AssertionError" in result.stdout, result.stdout + result.stderr
