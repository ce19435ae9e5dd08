"""The experiment toolkit behind the ``momentumrnn`` command: tasks, models, paper presets,
training with checkpoints and resume, and reports.

Importing ``momentumrnn`` does not import this package; importing this package imports
neither matplotlib nor tqdm (they load when a report or a progress bar needs them).
"""

from .config import resolve_config
from .models import MODELS, build_model
from .tasks import TASKS
from .train import evaluate, train

__all__ = ["TASKS", "MODELS", "build_model", "resolve_config", "train", "evaluate"]

# The speech, timit and ptb tasks register themselves in TASKS.
from . import speech  # noqa: E402,F401
from . import ptb  # noqa: E402,F401
