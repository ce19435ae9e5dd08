"""``momentumrnn report``: one table row per run and learning curves per task.

Writes ``REPORT_DIR/report.md`` (task, model, parameters, best validation, test at the
best-validation checkpoint, epochs, steps, wall time, and the figure the paper published
for that task and model where it has one) and ``REPORT_DIR/<task>_curves.png`` (training
loss and the validation metric against optimizer steps, one line per run).

A sweep directory (``sweep.json``) stands for its runs. Runs that differ only by their
seed are also taken together (``seeds.py``): mean curves with the seeds' range, a table of
test and validation means, the value at an equal step and the first steps to thresholds,
and heatmaps of two-setting grids.

A folder that is not a run directory (no ``config.json``, e.g. the report folder itself
in ``runs/*``) is skipped with a note. A run directory that cannot be read (a corrupt
``config.json``, ``summary.json`` or ``metrics.jsonl``) is left out of the report and
listed with the reason; the others are reported. The unterminated last row of a run that
is still writing is ignored.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .presets import published
from .rundir import safe_name
from .seeds import beats, selection, task_baseline
from .tasks import TASKS

__all__ = ["load_run", "write_report", "table", "ReportError", "NotARun"]


class ReportError(RuntimeError):
    """No run could be reported."""


class NotARun(FileNotFoundError):
    """A folder without a run's ``config.json``."""


def load_run(run_dir) -> dict:
    """``config``, ``summary`` and ``metrics`` rows of a run directory. Raises ``NotARun``
    for a folder that is not one, ``ValueError`` naming the file for a damaged one."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise NotARun(f"{run_dir} is not a run directory: {run_dir / 'config.json'} is missing")
    config = _read_json(run_dir / "config.json").get("config")
    if not isinstance(config, dict) or not {"task", "model", "seed", "hidden_size"} <= set(config):
        raise ValueError(f"{run_dir / 'config.json'} holds no run configuration")
    if config["task"] not in TASKS:
        raise ValueError(f"{run_dir / 'config.json'} names an unknown task {config['task']!r}")
    summary_path = run_dir / "summary.json"
    summary = _read_json(summary_path) if summary_path.exists() else {}
    metrics_path = run_dir / "metrics.jsonl"
    lines = metrics_path.read_text(errors="replace").split("\n") if metrics_path.exists() else []
    rows = []
    for number, line in enumerate(lines[:-1], start=1):  # lines[-1]: after the last newline (a row being written)
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as error:
                raise ValueError(f"{metrics_path} line {number} is not a JSON row: {error}") from None
    if any(not isinstance(r, dict) or "split" not in r or "step" not in r for r in rows):
        raise ValueError(f"{metrics_path} holds rows without split and step")
    return {"dir": run_dir, "config": config, "summary": summary, "metrics": rows}


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is not readable JSON: {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return value


def _format(metric: str | None, value) -> str:
    if value is None:
        return "–"
    if metric == "accuracy":
        return f"{100 * value:.2f}%"
    return f"{value:.4f}"


def _labels(runs: list[dict]) -> list[str]:
    """Model names, with the seed or the directory name added where they would repeat."""
    models = [r["config"]["model"] for r in runs]
    labels = []
    for run, model in zip(runs, models):
        if models.count(model) == 1:
            labels.append(model)
        else:
            same = [r for r in runs if r["config"]["model"] == model]
            seeds = {r["config"]["seed"] for r in same}
            labels.append(f"{model} (seed {run['config']['seed']})" if len(seeds) == len(same) else
                          f"{model} ({run['dir'].name})")
    return labels


def table(runs: list[dict]) -> str:
    columns = ["task", "model", "params", "settings", "best val", "test at best val", "input-blind baseline",
               "best at step (epoch)", "steps", "epochs", "wall time", "status", "paper"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for run, label in zip(runs, _labels(runs)):
        c, s = run["config"], run["summary"]
        settings = _settings(c)
        metric, mode = selection(run)
        baseline = task_baseline(run, metric)
        baseline_text = "–" if baseline is None else _format(metric, baseline) + (
            "" if s.get("best_val") is None or beats(s["best_val"], baseline, mode) else " ✗ not beaten")
        paper = published(c["task"], c["model"], c["hidden_size"], c)
        paper_text = f"{paper['value']} ({paper['metric']}; {paper['note']})" if paper else "–"
        best_at = (f"{s['best_val_step']} ({s['best_val_epoch']:.2f})" if s.get("best_val_step") is not None else "–")
        lines.append(
            f"| {c['task']} | {label} | {s.get('parameters', 0):,} | {settings} | "
            f"{metric or ''} {_format(metric, s.get('best_val'))} | {_format(metric, s.get('test_at_best_val'))} | "
            f"{baseline_text} | {best_at} | {s.get('steps', '–')} | {s.get('epochs', 0):.2f} | "
            f"{_wall_time(s)} | {s.get('status', 'running')} | {paper_text} |"
            if s else f"| {c['task']} | {label} | – | {settings} | – | – | {baseline_text} | – | – | – | – | "
                      f"no summary yet | – |")
    return "\n".join(lines)


def _wall_time(summary: dict) -> str:
    """The run's training time, and the part of it that was a one-time cost of the machine
    (building the CPU step kernels), which a run on a prepared machine does not pay."""
    text = f"{summary.get('wall_time_s', 0):.0f} s"
    once = {k: v for k, v in (summary.get("one_time_s") or {}).items() if v >= 1}
    if once:
        text += " (incl. " + ", ".join(f"{v:.0f} s {k}" for k, v in once.items()) + ")"
    return text


def _settings(c: dict) -> str:
    """H, optimizer, learning rate, batch, init and the rule's hyperparameters of a run."""
    from .models import rule_hyperparameters

    symbols = {"momentum": "μ", "step_size": "s", "beta": "β", "restart": "r"}
    text = f"H {c['hidden_size']}, {c['optimizer']} {c['lr']:g}, batch {c['batch_size']}"
    if "init" in c:                                      # the orthogonal models have their own
        text += f", init {c['init']}"
    rule = ", ".join(f"{symbols[k]} {c[k]:g}" for k in rule_hyperparameters(c["model"]))
    return f"{text}; {rule}" if rule else text


def plot_task(task: str, runs: list[dict], labels: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = next((r["summary"].get("selection", {}).get("metric") for r in runs if r["summary"]), "loss")
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for run, label in zip(runs, labels):
        train = [r for r in run["metrics"] if r["split"] == "train" and "loss" in r]
        val = [r for r in run["metrics"] if r["split"] == "val" and metric in r]
        line, = left.plot([r["step"] for r in train], [r["loss"] for r in train], label=label)
        right.plot([r["step"] for r in val], [r[metric] for r in val], marker="o", markersize=3, label=label,
                   color=line.get_color())
    baseline = TASKS[task].baseline(runs[0]["config"]) if task in TASKS else {}
    for axis, name in ((left, "loss"), (right, metric)):
        if name in baseline:
            axis.axhline(baseline[name], color="gray", linestyle="--", linewidth=1, label="input-blind baseline")
    left.set(title=f"{task}: training loss", xlabel="optimizer step", ylabel="loss")
    right.set(title=f"{task}: validation {metric}", xlabel="optimizer step", ylabel=metric)
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _expand(paths) -> tuple[list[Path], dict[Path, str], list[str]]:
    """Run directories: a sweep directory stands for the runs of its points, in order; the
    control each sweep run is (``mu0``, ``gain``); and notes on directories reached twice
    (a repeated argument, a symbolic link, a sweep and one of its runs), counted once."""
    from .sweep_runs import run_directory

    result, controls, notes, seen = [], {}, [], {}

    def add(path: Path, control: str | None = None) -> None:
        real = path.resolve()
        if real in seen:
            notes.append(f"- {path} is the same run directory as {seen[real]}: counted once")
            return
        seen[real] = path
        result.append(path)
        if control:
            controls[path] = control

    for path in map(Path, paths):
        record = path / "sweep.json"
        if record.exists():
            try:
                points = json.loads(record.read_text())["points"]
                for point in points:
                    add(run_directory(path, safe_name(point["name"])), point.get("control"))
                continue
            except (OSError, ValueError, KeyError, TypeError) as error:
                raise ReportError(f"{record} is not a readable sweep record: {error}") from None
        add(path)
    return result, controls, notes


def write_report(run_dirs, out_dir, thresholds: tuple[float, ...] | None = None
                 ) -> tuple[str, list[tuple[Path, str]]]:
    """Write ``report.md`` and the figures into ``out_dir``; return the table and the run
    directories that could not be read, with the reason. Raises ``ReportError`` when no run
    could be read. ``thresholds``: of the first-step table of seed groups (else per metric)."""
    from .seeds import group_runs, seed_section

    out = Path(out_dir)
    runs, skipped, failed = [], [], []
    paths, controls, reached_twice = _expand(run_dirs)
    for run_dir in paths:
        try:
            run = load_run(run_dir)
            run["control"] = controls.get(Path(run_dir))
            table([run])                               # every field the report shows is there
            runs.append(run)
        except NotARun as error:
            skipped.append(error)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            failed.append((Path(run_dir), str(error) if isinstance(error, (OSError, ValueError))
                           else f"a damaged run record ({type(error).__name__}: {error})"))
    for error in skipped:                              # e.g. the report folder itself in runs/*
        print(f"momentumrnn report: skipping {error}", file=sys.stderr)
    if not runs:
        reasons = [str(e) for e in skipped] + [f"{d}: {why}" for d, why in failed]
        raise ReportError("no run to report: " + "; ".join(reasons))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ReportError(f"cannot create --out {out}: {error.strerror or error}") from None
    text = table(runs)
    sections = ["# momentumrnn report", "", text, ""]
    tasks = sorted({r["config"]["task"] for r in runs})
    for task in tasks:
        chosen = [r for r in runs if r["config"]["task"] == task]
        name = f"{safe_name(task)}_curves.png"
        plot_task(task, chosen, _labels(chosen), out / name)
        sections += [f"## {task}", "", f"![{task} learning curves]({name})", ""]
        sections += seed_section(task, group_runs(chosen), thresholds, out)
    notes = _notes(runs) + reached_twice
    if failed:
        notes.append("- Left out, could not be read: " + "; ".join(f"{d} ({why})" for d, why in failed))
    if notes:
        sections += ["## Notes", "", *notes, ""]
    (out / "report.md").write_text("\n".join(sections) + "\n")
    return text, failed


def _notes(runs: list[dict]) -> list[str]:
    notes = [
        "- *best val*: the validation metric used for model selection (accuracy: higher is better; "
        "loss: lower is better); *test at best val*: the test metric of the weights with the best validation "
        "metric (never selected on test).",
    ]
    if any(published(r["config"]["task"], r["config"]["model"], r["config"]["hidden_size"], r["config"]) for r in runs):
        notes.append("- *paper*: the figure the authors published, after full training and selected on the test "
                     "set; it is not comparable to a short run.")
    for task in sorted({r["config"]["task"] for r in runs}):
        first = next(r for r in runs if r["config"]["task"] == task)
        baseline = TASKS[task].baseline(first["config"]) if task in TASKS else {}
        if baseline:
            notes.append(f"- {task} input-blind baseline (chance level): "
                         + ", ".join(f"{k} {_format(k, v)}" for k, v in baseline.items()))
    for run, label in zip(runs, _labels(runs)):
        c = run["config"]
        extras = [f"{k}={c[k]}" for k in ("train_subset", "val_subset", "test_subset", "max_steps", "time_budget")
                  if c.get(k)]
        for note in c.get("preset_notes") or []:
            extras.append(note)
        if extras:
            notes.append(f"- {c['task']} / {label}: " + "; ".join(extras))
    return notes
