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


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    tiny tensors gain nothing from threads, and on a busy machine spare threads spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


#: The modules of the slow tier: end-to-end runs (training, sweeps, the docs' examples,
#: distributed), PyTorch's own suites, compilers (Triton, torch.compile, mypy) and exhaustive
#: grids. ``pytest -m "not slow"`` runs the rest, the core contract: every layer on every path
#: against the references, the plain cells, packed input and rule state, validation, the
#: presets and the command line's basics (docs/development.md). Single slow tests of the core
#: modules carry ``@pytest.mark.slow`` themselves.
SLOW_MODULES = {
    "test_authors_training", "test_autocast", "test_benchmarks", "test_compile", "test_cpu_kernels", "test_cuda",
    "test_distributed", "test_docs", "test_evidence", "test_gradcheck", "test_gradient_command", "test_gradients",
    "test_orthogonal", "test_ptb", "test_run_safety", "test_speech", "test_sweep", "test_toolkit_data",
    "test_toolkit_tasks", "test_toolkit_train", "test_torch_contract", "test_torch_module_inputs",
    "test_torch_nn_checks", "test_torch_suite_plugin", "test_triton_kernels", "test_triton_loop", "test_typing",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module is not None and item.module.__name__.rpartition(".")[2] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
