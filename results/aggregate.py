"""Mean and spread over seeds of the runs given, grouped by model and rule settings, as a
markdown table; with --speech-baselines, also the test MSE of two trivial predictors.

    PYTHONPATH=src python results/aggregate.py results/speech/*-seed* --speech-baselines
"""

import argparse
import json
import statistics
from pathlib import Path


def load(run: Path) -> tuple[dict, dict]:
    return json.loads((run / "config.json").read_text())["config"], json.loads((run / "summary.json").read_text())


def label(config: dict) -> str:
    rule = [f"{symbol} {config[key]:g}" for key, symbol in (("momentum", "μ"), ("step_size", "s"), ("beta", "β"))
            if key in config]
    return config["model"] + (f" ({', '.join(rule)})" if rule else "")


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--speech-baselines", action="store_true")
    args = parser.parse_args()
    groups: dict[str, list] = {}
    for run in args.runs:
        config, summary = load(run)
        groups.setdefault(label(config), []).append((config, summary))
    metric = next(iter(groups.values()))[0][1]["selection"]["metric"]
    print(f"| model | runs (seeds) | steps | best val {metric} | test {metric} at best val | "
          f"best val at step | wall time per run |")
    print("|---|---|---|---|---|---|---|")
    for name, entries in groups.items():
        seeds = ", ".join(str(c["seed"]) for c, _ in entries)
        steps = sorted({s["steps"] for _, s in entries})
        print(f"| {name} | {len(entries)} ({seeds}) | {', '.join(map(str, steps))} | "
              f"{spread([s['best_val'] for _, s in entries])} | {spread([s['test_at_best_val'] for _, s in entries])} | "
              f"{', '.join(str(s['best_val_step']) for _, s in entries)} | "
              f"{statistics.mean(s['wall_time_s'] for _, s in entries) / 60:.1f} min |")
    if args.speech_baselines:
        import torch

        from momentumrnn.experiments.data import data_root
        from momentumrnn.experiments.speech import masked_mse
        from momentumrnn.experiments.tasks import TASKS

        config = next(iter(groups.values()))[0][0]
        task = TASKS[config["task"]](config, data_root(config.get("data_dir")))
        for split in ("val", "test"):
            x, y, lengths = task.padded(split, torch.arange(task.size(split)))
            mask = torch.arange(x.size(1))[None] < lengths[:, None]
            print(f"\n{split}: predicting each bin's training mean (zero): "
                  f"{float(masked_mse(torch.zeros_like(y), y, mask)):.4f}; "
                  f"repeating the current frame: {float(masked_mse(x, y, mask)):.4f}", end="")
        print()


if __name__ == "__main__":
    main()
