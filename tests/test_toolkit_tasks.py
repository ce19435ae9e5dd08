"""Tasks: splits, batches, targets, losses and metrics; the configuration and model registries."""

import pytest
import torch

import momentumrnn as mrnn
from momentumrnn.experiments.config import ConfigError, resolve_config
from momentumrnn.experiments.models import MODELS, build_model, count_parameters
from momentumrnn.experiments.tasks import TASKS
from toolkit_helpers import HAVE_MNIST, SHARED_DATA


@pytest.fixture(scope="module")
def smnist_config():
    return resolve_config("smnist", "lstm", {"data_dir": str(SHARED_DATA)})


@pytest.mark.skipif(not HAVE_MNIST, reason="needs ../shared/data/mnist")
def test_mnist_holds_out_a_seeded_validation_set(smnist_config):
    task = TASKS["smnist"](smnist_config, SHARED_DATA)
    assert (task.size("train"), task.size("val"), task.size("test")) == (55000, 5000, 10000)
    x, y = task.batch("val", torch.arange(4))
    assert x.shape == (4, 784, 1) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    train_rows = {bytes(r) for r in task.splits["train"][0][:2000].numpy()}
    assert not any(bytes(r) in train_rows for r in task.splits["val"][0][:200].numpy())
    other = TASKS["smnist"]({**smnist_config, "data_seed": 1}, SHARED_DATA)
    assert not torch.equal(other.splits["val"][1], task.splits["val"][1])
    again = TASKS["smnist"](smnist_config, SHARED_DATA)
    assert torch.equal(again.splits["val"][1], task.splits["val"][1])
    subset = TASKS["smnist"]({**smnist_config, "train_subset": 100, "val_subset": 10}, SHARED_DATA)
    assert subset.size("train") == 100 and subset.size("val") == 10
    assert torch.equal(subset.splits["train"][1], task.splits["train"][1][:100])


@pytest.mark.skipif(not HAVE_MNIST, reason="needs ../shared/data/mnist")
def test_psmnist_permutes_pixels_with_a_seeded_permutation():
    config = resolve_config("psmnist", "lstm", {"data_dir": str(SHARED_DATA)})
    plain = TASKS["smnist"](config, SHARED_DATA)
    task = TASKS["psmnist"](config, SHARED_DATA)
    permutation = torch.tensor(task.artifacts()["permutation.json"])
    x, _ = plain.batch("test", torch.arange(3))
    xp, _ = task.batch("test", torch.arange(3))
    assert torch.equal(xp, x[:, permutation])
    assert torch.equal(TASKS["psmnist"](config, SHARED_DATA).permutation, task.permutation)
    assert not torch.equal(TASKS["psmnist"]({**config, "permutation_seed": 1}, SHARED_DATA).permutation,
                           task.permutation)
    saved = TASKS["psmnist"]({**config, "permutation_seed": 1}, SHARED_DATA, task.artifacts())
    assert torch.equal(saved.permutation, task.permutation)          # a run's saved permutation wins


def test_copy_task():
    config = resolve_config("copy", "lstm", {"delay": 7, "train_size": 5, "val_size": 3, "test_size": 3})
    task = TASKS["copy"](config)
    x, y = task.batch("train", torch.arange(5))
    assert x.shape == (5, 27, 10) and y.shape == (5, 27)
    tokens = x.argmax(-1)
    symbols = tokens[:, :10]
    assert ((1 <= symbols) & (symbols <= 8)).all()
    assert (tokens[:, 16] == 9).all() and (tokens[:, 10:16] == 0).all() and (tokens[:, 17:] == 0).all()
    assert torch.equal(y[:, -10:], symbols) and (y[:, :-10] == 0).all()
    perfect = torch.nn.functional.one_hot(y, 9).float() * 100
    stats = task.statistics(perfect, y)
    assert stats["accuracy"][0] == 50 and stats["accuracy"][1] == 50 and float(task.loss(perfect, y)) < 1e-6


def test_adding_task():
    config = resolve_config("adding", "lstm", {"length": 20, "train_size": 50, "val_size": 3, "test_size": 3})
    task = TASKS["adding"](config)
    x, y = task.batch("train", torch.arange(50))
    assert x.shape == (50, 20, 2)
    markers = x[..., 1]
    assert (markers.sum(1) == 2).all() and (markers[:, :10].sum(1) == 1).all()
    assert torch.allclose((x[..., 0] * markers).sum(1), y)
    assert float(task.loss(y.unsqueeze(-1), y)) == 0
    assert torch.equal(TASKS["adding"](config).splits["test"][0], task.splits["test"][0])


def test_explicit_flags_win_over_the_preset():
    adam = resolve_config("psmnist", "adam-lstm", {"beta": 0.5, "lr": 3e-4}, preset="paper")
    assert (adam["momentum"], adam["step_size"], adam["beta"], adam["lr"]) == (0.6, 1.0, 0.5, 3e-4)
    plain = resolve_config("smnist", "momentum-lstm")
    assert plain["init"] == "torch" and plain["preset"] is None and plain["momentum"] == 0.6


@pytest.mark.parametrize("model, overrides, message", [
    ("lstm", {"momentum": 0.5}, "--momentum does not apply to model 'lstm'"),
    ("rmsprop-lstm", {"momentum": 0.5}, "takes --step-size, --beta"),
    ("lstm", {"delay": 5}, "--delay does not apply to task 'smnist' (it is an option of copy)"),
    ("momentum-lstm", {"momentum": 1.5}, "momentum must be in [0, 1)"),
    ("lstm", {"hidden_size": 0}, "hidden_size must be a positive integer"),
    ("lstm", {"optimizer": "lbfgs"}, "optimizer must be one of"),
    ("dtriv", {"init": "paper"}, "--init does not apply to the orthogonal model 'dtriv'"),
    ("momentum-dtriv", {"trivialization": -1}, "trivialization must be an integer K >= 1, or 0 for never"),
    ("dtriv", {"orthogonal_init": "xavier"}, "orthogonal_init must be one of"),
    ("lstm", {"lr_orth": 1e-3}, "--lr-orth applies to the orthogonal models"),
    ("transformer", {}, "unknown model 'transformer'"),
    ("lstm", {"impl": "loop"}, "--impl does not apply to model 'lstm'"),
    ("momentum-lstm", {"impl": "triton-loop"}, "impl='triton-loop' runs the rule coupled to h"),
    ("dtriv", {"impl": "loop"}, "OrthogonalRNN takes impl in ('auto', 'triton-loop', 'reference'), got 'loop'"),
    ("adam-lstm", {"impl": "cudnn"}, "impl must be one of"),
])
def test_configuration_errors(model, overrides, message):
    with pytest.raises(ConfigError) as error:
        resolve_config("smnist", model, overrides)
    assert message in str(error.value)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("per_step", [False, True])
def test_every_model_builds_and_runs(name, per_step):
    init = {} if name.endswith("dtriv") else {"init": "paper"}
    config = resolve_config("adding", name, {"hidden_size": 6, **init})
    model = build_model(config, 3, 5, per_step)
    out = model(torch.randn(2, 4, 3))
    assert out.shape == ((2, 4, 5) if per_step else (2, 5))


def test_the_path_is_a_setting_of_momentumrnn_models():
    """``--impl`` reaches the layer; it places a run (like the device), so a resumed run may change it."""
    from momentumrnn.experiments.config import RESUMABLE, identity

    config = resolve_config("smnist", "nesterov-lstm", {"impl": "reference"})
    assert build_model(config, 1, 10, False).rnn.path == "reference"
    assert build_model(resolve_config("smnist", "momentum-dtriv", {"impl": "triton-loop"}), 1, 10, False).rnn.impl \
        == "triton-loop"
    assert resolve_config("smnist", "adam-lstm")["impl"] == "auto" and "impl" not in resolve_config("smnist", "lstm")
    assert "impl" in RESUMABLE and "impl" not in identity(config)


def test_torch_and_momentum_models_share_shapes_and_paper_init():
    lstm = build_model(resolve_config("smnist", "lstm", preset="paper"), 1, 10, False)
    momentum = build_model(resolve_config("smnist", "momentum-lstm", preset="paper"), 1, 10, False)
    assert isinstance(lstm.rnn, torch.nn.LSTM) and isinstance(momentum.rnn, mrnn.MomentumLSTM)
    assert count_parameters(lstm) == count_parameters(momentum) == 4 * 256 * (1 + 256 + 2) + 257 * 10
    assert torch.equal(lstm.rnn.weight_hh_l0, momentum.rnn.weight_hh_l0)         # identity in the first rows
    assert lstm.rnn.bias_ih_l0[256:512].eq(1).all() and lstm.rnn.bias_hh_l0[:256].eq(0).all()
