"""The ``momentumrnn`` command line: ``train``, ``report``, ``gradients`` and ``list``.

    momentumrnn train --task adding --model momentum-lstm --out runs/mlstm --max-steps 300
    momentumrnn train --out runs/mlstm --resume --max-steps 600
    momentumrnn sweep --task adding --models lstm,momentum-lstm --seeds 0-2 --control mu0 --max-steps 300 \
        --out runs/sweep
    momentumrnn report runs/* --out runs/report
    momentumrnn gradients --task adding --model lstm --model momentum-lstm --out runs/gradients
    momentumrnn list [--preset paper]

Exit status: 0 done; 2 refused (a bad flag or value, a run directory, checkpoint or data
file that cannot be used: one line on stderr names the problem); 1 a run that failed
while training (its loss diverged) or a report with runs it could not read; 130
interrupted (the run saved a checkpoint); 141 the reader of stdout went away.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys

__all__ = ["main", "build_parser"]

# Flags whose value lands in the configuration under the same name (dashes -> underscores).
_CONFIG_FLAGS = [
    # (flag, type, help)
    ("--seed", int, "seed of the model initialization and of the data order (default 0)"),
    ("--data-seed", int, "seed of the validation hold-out and of synthetic data (default 0)"),
    ("--epochs", int, "number of epochs (default 10; paper preset 150)"),
    ("--max-steps", int, "stop after this many optimizer steps in all"),
    ("--train-subset", int, "train on the first N training examples only"),
    ("--val-subset", int, "validate on the first N validation examples only"),
    ("--test-subset", int, "test on the first N test examples only"),
    ("--hidden-size", int, "hidden units (default 128)"),
    ("--num-layers", int, "stacked recurrent layers (default 1)"),
    ("--batch-size", int, "training batch size (default 128)"),
    ("--eval-batch-size", int, "batch size for validation and test (default 256)"),
    ("--optimizer", str, "rmsprop (default), adam, sgd or ntasgd"),
    ("--lr", float, "learning rate (default 1e-3)"),
    ("--alpha", float, "RMSprop smoothing constant (default 0.99; paper preset 0.9)"),
    ("--weight-decay", float, "weight decay (default 0)"),
    ("--clip", float, "clip the gradient norm to this value, 0 = off (default 1.0)"),
    ("--init", str, "weight initialization: torch (default) or paper"),
    ("--forget-bias", float, "LSTM forget-gate bias with --init paper (default 1.0)"),
    ("--momentum", float, "mu, for momentum and Adam cells"),
    ("--step-size", float, "s, for every momentumrnn cell"),
    ("--beta", float, "decay of the squared average, for Adam and RMSProp cells"),
    ("--restart", int, "restart period r, for Nesterov and restart cells"),
    ("--orthogonal-init", str, "orthogonal models: skew-symmetric initialization, cayley (default) or henaff"),
    ("--trivialization", int, "orthogonal models: change of base every K optimizer steps, 0 = never (default 100)"),
    ("--lr-orth", float, "orthogonal models: RMSprop learning rate of the orthogonal parameters (default 1e-4)"),
    ("--base-change-gradient", str, "orthogonal models: the gradient on the step after a change of base: clean "
                                    "(at A = 0, default) or authors (at the absorbed A, as the authors' code; "
                                    "paper preset)"),
    ("--impl", str, "momentumrnn models: computation path, auto (default), loop, triton-loop (CUDA, experimental), reference, ... "
                    "(every path gives the same numbers to rounding)"),
    ("--val-size", int, "validation examples (MNIST: held out of the training set, default 5000)"),
    ("--train-size", int, "training examples of a synthetic task (default 20000)"),
    ("--test-size", int, "test examples of a synthetic task (default 2000)"),
    ("--delay", int, "copy task: blank steps between the symbols and their recall (default 100)"),
    ("--length", int, "adding task: sequence length (default 200)"),
    ("--permutation-seed", int, "psmnist: seed of the pixel permutation (default 0; paper preset: the run's --seed)"),
    ("--permutation", str, "psmnist: how the permutation is drawn: library (torch.randperm, default) or authors "
                           "(numpy.random.RandomState(seed).permutation(784), as their script; paper preset)"),
    ("--eval-every", int, "validate every N steps as well as at the end of each epoch"),
    ("--log-every", int, "write a training row to metrics.jsonl every N steps (default 50)"),
    ("--checkpoint-every", int, "checkpoint every N steps as well as every epoch, 0 = epochs only (default 100)"),
    ("--threads", int, "torch CPU threads"),
    # speech
    ("--normalize", str, "speech: standard (per-bin mean/std of the training split, default) or none"),
    # ptb
    ("--bptt", int, "ptb: truncated-BPTT chunk length (default 35; paper preset 70)"),
    ("--variable-bptt", lambda text: _yes_no(text), "ptb: AWD-LSTM's random chunk lengths, yes/no (default no)"),
    ("--bptt-cap", lambda text: _yes_no(text), "ptb with --variable-bptt: chunks of at most bptt + 40 tokens, yes/no "
                                                "(default yes, AWD-LSTM's; paper preset no, as the authors' script)"),
    ("--emb-size", int, "ptb: word embedding size (default 200; paper preset 400)"),
    ("--tied", lambda text: _yes_no(text), "ptb: tie the decoder to the embedding, yes/no (default no)"),
    ("--dropout", float, "ptb: locked dropout on the last layer's output (default 0)"),
    ("--dropouth", float, "ptb: locked dropout between recurrent layers (default 0)"),
    ("--dropouti", float, "ptb: locked dropout on the embedded input (default 0)"),
    ("--dropoute", float, "ptb: embedding dropout, whole words (default 0)"),
    ("--wdrop", float, "ptb: DropConnect on the recurrent weights weight_hh (default 0)"),
    ("--ar", float, "ptb: activation regularization weight (default 0; paper preset 2)"),
    ("--tar", float, "ptb: temporal activation regularization weight (default 0; paper preset 1)"),
    ("--lr-anneal", float, "ptb: divide the learning rate by this after a validation without improvement (1 = off)"),
    ("--nonmono", int, "ptb with --optimizer ntasgd: validations without progress before averaging (default 5)"),
    ("--test-batch-size", int, "ptb: batch size of the test evaluation (default: --eval-batch-size; paper preset 1)"),
    ("--restart-counter", str, "ptb: the restarted rules' step counter across bptt chunks: carry (default) or "
                               "reset (starts at 1 in every chunk, as the authors' cells; paper preset)"),
]


#: ``momentumrnn train --help`` in groups: (title, description, flags of ``_CONFIG_FLAGS``).
_TRAIN_GROUPS = [
    ("model", "the model and its initialization (--model names it)",
     ["--hidden-size", "--num-layers", "--init", "--forget-bias", "--impl"]),
    ("rule", "the rule's hyperparameters, for momentumrnn models (default: the layer's; see `momentumrnn list`)",
     ["--momentum", "--step-size", "--beta", "--restart"]),
    ("orthogonal models", "dtriv and the *-dtriv models",
     ["--orthogonal-init", "--trivialization", "--lr-orth", "--base-change-gradient"]),
    ("task", "the task's data (--task names it; options of each task: `momentumrnn list`)",
     ["--data-seed", "--train-size", "--val-size", "--test-size", "--delay", "--length", "--permutation-seed",
      "--permutation", "--normalize", "--train-subset"]),
    ("optimization", None,
     ["--seed", "--epochs", "--max-steps", "--batch-size", "--optimizer", "--lr", "--alpha", "--weight-decay",
      "--clip"]),
    ("evaluation", None, ["--eval-every", "--eval-batch-size", "--val-subset", "--test-subset"]),
    ("run directory", "what a run writes into RUN_DIR, and when",
     ["--log-every", "--checkpoint-every"]),
    ("devices and distributed", "data-parallel training starts under torchrun (`torchrun --nproc_per_node N -m "
     "momentumrnn train ...`): each rank takes a shard of --batch-size, on cuda:LOCAL_RANK with CUDA",
     ["--threads"]),
    ("PTB only", "word-level language model settings of --task ptb",
     ["--bptt", "--variable-bptt", "--bptt-cap", "--emb-size", "--tied", "--dropout", "--dropouth", "--dropouti",
      "--dropoute", "--wdrop", "--ar", "--tar", "--lr-anneal", "--nonmono", "--test-batch-size",
      "--restart-counter"]),
]


def _add_train_arguments(train: argparse.ArgumentParser) -> None:
    """``momentumrnn train``'s flags, in argument groups."""
    groups = {title: train.add_argument_group(title, text) for title, text, _ in _TRAIN_GROUPS}
    groups["model"].add_argument("--model", help="lstm, momentum-lstm, adam-lstm, ... (see `momentumrnn list`)")
    groups["task"].add_argument("--task", help="smnist, psmnist, copy, adding, speech, timit or ptb "
                                "(see `momentumrnn list`)")
    groups["task"].add_argument("--data-dir", metavar="DIR", help="data root with mnist/, ptb/, fsdd/ "
                                "(default $MOMENTUMRNN_DATA, else a per-user cache)")
    groups["task"].add_argument("--no-download", dest="download", action="store_const", const=False,
                                help="never download missing data files")
    train.add_argument("--preset", choices=["paper", "small"], help="paper: the authors' settings for this task "
                       "and model; small: ptb's classic small model (settings: `momentumrnn list --preset NAME`)")
    groups["optimization"].add_argument("--time-budget", type=_duration, metavar="SECONDS", help="stop training "
                                        "after this much time (summed over resumes); 90, 90s, 15m, 2h")
    run_dir = groups["run directory"]
    run_dir.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory to create (or to resume)")
    run_dir.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its latest "
                         "checkpoint")
    run_dir.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    groups["devices and distributed"].add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when "
                                                   "available; under torchrun each rank's cuda:LOCAL_RANK)")
    where = {flag: title for title, _, flags in _TRAIN_GROUPS for flag in flags}
    for flag, kind, text in _CONFIG_FLAGS:
        groups[where[flag]].add_argument(flag, type=kind, help=text)


def _yes_no(text: str) -> bool:
    value = text.strip().lower()
    if value in ("yes", "true", "1", "on"):
        return True
    if value in ("no", "false", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected yes or no, got {text!r}")


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
    return values


def _duration(text: str) -> float:
    """Seconds from '90', '90s', '15m' or '2h'."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected seconds or a duration like 90s, 15m, 2h; got {text!r}")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="momentumrnn", description="Train and compare MomentumRNN-family "
                                     "recurrent cells on the paper's benchmarks.")
    parser.add_argument("--version", action="version", version=f"momentumrnn {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train one model on one task into a run directory",
                                usage="momentumrnn train --task TASK --model MODEL --out RUN_DIR [options]\n"
                                      "       momentumrnn train --out RUN_DIR --resume [options]",
                                description="Train one model on one task. Settings: defaults < --preset paper "
                                "< explicit flags; the run records the resolved configuration in config.json.")
    _add_train_arguments(train)

    sweep = commands.add_parser(
        "sweep", allow_abbrev=False,          # its unknown flags go to train: --seed must not mean --seeds
        help="train models x settings x seeds (and controls) as runs of one sweep directory",
        usage="momentumrnn sweep --task TASK --models M1,M2 --out SWEEP_DIR [options] [train flags]",
        description="Every model at every combination of --grid settings that applies to it and every seed, "
        "plus the --control runs, as `momentumrnn train` subprocesses, --jobs-per-device at a time on each "
        "device. Any other train flag (--max-steps, --preset, --lr, ...) is passed to every run. --resume "
        "continues a stopped sweep: finished runs are skipped, interrupted ones resumed.")
    sweep.add_argument("--task", required=True, help="the task of every run: smnist, psmnist, copy, adding, "
                       "speech, timit or ptb (see `momentumrnn list`)")
    sweep.add_argument("--models", required=True, metavar="M1,M2,...", help="comma-separated model names")
    sweep.add_argument("--seeds", default="0", metavar="0-2|0,3,7", help="seeds (default 0)")
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                       help="a setting's values (repeatable: the grid is their product), e.g. momentum=0,0.3,0.6")
    sweep.add_argument("--control", action="append", default=[], choices=["mu0", "gain"],
                       help="for every point with momentum mu > 0: mu0 adds mu = 0 with the same s; gain adds "
                       "mu = 0 with s / (1 - mu), the same steady-state input gain (repeatable)")
    sweep.add_argument("--out", required=True, metavar="SWEEP_DIR",
                       help="sweep directory to create (or to resume): one run directory per run, logs/ and "
                       "sweep.json")
    sweep.add_argument("--devices", metavar="cpu|cuda:0,cuda:1",
                       help="local launcher: where the runs go (default: every visible GPU, else cpu)")
    sweep.add_argument("--jobs-per-device", type=int, metavar="N",
                       help="local launcher: runs at a time on each device (default 1; small RNNs share a GPU well)")
    sweep.add_argument("--preset", choices=["paper", "small"], help="as for train")
    sweep.add_argument("--resume", action="store_true", help="continue the sweep in SWEEP_DIR")
    launching = sweep.add_argument_group(
        "launcher", "where the runs go: this machine's processes (local, default), Slurm jobs through submitit "
        "(slurm; pip install momentumrnn[slurm]), or submitit's local executor (local-submitit, to try a cluster "
        "sweep on this machine)")
    launching.add_argument("--launcher", choices=["local", "slurm", "local-submitit"], default="local",
                           help="local (default), slurm or local-submitit")
    launching.add_argument("--points-per-job", type=int, metavar="N",
                           help="slurm, local-submitit: runs per job, one after another (default 1)")
    launching.add_argument("--slurm-partition", metavar="NAME", help="slurm: the partition of the jobs")
    launching.add_argument("--slurm-time", type=_duration, metavar="TIME",
                           help="slurm, local-submitit: time limit of a job; 90m, 12h, ... (default: the cluster's)")
    launching.add_argument("--slurm-gpus-per-job", type=int, metavar="N",
                           help="slurm, local-submitit: GPUs of a job (default 0); above 1 a run is one torchrun "
                           "over them")
    launching.add_argument("--slurm-cpus-per-job", type=int, metavar="N", help="slurm, local-submitit: CPU cores "
                           "of a job")
    launching.add_argument("--slurm-setup", action="append", metavar="LINE",
                           help="slurm: a shell line run before the job, e.g. 'module load cuda' (repeatable)")
    launching.add_argument("--no-wait", action="store_true",
                           help="slurm, local-submitit: submit, print and exit; --resume follows the jobs later")
    sweep.add_argument("--dry-run", action="store_true",
                       help="print each run's momentumrnn train command, one a line, and run nothing")
    sweep.add_argument("--quiet", action="store_true", help="no progress lines")

    report = commands.add_parser("report", help="compare runs: report.md and learning curves",
                                 description="Write REPORT_DIR/report.md (one row per run) and PNG learning "
                                 "curves per task, and print the table.")
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories or sweep directories")
    report.add_argument("--thresholds", type=_floats, metavar="T1,T2,...",
                        help="validation thresholds of the first-step table of runs that differ by seed "
                        "(default: 0.5,0.8,0.9 for accuracy, 0.1,0.05,0.01 for loss, 400,200,150 for perplexity)")
    report.add_argument("--out", required=True, metavar="REPORT_DIR")

    gradients = commands.add_parser(
        "gradients", help="measure gradient norms through time (dL/dh_t, dL/dx_t) per model",
        description="For models at initialization (--model, repeatable) and trained runs (--checkpoint, "
        "repeatable), measure ||dL/dh_t|| and ||dL/dx_t|| for every step t on the same training batches; "
        "write gradients.json and gradients.png to --out and print first-to-last-step ratios.")
    gradients.add_argument("--task", help="the task (needed with --model)")
    gradients.add_argument("--model", action="append", default=[], metavar="NAME[:KEY=VALUE,...]",
                           help="a model at initialization (repeatable); settings for this model only after a "
                           "colon, e.g. momentum-dtriv:momentum=0.999,step_size=0.6")
    gradients.add_argument("--checkpoint", action="append", default=[], metavar="RUN_DIR",
                           help="a trained run: its latest checkpoint (repeatable)")
    gradients.add_argument("--out", required=True, metavar="DIR")
    gradients.add_argument("--batches", type=int, default=4, help="training batches to average over (default 4)")
    gradients.add_argument("--batch-size", type=int, default=32, help="examples per batch (default 32)")
    gradients.add_argument("--seed", type=int, default=0, help="seed of the initialization and batches")
    gradients.add_argument("--preset", choices=["paper"], help="the authors' settings for --model")
    gradients.add_argument("--data-dir", metavar="DIR", help="data root (as for train)")
    gradients.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    gradients.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                           help="measure in this precision; float64 resolves norms that float32 flushes to 0")
    for flag in ("--hidden-size", "--momentum", "--step-size", "--beta", "--restart", "--init", "--forget-bias",
                 "--length", "--delay", "--permutation-seed"):
        kind = next(k for f, k, _ in _CONFIG_FLAGS if f == flag)
        gradients.add_argument(flag, type=kind, help="as for train (applies to every --model)")

    listing = commands.add_parser("list", help="list tasks and models, or a preset's settings",
                                  description="List the tasks and models; with --preset, that preset's settings "
                                  "(paper: the authors' recipes, one row per run of theirs).")
    listing.add_argument("--preset", choices=["paper", "small"], help="list this preset's settings instead")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "sweep":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.train_flags = extra
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data import DataError
    from .report import ReportError
    from .train import Diverged, RunError, RunFailed

    try:
        if args.command == "train":
            status = _train(args, parser, ["momentumrnn", *(sys.argv[1:] if argv is None else argv)])
        elif args.command == "gradients":
            status = _gradients(args)
        elif args.command == "report":
            status = _report(args)
        elif args.command == "sweep":
            status = _sweep(args, ["momentumrnn", *(sys.argv[1:] if argv is None else argv)])
        else:
            status = _list(args.preset)
        sys.stdout.flush()                  # a closed pipe shows here, not at exit
        return status
    except KeyboardInterrupt:
        print(f"momentumrnn {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:                 # e.g. `momentumrnn list | head`: stop quietly, as `cat` would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (Diverged, ReportError, RunFailed) as error:
        print(f"momentumrnn {args.command}: error: {error}", file=sys.stderr)
        return 1
    except (ConfigError, RunError, CheckpointError, DataError) as error:
        print(f"momentumrnn {args.command}: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        if not _out_of_memory(error):
            raise
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"momentumrnn {args.command}: error: not enough memory for these sizes ({first}); use smaller "
              f"sizes (--batch-size, --length, --hidden-size, ...)", file=sys.stderr)
        return 2


def _out_of_memory(error: BaseException) -> bool:
    """A failed allocation: Python's ``MemoryError``, torch's on a GPU or on the CPU."""
    import torch

    return isinstance(error, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(error, RuntimeError) and ("can't allocate memory" in str(error) or "not enough memory" in str(error)
                                             or "Out of memory" in str(error)))


def _report(args) -> int:
    from pathlib import Path

    from .config import ConfigError
    from .report import write_report

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} is a file, not a directory: choose a folder for report.md and the figures")

    text, failed = write_report(args.runs, args.out, args.thresholds)
    print(text)
    for run_dir, reason in failed:
        print(f"momentumrnn report: could not read {run_dir}: {reason}", file=sys.stderr)
    return 1 if failed else 0


def _overrides(args) -> dict:
    """The configuration overrides of parsed train flags (None where a flag was not given)."""
    overrides = {flag.lstrip("-").replace("-", "_"): getattr(args, flag.lstrip("-").replace("-", "_"))
                 for flag, _, _ in _CONFIG_FLAGS}
    overrides.update(data_dir=args.data_dir, download=args.download, time_budget=args.time_budget,
                     device=args.device)
    return overrides


def _sweep(args, command) -> int:
    import shlex

    from .config import ConfigError
    from .sweep import check_devices, parse_grid, parse_seeds, plan_sweep, run_sweep, train_command
    from .sweep_runs import run_directory

    train_parser = build_parser()
    unset = train_parser.parse_args(["train", "--out", "-"])

    def overrides_of(flags: list[str]) -> dict:
        try:
            parsed = train_parser.parse_args(["train", "--out", "-", *flags])
        except SystemExit:
            raise ConfigError(f"the train flags {shlex.join(flags)} do not parse (see momentumrnn train --help)") \
                from None
        own = [f"--{dest}" for dest in ("task", "model", "out", "resume", "seed", "device", "quiet", "preset")
               if getattr(parsed, dest) != getattr(unset, dest)]     # also when abbreviated (--se 3)
        if own:
            raise ConfigError(f"momentumrnn sweep sets {', '.join(own)} itself (use --models, --seeds, --out, "
                              f"--devices, --preset and --resume of the sweep)")
        return {k: v for k, v in _overrides(parsed).items() if v is not None}

    flag_types = {flag: kind for flag, kind, _ in _CONFIG_FLAGS}
    models = [m.strip() for m in args.models.split(",")]
    if any(not m for m in models):
        raise ConfigError(f"--models takes model names separated by commas, got {args.models!r}")
    launcher = _launcher(args)
    sweep = plan_sweep(args.task, models, parse_seeds(args.seeds), parse_grid(args.grid, flag_types),
                       args.control, args.train_flags, args.preset, overrides_of)
    for note in sweep.notes if not args.quiet else ():
        print(f"note: {note}", file=sys.stderr)
    if args.dry_run:
        for point in sweep.points:
            print(shlex.join(train_command(sweep, point, run_directory(args.out, point.name))))
        return 0
    if launcher.name == "local":
        check_devices(launcher.devices)
    return run_sweep(sweep, args.out, launcher=launcher, resume=args.resume, command=command, quiet=args.quiet)


def _launcher(args):
    """The sweep's launcher from its flags; a flag of another launcher is refused."""
    from .config import ConfigError
    from .sweep import LocalLauncher, parse_devices
    from .submitit_launcher import SubmititLauncher

    def given(*flags: str) -> list[str]:
        return [f for f in flags if getattr(args, f[2:].replace("-", "_")) not in (None, False)]

    local, slurm = ("--devices", "--jobs-per-device"), ("--slurm-partition", "--slurm-setup")
    submitit = ("--points-per-job", "--slurm-time", "--slurm-gpus-per-job", "--slurm-cpus-per-job", "--no-wait")
    wrong = {"local": given(*submitit, *slurm), "slurm": given(*local),
             "local-submitit": given(*local, *slurm)}[args.launcher]
    if wrong:
        raise ConfigError(f"{', '.join(wrong)}: not a setting of --launcher {args.launcher}")
    if args.launcher == "local":
        return LocalLauncher(parse_devices(args.devices if args.devices is not None else _default_devices()),
                             1 if args.jobs_per_device is None else args.jobs_per_device)
    minutes = None if args.slurm_time is None else max(1, math.ceil(args.slurm_time / 60))
    return SubmititLauncher("slurm" if args.launcher == "slurm" else "local", partition=args.slurm_partition,
                            time_min=minutes, gpus_per_job=args.slurm_gpus_per_job or 0,
                            cpus_per_job=args.slurm_cpus_per_job, setup=args.slurm_setup,
                            points_per_job=1 if args.points_per_job is None else args.points_per_job,
                            wait=not args.no_wait)


def _default_devices() -> str:
    """Every visible GPU, else the CPU: where ``train`` goes by default, for each run."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ",".join(f"cuda:{i}" for i in range(count)) if count else "cpu"


def _train(args, parser, command) -> int:
    from .config import resolve_config
    from .train import resume_config, train

    overrides = _overrides(args)
    if args.resume:
        config = resume_config(args.out, overrides, args.task, args.model, args.preset)
    else:
        if not args.task or not args.model:
            parser.error("train needs --task and --model (or --resume to continue a run)")
        config = resolve_config(args.task, args.model, overrides, args.preset)
        for note in config["preset_notes"] if os.environ.get("RANK", "0") == "0" else ():   # torchrun: rank 0 speaks
            print(f"note: {note}", file=sys.stderr)
    summary = train(config, args.out, resume=args.resume, quiet=args.quiet, command=command)
    return 130 if summary["status"] == "interrupted" else 0


def _gradients(args) -> int:
    import torch

    from .config import ConfigError
    from .gradient_analysis import run_gradients

    keys = ("hidden_size", "momentum", "step_size", "beta", "restart", "init", "forget_bias", "length", "delay",
            "permutation_seed")
    overrides = {key: getattr(args, key) for key in keys}
    overrides["data_dir"] = args.data_dir
    if args.batches <= 0 or args.batch_size <= 0:
        raise ConfigError(f"--batches and --batch-size must be > 0, got {args.batches} and {args.batch_size}")
    run_gradients(args.task, args.model, args.checkpoint, args.out, batches=args.batches,
                  batch_size=args.batch_size, seed=args.seed, preset=args.preset, overrides=overrides,
                  device=args.device, dtype=getattr(torch, args.dtype))
    return 0


def _list(preset: str | None) -> int:
    from .. import ORTHOGONAL_LAYERS, LAYERS
    from .models import MODELS
    from .presets import NAMED_PRESETS, recipe_table, remaining_differences, wrapped
    from .tasks import TASKS

    if preset == "paper":
        print(wrapped("", "--preset paper: the authors' recipes (task, model, hidden sizes, settings); "
                      "trivialization 0 = never change the base"))
        print("\n".join(recipe_table()))
        print("where a --preset paper run still differs from the authors' scripts, and why:")
        print("\n".join(remaining_differences()))
        return 0
    if preset is not None:
        for (task, name), (settings, experiment, text) in NAMED_PRESETS.items():
            if name == preset:
                print(wrapped("", f"--preset {name} ({task}: {text}):"))
                print(wrapped("  ", ", ".join(f"{k}={v}" for k, v in settings.items())
                              + f"; rule settings of the paper's {experiment} recipes"))
        return 0
    print("tasks:")
    for name, task in TASKS.items():
        options = ", ".join(f"{k}={v}" for k, v in task.options.items())
        print(wrapped(f"  {name:10s} ", task.description + (f" [{options}]" if options else "")))
    print("models:")
    for name, (recurrence, rule) in MODELS.items():
        if rule is None:
            where = f"torch.nn.{recurrence.upper()}"
        elif recurrence == "orthogonal":
            where = (f"momentumrnn.{ORTHOGONAL_LAYERS[rule].__name__} (ORTHOGONAL_LAYERS[{rule!r}]; two "
                     f"optimizers, change of base every K steps)")
        else:
            where = f"momentumrnn.{LAYERS[recurrence, rule].__name__}"
        print(wrapped(f"  {name:16s} ", where))
    print("presets: `momentumrnn list --preset paper` (the authors' recipes), `--preset small` (ptb)")
    return 0
