"""Turn the pixel-MNIST GPU runs in evidence/ into run directories that `momentumrnn report` reads.

    PYTHONPATH=src python results/smnist-h200/make_run_dirs.py
    PYTHONPATH=src python -m momentumrnn report results/smnist-h200/{lstm,momentum-lstm,mu0}-? \\
        --out results/smnist-h200/report --thresholds 0.5,0.8,0.9

evidence/ holds what came back from the GPU machine: every run's validation accuracy by
step (val_curves.json), its summary numbers (summaries.json) and the complete metrics.jsonl
of the four runs of the second batch. For those four, metrics.jsonl is copied as it is; for
the four of the first batch it is rebuilt from val_curves.json (validation rows only:
step, epoch = step / 429 steps per epoch, accuracy). config.json is the configuration the
command resolved to (the paper preset at H = 128, the run's seed, time budget and, for the
control, mu = 0 and s = 0.6), marked "imported"; summary.json carries the numbers of
summaries.json.
"""

import json
import shutil
from pathlib import Path

from momentumrnn.experiments.config import resolve_config
from momentumrnn.experiments.models import build_model, count_parameters

HERE = Path(__file__).resolve().parent
EVIDENCE = HERE / "evidence"
STEPS_PER_EPOCH = 55000 // 128
#: run -> (model, seed, time budget in seconds, extra settings)
RUNS = {
    "lstm-0": ("lstm", 0, 200, {}), "lstm-1": ("lstm", 1, 200, {}), "lstm-2": ("lstm", 2, 210, {}),
    "momentum-lstm-0": ("momentum-lstm", 0, 200, {}), "momentum-lstm-1": ("momentum-lstm", 1, 200, {}),
    "momentum-lstm-2": ("momentum-lstm", 2, 210, {}),
    "mu0-0": ("momentum-lstm", 0, 210, {"momentum": 0.0, "step_size": 0.6}),
    "mu0-1": ("momentum-lstm", 1, 210, {"momentum": 0.0, "step_size": 0.6}),
}


def main() -> None:
    curves = json.loads((EVIDENCE / "val_curves.json").read_text())
    summaries = json.loads((EVIDENCE / "summaries.json").read_text())
    for name, (model, seed, budget, extra) in RUNS.items():
        run = HERE / name
        if run.exists():
            shutil.rmtree(run)
        run.mkdir()
        config = resolve_config("smnist", model, {"hidden_size": 128, "seed": seed, "eval_every": 100,
                                                  "time_budget": float(budget), "device": "cuda", **extra}, "paper")
        record = {"config": config, "imported": "run on one NVIDIA H200 (torch 2.11.0+cu130) from commit 03b3039 "
                  "with PYTHONPATH=src, four runs sharing the GPU; rebuilt by make_run_dirs.py from evidence/"}
        (run / "config.json").write_text(json.dumps(record, indent=2) + "\n")
        log = EVIDENCE / f"{name}.metrics.jsonl"
        if log.exists():
            shutil.copyfile(log, run / "metrics.jsonl")
        else:
            rows = [{"split": "val", "epoch": round(int(step) / STEPS_PER_EPOCH, 4), "step": int(step),
                     "accuracy": value} for step, value in sorted(curves[name].items(), key=lambda kv: int(kv[0]))]
            (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        numbers = summaries[name]
        summary = {"task": "smnist", "model": model, "parameters": count_parameters(build_model(config, 1, 10, False)),
                   "hidden_size": 128, "seed": seed, "preset": "paper", "status": "finished",
                   "stop_reason": "time_budget", "selection": {"metric": "accuracy", "mode": "max"},
                   "best_val": numbers["best_val"], "best_val_step": numbers["best_val_step"],
                   "best_val_epoch": round(numbers["best_val_step"] / STEPS_PER_EPOCH, 4),
                   "test_at_best_val": numbers["test_at_best_val"], "test_metrics": None,
                   "epochs": numbers["epochs"], "steps": numbers["steps"], "wall_time_s": numbers["wall_time_s"]}
        (run / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
