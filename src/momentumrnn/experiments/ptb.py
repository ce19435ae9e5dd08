"""Penn Treebank word-level language modelling (``--task ptb``).

Data: ``ROOT/ptb/ptb.{train,valid,test}.txt`` (Mikolov's splits, 10k vocabulary; each
line ends with ``<eos>``), checked against their SHA-256 sums. The vocabulary is the
training set's words in order of first appearance.

Model (``LanguageModel``): embedding, a stack of single-layer recurrent layers (any model
name of the toolkit: torch's ``lstm``/``gru``/``rnn`` or a ``momentumrnn`` layer), a
linear decoder to the vocabulary, optionally tied to the embedding, and the AWD-LSTM
regularizers (Merity et al. 2018): embedding dropout (``dropoute``, whole words), locked
(variational) dropout on the embedding (``dropouti``), between layers (``dropouth``) and
on the output (``dropout``), DropConnect on the recurrent weights ``weight_hh_l0`` of
every layer (``wdrop``, a ``torch.nn.utils.parametrize`` parametrization active in
training only), activation regularization (``ar``) and temporal activation
regularization (``tar``) on the last layer.

Training: the training tokens are cut into ``batch_size`` contiguous columns; each step
is one chunk of ``bptt`` tokens of every column (truncated backpropagation through time).
The hidden state and, for ``momentumrnn`` layers, the rule state (momentum velocity, ...)
carry from chunk to chunk, detached, and start at zero at every epoch. With
``variable_bptt`` the chunk length is drawn as in AWD-LSTM (``bptt``, or ``bptt / 2``
with probability 0.05, plus Gaussian noise of sd 5, at least 5; with ``bptt_cap`` (the
default, AWD-LSTM's) at most ``bptt + 40``, without it no cap, as the authors' script)
from a generator seeded by (seed, epoch), and the learning rate of that step is scaled by
``length / bptt``. Validation and test run the same way over ``eval_batch_size`` columns
in chunks of ``bptt``; the metric is perplexity, ``exp`` of the mean negative
log-likelihood per token. ``lr_anneal`` divides the learning rate by that factor after a
validation that does not improve on the best; ``--optimizer ntasgd`` is NT-ASGD
(``optim.NTASGD``: SGD, then ``torch.optim.ASGD`` once a validation is worse than the best
of the earlier ones but the last ``nonmono``).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .. import LAYERS
from ..initialization import initialize
from ..state import RuleState
from .data import DataError, data_root
from .models import _TORCH_LAYERS, model_spec, rule_hyperparameters
from .tasks import TASKS, Task, generator

__all__ = ["PTB", "LanguageModel", "DropConnect", "load_ptb", "batchify", "locked_dropout", "embedding_dropout",
           "PTB_FILES"]

#: SHA-256 of the three files (Mikolov's simple-examples/data/ptb.*.txt).
PTB_FILES = {
    "ptb.train.txt": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    "ptb.valid.txt": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    "ptb.test.txt": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
}
_CACHE: dict = {}


# ----------------------------------------------------------------------------- data
def load_ptb(root) -> dict:
    """``{"vocabulary": [words], "train"/"valid"/"test": int64 token tensors}``, cached per process."""
    folder = Path(root) / "ptb"
    key = str(folder.resolve())
    if key in _CACHE:
        return _CACHE[key]
    texts = {}
    for name, expected in PTB_FILES.items():
        path = folder / name
        if not path.exists():
            raise DataError(f"Penn Treebank file {path} is missing: put Mikolov's simple-examples/data/{name} there, "
                            f"or point --data-dir (or $MOMENTUMRNN_DATA) at a folder that has ptb/{name}")
        data = path.read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise DataError(f"checksum mismatch for {path}: SHA-256 is {actual}, expected {expected}. "
                            f"The file is corrupt or not Mikolov's Penn Treebank text.")
        texts[name.split(".")[1]] = data.decode("utf-8")
    vocabulary: dict[str, int] = {}
    for line in texts["train"].splitlines():
        for word in line.split() + ["<eos>"]:
            vocabulary.setdefault(word, len(vocabulary))
    out = {"vocabulary": list(vocabulary)}
    for split, text in texts.items():
        ids = []
        for number, line in enumerate(text.splitlines(), start=1):
            for word in line.split() + ["<eos>"]:
                if word not in vocabulary:
                    raise DataError(f"{folder / f'ptb.{split}.txt'} line {number}: word {word!r} is not in the "
                                    f"training vocabulary")
                ids.append(vocabulary[word])
        out[split] = torch.tensor(ids, dtype=torch.long)
    _CACHE[key] = out
    return out


def batchify(tokens: Tensor, columns: int) -> Tensor:
    """Cut a token stream into ``columns`` contiguous rows: ``(columns, len // columns)``
    (the remainder is dropped)."""
    steps = tokens.size(0) // columns
    if steps < 2:
        raise ValueError(f"{tokens.size(0)} tokens are too few for {columns} columns of at least 2 tokens")
    return tokens[:columns * steps].view(columns, steps)


# ----------------------------------------------------------------------------- regularizers
def locked_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Dropout with one mask per sequence, shared by all time steps: x is (batch, time, features)."""
    if not training or p == 0:
        return x
    mask = x.new_empty(x.size(0), 1, x.size(2)).bernoulli_(1 - p) / (1 - p)
    return x * mask


def embedding_dropout(weight: Tensor, p: float, training: bool) -> Tensor:
    """Drop whole words: each row of the embedding matrix is zeroed with probability p
    (the rest scaled by 1 / (1 - p)), one mask per forward pass."""
    if not training or p == 0:
        return weight
    mask = weight.new_empty(weight.size(0), 1).bernoulli_(1 - p) / (1 - p)
    return weight * mask


class DropConnect(nn.Module):
    """A parametrization: dropout on a whole weight matrix (scaled by 1 / (1 - p)), drawn
    once per access in training mode, the identity in evaluation mode."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)

    def forward(self, weight: Tensor) -> Tensor:
        return F.dropout(weight, self.p, self.training) if self.p > 0 else weight

    def extra_repr(self) -> str:
        return f"p={self.p}"


# ----------------------------------------------------------------------------- model
class LMOutput(NamedTuple):
    logits: Tensor          # (batch, time, vocabulary)
    state: list             # per layer: (hx, rule_state or None)
    raw: Tensor             # last layer's output before the output dropout (TAR)
    dropped: Tensor         # ... and after it (AR)


def build_layer(config: dict, input_size: int, hidden_size: int) -> nn.Module:
    """One single-layer, batch-first recurrent layer of ``config["model"]``."""
    recurrence, rule = model_spec(config["model"])
    if rule is None:
        layer_type, recurrence_type = _TORCH_LAYERS[recurrence]
        layer = layer_type(input_size, hidden_size, 1, batch_first=True)
        if config["init"] == "paper":
            initialize(layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0, layer.bias_hh_l0, recurrence_type(),
                       hidden_size, "paper", config["forget_bias"])
        return layer
    hp = {k: config[k] for k in rule_hyperparameters(config["model"])}
    return LAYERS[recurrence, rule](input_size, hidden_size, 1, batch_first=True, init=config["init"],
                                    forget_bias=config["forget_bias"], impl=config.get("impl", "auto"), **hp)


class LanguageModel(nn.Module):
    """Embedding -> ``num_layers`` recurrent layers -> decoder, with AWD-LSTM regularizers.

    Layer sizes: ``emb_size`` -> ``hidden_size`` -> ... -> ``hidden_size`` (or ``emb_size``
    for the last layer when the decoder is tied to the embedding)."""

    def __init__(self, config: dict, vocabulary: int):
        super().__init__()
        emb, hidden, layers = config["emb_size"], config["hidden_size"], config["num_layers"]
        self.tied = bool(config["tied"])
        self.dropout, self.dropouth = config["dropout"], config["dropouth"]
        self.dropouti, self.dropoute = config["dropouti"], config["dropoute"]
        self.encoder = nn.Embedding(vocabulary, emb)
        sizes = [emb] + [hidden] * (layers - 1) + [emb if self.tied else hidden]
        self.layers = nn.ModuleList(build_layer(config, sizes[i], sizes[i + 1]) for i in range(layers))
        self.carries_rule_state = [model_spec(config["model"])[1] is not None] * layers
        # "reset": the rule's step counter starts at 1 in every call (every bptt chunk) while
        # the velocity carries over, as the authors' PTB cells; "carry": it carries too.
        self.reset_counter = config.get("restart_counter", "carry") == "reset"
        if config["wdrop"] > 0:
            for layer in self.layers:
                parametrize.register_parametrization(layer, "weight_hh_l0", DropConnect(config["wdrop"]))
        # Tied: the decoder reads the embedding matrix (one tensor, saved once).
        self.decoder_weight = None if self.tied else nn.Parameter(torch.empty(vocabulary, sizes[-1]))
        self.decoder_bias = nn.Parameter(torch.zeros(vocabulary))
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        if self.decoder_weight is not None:
            nn.init.uniform_(self.decoder_weight, -0.1, 0.1)

    def forward(self, tokens: Tensor, state: list | None = None) -> LMOutput:
        """``tokens`` (batch, time) -> logits (batch, time, vocabulary) and the final state.
        One DropConnect mask per layer and forward pass (the parametrizations are cached)."""
        with parametrize.cached():
            return self._forward(tokens, state)

    def _forward(self, tokens: Tensor, state: list | None) -> LMOutput:
        weight = embedding_dropout(self.encoder.weight, self.dropoute, self.training)
        x = locked_dropout(F.embedding(tokens, weight), self.dropouti, self.training)
        state = state or [(None, None)] * len(self.layers)
        new_state = []
        for index, (layer, (hx, rule_state)) in enumerate(zip(self.layers, state)):
            if self.carries_rule_state[index]:
                if rule_state is not None and self.reset_counter:
                    rule_state = rule_state._replace(steps=torch.zeros_like(rule_state.steps))
                x, hx, rule_state = layer(x, hx, rule_state=rule_state, return_rule_state=True)
            else:
                x, hx = layer(x, hx)
            new_state.append((hx, rule_state))
            if index < len(self.layers) - 1:
                x = locked_dropout(x, self.dropouth, self.training)
        dropped = locked_dropout(x, self.dropout, self.training)
        logits = F.linear(dropped, self.encoder.weight if self.tied else self.decoder_weight, self.decoder_bias)
        return LMOutput(logits, new_state, x, dropped)


def detach_state(state: list) -> list:
    return [(tuple(h.detach() for h in hx) if isinstance(hx, tuple) else hx.detach(),
             None if rs is None else rs.detach()) for hx, rs in state]


# ----------------------------------------------------------------------------- task
class PTB(Task):
    name = "ptb"
    description = "Penn Treebank word-level language model (10k words): truncated BPTT, perplexity"
    input_size = output_size = 10000
    per_step = True
    selection = ("perplexity", "min")
    needs_data = True
    steps_take_examples = False             # a step is a chunk of every column of the token stream
    carries_state = True                    # the TBPTT state, from chunk to chunk
    options = {"bptt": 35, "variable_bptt": False, "emb_size": 200, "tied": False, "dropout": 0.0, "dropouth": 0.0,
               "dropouti": 0.0, "dropoute": 0.0, "wdrop": 0.0, "ar": 0.0, "tar": 0.0, "lr_anneal": 1.0,
               "nonmono": 5, "test_batch_size": None, "restart_counter": "carry", "bptt_cap": True}

    @classmethod
    def check_options(cls, config: dict) -> None:
        if model_spec(config["model"])[0] == "orthogonal":
            raise ValueError(f"the ptb task runs the LSTM, GRU and RNN families, not the orthogonal model "
                             f"{config['model']!r} (weight drop on an orthogonal U is not implemented)")
        for key in ("bptt", "emb_size", "nonmono"):
            if isinstance(config[key], bool) or not isinstance(config[key], int) or config[key] < 1:
                raise ValueError(f"{key} must be a positive integer, got {config[key]!r}")
        for key in ("dropout", "dropouth", "dropouti", "dropoute", "wdrop"):
            if not 0 <= config[key] < 1:
                raise ValueError(f"{key} must be in [0, 1), got {config[key]!r}")
        for key in ("ar", "tar"):
            if not config[key] >= 0:
                raise ValueError(f"{key} must be >= 0, got {config[key]!r}")
        if not config["lr_anneal"] >= 1:
            raise ValueError(f"lr_anneal must be >= 1 (1 = off), got {config['lr_anneal']!r}")
        for key in ("tied", "variable_bptt", "bptt_cap"):
            if not isinstance(config.get(key, True), bool):     # bptt_cap: runs recorded before it had the cap
                raise ValueError(f"{key} must be true or false, got {config[key]!r}")
        if config["restart_counter"] not in ("carry", "reset"):
            raise ValueError(f"restart_counter must be 'carry' (the step counter carries over from chunk to chunk, "
                             f"as the velocity) or 'reset' (it starts at 1 in every chunk), got "
                             f"{config['restart_counter']!r}")
        test_batch = config["test_batch_size"]
        if test_batch is not None and (isinstance(test_batch, bool) or not isinstance(test_batch, int)
                                       or test_batch < 1):
            raise ValueError(f"test_batch_size must be a positive integer, got {test_batch!r}")

    def _build(self, artifacts):
        self.check_options(self.config)
        data = load_ptb(self.root)
        self.vocabulary = data["vocabulary"]
        if len(self.vocabulary) != self.output_size:
            raise DataError(f"the Penn Treebank vocabulary has {len(self.vocabulary)} words, expected 10000")
        self.splits = {"train": (data["train"],), "val": (data["valid"],), "test": (data["test"],)}
        for split, limit in (("train", 2 * self.config["batch_size"]), ("val", 2), ("test", 2)):
            given = self.config.get(f"{split}_subset")
            if given is not None and given < limit:
                raise ValueError(f"{split}_subset {given} is too small: the ptb {split} split needs at least "
                                 f"{limit} tokens" + (f" (2 per column of batch_size {self.config['batch_size']})"
                                                      if split == "train" else " (one input and its next word)"))
        self.plan: list[tuple[int, int]] = []
        self.state: list | None = None
        self._columns: dict = {}

    def columns(self, split: str, count: int) -> Tensor:
        key = (split, count)
        if key not in self._columns:
            self._columns[key] = batchify(self.splits[split][0], count)
        return self._columns[key]

    def to(self, device):
        self._columns = {}
        return super().to(device)

    @classmethod
    def baseline(cls, config: dict) -> dict[str, float]:
        """Input-blind prediction: the training unigram distribution at every step; its
        validation loss and perplexity ({} when the data cannot be read)."""
        try:
            data = load_ptb(data_root(config.get("data_dir")))
        except (DataError, OSError):
            return {}
        counts = torch.bincount(data["train"], minlength=len(data["vocabulary"])).double()
        loss = float(-(counts / counts.sum()).log()[data["valid"]].mean())
        return {"loss": loss, "perplexity": math.exp(loss)}

    # -- the training protocol (``Task``): chunks of the token stream, the state carried
    def build_model(self, config: dict) -> nn.Module:
        return LanguageModel(config, len(self.vocabulary))

    def plan_epoch(self, epoch: int) -> int:
        """Chunk the training columns for epoch ``epoch``: (start, length) per step; return the step count."""
        data = self.columns("train", self.config["batch_size"])
        bptt, last = self.config["bptt"], data.size(1) - 1
        g = generator(self.config["seed"], 2000 + epoch)
        plan, start = [], 0
        while start < last:
            length = bptt
            if self.config["variable_bptt"]:
                base = bptt if torch.rand((), generator=g).item() < 0.95 else bptt / 2
                length = max(5, int(base + 5 * torch.randn((), generator=g).item()))
                if self.config.get("bptt_cap", True):           # runs recorded before the option had it
                    length = min(length, bptt + 40)
            length = min(length, last - start)
            plan.append((start, length))
            start += length
        self.plan = plan
        return len(plan)

    def train_step(self, model, optimizer, position: int) -> tuple[Tensor, dict, int]:
        """One chunk: forward with the carried state, loss (+ AR/TAR), backward, clip, step."""
        config = self.config
        if position == 0:
            self.state = None
        start, length = self.plan[position]
        data = self._rows(self.columns("train", config["batch_size"]), self.ranks)
        x, y = data[:, start:start + length], data[:, start + 1:start + 1 + length]
        out = model(x, self.state)
        self.state = detach_state(out.state)
        nll = F.cross_entropy(out.logits.reshape(-1, out.logits.size(-1)), y.reshape(-1))
        loss = nll
        if config["ar"]:
            loss = loss + config["ar"] * out.dropped.pow(2).mean()
        if config["tar"] and length > 1:
            loss = loss + config["tar"] * (out.raw[:, 1:] - out.raw[:, :-1]).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config["clip"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config["clip"])
        scale = length / config["bptt"] if config["variable_bptt"] else 1.0
        rates = [group["lr"] for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["lr"] *= scale
        optimizer.step()
        for group, rate in zip(optimizer.param_groups, rates):
            group["lr"] = rate
        tokens = y.numel()
        return nll.detach(), {"loss": (nll.detach() * tokens, tokens)}, tokens * self.ranks.world

    @torch.no_grad()
    def evaluate_split(self, model, split: str, batch_size: int, show: bool = False, ranks=None) -> dict[str, float]:
        """Mean NLL per token and perplexity over a whole split, state carried across chunks
        (no progress bar)."""
        ranks = self.ranks if ranks is None else ranks
        was_training = model.training
        model.eval()
        data = self._rows(self.columns(split, min(batch_size, self.size(split) // 2)), ranks)
        bptt, state, total, count = self.config["bptt"], None, 0.0, 0
        for start in range(0, data.size(1) - 1 if data.size(0) else 0, bptt):     # a rank may have no column
            length = min(bptt, data.size(1) - 1 - start)
            x, y = data[:, start:start + length], data[:, start + 1:start + 1 + length]
            out = model(x, state)
            state = out.state
            total += float(F.cross_entropy(out.logits.reshape(-1, out.logits.size(-1)), y.reshape(-1),
                                           reduction="sum"))
            count += y.numel()
        model.train(was_training)
        if ranks.world > 1:                                       # the columns of every rank
            total, count = ranks.sum([total, count])
        loss = total / count
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}

    @staticmethod
    def _rows(columns: Tensor, ranks) -> Tensor:
        """This rank's part of the batch columns (all of them in a single process)."""
        return columns[ranks.shard(columns.size(0))]

    def after_validation(self, improved: bool, optimizer) -> None:
        """``lr_anneal``: divide the learning rate when validation did not improve on the best."""
        if not improved and self.config["lr_anneal"] > 1:
            for group in optimizer.param_groups:
                group["lr"] /= self.config["lr_anneal"]

    def carry_state(self):
        """The carried TBPTT state as plain tuples (for the checkpoint)."""
        if self.state is None:
            return None
        return [(tuple(hx) if isinstance(hx, tuple) else (hx,), None if rs is None else tuple(rs))
                for hx, rs in self.state]

    def load_carry_state(self, saved) -> None:
        if saved is None:
            self.state = None
            return
        self.state = [(hx if len(hx) == 2 else hx[0], None if rs is None else RuleState(*rs)) for hx, rs in saved]


TASKS[PTB.name] = PTB
