"""Runs that differ only by their seed, taken together: what ``report`` shows for a sweep.

A *group* is the runs of one task whose configurations agree in everything but the seed
and the keys that cannot change a result (``config.RESULT_NEUTRAL``: device, threads,
logging, checkpointing, data folder, computation path, preset name). Budgets (epochs,
``max_steps``, ``time_budget``) split groups, and every key that splits the groups of a
task is shown in their labels. A group's figures count each seed once, from runs that
finished: a run that is unfinished (interrupted, still running, no summary) or repeats a
seed of its group (a copy of a run directory) is left out of the aggregates, and its row
says which and why. For every task with a group of two or more counted runs,
``seed_section`` writes:

* ``<task>_seeds.png``: the validation metric by optimizer step, the mean over each
  group's seeds as a line and the range of its seeds (min to max) as a band;
* a table: per group the seeds, test at the best-validation weights (mean ± sample sd, n),
  the best validation, the validation metric at the *equal step* S (the last validation
  step every run of the task reached; each run's value is its last validation at or before
  S, so runs stopped by a time budget at different steps compare fairly), and the first
  step at which validation reaches each threshold (median over seeds, with the range and
  how many seeds reached it);
* ``<task>_<model>_heatmap.png`` where a model's groups differ in exactly two settings
  (e.g. momentum x step size): the mean validation metric at step S per cell, with n.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .config import setting
from .rundir import safe_name
from .tasks import TASKS

__all__ = ["Group", "group_runs", "task_baseline", "beats", "selection", "first_reach", "value_at", "equal_step", "seed_section", "DEFAULT_THRESHOLDS"]

#: Validation thresholds of the first-step table when ``--thresholds`` is not given; a
#: "max" metric reaches t when it is >= t, a "min" metric when it is <= t.
DEFAULT_THRESHOLDS = {"accuracy": (0.5, 0.8, 0.9), "loss": (0.1, 0.05, 0.01), "perplexity": (400.0, 200.0, 150.0)}
_SYMBOLS = {"momentum": "μ", "step_size": "s", "beta": "β", "restart": "r"}


@dataclass
class Group:
    """The runs of one setting; ``settings`` its identity without the seed."""

    task: str
    model: str
    settings: dict
    runs: list[dict]
    label: str = ""
    #: Runs of this setting left out of its figures, with the reason.
    left_out: list[tuple[dict, str]] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return [r["config"]["seed"] for r in self.runs]


def group_runs(runs: list[dict]) -> list[Group]:
    """Groups of runs that agree in everything but the seed (module docstring), in the order
    first seen; each labelled by its model and the settings in which the groups of its task
    differ. Only finished runs count, each seed once; the others go to ``left_out``."""
    groups: dict[str, Group] = {}
    for run in runs:
        settings = setting(run["config"])
        key = json.dumps(settings, sort_keys=True, default=str)
        if key not in groups:
            groups[key] = Group(run["config"]["task"], run["config"]["model"], settings, [])
        group = groups[key]
        status = (run.get("summary") or {}).get("status") or "no summary yet"
        twin = next((r for r in group.runs if r["config"]["seed"] == run["config"]["seed"]), None)
        if status != "finished":
            group.left_out.append((run, status))
        elif twin is not None:
            group.left_out.append((run, f"repeats seed {run['config']['seed']} of {twin['dir']}"))
        else:
            group.runs.append(run)
    result = list(groups.values())
    for task in {g.task for g in result}:
        same = [g for g in result if g.task == task]
        varying = _varying(same)
        for group in same:
            parts = [_setting(k, group.settings[k]) for k in varying
                     if k not in ("model", "task") and group.settings.get(k) is not None]
            control = group.runs[0].get("control")
            group.label = " ".join([group.model] + parts + ([f"({control} control)"] if control else []))
    return result


def _varying(groups: list[Group]) -> list[str]:
    keys = sorted({k for g in groups for k in g.settings})
    return [k for k in keys if len({json.dumps(g.settings.get(k), default=str) for g in groups}) > 1]


def _setting(key: str, value) -> str:
    text = "–" if value is None else (f"{value:g}" if isinstance(value, float) else str(value))
    return f"{_SYMBOLS[key]} {text}" if key in _SYMBOLS else f"{key}={text}"


def _validation(run: dict, metric: str) -> list[tuple[int, float]]:
    """(step, value) of the run's validation rows, by step (the last row of a step wins)."""
    rows = {r["step"]: r[metric] for r in run["metrics"] if r.get("split") == "val" and metric in r}
    return sorted(rows.items())


def first_reach(points: list[tuple[int, float]], threshold: float, mode: str) -> int | None:
    """The first step at which the metric reaches ``threshold`` (None if it never does)."""
    for step, value in points:
        if (value >= threshold) if mode == "max" else (value <= threshold):
            return step
    return None


def value_at(points: list[tuple[int, float]], step: int) -> float | None:
    """The metric at the last validation at or before ``step``."""
    before = [value for s, value in points if s <= step]
    return before[-1] if before else None


def equal_step(curves: list[list[tuple[int, float]]]) -> int | None:
    """The last validation step that every run reached: the smallest of their last steps."""
    ends = [c[-1][0] for c in curves if c]
    return min(ends) if ends and len(ends) == len(curves) else None


def _mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "–"
    mean = statistics.fmean(values)
    sd = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
    return f"{mean:.4f}{sd} (n {len(values)})"


def _reach_text(steps: list[int | None], last_steps: list[int]) -> str:
    """Median of the first steps over seeds (a seed that never reached counts as later than
    any), the range of those that reached, and how many did."""
    reached = sorted(s for s in steps if s is not None)
    n = len(steps)
    if not reached:
        low, high = min(last_steps), max(last_steps)
        return f"not reached (by {low:,})" if low == high else f"not reached (by {low:,}–{high:,})"
    ordered = reached + [math.inf] * (n - len(reached))
    middle = statistics.median(ordered)
    median = "not reached by half" if math.isinf(middle) else f"{middle:,.0f}"
    spread = f"{reached[0]:,}" if len(reached) == 1 else f"{reached[0]:,}–{reached[-1]:,}"
    return f"{median} ({spread}; {len(reached)}/{n})"


def seed_section(task: str, groups: list[Group], thresholds: tuple[float, ...] | None, out: Path) -> list[str]:
    """Markdown lines for one task's groups, writing its figures into ``out``; [] when no
    group of the task has two or more runs."""
    groups = [g for g in groups if g.task == task]
    if not any(len(g.runs) > 1 for g in groups):
        return []
    metric, mode = _selection(groups)
    thresholds = tuple(thresholds or DEFAULT_THRESHOLDS.get(metric, ()))
    curves = {id(g): [_validation(r, metric) for r in g.runs] for g in groups}
    step = equal_step([c for g in groups for c in curves[id(g)]])
    names = ["setting", "seeds", "test at best val", "best val", f"val at step {step:,}" if step else "val at step –"]
    names += [f"first step to {'≥' if mode == 'max' else '≤'} {t:g}" for t in thresholds]
    lines = [f"### {task}: seeds taken together", "", "| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    baseline = task_baseline(groups[0].runs[0] if groups[0].runs else groups[0].left_out[0][0], metric)
    for group in groups:
        runs, points = group.runs, curves[id(group)]
        seeds = ", ".join(map(str, group.seeds)) or "none counted"
        if group.left_out:
            seeds += " (left out: " + "; ".join(f"{r['dir'].name}, seed {r['config']['seed']}: {why}"
                                                for r, why in group.left_out) + ")"
        best = [r["summary"].get("best_val") for r in runs]
        label = group.label + (" ✗ not above the baseline" if baseline is not None and best
                               and not beats(statistics.fmean(best), baseline, mode) else "")
        cells = [label, seeds, _mean_sd([r["summary"].get("test_at_best_val") for r in runs]), _mean_sd(best),
                 _mean_sd([value_at(p, step) for p in points]) if step and runs else "–"]
        last = [p[-1][0] if p else 0 for p in points]
        cells += [_reach_text([first_reach(p, t, mode) for p in points], last) if runs else "–" for t in thresholds]
        lines.append("| " + " | ".join(cells) + " |")
    if baseline is not None:
        cells = ["input-blind baseline", "–", "–", f"{baseline:.4f}"] + ["–"] * (len(names) - 4)
        lines.append("| " + " | ".join(cells) + " |")
    common = _common_settings(groups)
    lines += ["", f"Validation {metric} ({'higher' if mode == 'max' else 'lower'} is better). Mean ± sample sd over "
              f"seeds, n runs: finished runs only, each seed once (the seeds column names any run left out and "
              f"why); ✗ marks a setting whose mean best validation does not beat the input-blind baseline. *val at step S*: each run's last validation at or before step S, the last step "
              f"every run of the task reached. First steps: the median over seeds (a seed that never reached "
              f"the threshold counts as later than any), the range of the seeds that reached it and how many did. "
              f"Shared settings: {common}.", ""]
    figure = f"{safe_name(task)}_seeds.png"
    _plot_bands(task, groups, curves, metric, step, common, out / figure, baseline)
    lines += [f"![{task}: validation {metric}, mean and range over seeds]({figure})", ""]
    for model, keys in _heatmaps(groups):
        name = f"{safe_name(task)}_{safe_name(model)}_heatmap.png"
        if step and _plot_heatmap(task, model, keys, [g for g in groups if g.model == model], curves, metric,
                                  step, common, out / name):
            lines += [f"![{task} {model}: validation {metric} at step {step:,} by {keys[0]} and {keys[1]}]({name})",
                      ""]
    return lines


def task_baseline(run: dict, metric: str) -> float | None:
    """The input-blind (trivial) baseline of ``run``'s task in ``metric``: chance accuracy,
    the predict-the-mean MSE, the unigram perplexity; None where the task has none or its
    data cannot be read. Cached by configuration (some tasks compute it from their data)."""
    config = {k: v for k, v in run["config"].items() if k not in ("seed", "preset_notes")}
    key = json.dumps(config, sort_keys=True, default=str)
    if key not in _BASELINES:
        task = TASKS.get(run["config"]["task"])
        try:
            _BASELINES[key] = task.baseline(run["config"]) if task else {}
        except (OSError, ValueError, KeyError, TypeError):
            _BASELINES[key] = {}
    return _BASELINES[key].get(metric)


_BASELINES: dict[str, dict] = {}


def beats(value: float, baseline: float, mode: str) -> bool:
    """Whether ``value`` is better than ``baseline`` (``mode`` "max": higher is better)."""
    return value > baseline if mode == "max" else value < baseline


def selection(run: dict) -> tuple[str, str]:
    """The metric a run was selected on and its direction ("max" or "min"): its summary's,
    else its task's (a run without a summary yet, or a summary that names only the metric)."""
    recorded = (run.get("summary") or {}).get("selection") or {}
    if "metric" in recorded and "mode" in recorded:
        return recorded["metric"], recorded["mode"]
    task_metric, task_mode = TASKS[run["config"]["task"]].selection
    metric = recorded.get("metric", task_metric)
    return metric, task_mode if metric == task_metric else "max" if metric == "accuracy" else "min"


def _selection(groups: list[Group]) -> tuple[str, str]:
    return selection(next(r for g in groups for r in g.runs + [r for r, _ in g.left_out]))


def _common_settings(groups: list[Group]) -> str:
    """The main settings (and budgets) every run shares, in a few words. The epoch budget
    is shown only where every run trained all of it; otherwise the epochs the runs did train."""
    runs = [r for g in groups for r in g.runs]
    configs = [r["config"] for r in runs]
    first = configs[0]
    shared = [k for k in ("hidden_size", "optimizer", "lr", "batch_size", "epochs", "max_steps", "time_budget")
              if all(c.get(k) == first.get(k) for c in configs) and first.get(k) is not None]
    words = {"hidden_size": "H", "optimizer": "", "lr": "lr", "batch_size": "batch", "epochs": "epochs",
             "max_steps": "max steps", "time_budget": "time budget (s)"}
    parts = [f"{words[k]} {first[k]}".strip() for k in shared if k != "epochs"]
    trained = [r["summary"].get("epochs") for r in runs]
    if "epochs" in shared and all(t is not None and t >= first["epochs"] for t in trained):
        parts.insert(shared.index("epochs"), f"epochs {first['epochs']}")
    elif all(t is not None for t in trained):
        low, high = min(trained), max(trained)
        parts.append(f"{low:.0f} epochs trained" if round(low) == round(high) else
                     f"{low:.0f}-{high:.0f} epochs trained")
    return ", ".join(parts) or "none of note"


def _plot_bands(task, groups, curves, metric, step, common, path, baseline=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8.5, 4.8))
    for group in groups:
        points = curves[id(group)]
        if not points:
            continue
        steps = sorted({s for p in points for s, _ in p})
        grid = [s for s in steps if all(p and p[0][0] <= s <= p[-1][0] for p in points)]    # while all run
        values = [[value_at(p, s) for p in points] for s in grid]
        mean = [statistics.fmean(v) for v in values]
        line, = axis.plot(grid, mean, label=f"{group.label} (n {len(points)})")
        if len(points) > 1:
            axis.fill_between(grid, [min(v) for v in values], [max(v) for v in values], alpha=0.2,
                              color=line.get_color(), linewidth=0)
    if step:
        axis.axvline(step, color="gray", linestyle=":", linewidth=1, label=f"equal step {step:,}")
    if baseline is not None:
        axis.axhline(baseline, color="gray", linestyle="--", linewidth=1, label="input-blind baseline")
    axis.set(title=f"{task}: validation {metric}, mean over seeds (band: min to max)\n{common}",
             xlabel="optimizer step", ylabel=f"validation {metric}")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


#: Keys that split groups but make no axis of a heatmap: how long the runs ran.
_BUDGETS = ("epochs", "max_steps", "time_budget")


def _heatmaps(groups: list[Group]) -> list[tuple[str, list[str]]]:
    """(model, [key1, key2]) for every model whose groups differ in exactly two settings,
    neither of them a budget."""
    result = []
    for model in sorted({g.model for g in groups}):
        same = [g for g in groups if g.model == model]
        keys = _varying(same)
        if len(same) > 2 and len(keys) == 2 and not set(keys) & set(_BUDGETS):
            result.append((model, keys))
    return result


def _unset_first(value) -> tuple:
    """Sort key of a setting's values, where some runs may not have the setting (None)."""
    return (value is not None, value if value is not None else 0)


def _tick(value) -> str:
    return "unset" if value is None else (f"{value:g}" if isinstance(value, float) else str(value))


def _plot_heatmap(task, model, keys, groups, curves, metric, step, common, path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted({g.settings.get(keys[0]) for g in groups}, key=_unset_first)
    columns = sorted({g.settings.get(keys[1]) for g in groups}, key=_unset_first)
    cells = {}
    for group in groups:
        values = [v for v in (value_at(p, step) for p in curves[id(group)]) if v is not None]
        if values:
            cells[group.settings.get(keys[0]), group.settings.get(keys[1])] = (statistics.fmean(values), len(values))
    if not cells:
        return False
    grid = [[cells.get((r, c), (math.nan, 0))[0] for c in columns] for r in rows]
    figure, axis = plt.subplots(figsize=(1.4 * len(columns) + 3, 0.8 * len(rows) + 2.5))
    image = axis.imshow(grid, cmap="viridis", aspect="auto", origin="lower")
    for i, r in enumerate(rows):
        for j, c in enumerate(columns):
            if (r, c) in cells:
                mean, n = cells[r, c]
                axis.text(j, i, f"{mean:.3g}\nn {n}", ha="center", va="center", color="white", fontsize=8)
    axis.set_xticks(range(len(columns)), [_tick(c) for c in columns])
    axis.set_yticks(range(len(rows)), [_tick(r) for r in rows])
    axis.set(xlabel=keys[1], ylabel=keys[0],
             title=f"{task} {model}: mean validation {metric} at step {step:,}\n{common}")
    figure.colorbar(image, ax=axis, label=f"validation {metric}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True
