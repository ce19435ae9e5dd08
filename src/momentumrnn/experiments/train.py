"""One training run: a model on a task, selected on validation, checkpointed, resumable.

``train`` locks the run directory and runs a ``Trainer``; read top to bottom, the
``Trainer`` is the whole story:

1. resolve the device, build the task's data (in memory) and its model
   (``Task.build_model``), seed everything;
2. start a fresh run directory, or resume the latest checkpoint of an existing one;
3. loop over epochs; each epoch is the task's plan (``Task.plan_epoch``) and each step the
   task's (``Task.train_step``); by default an epoch visits the training set in a seeded
   permutation of its own (full batches only), so a run resumed mid-epoch sees exactly the
   batches an uninterrupted run sees;
4. validate at the end of each epoch (or every ``eval_every`` steps; ``Task.evaluate_split``
   with the optimizer's average, if it keeps one), keep the weights with the best
   validation metric, checkpoint every epoch and every ``checkpoint_every`` steps;
5. stop at ``epochs``, ``max_steps`` or the time budget (then validate once more and
   evaluate test with the best-validation weights), or on Ctrl-C/SIGTERM (checkpoint
   and exit; ``--resume`` continues), or when the training loss or the weights stop being
   finite (``Diverged``: no checkpoint of the bad weights, the last good one is kept),
   or when a file of the run cannot be written, e.g. a full disk (``RunFailed``: the last
   complete checkpoint is kept, and ``--resume`` continues from it).

The trainer asks nothing of a task but the hooks ``tasks.Task`` declares, and nothing of
an optimizer but ``optim.Optimizer``.

Run directory: ``config.json``, ``metrics.jsonl`` (one JSON object a line),
``summary.json``, ``checkpoints/`` (see ``checkpoint.py``), task files such as
``permutation.json``, and ``.lock``: one process holds a run directory at a time
(see ``rundir.py``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import random
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors import SafetensorError

from .. import __version__, cpu_kernels
from .checkpoint import (CheckpointError, atomic_write_json, atomic_write_text, has_checkpoint, load_checkpoint,
                         save_checkpoint)
from .config import DEFAULTS, RESUMABLE, ConfigError, check_config, fingerprint, identity, parse_device
from .data import data_root
from .distributed import Ranks, from_environment
from .models import count_parameters
from .optim import build_optimizer
from .rundir import RunDirectory, RunError
from .tasks import TASKS

__all__ = ["train", "Trainer", "read_run_config", "resume_config", "resolve_device", "evaluate", "build_optimizer",
           "RunError", "Diverged", "RunFailed"]


class Diverged(RuntimeError):
    """The training loss or the weights stopped being finite; the run stopped at its last
    good checkpoint."""


class RunFailed(RuntimeError):
    """A started run stopped because a file of it could not be written (a full disk, say);
    its last complete checkpoint is kept."""


#: The one-time cost a summary names apart from the training time.
_BUILD = "building the CPU step kernels"


# ----------------------------------------------------------------------------- helpers
def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``, checked against this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = parse_device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for, but CUDA is not available to this torch")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                              f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def evaluate(model, task, split: str, batch_size: int, show: bool = False, ranks: Ranks | None = None
             ) -> dict[str, float]:
    """Metrics of ``model`` over a whole split (``Task.evaluate_split``); ``show``: a progress
    bar on stderr; ``ranks``: the processes that share the split (default: the task's)."""
    return task.evaluate_split(model, split, batch_size, show=show, ranks=ranks)


def _clone_state(model) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _load_weights(model, state: dict, what: str) -> None:
    from ..orthogonal import is_former_orthogonal_state

    if is_former_orthogonal_state(state):
        raise CheckpointError(f"{what} holds an orthogonal matrix in the former parametrization (U = base exp(A); "
                              f"now U = (base exp(A))^T, the authors' coordinates): the run cannot continue exactly. "
                              f"Start a new run; load_state_dict still reads these weights (converted) for evaluation")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{what} does not fit the model: {error}") from None


class StopSignals:
    """Turn the first Ctrl-C (SIGINT) or SIGTERM into a request to stop after the current
    step; a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.requested: str | None = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


class MetricsLog:
    """Append-only ``metrics.jsonl``; ``offset`` is the size after the last row written.

    ``sync()`` puts the rows on disk (a checkpoint records ``offset`` only after it). On
    resume, ``truncate_to`` drops the rows written after the checkpoint; a log shorter than
    that, or with a torn or unreadable row before it, is cut after its last complete row
    and ``damage`` says what was lost (it is never padded)."""

    def __init__(self, path: Path, truncate_to: int | None = None):
        self.path = path
        self.damage = None
        if truncate_to is not None:
            truncate_to, self.damage = _complete_rows(path, truncate_to)
            with open(path, "ab") as f:                 # creates a missing log
                f.truncate(truncate_to)
        self.file = open(path, "a")
        self.offset = self.file.tell()

    def write(self, row: dict) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        self.offset = self.file.tell()

    def sync(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


def _complete_rows(path: Path, offset: int) -> tuple[int, str | None]:
    """The length of the complete, readable rows of ``path`` within its first ``offset``
    bytes, and a description of what is missing or damaged (None when nothing is)."""
    data = path.read_bytes()[:offset] if path.exists() else b""
    end = 0
    for line in data.splitlines(keepends=True):
        try:
            if not line.endswith(b"\n"):
                raise ValueError("torn")
            json.loads(line)
        except ValueError:
            break
        end += len(line)
    if end == offset:
        return offset, None
    if not path.exists():
        return 0, f"{path} is missing (the checkpoint recorded {offset} bytes of rows): its rows are lost"
    kind = "shorter than" if len(data) < offset else "damaged within"
    return end, (f"{path} is {kind} the {offset} bytes the checkpoint recorded; its rows after byte {end} "
                 f"are lost (kept: the {end} bytes of complete rows)")


# ----------------------------------------------------------------------------- run config
def read_run_config(run_dir: Path) -> dict:
    """The ``config.json`` record of a run directory."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise RunError(f"nothing to resume: {run_dir} is not a run directory ({path} does not exist)")
    try:
        record = json.loads(path.read_text())
        record["config"]["task"]
    except (ValueError, KeyError, TypeError) as error:
        raise RunError(f"{path} is not a readable run configuration: {error}") from None
    return record


def resume_config(run_dir: Path, overrides: dict, task=None, model=None, preset=None) -> dict:
    """The configuration of an existing run with the flags given now applied. Only budget
    and placement flags (``RESUMABLE``) may change; others must repeat the run's value."""
    saved = read_run_config(run_dir)["config"]
    config = {**{k: DEFAULTS[k] for k in RESUMABLE if k in DEFAULTS}, **saved}    # placement keys may be absent
    given = {"task": task, "model": model, **overrides}
    conflicts = []
    for key, value in given.items():
        if value is None:
            continue
        if key in RESUMABLE:
            config[key] = value
        elif key not in saved or saved[key] != value:
            conflicts.append(f"--{key.replace('_', '-')} {value!r} (the run has {saved.get(key, '<not set>')!r})")
    if preset is not None and preset != saved.get("preset"):
        conflicts.append(f"--preset {preset!r} (the run has {saved.get('preset')!r})")
    if conflicts:
        raise RunError(f"cannot resume {run_dir} with a different configuration: {'; '.join(conflicts)}. "
                       f"Only {', '.join('--' + k.replace('_', '-') for k in sorted(RESUMABLE))} may change; "
                       f"start a new --out directory for other settings.")
    try:
        check_config(config)
    except KeyError as error:
        raise RunError(f"{Path(run_dir) / 'config.json'} has no setting {error.args[0]!r} (was it edited?): put it "
                       f"back, or start a new --out directory") from None
    return config


def _environment(device: torch.device, ranks: Ranks) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    record = {"versions": {"momentumrnn": __version__, "torch": torch.__version__, "python": platform.python_version()},
              "device": {"type": device.type, "name": name, "threads": torch.get_num_threads()}}
    if ranks.world > 1:
        record["distributed"] = {"world_size": ranks.world, "backend": ranks.backend}
    return record


def _agree(ranks: Ranks, stop: str | None) -> str | None:
    """One stop decision for all ranks: interrupted before the time budget before max_steps."""
    reasons = ("interrupted", "time_budget", "max_steps")
    wanted = ranks.sum([float(stop == reason) for reason in reasons])
    return next((reason for reason, count in zip(reasons, wanted) if count), None)


def _check_path_device(config: dict, device: torch.device) -> None:
    """``--impl triton-loop`` needs a CUDA device (Triton's interpreter aside, which the tests use)."""
    if config.get("impl") == "triton-loop" and device.type != "cuda":
        from ..triton_loop import _interpreting
        if not _interpreting():
            raise ConfigError(f"--impl triton-loop runs on CUDA, but the run's device is {device}; "
                              f"leave --impl out (auto) or use --device cuda")


# ----------------------------------------------------------------------------- training
def train(config: dict, run_dir, *, resume: bool = False, quiet: bool = False, command: list | None = None) -> dict:
    """Train ``config`` into ``run_dir`` (or continue it with ``resume``); return the summary.
    The run directory is locked for the whole run (``rundir.RunDirectory``)."""
    ranks = from_environment(config["device"])
    try:
        device = ranks.device if ranks.world > 1 else resolve_device(config["device"])
        _check_path_device(config, device)
        if config["batch_size"] % ranks.world:
            raise ConfigError(f"batch_size {config['batch_size']} must be a multiple of the {ranks.world} ranks "
                              f"(each takes an equal part of every batch)")
        directory = RunDirectory(run_dir, resume=resume, command=command) if ranks.main else _Follower(run_dir)
        with directory:
            try:
                summary = Trainer(config, directory, device, resume, quiet or not ranks.main, command, ranks).run()
            except (OSError, SafetensorError) as error:
                raise RunFailed(_write_failure(Path(run_dir), error)) from error
    except BaseException:
        ranks.abandon()
        raise
    ranks.close()
    return summary


def _write_failure(run_dir: Path, error: BaseException) -> str:
    """What a run that could not write its files says: the cause and what is kept."""
    cause = f"{error.strerror}: {error.filename}" if isinstance(error, OSError) and error.strerror else str(error)
    try:
        latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    except OSError:
        latest = None
    if latest is None:
        return f"the run could not write its files ({cause}); nothing of it is resumable"
    step = latest.split("-")[1].lstrip("0") or "0"
    return (f"the run stopped: it could not write its files ({cause}). Its last complete checkpoint, at step "
            f"{step}, is kept: make room, then continue with momentumrnn train --out {run_dir} --resume")


class _Follower:
    """A rank other than 0: it reads the run directory but never writes or locks it."""

    def __init__(self, path):
        self.path = Path(path)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def started(self) -> None:
        pass


class _NoLog:
    """The metrics log of a rank other than 0."""

    offset, damage = 0, None

    def write(self, row: dict) -> None:
        pass

    sync = close = lambda self: None


def _read_artifacts(run_dir: Path) -> dict:
    """The task files saved when the run started (``permutation.json``)."""
    artifacts = {}
    for name in ("permutation.json",):
        if (run_dir / name).exists():
            try:
                artifacts[name] = json.loads((run_dir / name).read_text())
            except (OSError, ValueError) as error:
                raise RunError(f"{run_dir / name} is corrupt or unreadable: {error}") from None
    return artifacts


class Trainer:
    """One run of ``config`` in a locked run directory: ``Trainer(...).run()`` returns the summary.

    The trainer owns the loop, the run directory (config, metrics, checkpoints, summary),
    the stop decisions and the selection on validation. It calls the task only through
    the hooks ``tasks.Task`` declares (``build_model``, ``plan_epoch``, ``train_step``,
    ``evaluate_split``, ``after_validation``, ``carry_state``/``load_carry_state``) and the
    optimizer only through ``optim.Optimizer`` (``swap_in_average``, ``observe``)."""

    def __init__(self, config: dict, directory, device: torch.device, resume: bool, quiet: bool,
                 command: list | None, ranks: Ranks):
        self.config, self.directory, self.resume, self.quiet, self.ranks = config, directory, resume, quiet, ranks
        run_dir = self.run_dir = directory.path
        if config.get("threads"):
            torch.set_num_threads(config["threads"])
        say = self.say = _printer(quiet)

        # -- the run directory (locked by now)
        if resume:
            if not has_checkpoint(run_dir):
                raise RunError(f"cannot resume {run_dir}: it has no checkpoint ({run_dir / 'checkpoints' / 'latest'} "
                               f"does not exist); delete the folder to start again")
        elif ranks.main and ((run_dir / "config.json").exists() or (run_dir / "checkpoints").exists()):
            raise RunError(f"{run_dir} already holds a run: pass --resume to continue it, or choose another --out")

        # -- data, model, optimizer
        artifacts = _read_artifacts(run_dir) if resume else {}
        try:
            task = self.task = TASKS[config["task"]](config, data_root(config.get("data_dir")), artifacts).to(device)
        except ValueError as error:                     # settings that do not fit the data, a bad task file
            raise ConfigError(str(error)) from None
        task.ranks = ranks
        torch.manual_seed(config["seed"])
        random.seed(config["seed"])
        model = self.model = task.build_model(config).to(device)
        self.optimizer = build_optimizer(config, model)
        self.metric, self.mode = task.selection
        self.n_train, self.batch_size = task.size("train"), config["batch_size"]
        # The task's files (e.g. the permutation) identify the run as much as its settings.
        files = {name: hashlib.sha256(json.dumps(content).encode()).hexdigest()[:16]
                 for name, content in task.artifacts().items()}
        self.fingerprint, self.identity = fingerprint(config, files), {**identity(config), **files}

        self.progress = {"step": 0, "epoch": 0, "position": 0, "train_time": 0.0, "window": {}, "window_examples": 0,
                         "window_time": 0.0, "best": None, "last_eval_step": None, "metrics_bytes": 0}
        self.best_state = None
        record = {"config": config, **_environment(device, ranks), "command": command,
                  "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "resumed": []}
        if resume:
            record, entry = self._load(device, command)
        elif ranks.main:
            for name, content in task.artifacts().items():
                atomic_write_text(run_dir / name, json.dumps(content))
            (run_dir / "metrics.jsonl").touch()
        truncate_to = self.progress["metrics_bytes"] if resume else None
        self.log = MetricsLog(run_dir / "metrics.jsonl", truncate_to=truncate_to) if ranks.main else _NoLog()
        self.parameters = count_parameters(model)
        self.steps_per_epoch = task.plan_epoch(self.progress["epoch"])
        if resume:                                      # recorded once the resume has succeeded
            if self.log.damage:                         # shown even with --quiet
                print(f"momentumrnn train: warning: {self.log.damage}", file=sys.stderr)
                entry["metrics_damage"] = self.log.damage
            record["resumed"] = record.get("resumed", []) + [entry]
        if ranks.main:
            atomic_write_json(run_dir / "config.json", record)
        self.train_model = model
        if ranks.world > 1:                             # gradients averaged across ranks in the backward
            from torch.nn.parallel import DistributedDataParallel

            self.train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                       else None)
        say(f"{config['model']} on {config['task']}: {self.parameters:,} parameters, {self.n_train:,} training "
            f"examples, {self.steps_per_epoch} steps per epoch, device {device}")
        self.show_evaluation = not quiet and sys.stderr.isatty()
        if not resume:
            hint = _quick_run_hint(config, task, self.steps_per_epoch)
            if hint:
                say(hint)

        self.session_start, self.time_before = time.perf_counter(), self.progress["train_time"]
        # One-time costs inside the training time (building the CPU step kernels on first use),
        # summed over sessions, so that a report can say so.
        self.build_before = cpu_kernels.build_seconds()
        self.built_earlier = (self.progress.get("one_time_s") or {}).get(_BUILD, 0.0)
        self.last_checkpoint_step = self.progress["step"]

    def _load(self, device: torch.device, command: list | None) -> tuple[dict, dict]:
        """Continue from the latest checkpoint: weights, optimizer, progress, carried state, RNG.
        Returns the run's record and the entry of this resume."""
        run_dir, ranks = self.run_dir, self.ranks
        checkpoint = load_checkpoint(run_dir, fingerprint=self.fingerprint, identity=self.identity)
        _load_weights(self.model, checkpoint["model_state"], f"checkpoint {checkpoint['path'] / 'model.safetensors'}")
        try:
            self.optimizer.load_state_dict(checkpoint["optimizer_state"])
        except (ValueError, KeyError) as error:
            raise CheckpointError(f"optimizer state in {checkpoint['path'] / 'state.pt'} does not fit: "
                                  f"{error}") from None
        progress = self.progress = checkpoint["progress"]
        self.best_state = checkpoint["best_state"]
        if progress.get("world_size", 1) != ranks.world:
            raise RunError(f"cannot resume {run_dir} with {ranks.world} process(es): it was trained with "
                           f"{progress.get('world_size', 1)}, and each rank's data order, random state and carried "
                           f"state belong to that number; resume it with the same number of processes")
        saved = progress.get("task_state")
        self.task.load_carry_state(saved[ranks.rank] if ranks.world > 1 and saved is not None else saved)
        rng = checkpoint["rng"]
        set_rng_state(rng["ranks"][ranks.rank] if "ranks" in rng else rng)
        old = read_run_config(run_dir)
        entry = {"at_step": progress["step"], "command": command,
                 "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        self.say(f"resuming {run_dir} at step {progress['step']} (epoch {progress['epoch'] + 1}) from "
                 f"{checkpoint['path']}")
        return {**old, "config": self.config, **_environment(device, ranks)}, entry

    # -- the loop
    def run(self) -> dict:
        config, progress = self.config, self.progress
        if not self.resume:
            self.checkpoint()                           # step 0: a run can always be resumed
        self.directory.started()
        stop = None
        self.model.train()
        with StopSignals() as signals:
            while stop is None:
                if progress["epoch"] >= config["epochs"]:
                    stop = "epochs"
                    break
                self.steps_per_epoch = self.task.plan_epoch(progress["epoch"])
                bar = _bar(self.quiet, progress, config, self.steps_per_epoch, self.n_train)
                while progress["position"] < self.steps_per_epoch:
                    stop = self._stop(signals)
                    if stop:
                        break
                    self.step(bar)
                if bar is not None:
                    bar.close()
                if stop is None:                        # the epoch is complete
                    if progress["last_eval_step"] != progress["step"]:
                        self.validate()
                    progress["epoch"] += 1
                    progress["position"] = 0
                    self.checkpoint()
            if stop == "interrupted":
                self.checkpoint()
                summary = self.close("interrupted", stop, None)
                self.say(f"stopped by {signals.requested} at step {progress['step']}; checkpoint saved. Continue "
                         f"with: momentumrnn train --out {self.run_dir} --resume")
                return summary

        # -- finish: validate the last weights, checkpoint, then test with the best-validation weights
        if progress["last_eval_step"] != progress["step"]:
            self.validate()
        self.checkpoint()
        if progress["window"]:                          # rows after the checkpoint: a resume drops them
            self.log_train_window()
        test = None
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
            batch_size = config.get("test_batch_size") or config["eval_batch_size"]
            test = self.task.evaluate_split(self.model, "test", batch_size, show=self.show_evaluation)
            self.log.write({"split": "test", "epoch": progress["best"]["epoch"], "step": progress["best"]["step"],
                            **test, "time": round(self.elapsed(), 3)})
        summary = self.close("finished", stop, test)
        if test is not None:
            best = progress["best"]
            self.say(f"finished ({stop}) after {progress['step']} steps, {self.elapsed():.0f} s: best val "
                     f"{self.metric} {best['value']:.4f} at step {best['step']}; test at best val: "
                     + " ".join(f"{k} {v:.4f}" for k, v in test.items()))
        return summary

    def _stop(self, signals: StopSignals) -> str | None:
        """Why the run stops before the next step (None: it goes on); every rank agrees."""
        config, stop = self.config, None
        if config.get("max_steps") and self.progress["step"] >= config["max_steps"]:
            stop = "max_steps"
        elif config.get("time_budget") and self.elapsed() >= config["time_budget"]:
            stop = "time_budget"
        elif signals.requested:
            stop = "interrupted"
        if self.ranks.world > 1:                        # every rank stops at the same step
            stop = _agree(self.ranks, stop)
        return stop

    def step(self, bar) -> None:
        """One training step (the task's), then the logging, validation and checkpoint it is due."""
        config, progress, ranks = self.config, self.progress, self.ranks
        started = time.perf_counter()
        loss, statistics, examples = self.task.train_step(self.train_model, self.optimizer, progress["position"])
        with torch.no_grad():
            names = sorted(statistics)
            added = ranks.sum([float(statistics[n][0]) for n in names] + [statistics[n][1] for n in names])
            for i, name in enumerate(names):
                entry = progress["window"].setdefault(name, [0.0, 0])
                entry[0] += added[i]
                entry[1] += int(added[len(names) + i])
        progress["step"] += 1
        progress["position"] += 1
        progress["window_examples"] += examples
        progress["window_time"] += time.perf_counter() - started
        loss_value = (float(loss.detach()) if ranks.world == 1 else              # after the step: no extra wait
                      added[names.index("loss")] / added[len(names) + names.index("loss")])
        if not math.isfinite(loss_value):
            self.diverged(f"the training loss is {loss_value}")
        if bar is not None:
            bar.update(min(self.batch_size, self.n_train))
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if progress["step"] % config["log_every"] == 0:
            self.log_train_window()
        if config.get("eval_every") and progress["step"] % config["eval_every"] == 0:
            self.validate()
        if config["checkpoint_every"] and progress["step"] % config["checkpoint_every"] == 0:
            self.checkpoint()

    def validate(self) -> None:
        """Validate (with the optimizer's average, if it keeps one), keep the best weights, log."""
        progress, metric, mode = self.progress, self.metric, self.mode
        restore = self.optimizer.swap_in_average()
        values = self.task.evaluate_split(self.model, "val", self.config["eval_batch_size"], show=self.show_evaluation)
        progress["last_eval_step"] = progress["step"]
        best = progress["best"]
        value = values[metric]
        improved = not math.isnan(value) and (best is None or (value > best["value"] if mode == "max"
                                                                 else value < best["value"]))
        if improved:
            progress["best"] = {"value": value, "step": progress["step"], "epoch": self.epochs_done(),
                                "metrics": values}
            self.best_state = _clone_state(self.model)
        if restore is not None:
            restore()
        self.optimizer.observe(value if mode == "min" else -value)
        self.task.after_validation(improved, self.optimizer)
        self.log.write({"split": "val", "epoch": self.epochs_done(), "step": progress["step"], **values,
                        "best": progress["best"]["value"] if progress["best"] else None,
                        "time": round(self.elapsed(), 3)})
        best = progress["best"]
        self.say(f"epoch {self.epochs_done():.2f} step {progress['step']}: val "
                 + " ".join(f"{k} {v:.4f}" for k, v in values.items())
                 + (f" | best {metric} {best['value']:.4f} at step {best['step']}" if best else "")
                 + f" | {self.elapsed():.0f} s")

    def log_train_window(self) -> None:
        progress = self.progress
        window = progress["window"]
        self.log.write({"split": "train", "epoch": self.epochs_done(), "step": progress["step"],
                        **{k: total / count for k, (total, count) in window.items()},
                        "lr": self.optimizer.param_groups[0]["lr"],
                        "examples_per_s": round(progress["window_examples"] / max(progress["window_time"], 1e-9), 1),
                        "time": round(self.elapsed(), 3)})
        progress["window"], progress["window_examples"], progress["window_time"] = {}, 0, 0.0

    # -- the run directory
    def checkpoint(self) -> None:
        progress, ranks = self.progress, self.ranks
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            self.diverged("the weights are not finite")
        progress["train_time"] = self.elapsed()
        self.log.sync()                                 # the rows are on disk before their offset is recorded
        progress["metrics_bytes"] = self.log.offset
        progress["world_size"] = ranks.world
        if self.task.carries_state:                     # every rank's, gathered
            carried = self.task.carry_state()
            progress["task_state"] = carried if ranks.world == 1 else ranks.gather(carried)
        rng = rng_state() if ranks.world == 1 else {"ranks": ranks.gather(rng_state())}
        if ranks.main:
            save_checkpoint(self.run_dir, model_state=self.model.state_dict(), best_state=self.best_state,
                            optimizer_state=self.optimizer.state_dict(), progress=progress, rng=rng,
                            fingerprint=self.fingerprint, identity=self.identity)
        self.last_checkpoint_step = progress["step"]

    def diverged(self, what: str) -> None:
        """Stop: keep the last checkpoint (good weights), record the run as diverged."""
        step = self.progress["step"]
        self.close("diverged", f"{what} at step {step}", None)
        raise Diverged(f"training diverged: {what} at step {step} (epoch {self.epochs_done():.2f}). The run stops "
                       f"here; its last checkpoint, at step {self.last_checkpoint_step}, holds finite weights. A "
                       f"resume would repeat the same steps: start a new run with a lower --lr, clipping (--clip) "
                       f"or other settings.")

    def close(self, status: str, stop, test) -> dict:
        """Close the metrics log and write the summary; return it."""
        self.log.close()
        built = self.built_earlier + cpu_kernels.build_seconds() - self.build_before
        self.progress["one_time_s"] = {_BUILD: round(built, 2)} if built else {}
        summary = _summary(self.config, self.task, self.parameters, self.progress, self.epochs_done(), self.elapsed(),
                           status, stop, test)
        if self.ranks.main:
            atomic_write_json(self.run_dir / "summary.json", summary)
        return summary

    def elapsed(self) -> float:
        return self.time_before + time.perf_counter() - self.session_start

    def epochs_done(self) -> float:
        return round(self.progress["epoch"] + self.progress["position"] / self.steps_per_epoch, 4)


def _quick_run_hint(config: dict, task, steps_per_epoch: int) -> str | None:
    """A note when evaluating will take much longer than training (a smoke run on full
    validation and test splits), saying how to make it quick."""
    if not task.steps_take_examples:                    # ptb's steps are chunks of tokens, not examples
        return None
    steps = config["epochs"] * steps_per_epoch
    if config.get("max_steps"):
        steps = min(steps, config["max_steps"])
    trained = steps * config["batch_size"]
    interval = config.get("eval_every") or steps_per_epoch
    evaluated = task.size("val") * max(1, math.ceil(steps / interval)) + task.size("test")
    if evaluated <= 10 * trained or (config.get("val_subset") and config.get("test_subset")):
        return None
    return (f"note: this run trains on {trained:,} examples and evaluates {evaluated:,} (validation and test); "
            f"for a quick run add --val-subset 500 --test-subset 500")


def _summary(config, task, parameters, progress, epochs, wall, status, stop, test) -> dict:
    metric, mode = task.selection
    best = progress["best"]
    return {
        "task": config["task"], "model": config["model"], "parameters": parameters,
        "hidden_size": config["hidden_size"], "seed": config["seed"], "preset": config.get("preset"),
        "status": status, "stop_reason": stop,
        "selection": {"metric": metric, "mode": mode},
        "best_val": best["value"] if best else None,
        "best_val_epoch": best["epoch"] if best else None,
        "best_val_step": best["step"] if best else None,
        "best_val_metrics": best["metrics"] if best else None,
        "test_at_best_val": test[metric] if test else None,
        "test_metrics": test,
        "epochs": epochs, "steps": progress["step"], "wall_time_s": round(wall, 2),
        "one_time_s": progress.get("one_time_s") or {},
        "train_size": task.size("train"), "val_size": task.size("val"), "test_size": task.size("test"),
    }


def _printer(quiet: bool):
    def say(message: str) -> None:
        if quiet:
            return
        try:
            from tqdm import tqdm
            tqdm.write(message, file=sys.stderr)
        except ImportError:
            print(message, file=sys.stderr)
    return say


def _bar(quiet, progress, config, steps_per_epoch, n_train):
    """A tqdm bar over one epoch's examples (loss, examples/s, ETA); None when quiet or
    when stderr is not a terminal."""
    if quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    batch = config["batch_size"]
    steps = steps_per_epoch - progress["position"]
    if config.get("max_steps"):
        steps = min(steps, max(config["max_steps"] - progress["step"], 0))
    done = min(progress["position"] * batch, n_train)
    return tqdm(total=min(done + steps * batch, n_train), initial=done, unit="ex", unit_scale=True, leave=False,
                desc=f"epoch {progress['epoch'] + 1}/{config['epochs']}", dynamic_ncols=True, file=sys.stderr)
