"""``momentumrnn sweep``: models x settings x seeds (and controls) as ``train`` runs.

    momentumrnn sweep --task adding --models lstm,momentum-lstm --seeds 0-2 \\
        --grid momentum=0.3,0.6 --control mu0 --control gain --max-steps 300 --out runs/sweep

Layout of ``SWEEP_DIR``::

    sweep.json          the sweep's definition and its points (model, seed, settings, command)
    NAME/               one ``train`` run directory per point, NAME from its settings
    logs/NAME.log       the run's console output
    .lock               held by the sweep process

A point is a model, a seed and the grid's settings that apply to the model (a grid of
``momentum`` leaves ``lstm`` with one point per seed). Controls separate momentum from a
rescaled input: for every point whose model takes ``momentum`` and resolves to mu > 0,
``--control mu0`` adds the same model with mu = 0 and the same s, ``--control gain`` with
mu = 0 and s / (1 - mu), the steady-state gain of the input in ``v_t = mu v_{t-1} + s u_t``.

Runs are ``momentumrnn train`` subprocesses, ``--jobs-per-device`` at a time on each of
``--devices``; CPU jobs share the cores (``--threads`` = cores / jobs unless given). Each
child runs in its own session and gets SIGTERM when the sweep is stopped (Ctrl-C, SIGTERM)
or dies (Linux): it finishes its step, checkpoints and exits. ``sweep --resume`` on the same
``SWEEP_DIR`` skips finished runs, resumes interrupted ones from their checkpoints and
starts the rest. ``--dry-run`` prints each point's ``momentumrnn train`` command instead,
one a line, for a cluster scheduler. The exit status is 0 when every run finished, 1 when
any failed (its log's tail is shown), 130 when the sweep was stopped.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .checkpoint import atomic_write_json, has_checkpoint
from .config import ConfigError, parse_device, resolve_config
from .models import rule_hyperparameters
from .rundir import RunError, hold_lock

__all__ = ["Point", "Sweep", "plan_sweep", "run_sweep", "run_directory", "parse_seeds", "parse_grid", "CONTROLS"]

#: The controls ``--control`` adds for every momentum point.
CONTROLS = ("mu0", "gain")
#: Flags the sweep sets itself, refused among the train flags.
_OWN_FLAGS = ("--task", "--model", "--out", "--resume", "--seed", "--device", "--quiet")


@dataclass
class Point:
    """One run of the sweep: ``model`` at ``seed`` with ``settings`` (config keys set by the
    grid or the control). ``control`` names the control and ``of`` the point it controls."""

    name: str
    model: str
    seed: int
    settings: dict
    control: str | None = None
    of: str | None = None


@dataclass
class Sweep:
    """A sweep's definition (what ``--resume`` must repeat) and its points."""

    task: str
    models: list[str]
    seeds: list[int]
    grid: dict[str, list]
    controls: list[str]
    train_flags: list[str]
    preset: str | None
    points: list[Point] = field(default_factory=list)

    def definition(self) -> dict:
        return {"task": self.task, "models": self.models, "seeds": self.seeds, "grid": self.grid,
                "controls": self.controls, "train_flags": self.train_flags, "preset": self.preset}


# ----------------------------------------------------------------------------- parsing
def parse_seeds(text: str) -> list[int]:
    """``"0-2"`` -> [0, 1, 2]; ``"0,3,7"`` -> [0, 3, 7]; ranges and lists mix."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part.strip()[1:]:
                low, high = part.split("-", 1)
                seeds += range(int(low), int(high) + 1)
            else:
                seeds.append(int(part))
    except ValueError:
        raise ConfigError(f"--seeds takes integers and ranges like 0-2 or 0,3,7, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds must name each seed once, got {text!r}")
    return seeds


def parse_grid(items: list[str], flag_types: dict) -> dict[str, list]:
    """``["momentum=0,0.3", "step-size=0.6"]`` -> ``{"momentum": [0.0, 0.3], "step_size": [0.6]}``
    with each value parsed by its train flag's type."""
    grid: dict[str, list] = {}
    for item in items:
        key, sep, values = item.partition("=")
        flag = "--" + key.strip().replace("_", "-")
        if not sep or not values.strip():
            raise ConfigError(f"--grid takes KEY=V1,V2,..., got {item!r}")
        if flag not in flag_types:
            raise ConfigError(f"--grid {key}: not a train setting (see momentumrnn train --help)")
        if flag in _OWN_FLAGS:
            raise ConfigError(f"--grid {key}: the sweep sets {flag} itself")
        name = flag[2:].replace("-", "_")
        if name in grid:
            raise ConfigError(f"--grid {key} is given twice")
        try:
            grid[name] = [flag_types[flag](v.strip()) for v in values.split(",")]
        except (ValueError, TypeError) as error:
            raise ConfigError(f"--grid {item!r}: {error}") from None
    return grid


def run_directory(out, name: str) -> Path:
    """The run directory of point ``name`` in sweep directory ``out``."""
    return Path(out) / name


def _format(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _point_name(model: str, settings: dict, seed: int) -> str:
    parts = [model] + [f"{k.replace('_', '-')}={_format(v)}" for k, v in sorted(settings.items())]
    return "_".join(parts + [f"seed={seed}"])


# ----------------------------------------------------------------------------- planning
def plan_sweep(task: str, models: list[str], seeds: list[int], grid: dict[str, list], controls: list[str],
               train_flags: list[str], preset: str | None, overrides_of) -> Sweep:
    """The points of a sweep. ``overrides_of(flags)`` turns train flags into config overrides
    (the command line's own parsing), so that every point is resolved, and checked, now."""
    unknown = sorted(set(controls) - set(CONTROLS))
    if unknown:
        raise ConfigError(f"--control takes {', '.join(CONTROLS)}, got {', '.join(unknown)}")
    sweep = Sweep(task, models, seeds, grid, sorted(set(controls)), train_flags, preset)
    base = overrides_of(train_flags)
    taken = set()

    def add(point: Point) -> None:
        if point.name not in taken:
            taken.add(point.name)
            sweep.points.append(point)

    for model in models:
        applies = resolve_config(task, model)           # the settings the model takes on this task
        keys = [k for k in grid if k in applies]
        for values in itertools.product(*(grid[k] for k in keys)):
            settings = dict(zip(keys, values))
            for seed in seeds:
                config = resolve_config(task, model, {**base, **settings, "seed": seed}, preset)
                point = Point(_point_name(model, settings, seed), model, seed, settings)
                add(point)
                mu = config.get("momentum")
                if not mu or "momentum" not in rule_hyperparameters(model):
                    continue
                s = config["step_size"]
                for control in sweep.controls:
                    step = s if control == "mu0" else float(f"{s / (1.0 - mu):.12g}")
                    changed = {**settings, "momentum": 0.0, "step_size": step}
                    resolve_config(task, model, {**base, **changed, "seed": seed}, preset)
                    add(Point(_point_name(model, changed, seed), model, seed, changed, control, point.name))
    return sweep


def train_command(sweep: Sweep, point: Point, run_dir: Path) -> list[str]:
    """The ``momentumrnn train`` command of one point (without placement flags)."""
    command = ["momentumrnn", "train", "--task", sweep.task, "--model", point.model, "--seed", str(point.seed)]
    if sweep.preset:
        command += ["--preset", sweep.preset]
    for key, value in sorted(point.settings.items()):
        command += ["--" + key.replace("_", "-"), repr(value) if isinstance(value, float) else str(value)]
    return command + list(sweep.train_flags) + ["--out", str(run_dir)]


# ----------------------------------------------------------------------------- running
def _run_status(run_dir: Path) -> str:
    """``finished``, ``diverged``, ``resume`` (a checkpoint to continue), ``stale`` (a run
    directory without a checkpoint: a start that died) or ``new``."""
    summary = run_dir / "summary.json"
    if summary.exists():
        try:
            status = json.loads(summary.read_text()).get("status")
        except ValueError:
            status = None
        if status in ("finished", "diverged"):
            return status
    if has_checkpoint(run_dir):
        return "resume"
    return "stale" if run_dir.exists() else "new"


def _lock_is_free(run_dir: Path) -> bool:
    if not (run_dir / ".lock").exists():
        return True
    try:
        os.close(hold_lock(run_dir))
        return True
    except RunError:
        return False


def _die_with_parent() -> None:                         # in the child, before exec (Linux)
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)    # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_sweep(sweep: Sweep, out: Path, *, devices: list[str], jobs_per_device: int, resume: bool,
              command: list[str], quiet: bool = False) -> int:
    """Run the sweep's points into ``out``; return the exit status (module docstring)."""
    out = Path(out)
    say = _say(quiet)
    record_path = out / "sweep.json"
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file, not a directory")
    if record_path.exists():
        if not resume:
            raise RunError(f"{out} already holds a sweep: pass --resume to continue it, or choose another --out")
        try:
            saved = json.loads(record_path.read_text())
        except ValueError as error:
            raise RunError(f"{record_path} is not readable: {error}") from None
        if saved.get("definition") != sweep.definition():
            raise RunError(f"cannot resume {out} with a different sweep: it was defined as {saved.get('definition')}"
                           f"; now {sweep.definition()}")
    elif resume:
        raise RunError(f"nothing to resume: {record_path} does not exist")
    elif out.exists() and any(out.iterdir()):
        raise RunError(f"--out {out} is a non-empty directory that holds no sweep; choose a new or empty one")
    out.mkdir(parents=True, exist_ok=True)
    lock = hold_lock(out, resume=resume, command=command)
    try:
        (out / "logs").mkdir(exist_ok=True)
        record = {"definition": sweep.definition(), "points": [asdict(p) for p in sweep.points],
                  "commands": {p.name: shlex.join(train_command(sweep, p, run_directory(out, p.name)))
                               for p in sweep.points},
                  "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        if not record_path.exists():
            atomic_write_json(record_path, record)
        return _schedule(sweep, out, devices, jobs_per_device, say)
    finally:
        os.close(lock)


def _schedule(sweep: Sweep, out: Path, devices: list[str], jobs_per_device: int, say) -> int:
    cpu_jobs = jobs_per_device * sum(1 for d in devices if d == "cpu")
    threads = None
    if cpu_jobs and "--threads" not in sweep.train_flags:
        threads = max(1, (os.cpu_count() or 1) // cpu_jobs)
    slots = [device for device in devices for _ in range(jobs_per_device)]
    pending, running, done, failed = [], {}, [], []
    for point in sweep.points:
        status = _run_status(run_directory(out, point.name))
        if status == "finished":
            done.append(point.name)
        elif status == "diverged":
            failed.append(point.name)
        else:
            pending.append(point)
    say(f"sweep {out}: {len(sweep.points)} runs, {len(done)} finished, {len(failed)} failed before, "
        f"{len(pending)} to run on {', '.join(devices)} ({jobs_per_device} per device)")
    stop = {"signal": None}

    def request_stop(signum, frame):
        stop["signal"] = signal.Signals(signum).name
        for process, _, _, _ in running.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while pending or running:
            free = [i for i in range(len(slots)) if i not in running]
            for slot in free:
                if stop["signal"] or not pending:
                    break
                point = next((p for p in pending if _lock_is_free(run_directory(out, p.name))), None)
                if point is None:                       # the runs left are held by exiting processes
                    break
                pending.remove(point)
                running[slot] = _launch(sweep, point, out, slots[slot], threads) + (point,)
            time.sleep(0.1)
            for slot, (process, log, started, point) in list(running.items()):
                if process.poll() is None:
                    continue
                log.close()
                del running[slot]
                seconds = time.time() - started
                if process.returncode == 0:
                    done.append(point.name)
                    say(f"finished {point.name} ({seconds:.0f} s)")
                elif process.returncode == 130 or stop["signal"]:
                    say(f"stopped {point.name}: checkpoint saved")
                else:
                    failed.append(point.name)
                    say(f"FAILED {point.name} (exit status {process.returncode}); the end of "
                        f"{out / 'logs' / (point.name + '.log')}:\n" + _tail(out / "logs" / (point.name + ".log")))
                say(f"  {len(done)} finished, {len(running)} running, {len(failed)} failed, {len(pending)} waiting")
            if stop["signal"] and not running:
                break
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stop["signal"]:
        say(f"sweep stopped by {stop['signal']}: continue with momentumrnn sweep ... --out {out} --resume")
        return 130
    if failed:
        say(f"{len(failed)} of {len(sweep.points)} runs failed: {', '.join(failed)}")
        return 1
    say(f"all {len(sweep.points)} runs finished; compare them with: momentumrnn report {out} --out REPORT_DIR")
    return 0


def _launch(sweep: Sweep, point: Point, out: Path, device: str, threads: int | None):
    run_dir = run_directory(out, point.name)
    status = _run_status(run_dir)
    if status == "stale":                                # a start that died before its first checkpoint
        shutil.rmtree(run_dir)
    if status == "resume":
        command = ["momentumrnn", "train", "--out", str(run_dir), "--resume"]
    else:
        command = train_command(sweep, point, run_dir)
    command += ["--device", device, "--quiet"] + (["--threads", str(threads)] if threads and device == "cpu" else [])
    log = open(out / "logs" / f"{point.name}.log", "a")
    log.write(f"$ {shlex.join(command)}\n")
    log.flush()
    argv = [sys.executable, "-m", "momentumrnn"] + command[1:]
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               preexec_fn=_die_with_parent if os.name == "posix" else None)
    return process, log, time.time()


def _tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "    (no log)"
    return "\n".join("    " + line for line in text[-lines:])


def _say(quiet: bool):
    def say(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr, flush=True)
    return say


def parse_devices(text: str) -> list[str]:
    """``"cpu"`` or ``"cuda:0,cuda:1"`` (``cuda`` alone is ``cuda:0``)."""
    devices = []
    for name in text.split(","):
        device = parse_device(name.strip())
        devices.append("cpu" if device.type == "cpu" else f"cuda:{device.index or 0}")
    if len(set(devices)) != len(devices):
        raise ConfigError(f"--devices names a device twice: {text!r}")
    return devices


def check_devices(devices: list[str]) -> None:
    """Each device present on this machine (``train.resolve_device``'s check)."""
    from .train import resolve_device

    for device in devices:
        resolve_device(device)
