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
one a line. The exit status is 0 when every run finished, 1 when any failed (its log's tail
is shown) or was stopped from outside the sweep, 130 when the sweep was stopped.

Where the runs go is the launcher's business: ``LocalLauncher`` here (the subprocesses
above), or ``submitit_launcher.SubmititLauncher`` (Slurm jobs, or submitit's local
executor). Both bring a point on by ``start_command``.

Refused before anything runs (``ConfigError``, one line): a train flag that sets a grid key
or a control's setting, a repeated grid value, a grid key no model takes or that the sweep
sets itself, a backwards or oversized seed range, an empty or repeated model list, a run
name longer than a file name may be.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .checkpoint import atomic_write_json
from .config import MAX_SEED, ConfigError, identity, parse_device, resolve_config
from .models import rule_hyperparameters
from .rundir import LockHeld, RunError, hold_lock
from .sweep_runs import die_with_parent, run_directory, run_status, sort_points, start_command

__all__ = ["Point", "Sweep", "LocalLauncher", "plan_sweep", "run_sweep", "parse_seeds", "parse_grid", "CONTROLS"]

#: The controls ``--control`` adds for every momentum point.
CONTROLS = ("mu0", "gain")
#: Flags the sweep sets itself, refused among the train flags.
_OWN_FLAGS = ("--task", "--model", "--out", "--resume", "--seed", "--device", "--quiet")
#: Train flags the sweep sets for every run from its own options (a --grid of them would be overridden).
_SET_BY_SWEEP = ("--threads",)
#: The settings a control sets, which a train flag must not override.
_CONTROL_KEYS = ("momentum", "step_size")
#: At most this many seeds; a run name (a directory) at most this many bytes.
MAX_SEEDS = 10_000
MAX_NAME_BYTES = 255


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
    notes: list[str] = field(default_factory=list)

    def definition(self) -> dict:
        return {"task": self.task, "models": self.models, "seeds": self.seeds, "grid": self.grid,
                "controls": self.controls, "train_flags": self.train_flags, "preset": self.preset}


# ----------------------------------------------------------------------------- parsing
def parse_seeds(text: str) -> list[int]:
    """``"0-2"`` -> [0, 1, 2]; ``"0,3,7"`` -> [0, 3, 7]; ranges and lists mix. A backwards
    range, a seed named twice, a seed outside [0, 2**32 - 1] and more than ``MAX_SEEDS``
    seeds are refused."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part.strip()[1:]:
                low, high = (int(v) for v in part.split("-", 1))
                if high < low:
                    raise ConfigError(f"--seeds range {part.strip()!r} runs backwards; write {high}-{low}")
                if high - low + 1 + len(seeds) > MAX_SEEDS:
                    raise ConfigError(f"--seeds {text!r} names more than {MAX_SEEDS:,} seeds")
                seeds += range(low, high + 1)
            else:
                seeds.append(int(part))
    except ValueError as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"--seeds takes integers and ranges like 0-2 or 0,3,7, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds must name each seed once, got {text!r}")
    outside = [seed for seed in seeds if not 0 <= seed <= MAX_SEED]
    if outside:
        raise ConfigError(f"--seeds must be integers in [0, 2**32 - 1], got {outside[0]}")
    if len(seeds) > MAX_SEEDS:
        raise ConfigError(f"--seeds {text!r} names more than {MAX_SEEDS:,} seeds")
    return seeds


def parse_grid(items: list[str], flag_types: dict) -> dict[str, list]:
    """``["momentum=0,0.3", "step-size=0.6"]`` -> ``{"momentum": [0.0, 0.3], "step_size": [0.6]}``
    with each value parsed by its train flag's type. A key the sweep sets itself and a
    value given twice are refused."""
    grid: dict[str, list] = {}
    for item in items:
        key, sep, values = item.partition("=")
        flag = "--" + key.strip().replace("_", "-")
        if not sep or not values.strip():
            raise ConfigError(f"--grid takes KEY=V1,V2,..., got {item!r}")
        if flag not in flag_types:
            raise ConfigError(f"--grid {key}: not a train setting (see momentumrnn train --help)")
        if flag in _OWN_FLAGS or flag in _SET_BY_SWEEP:
            raise ConfigError(f"--grid {key}: the sweep sets {flag} itself"
                              + (" (use --devices and --jobs-per-device)" if flag in _SET_BY_SWEEP else ""))
        name = flag[2:].replace("-", "_")
        if name in grid:
            raise ConfigError(f"--grid {key} is given twice")
        try:
            grid[name] = [flag_types[flag](v.strip()) for v in values.split(",")]
        except (ValueError, TypeError, argparse.ArgumentTypeError) as error:
            raise ConfigError(f"--grid {item!r}: {error}") from None
        repeated = sorted({_format(v) for v in grid[name] if grid[name].count(v) > 1})
        if repeated:
            raise ConfigError(f"--grid {item!r} gives the value {', '.join(repeated)} twice")
    return grid


def _format(value) -> str:
    """The shortest text that reads back as ``value``: ``repr`` of a float without a
    trailing ``.0`` (0.6 -> 0.6, 0.0 -> 0, 0.0010000001 -> 0.0010000001)."""
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    return str(value)


def _point_name(model: str, settings: dict, seed: int) -> str:
    parts = [model] + [f"{k.replace('_', '-')}={_format(v)}" for k, v in sorted(settings.items())]
    name = "_".join(parts + [f"seed={seed}"])
    if len(name.encode()) > MAX_NAME_BYTES:
        raise ConfigError(f"the run name {name[:60]}... is {len(name.encode())} bytes, more than a file name may "
                          f"have ({MAX_NAME_BYTES}); sweep fewer settings at once")
    return name


# ----------------------------------------------------------------------------- planning
def plan_sweep(task: str, models: list[str], seeds: list[int], grid: dict[str, list], controls: list[str],
               train_flags: list[str], preset: str | None, overrides_of) -> Sweep:
    """The points of a sweep. ``overrides_of(flags)`` turns train flags into config overrides
    (the command line's own parsing), so that every point is resolved, and checked, now.

    Refused: no model or a model named twice; a grid key that no model takes; a train flag
    that sets a grid key, or a setting of a control (it would override them in every run).
    A point that resolves to the configuration of an earlier one (a mu0 control equal to a
    grid point of momentum 0) is run once; ``Sweep.notes`` says so."""
    unknown = sorted(set(controls) - set(CONTROLS))
    if unknown:
        raise ConfigError(f"--control takes {', '.join(CONTROLS)}, got {', '.join(unknown)}")
    if not models:
        raise ConfigError("--models names no model (e.g. --models lstm,momentum-lstm)")
    repeated = sorted({m for m in models if models.count(m) > 1})
    if repeated:
        raise ConfigError(f"--models names {', '.join(repeated)} twice")
    sweep = Sweep(task, models, seeds, grid, sorted(set(controls)), train_flags, preset)
    base = overrides_of(train_flags)
    _refuse_collisions(base, grid, sweep.controls)
    names: set[str] = set()
    runs: dict[str, str] = {}                            # resolved identity -> the point that runs it

    def add(point: Point, config: dict) -> None:
        key = json.dumps(identity(config), sort_keys=True, default=str)
        if key in runs:
            sweep.notes.append(f"{point.name} is the same run as {runs[key]}: it runs once")
            return
        if point.name in names:                          # lossless names make this a bug, never a merge
            raise ConfigError(f"two different runs would share the name {point.name}")
        runs[key] = point.name
        names.add(point.name)
        sweep.points.append(point)

    taken_keys: set[str] = set()
    for model in models:
        applies = resolve_config(task, model)           # the settings the model takes on this task
        keys = [k for k in grid if k in applies]
        taken_keys.update(keys)
        for values in itertools.product(*(grid[k] for k in keys)):
            settings = dict(zip(keys, values))
            for seed in seeds:
                config = resolve_config(task, model, {**base, **settings, "seed": seed}, preset)
                point = Point(_point_name(model, settings, seed), model, seed, settings)
                add(point, config)
                mu = config.get("momentum")
                if not mu or "momentum" not in rule_hyperparameters(model):
                    continue
                s = config["step_size"]
                for control in sweep.controls:
                    step = s if control == "mu0" else float(f"{s / (1.0 - mu):.12g}")
                    changed = {**settings, "momentum": 0.0, "step_size": step}
                    resolved = resolve_config(task, model, {**base, **changed, "seed": seed}, preset)
                    add(Point(_point_name(model, changed, seed), model, seed, changed, control, point.name), resolved)
    unused = [k for k in grid if k not in taken_keys]
    if unused:
        flag = "--" + unused[0].replace("_", "-")
        raise ConfigError(f"--grid {unused[0].replace('_', '-')}: none of the models ({', '.join(models)}) takes "
                          f"{flag} on task {task!r}, so the grid would change nothing")
    return sweep


def _refuse_collisions(base: dict, grid: dict, controls: list[str]) -> None:
    """A train flag may not set what the grid or a control sets in each run: the flag,
    passed to every run, would silently win over the point's own value."""
    for key in sorted(set(base) & set(grid)):
        flag = "--" + key.replace("_", "-")
        raise ConfigError(f"{flag} is set twice: by the train flag {flag} {base[key]} and by --grid "
                          f"{key.replace('_', '-')}={','.join(map(_format, grid[key]))}; give it in one place")
    for key in _CONTROL_KEYS if controls else ():
        if key in base:
            flag = "--" + key.replace("_", "-")
            raise ConfigError(f"{flag} is set twice: by the train flag {flag} {base[key]} and by --control "
                              f"{','.join(controls)}, which sets {flag} in its runs; give the value as --grid "
                              f"{key.replace('_', '-')}={_format(base[key])}")


def train_command(sweep: Sweep, point: Point, run_dir: Path) -> list[str]:
    """The ``momentumrnn train`` command of one point (without placement flags)."""
    command = ["momentumrnn", "train", "--task", sweep.task, "--model", point.model, "--seed", str(point.seed)]
    if sweep.preset:
        command += ["--preset", sweep.preset]
    for key, value in sorted(point.settings.items()):
        command += ["--" + key.replace("_", "-"), repr(value) if isinstance(value, float) else str(value)]
    return command + list(sweep.train_flags) + ["--out", str(run_dir)]


# ----------------------------------------------------------------------------- running
def _lock_is_free(run_dir: Path) -> bool:
    """Whether no process holds the run's lock. Raises ``RunError`` when the lock file
    cannot be used at all (it is a directory, say): waiting would never end."""
    if not os.path.lexists(run_dir / ".lock"):
        return True
    try:
        os.close(hold_lock(run_dir))
        return True
    except LockHeld:
        return False


class LocalLauncher:
    """Runs the points as ``momentumrnn train`` subprocesses of this process,
    ``jobs_per_device`` at a time on each of ``devices`` (module docstring)."""

    name = "local"

    def __init__(self, devices: list[str], jobs_per_device: int):
        if jobs_per_device < 1:
            raise ConfigError(f"--jobs-per-device must be >= 1, got {jobs_per_device}")
        self.devices, self.jobs_per_device = devices, jobs_per_device

    def record(self) -> dict:
        return {"name": self.name, "devices": self.devices, "jobs_per_device": self.jobs_per_device}

    def run(self, sweep: Sweep, out: Path, say) -> int:
        return _schedule(sweep, out, self.devices, self.jobs_per_device, say)


def run_sweep(sweep: Sweep, out: Path, *, launcher, resume: bool, command: list[str], quiet: bool = False) -> int:
    """Run the sweep's points into ``out`` with ``launcher`` (``LocalLauncher`` or
    ``submitit_launcher.SubmititLauncher``); return the exit status (module docstring)."""
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
        _adopt_saved_names(sweep, saved.get("points") or [])
        _refuse_a_second_launcher(out, saved.get("launcher") or {"name": "local"}, launcher)
    elif resume:
        raise RunError(f"nothing to resume: {record_path} does not exist")
    elif out.exists() and any(out.iterdir()):
        raise RunError(f"--out {out} is a non-empty directory that holds no sweep; choose a new or empty one")
    out.mkdir(parents=True, exist_ok=True)
    lock = hold_lock(out, resume=resume, command=command)
    try:
        (out / "logs").mkdir(exist_ok=True)
        if record_path.exists():                         # resumed: the launcher of this session
            record = {**json.loads(record_path.read_text()), "launcher": launcher.record()}
        else:
            record = {"definition": sweep.definition(), "points": [asdict(p) for p in sweep.points],
                      "commands": {p.name: shlex.join(train_command(sweep, p, run_directory(out, p.name)))
                                   for p in sweep.points},
                      "launcher": launcher.record(),
                      "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        atomic_write_json(record_path, record)
        return launcher.run(sweep, out, say)
    finally:
        os.close(lock)


def _refuse_a_second_launcher(out: Path, saved: dict, launcher) -> None:
    """A sweep resumed with another launcher while jobs of the first are queued or running
    would run their points twice."""
    if saved.get("name") == launcher.name or not (out / "jobs.json").exists():
        return
    from .submitit_launcher import alive_jobs

    alive = alive_jobs(out)
    if alive:
        raise RunError(f"{out} was launched with --launcher {saved.get('name')}, whose jobs {', '.join(alive)} are "
                       f"still queued or running; resume it with --launcher {saved.get('name')}, or cancel them")


def _adopt_saved_names(sweep: Sweep, saved_points: list) -> None:
    """Keep the run directories of a sweep recorded by an earlier version, whose names may
    be spelt otherwise (6 significant digits): a point takes the recorded name of the
    point with the same model, seed, settings and control."""
    def key(model, seed, settings, control) -> str:
        return json.dumps([model, seed, settings, control], sort_keys=True)

    try:
        recorded = {key(p["model"], p["seed"], p["settings"], p.get("control")): p["name"] for p in saved_points}
    except (KeyError, TypeError):
        return
    renamed = {}
    for point in sweep.points:
        renamed[point.name] = recorded.get(key(point.model, point.seed, point.settings, point.control), point.name)
    for point in sweep.points:
        point.name, point.of = renamed[point.name], renamed.get(point.of, point.of)


def _schedule(sweep: Sweep, out: Path, devices: list[str], jobs_per_device: int, say) -> int:
    cpu_jobs = jobs_per_device * sum(1 for d in devices if d == "cpu")
    threads = None
    if cpu_jobs and "--threads" not in sweep.train_flags:
        threads = max(1, (os.cpu_count() or 1) // cpu_jobs)
    slots = [device for device in devices for _ in range(jobs_per_device)]
    running, unfinished = {}, []
    done, failed, pending = sort_points(out, sweep.points)
    say(f"sweep {out}: {len(sweep.points)} runs, {len(done)} finished, {len(failed)} failed before, "
        f"{len(pending)} to run on {', '.join(devices)} ({jobs_per_device} per device)")
    stop = {"signal": None}

    def request_stop(signum, frame):
        stop["signal"] = signal.Signals(signum).name
        for process, _, _, _ in running.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    def next_point() -> Point | None:
        """The first pending point whose run directory no exiting process still holds; a
        point whose lock cannot be used fails with the reason."""
        for point in list(pending):
            try:
                if _lock_is_free(run_directory(out, point.name)):
                    pending.remove(point)
                    return point
            except RunError as error:
                pending.remove(point)
                failed.append(point.name)
                say(f"FAILED {point.name}: {error}")
        return None

    def progress():
        say(f"  {len(done)} finished, {len(running)} running, {len(failed)} failed, "
            f"{len(unfinished)} stopped, {len(pending)} waiting")

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    ended = False               # a run ended since the last progress line
    try:
        while pending or running:
            free = [i for i in range(len(slots)) if i not in running]
            for slot in free:
                if stop["signal"] or not pending:
                    break
                point = next_point()
                if point is None:                       # the runs left are held by exiting processes
                    break
                running[slot] = _launch(sweep, point, out, slots[slot], threads) + (point,)
            if ended:                                   # counted once the freed slots took their next runs
                progress()
                ended = False
            time.sleep(0.1)
            for slot, (process, log, started, point) in list(running.items()):
                if process.poll() is None:
                    continue
                log.close()
                del running[slot]
                seconds = time.time() - started
                status = run_status(run_directory(out, point.name))
                if process.returncode == 0 and status == "finished":
                    done.append(point.name)
                    say(f"finished {point.name} ({seconds:.0f} s)")
                elif stop["signal"]:
                    say(f"stopped {point.name}: checkpoint saved")
                elif process.returncode == 130:         # a signal from outside the sweep
                    unfinished.append(point.name)
                    say(f"STOPPED {point.name} from outside the sweep (exit status 130); its checkpoint is kept")
                else:
                    failed.append(point.name)
                    say(f"FAILED {point.name} (exit status {process.returncode}, run {status}); the end of "
                        f"{out / 'logs' / (point.name + '.log')}:\n" + _tail(out / "logs" / (point.name + ".log")))
                ended = True
            if stop["signal"] and not running:
                break
        if ended:
            progress()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stop["signal"]:
        say(f"sweep stopped by {stop['signal']}: continue with momentumrnn sweep ... --out {out} --resume")
        return 130
    if failed or unfinished:
        parts = ([f"{len(failed)} failed ({', '.join(failed)})"] if failed else []) + \
            ([f"{len(unfinished)} stopped from outside ({', '.join(unfinished)})"] if unfinished else [])
        say(f"{len(done)} of {len(sweep.points)} runs finished; {'; '.join(parts)}"
            + ("; continue them with momentumrnn sweep ... --resume" if unfinished else ""))
        return 1
    say(f"all {len(sweep.points)} runs finished; compare them with: momentumrnn report {out} --out REPORT_DIR")
    return 0


def _launch(sweep: Sweep, point: Point, out: Path, device: str, threads: int | None):
    run_dir = run_directory(out, point.name)
    command = start_command(run_dir, train_command(sweep, point, run_dir)) or train_command(sweep, point, run_dir)
    command += ["--device", device, "--quiet"] + (["--threads", str(threads)] if threads and device == "cpu" else [])
    log = open(out / "logs" / f"{point.name}.log", "a")
    log.write(f"$ {shlex.join(command)}\n")
    log.flush()
    argv = [sys.executable, "-m", "momentumrnn"] + command[1:]
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               preexec_fn=die_with_parent if os.name == "posix" else None)
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
