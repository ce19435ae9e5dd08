"""``momentumrnn gradients``: how gradients travel through time in the toolkit's models.

For each model (at initialization, ``--model``) or trained run (``--checkpoint RUN_DIR``),
measure on the same real training batches, for every step t, ``||dL/dh_t||`` and
``||dL/dx_t||`` (``momentumrnn.gradient_norms``), then write ``gradients.json``, a
log-scale PNG comparing the models, and print the first-to-last-step ratios.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..gradients import GradientNorms, gradient_norms
from .checkpoint import atomic_write_text, load_checkpoint
from .config import ConfigError, fingerprint, identity, resolve_config
from .data import data_root
from .models import build_model
from .tasks import TASKS, generator
from .train import RunError, read_run_config, resolve_device

__all__ = ["measure_model", "parse_model_spec", "run_gradients"]


def measure_model(model, task, batches: int, batch_size: int, seed: int) -> GradientNorms:
    """Gradient norms of ``model`` (a toolkit ``SequenceModel``) over ``batches`` seeded
    training batches of ``task``; examples pooled."""
    n = task.size("train")
    if batch_size > n:
        raise ConfigError(f"--batch-size {batch_size} exceeds the {n} training examples of the task")
    order = torch.randperm(n, generator=generator(seed, 7))
    parameter = next(model.parameters())
    model.eval()                    # no dropout: the measurement is of the deterministic network
    results = []
    for b in range(batches):
        index = order[(b * batch_size) % n:][:batch_size]
        x, y = task.batch("train", index.to(parameter.device))
        x = x.to(parameter.dtype)   # measure in the model's dtype (float64 resolves what float32 flushes to 0)
        y = y.to(parameter.dtype) if y.is_floating_point() else y

        def loss_fn(out, y=y):
            return task.loss(model.head(out if model.per_step else out[:, -1]), y)

        results.append(gradient_norms(model.rnn, x, loss_fn))
    return GradientNorms.cat(results)


def parse_model_spec(spec: str) -> tuple[str, dict]:
    """``"momentum-dtriv:momentum=0.999,step_size=0.6"`` -> ``("momentum-dtriv", {...})``:
    settings for one model only (numbers parsed as int or float)."""
    name, _, settings = spec.partition(":")
    own = {}
    for item in filter(None, settings.split(",")):
        key, equals, value = item.partition("=")
        if not equals or not key:
            raise RunError(f"model setting {item!r} in {spec!r} is not of the form key=value")
        try:
            own[key.strip().replace("-", "_")] = int(value) if value.strip().lstrip("-").isdigit() else float(value)
        except ValueError:
            own[key.strip().replace("-", "_")] = value.strip()
    return name, own


def _load_trained(run_dir: Path, device):
    """Config and model of a run directory, with the weights of its latest checkpoint."""
    config = read_run_config(run_dir)["config"]
    task = TASKS[config["task"]](config, data_root(config.get("data_dir")), _artifacts(run_dir)).to(device)
    model = build_model(config, task.input_size, task.output_size, task.per_step).to(device)
    checkpoint = load_checkpoint(run_dir, fingerprint=fingerprint(config), identity=identity(config))
    model.load_state_dict(checkpoint["model_state"])
    return config, task, model, int(checkpoint["progress"]["step"])


def _artifacts(run_dir: Path) -> dict:
    path = Path(run_dir) / "permutation.json"
    return {"permutation.json": json.loads(path.read_text())} if path.exists() else {}


def run_gradients(task: str | None, models: list[str], checkpoints: list[str], out, *, batches: int = 4,
                  batch_size: int = 32, seed: int = 0, preset: str | None = None, overrides: dict | None = None,
                  device: str | None = None, dtype: torch.dtype = torch.float32, quiet: bool = False) -> dict:
    """Measure every model and run; write ``gradients.json`` and ``gradients.png`` to ``out``."""
    if not models and not checkpoints:
        raise RunError("gradients needs at least one --model or --checkpoint")
    if models and not task:
        raise RunError("gradients --model needs --task")
    device = resolve_device(device or "auto")
    entries = []
    for spec in models:
        name, own = parse_model_spec(spec)
        config = resolve_config(task, name, {**(overrides or {}), **own, "seed": seed}, preset)
        built = TASKS[task](config, data_root(config.get("data_dir")), {}).to(device)
        torch.manual_seed(config["seed"])
        model = build_model(config, built.input_size, built.output_size, built.per_step).to(device, dtype)
        entries.append((f"{spec} (init)", config, built, model, 0))
    for run_dir in checkpoints:
        config, built, model, step = _load_trained(Path(run_dir), device)
        model = model.to(dtype)
        if task and config["task"] != task:
            raise RunError(f"run {run_dir} is on task {config['task']!r}, not {task!r}")
        entries.append((f"{config['model']} ({Path(run_dir).name}, step {step})", config, built, model, step))
    tasks = {config["task"] for _, config, *_ in entries}
    if len(tasks) > 1:
        raise RunError(f"all models must be on one task, got {sorted(tasks)}")

    results = {}
    for label, config, built, model, step in entries:
        norms = measure_model(model, built, batches, batch_size, seed)
        results[label] = {"model": config["model"], "step": step, **norms.to_dict()}
        if not quiet:
            print(f"{label:45s} |dL/dh_1| / |dL/dh_T| = {norms.first_to_last('hidden'):.3e}   "
                  f"|dL/dx_1| / |dL/dx_T| = {norms.first_to_last('input'):.3e}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"task": tasks.pop(), "batches": batches, "batch_size": batch_size, "seed": seed,
              "dtype": str(dtype).removeprefix("torch."), "models": results}
    atomic_write_text(out / "gradients.json", json.dumps(record, indent=1) + "\n")
    _plot(record, out / "gradients.png")
    return record


def _plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    for label, result in record["models"].items():
        for axis, key in zip(axes, ("hidden_mean", "input_mean")):
            values = torch.tensor(result[key]).clamp_min(1e-300)
            axis.plot(range(1, len(values) + 1), values.tolist(), label=label)
    for axis, title in zip(axes, ("mean ||dL/dh_t|| over examples", "mean ||dL/dx_t|| over examples")):
        axis.set_yscale("log")
        axis.set_xlabel("time step t")
        axis.set_title(title)
        axis.grid(True, which="major", alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.suptitle(f"{record['task']}: gradient norms through time "
                    f"({record['batches']} x {record['batch_size']} training examples, {record['dtype']})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
