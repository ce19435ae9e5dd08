"""The benchmark tasks: data splits kept in memory as tensors, a loss and metrics.

Every task gives ``train``/``val``/``test`` splits, the input and output sizes, whether the
model predicts from the last step (``per_step = False``) or at every step, a loss, its
metrics, and the validation metric used for model selection (``selection``).

* ``smnist``: pixel MNIST, 784 steps of one pixel in [0, 1], classify from the last step.
  5,000 training images (chosen with ``data_seed``) are held out for validation.
* ``psmnist``: the same with the pixels in one fixed random permutation, saved with the
  run: ``permutation`` "library" (``torch.randperm`` from the library's generator of
  ``permutation_seed``) or "authors" (``numpy.random.RandomState(seed).permutation(784)``,
  as the authors' script draws it; ``permutation_seed``, or the run's ``seed`` when it is
  None, as their script uses its one seed).
* ``copy``: copying memory. Ten symbols from {1..8}, ``delay`` blanks (the last one a
  marker), ten blanks; reproduce the ten symbols after the marker. Per-step prediction.
* ``adding``: the adding problem of length ``length``: two channels, values in [0, 1] and
  a marker on one position in each half; regress the sum of the two marked values.

Synthetic tasks generate fixed train/val/test sets from ``data_seed``. Speech and Penn
Treebank tasks register here in the same way (``TASKS[name] = cls``).

A task also declares how the trainer runs it: the training protocol of ``Task``, whose
defaults are the ordinary run (the toolkit's ``SequenceModel``, seeded batches of
examples, evaluation by sums over batches).
"""

from __future__ import annotations

import math
import sys
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import load_mnist
from .distributed import Ranks
from .models import build_model

__all__ = ["Task", "TASKS", "SMNIST", "PSMNIST", "Copy", "Adding", "generator", "epoch_order", "draw_permutation",
           "PERMUTATIONS"]


def generator(seed: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for one purpose (``stream``) of one seed."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + stream)


def epoch_order(seed: int, epoch: int, n: int, device) -> Tensor:
    """The order in which epoch ``epoch`` (0-based) visits the ``n`` training examples."""
    return torch.randperm(n, generator=generator(seed, 1000 + epoch)).to(device)


class Task:
    """A benchmark. Subclasses set the class attributes and implement ``_build``,
    ``batch``, ``loss`` and ``statistics``.

    The training protocol, what the trainer (``train.py``) calls; each hook has the
    ordinary run as its default, and a task that trains another way overrides it (``ptb.PTB``):

    * ``build_model(config)``: the model to train.
    * ``plan_epoch(epoch)``: prepare epoch ``epoch`` and return its number of steps.
    * ``train_step(model, optimizer, position)``: make one step (forward, backward, clip,
      optimizer step); return the loss, the batch's statistics and its examples.
    * ``evaluate_split(model, split, batch_size, show, ranks)``: the metrics of a whole split.
    * ``after_validation(improved, optimizer)``: react to a validation (ptb: anneal the rate).
    * ``carry_state()``, ``load_carry_state(saved)``: the state a task carries from step to
      step (``carries_state``), saved with each checkpoint and given back on resume.
    """

    name: ClassVar[str]
    #: One line for ``momentumrnn list``.
    description: ClassVar[str]
    input_size: ClassVar[int]
    output_size: ClassVar[int]
    #: True: the model predicts at every step; False: from the last step only.
    per_step: ClassVar[bool] = False
    #: Validation metric for model selection and whether higher is better ("max") or lower.
    selection: ClassVar[tuple[str, str]] = ("accuracy", "max")
    #: Task-specific options (config keys) with their defaults.
    options: ClassVar[dict] = {}
    #: Whether the task reads files under the data root.
    needs_data: ClassVar[bool] = False
    #: Whether a training step takes ``batch_size`` examples of the split (False where a
    #: step is something else: ptb's chunk of every column of a token stream).
    steps_take_examples: ClassVar[bool] = True
    #: Whether the task carries state from step to step (ptb's TBPTT state): the trainer
    #: then saves ``carry_state()`` with every checkpoint.
    carries_state: ClassVar[bool] = False
    #: The processes that share the run (the trainer sets them; one process by default).
    ranks: Ranks = Ranks()

    def __init__(self, config: dict, root=None, artifacts: dict | None = None):
        self.config = config
        self.root = root
        self.splits: dict[str, tuple[Tensor, ...]] = {}
        self._build(artifacts or {})
        limits = {"train": config.get("train_subset"), "val": config.get("val_subset"),
                  "test": config.get("test_subset")}
        for split, limit in limits.items():
            if limit:
                self.splits[split] = tuple(t[:limit] for t in self.splits[split])

    def _build(self, artifacts: dict) -> None:
        raise NotImplementedError

    @classmethod
    def baseline(cls, config: dict) -> dict[str, float]:
        """Metrics of the best input-blind prediction (chance level), for plots and reports."""
        return {}

    def size(self, split: str) -> int:
        return self.splits[split][0].size(0)

    def to(self, device) -> "Task":
        self.splits = {k: tuple(t.to(device) for t in v) for k, v in self.splits.items()}
        return self

    def artifacts(self) -> dict:
        """Files to save with the run (name -> JSON-able data), e.g. a permutation."""
        return {}

    def batch(self, split: str, index: Tensor) -> tuple[Tensor, Tensor]:
        """``(x, y)`` for the examples ``index`` of ``split``; ``x`` is (batch, time, input_size)."""
        raise NotImplementedError

    def loss(self, output: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def statistics(self, output: Tensor, y: Tensor) -> dict[str, tuple[Tensor, int]]:
        """Metric name -> (sum over the batch, count); a metric is sum / count over a split."""
        raise NotImplementedError

    # -- the training protocol: what the trainer calls, with the ordinary run as default
    def build_model(self, config: dict) -> nn.Module:
        """The model to train: here the toolkit's ``SequenceModel`` of ``config["model"]``."""
        return build_model(config, self.input_size, self.output_size, self.per_step)

    def plan_epoch(self, epoch: int) -> int:
        """Prepare epoch ``epoch`` (0-based) and return its number of steps: here a seeded
        order of the training examples, in full batches (the rest differs every epoch)."""
        self.order = epoch_order(self.config["seed"], epoch, self.size("train"), self.splits["train"][0].device)
        return max(self.size("train") // self.config["batch_size"], 1)

    def train_step(self, model, optimizer, position: int) -> tuple[Tensor, dict, int]:
        """Make step ``position`` of the planned epoch (forward, backward, clip, optimizer
        step) and return ``(loss, statistics of the batch, examples over all ranks)``. Here
        this rank's part of the batch ``position``, its loss weighted by its share of the
        batch's loss terms (so that the gradients averaged across ranks are the global mean's)."""
        batch_size, ranks = self.config["batch_size"], self.ranks
        index = self.order[position * batch_size:(position + 1) * batch_size]
        x, y = self.batch("train", index[ranks.shard(index.numel())])
        output = model(x)
        loss = self.loss(output, y)
        statistics = self.statistics(output.detach(), y)
        if ranks.world > 1:
            count = statistics["loss"][1]
            loss = loss * (count * ranks.world / ranks.sum([count])[0])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config["clip"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.config["clip"])
        optimizer.step()
        return loss, statistics, index.numel()

    @torch.no_grad()
    def evaluate_split(self, model, split: str, batch_size: int, show: bool = False, ranks: Ranks | None = None
                       ) -> dict[str, float]:
        """Metrics of ``model`` over a whole split; ``show``: a progress bar on stderr;
        ``ranks`` (default: the task's) each evaluate their part and the sums are added.
        Here sums of ``statistics`` over batches, then one division."""
        ranks = self.ranks if ranks is None else ranks
        was_training = model.training
        model.eval()
        sums: dict[str, list[float]] = {}
        part = ranks.shard(self.size(split))
        device = self.splits[split][0].device
        starts = range(part.start, part.stop, batch_size)
        if show:
            from tqdm import tqdm
            starts = tqdm(starts, desc=split, unit="batch", leave=False, dynamic_ncols=True, file=sys.stderr)
        for start in starts:
            x, y = self.batch(split, torch.arange(start, min(part.stop, start + batch_size), device=device))
            for name, (total, count) in self.statistics(model(x), y).items():
                entry = sums.setdefault(name, [0.0, 0])
                entry[0] += float(total)
                entry[1] += count
        model.train(was_training)
        if ranks.world > 1:
            sums = _add_across(ranks, sums)
        return {name: total / count for name, (total, count) in sums.items()}

    def after_validation(self, improved: bool, optimizer) -> None:
        """React to a validation (``improved``: on the best so far); here nothing."""

    def carry_state(self):
        """The state carried from step to step, picklable, for the checkpoint (``carries_state``)."""
        return None

    def load_carry_state(self, saved) -> None:
        """Take back the carried state of a checkpoint (None when it holds none); here nothing."""


def _add_across(ranks: Ranks, sums: dict) -> dict:
    """``{name: [total, count]}`` of every rank added together."""
    result: dict[str, list] = {}
    for part in ranks.gather(sums):
        for name, (total, count) in part.items():
            entry = result.setdefault(name, [0.0, 0])
            entry[0] += total
            entry[1] += count
    return result


class SMNIST(Task):
    name = "smnist"
    description = "pixel MNIST: 784 steps of one pixel, classify from the last step"
    input_size, output_size = 1, 10
    options = {"val_size": 5000}
    needs_data = True

    @classmethod
    def check_options(cls, config):
        if not 1 <= config["val_size"] < 60000:
            raise ValueError(f"val_size must be in [1, 60000) (held out of MNIST's 60,000 training images), "
                             f"got {config['val_size']}")

    def _build(self, artifacts):
        mnist = load_mnist(self.root, download=self.config.get("download", True))
        val_size = self.config["val_size"]
        order = torch.randperm(mnist["train_images"].size(0), generator=generator(self.config["data_seed"], 1))
        val, train = order[:val_size], order[val_size:]
        self.splits = {
            "train": (mnist["train_images"][train], mnist["train_labels"][train]),
            "val": (mnist["train_images"][val], mnist["train_labels"][val]),
            "test": (mnist["test_images"], mnist["test_labels"]),
        }
        self.permutation = None

    @classmethod
    def baseline(cls, config):
        return {"loss": math.log(10), "accuracy": 0.1}

    def batch(self, split, index):
        images, labels = self.splits[split]
        x = images[index].float().div_(255.0)
        if self.permutation is not None:
            x = x[:, self.permutation]
        return x.unsqueeze(-1), labels[index]

    def loss(self, output, y):
        return F.cross_entropy(output, y)

    def statistics(self, output, y):
        n = y.numel()
        return {"loss": (F.cross_entropy(output, y, reduction="sum"), n),
                "accuracy": ((output.argmax(-1) == y).sum(), n)}

    def to(self, device):
        if self.permutation is not None:
            self.permutation = self.permutation.to(device)
        return super().to(device)


#: How ``psmnist`` draws its permutation (``PSMNIST``).
PERMUTATIONS = ("library", "authors")


def draw_permutation(config: dict) -> Tensor:
    """The pixel permutation of a new ``psmnist`` run (a resumed run reads its saved one)."""
    seed = config["permutation_seed"]
    if seed is None:
        seed = config["seed"]
    if config.get("permutation", "library") == "authors":
        import numpy as np
        return torch.from_numpy(np.random.RandomState(seed).permutation(784)).long()
    return torch.randperm(784, generator=generator(seed, 2))


class PSMNIST(SMNIST):
    name = "psmnist"
    description = "permuted pixel MNIST: the 784 pixels in one fixed random permutation"
    options = {"val_size": 5000, "permutation_seed": 0, "permutation": "library"}

    @classmethod
    def check_options(cls, config):
        super().check_options(config)
        # runs recorded before the option existed drew the library's permutation
        if config.get("permutation", "library") not in PERMUTATIONS:
            raise ValueError(f"permutation must be one of {PERMUTATIONS}, got {config['permutation']!r}")

    def _build(self, artifacts):
        super()._build(artifacts)
        if "permutation.json" in artifacts:              # the run's own, saved when it started
            saved = artifacts["permutation.json"]
            if (not isinstance(saved, list) or not all(isinstance(i, int) for i in saved)
                    or sorted(saved) != list(range(784))):
                raise ValueError("the run's permutation.json is not a permutation of 0..783")
            permutation = torch.tensor(saved, dtype=torch.long)
        else:
            permutation = draw_permutation(self.config)
        self.permutation = permutation

    def artifacts(self):
        return {"permutation.json": self.permutation.tolist()}


class Copy(Task):
    name = "copy"
    description = "copying memory: recall 10 symbols after `delay` blank steps (per-step prediction)"
    symbols, blank, marker = 10, 0, 9
    input_size, output_size = 10, 9
    per_step = True
    selection = ("loss", "min")
    options = {"delay": 100, "train_size": 20000, "val_size": 2000, "test_size": 2000}

    @classmethod
    def check_options(cls, config):
        if config["delay"] < 1:
            raise ValueError(f"delay must be >= 1, got {config['delay']}")

    def _build(self, artifacts):
        self.splits = {}
        for stream, split in enumerate(("train", "val", "test"), start=10):
            n = self.config[f"{split}_size"]
            symbols = torch.randint(1, 9, (n, self.symbols), generator=generator(self.config["data_seed"], stream))
            self.splits[split] = (symbols,)

    @classmethod
    def baseline(cls, config):
        """Blanks where they are certain, a uniform guess over the 8 symbols at recall."""
        return {"loss": 10 * math.log(8) / (config["delay"] + 20), "accuracy": 1 / 8}

    @property
    def length(self) -> int:
        return self.config["delay"] + 2 * self.symbols

    def batch(self, split, index):
        symbols = self.splits[split][0][index]
        n, delay, k = symbols.size(0), self.config["delay"], self.symbols
        tokens = symbols.new_zeros(n, self.length)
        tokens[:, :k] = symbols
        tokens[:, k + delay - 1] = self.marker
        target = symbols.new_zeros(n, self.length)
        target[:, -k:] = symbols
        return F.one_hot(tokens, self.input_size).float(), target

    def loss(self, output, y):
        return F.cross_entropy(output.reshape(-1, output.size(-1)), y.reshape(-1))

    def statistics(self, output, y):
        k = self.symbols
        loss = F.cross_entropy(output.reshape(-1, output.size(-1)), y.reshape(-1), reduction="sum")
        recalled = (output[:, -k:].argmax(-1) == y[:, -k:]).sum()
        return {"loss": (loss, y.numel()), "accuracy": (recalled, y[:, -k:].numel())}


class Adding(Task):
    name = "adding"
    description = "adding problem: sum the two marked values of a length-`length` sequence (regression)"
    input_size, output_size = 2, 1
    selection = ("loss", "min")
    options = {"length": 200, "train_size": 20000, "val_size": 2000, "test_size": 2000}

    @classmethod
    def check_options(cls, config):
        if config["length"] < 2:
            raise ValueError(f"length must be >= 2 (one marked value in each half), got {config['length']}")

    def _build(self, artifacts):
        length = self.config["length"]
        self.splits = {}
        for stream, split in enumerate(("train", "val", "test"), start=20):
            n = self.config[f"{split}_size"]
            g = generator(self.config["data_seed"], stream)
            values = torch.rand(n, length, generator=g)
            half = length // 2
            first = torch.randint(0, half, (n,), generator=g)
            second = torch.randint(half, length, (n,), generator=g)
            self.splits[split] = (values, torch.stack([first, second], 1))

    @classmethod
    def baseline(cls, config):
        """Always predicting 1, the mean of the sum: its MSE is the variance 1/6."""
        return {"loss": 1 / 6}

    def batch(self, split, index):
        values, marks = self.splits[split][0][index], self.splits[split][1][index]
        markers = torch.zeros_like(values).scatter_(1, marks, 1.0)
        y = values.gather(1, marks).sum(1)
        return torch.stack([values, markers], -1), y

    def loss(self, output, y):
        return F.mse_loss(output.squeeze(-1), y)

    def statistics(self, output, y):
        return {"loss": (F.mse_loss(output.squeeze(-1), y, reduction="sum"), y.numel())}


#: Task name -> class. Later tasks (speech, Penn Treebank) add themselves here.
TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (SMNIST, PSMNIST, Copy, Adding)}
