"""Sweep points as jobs of a scheduler, through submitit: ``sweep --launcher slurm``.

    momentumrnn sweep --task psmnist --models lstm,momentum-lstm --seeds 0-4 --preset paper \\
        --launcher slurm --slurm-partition gpu --slurm-time 12h --slurm-gpus-per-job 1 --out runs/psmnist

Each job runs ``--points-per-job`` points one after another (default 1), each as the same
``momentumrnn train`` command the local launcher runs, into the same run directories: a
point that finished is skipped, one with a checkpoint is resumed, the rest start. With
``--slurm-gpus-per-job`` above 1 each point is one ``torchrun`` run over the job's GPUs.
``--launcher local-submitit`` runs the jobs on this machine through submitit's local
executor, to try a cluster sweep before it leaves the machine.

``SWEEP_DIR/jobs.json`` records every job submitted (its id and points), and
``sweep.json`` the launcher's settings; submitit keeps its files in ``SWEEP_DIR/submitit``.
The sweep waits for its jobs and prints their progress (``--no-wait``: submit, print, exit).
``sweep --resume`` asks the scheduler for the state of each recorded job: points of queued
or running jobs are followed, not submitted again; points whose job ended without
finishing them (failed, cancelled, timed out, lost with its node) are submitted again and
resume from their checkpoints. Stopping the sweep (Ctrl-C) leaves Slurm jobs running.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from .checkpoint import atomic_write_json
from .config import ConfigError
from .rundir import RunError
from .sweep_runs import die_with_parent, run_directory, run_status, sort_points, start_command

__all__ = ["SubmititLauncher", "run_points", "job_state", "alive_jobs", "ALIVE"]
#: Scheduler states of a job that will still run its points (Slurm's, and ours for a local job).
ALIVE = ("PENDING", "CONFIGURING", "REQUEUED", "RESIZING", "SUSPENDED", "RUNNING", "COMPLETING")


def run_points(out: str, names: list[str], gpus: int = 0, threads: int | None = None) -> dict[str, int]:
    """The body of one job: run the sweep's points ``names`` in turn, each by the rule of
    the local launcher (skip finished, resume a checkpoint, start the rest); return each
    point's exit status. With ``gpus`` > 1 a point runs as ``torchrun`` over them. CPU
    threads: ``threads``, else the job's cores on Slurm, unless the train flags set them."""
    threads = threads or int(os.environ.get("SLURM_CPUS_PER_TASK", "0")) or None
    record = json.loads((Path(out) / "sweep.json").read_text())
    statuses = {}
    for name in names:
        command = start_command(run_directory(out, name), shlex.split(record["commands"][name]))
        if command is None:                              # finished (or diverged) already
            continue
        command += ["--quiet"] + (["--threads", str(threads)] if threads and "--threads" not in command else [])
        if gpus > 1:
            argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
                    "-m", "momentumrnn"] + command[1:]
        else:
            argv = [sys.executable, "-m", "momentumrnn"] + command[1:]
        with open(Path(out) / "logs" / f"{name}.log", "a") as log:
            log.write(f"$ {shlex.join(command)}\n")
            log.flush()
            statuses[name] = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            preexec_fn=die_with_parent if os.name == "posix" else None).returncode
    return statuses


class SubmititLauncher:
    """Submits the points of a sweep as submitit jobs and follows them (module docstring)."""

    def __init__(self, cluster: str, *, partition: str | None = None, time_min: int | None = None,
                 gpus_per_job: int = 0, cpus_per_job: int | None = None, setup: list[str] | None = None,
                 points_per_job: int = 1, wait: bool = True, poll_s: float = 5.0):
        if cluster not in ("slurm", "local"):
            raise ConfigError(f"submitit launchers run on slurm or local, not {cluster!r}")
        if points_per_job < 1:
            raise ConfigError(f"--points-per-job must be >= 1, got {points_per_job}")
        if gpus_per_job < 0 or (cpus_per_job is not None and cpus_per_job < 1):
            raise ConfigError("--slurm-gpus-per-job must be >= 0 and --slurm-cpus-per-job >= 1")
        if time_min is not None and time_min < 1:
            raise ConfigError(f"--slurm-time must be at least one minute, got {time_min} min")
        self.cluster, self.partition, self.time_min = cluster, partition, time_min
        self.gpus_per_job, self.cpus_per_job, self.setup = gpus_per_job, cpus_per_job, list(setup or [])
        self.points_per_job, self.wait, self.poll_s = points_per_job, wait, poll_s

    @property
    def name(self) -> str:
        return "slurm" if self.cluster == "slurm" else "local-submitit"

    def record(self) -> dict:
        """The launcher's settings, as ``sweep.json`` keeps them."""
        return {"name": self.name, "points_per_job": self.points_per_job, "partition": self.partition,
                "time_min": self.time_min, "gpus_per_job": self.gpus_per_job, "cpus_per_job": self.cpus_per_job,
                "setup": self.setup}

    # -------------------------------------------------------------------------- running
    def run(self, sweep, out: Path, say) -> int:
        """Submit the points that need a job, then follow every job of the sweep."""
        jobs = _read_jobs(out)
        alive = self._alive_points(out, jobs)
        done, failed, rest = sort_points(out, sweep.points)
        to_submit = [point.name for point in rest if point.name not in alive]
        say(f"sweep {out}: {len(sweep.points)} runs, {len(done)} finished, {len(failed)} failed before, "
            f"{len(alive)} in jobs still queued or running, {len(to_submit)} to submit ({self.name}, "
            f"{self.points_per_job} per job)")
        if to_submit:
            executor = self._executor(out)
            batches = [to_submit[i:i + self.points_per_job] for i in range(0, len(to_submit), self.points_per_job)]
            with executor.batch():
                submitted = [executor.submit(run_points, str(out), names, self.gpus_per_job, self.cpus_per_job)
                             for names in batches]
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            for job, names in zip(submitted, batches):
                jobs.append({"job_id": str(job.job_id), "launcher": self.name, "points": names, "submitted": now})
                say(f"submitted job {job.job_id}: {', '.join(names)}")
            atomic_write_json(out / "jobs.json", jobs)
        if not self.wait:
            say(f"submitted; follow the jobs with momentumrnn sweep ... --out {out} --resume")
            return 0
        return self._follow(sweep, out, jobs, say)

    def _follow(self, sweep, out: Path, jobs: list[dict], say) -> int:
        stop = {"signal": None}

        def request_stop(signum, frame):
            stop["signal"] = signal.Signals(signum).name

        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        last = None
        try:
            while not stop["signal"]:
                states = {job["job_id"]: job_state(out, job) for job in jobs}
                running = [j for j in jobs if states[j["job_id"]] in ALIVE]
                line = (f"  jobs: {len(running)} queued or running, {len(jobs) - len(running)} ended; "
                        + ", ".join(f"{sum(1 for s in states.values() if s == k)} {k.lower()}"
                                    for k in sorted(set(states.values()))))
                if line != last:
                    say(line)
                    last = line
                if not running:
                    break
                time.sleep(self.poll_s)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if stop["signal"]:
            say(f"sweep stopped by {stop['signal']}; its jobs were not cancelled: follow them with "
                f"momentumrnn sweep ... --out {out} --resume")
            return 130
        statuses = {p.name: run_status(run_directory(out, p.name)) for p in sweep.points}
        done = [n for n, s in statuses.items() if s == "finished"]
        failed = [n for n, s in statuses.items() if s == "diverged"]
        lost = [n for n, s in statuses.items() if s not in ("finished", "diverged")]
        if failed or lost:
            parts = ([f"{len(failed)} failed ({', '.join(failed)})"] if failed else []) + \
                ([f"{len(lost)} did not finish in their jobs ({', '.join(lost)}): see logs/ and submitit/, "
                  f"then submit them again with momentumrnn sweep ... --resume"] if lost else [])
            say(f"{len(done)} of {len(sweep.points)} runs finished; {'; '.join(parts)}")
            return 1
        say(f"all {len(sweep.points)} runs finished; compare them with: momentumrnn report {out} --out REPORT_DIR")
        return 0

    # -------------------------------------------------------------------------- jobs
    def _executor(self, out: Path):
        try:
            import submitit
        except ImportError:
            raise ConfigError("--launcher slurm and local-submitit need submitit: pip install momentumrnn[slurm]") \
                from None
        executor = submitit.AutoExecutor(folder=str(out / "submitit" / "%j"), cluster=self.cluster)
        if (out / "submitit" / "%j").is_dir() and not any((out / "submitit" / "%j").iterdir()):
            (out / "submitit" / "%j").rmdir()            # an empty folder submitit's executor leaves
        parameters = {"name": f"momentumrnn-{out.name}", "gpus_per_node": self.gpus_per_job,
                      "tasks_per_node": 1, "nodes": 1}
        if self.time_min is not None:
            parameters["timeout_min"] = self.time_min
        if self.cpus_per_job is not None:
            parameters["cpus_per_task"] = self.cpus_per_job
        if self.cluster == "slurm":
            parameters.update(slurm_setup=self.setup, **({"slurm_partition": self.partition} if self.partition else {}))
        executor.update_parameters(**parameters)
        return executor

    def _alive_points(self, out: Path, jobs: list[dict]) -> set[str]:
        """The points of recorded jobs that are queued or running now."""
        alive = set()
        for job in jobs:
            if job_state(out, job) in ALIVE:
                alive.update(job["points"])
        return alive


def job_state(out: Path, job: dict) -> str:
    """The scheduler's state of a recorded job, in Slurm's words (``RUNNING``, ``PENDING``,
    ``COMPLETED``, ``FAILED``, ...; ``UNKNOWN`` when the scheduler no longer knows it)."""
    if job.get("launcher") == "local-submitit":
        return _local_state(out, job)
    import submitit

    try:
        return submitit.SlurmJob(folder=str(out / "submitit" / "%j"), job_id=job["job_id"]).state.split()[0]
    except Exception:                                    # sacct unreachable, or the job unknown to it
        return "UNKNOWN"


def _local_state(out: Path, job: dict) -> str:
    """A job of submitit's local executor: its process is this machine's, id = its pid."""
    try:
        pid = int(job["job_id"])
        os.kill(pid, 0)
        with open(f"/proc/{pid}/cmdline", "rb") as f:    # the pid may be reused by another program
            alive = b"submitit" in f.read()
    except (OSError, ValueError):
        alive = False
    if alive:
        return "RUNNING"
    return "COMPLETED" if any((out / "submitit" / job["job_id"]).glob("*_result.pkl")) else "UNKNOWN"


def _read_jobs(out: Path) -> list[dict]:
    path = out / "jobs.json"
    if not path.exists():
        return []
    try:
        jobs = json.loads(path.read_text())
        assert isinstance(jobs, list) and all({"job_id", "points"} <= set(j) for j in jobs)
    except (OSError, ValueError, AssertionError, TypeError) as error:
        raise RunError(f"{path} is not a readable job record ({error or 'wrong shape'}); move it away to submit "
                       f"every unfinished point again") from None
    return jobs


def alive_jobs(out: Path) -> list[str]:
    """The ids of the sweep's recorded jobs that are queued or running now."""
    return [job["job_id"] for job in _read_jobs(out) if job_state(out, job) in ALIVE]
