"""Every momentumrnn layer against torch's fused layer and against the per-step reference.

For each shape (T, batch, input, hidden) and each of the 14 layers (paper's default
hyperparameters, one layer, unidirectional), times forward+backward and forward-only
(median of ``--repeats`` runs after one warm-up; the layer and torch's layer of the same
recurrence run alternately, so their ratio is measured side by side) and peak memory of
one forward+backward, for the layer's default path (``impl="auto"``), torch's fused layer
(``torch.nn.LSTM``/``GRU``/``RNN``) and ``impl="reference"``. Writes a Markdown table and
JSON with the machine's description to ``--out`` (default ``benchmarks/results/``)::

    PYTHONPATH=src python benchmarks/layers.py              # full: the issue's shapes
    PYTHONPATH=src python benchmarks/layers.py --quick      # smaller shapes, < 2 minutes
    PYTHONPATH=src python benchmarks/layers.py --device cpu,cuda --threads 2
    PYTHONPATH=src python benchmarks/layers.py --device cuda --no-reference --name layers-cuda
    PYTHONPATH=src python benchmarks/layers.py --impl fused-drive --scan-backend torch ...   # alternatives
    PYTHONPATH=src python benchmarks/layers.py --loop-engine torch ...     # the CPU loops in torch ops

Peak memory: on CUDA ``torch.cuda.max_memory_allocated``; on the CPU the allocations the
profiler records during one forward+backward (tensors that exist before, such as the
weights and the input, are not counted).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import momentumrnn as mrnn
from momentumrnn import triton_loop
from momentumrnn.cuda_graphs import use_cuda_graphs
from momentumrnn.paths import LOOP_ENGINES, check_impl, loop_engine_override, scan_backend_override

FULL_SHAPES = [  # name, (T, batch, input, hidden)
    ("pixel MNIST, H=128", (784, 128, 1, 128)),
    ("pixel MNIST, H=256", (784, 128, 1, 256)),
    ("TIMIT-like", (200, 32, 129, 158)),
    ("PTB small", (35, 20, 200, 200)),
    ("PTB large", (70, 20, 400, 1150)),
    ("long sequence, small batch", (5000, 8, 8, 64)),
]
QUICK_SHAPES = [
    ("pixel MNIST, short", (196, 32, 1, 64)),
    ("TIMIT-like, small", (100, 16, 129, 64)),
    ("PTB small", (35, 20, 200, 200)),
]
TORCH = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN, "orthogonal": torch.nn.RNN}
ORDER = ["momentum", "restart", "adam", "rmsprop", "nesterov"]
LAYERS = sorted(mrnn.LAYERS.items(), key=lambda item: (["lstm", "gru", "rnn"].index(item[0][0]),
                                                      ORDER.index(item[0][1])))
#: The orthogonal layers, against torch's tanh RNN of the same size; only when ``--layers`` names them.
ORTHOGONAL = [(("orthogonal", rule), cls) for rule, cls in mrnn.ORTHOGONAL_LAYERS.items()]
#: Targets: ratio of f+b time to torch's fused layer, per device and layer name.
TIME_TARGETS = {
    "cpu": {"MomentumLSTM": 1.10, "MomentumGRU": 1.10, "MomentumRNN": 1.10,
            "AdamLSTM": 1.6, "RMSPropLSTM": 1.6, "NesterovLSTM": 2.0},
    "cuda": {**{f"{rule}{kind}": 1.15 for rule in ("Momentum", "Restart") for kind in ("LSTM", "GRU", "RNN")},
             **{f"{rule}{kind}": 1.3 for rule in ("Adam", "RMSProp") for kind in ("LSTM", "GRU", "RNN")},
             "NesterovLSTM": 2.0, "NesterovRNN": 2.0,
             **{cls.__name__: 2.0 for _, cls in ORTHOGONAL}},
}
SPEEDUP_SHAPES = ("TIMIT-like", "PTB small")
MEMORY_TARGET = 1.3


def machine(devices, threads):
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": threads,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "cuda": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available() else [],
        "devices": devices,
    }
    try:
        info["load_average_at_start"] = list(os.getloadavg())
    except OSError:
        pass
    return info


def _cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_backward(module, x):
    def run():
        module.zero_grad(set_to_none=True)
        output = module(x)[0]
        output.sum().backward()
    return run


def forward_only(module, x):
    def run():
        with torch.no_grad():
            module(x)
    return run


def timed(run, device):
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - start


def side_by_side(runs, repeats, device):
    """Median seconds of each run, alternating between them, after one warm-up each."""
    for run in runs:
        run()
    times = [[] for _ in runs]
    for _ in range(repeats):
        for i, run in enumerate(runs):
            times[i].append(timed(run, device))
    return [statistics.median(t) for t in times]


def peak_memory(run, device):
    """Peak bytes allocated during ``run`` (beyond what was allocated before), or None."""
    run()                                   # warm: gradients exist, lazy init done
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        run()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    try:
        from torch.profiler import ProfilerActivity, profile

        with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            run()
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        events.sort(key=lambda e: e.start_ns())
        current = peak = 0
        for event in events:
            current += event.nbytes()
            peak = max(peak, current)
        return peak
    except Exception:                       # the profiler's event API is not public
        return None


@contextlib.contextmanager
def _quiet_stderr():
    """The profiler's C++ side logs each start and stop on file descriptor 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def reference_repeats(shape, repeats, quick):
    T, B, I, H = shape
    if quick:
        return 1
    return 1 if T >= 200 or H >= 1000 else min(repeats, 3)


def layer_impl(cls, impl):
    """``impl`` where the layer's rule takes it, else "auto"."""
    try:
        check_impl(impl, cls.rule_type, cls.__name__, recurrence=cls.recurrence_type.name)
    except ValueError:
        return "auto"
    return impl


def path_name(layer, hidden):
    """The layer's path, with the triton-loop engine that runs at this hidden size."""
    if layer.path != "triton-loop":
        return layer.path
    name = layer.recurrence.name
    cell = layer.nonlinearity if name == "rnn" else name
    weight = layer.weight_ih_l0
    return f"triton-loop ({triton_loop.chosen_engine(cell, hidden, weight.dtype, weight.device)})"


def benchmark_shape(name, shape, device, repeats, quick, layers, log, impl="auto", reference=True):
    T, B, I, H = shape
    dtype = torch.float32
    torch.manual_seed(0)
    x = torch.randn(T, B, I, device=device, dtype=dtype)
    rows = []
    nan = float("nan")
    for (kind, rule), cls in layers:
        torch.manual_seed(0)
        triton_loop.clear_windows()
        fast = cls(I, H, device=device, dtype=dtype, impl=layer_impl(cls, impl))
        ref = cls(I, H, device=device, dtype=dtype, impl="reference")
        ref.load_state_dict(fast.state_dict())
        theirs = TORCH[kind](I, H, device=device, dtype=dtype)
        fb_fast, fb_torch = side_by_side([forward_backward(fast, x), forward_backward(theirs, x)], repeats, device)
        fwd_fast, fwd_torch = side_by_side([forward_only(fast, x), forward_only(theirs, x)], repeats, device)
        n_ref = reference_repeats(shape, repeats, quick) if reference else 0
        fb_ref, = side_by_side([forward_backward(ref, x)], n_ref, device) if reference else (nan,)
        fwd_ref, = side_by_side([forward_only(ref, x)], n_ref, device) if reference else (nan,)
        mem = {"fast": peak_memory(forward_backward(fast, x), device),
               "torch": peak_memory(forward_backward(theirs, x), device),
               "held": triton_loop.cached_bytes(),
               "reference": peak_memory(forward_backward(ref, x), device) if reference else None}
        row = {
            "shape": name, "T": T, "batch": B, "input": I, "hidden": H,
            "layer": cls.__name__, "path": path_name(fast, H), "torch_layer": TORCH[kind].__name__,
            "fb_ms": {"fast": fb_fast * 1e3, "torch": fb_torch * 1e3, "reference": fb_ref * 1e3},
            "fwd_ms": {"fast": fwd_fast * 1e3, "torch": fwd_torch * 1e3, "reference": fwd_ref * 1e3},
            "peak_mib": {k: (None if v is None else v / 2 ** 20) for k, v in mem.items()},
            "ratio_fb": fb_fast / fb_torch, "ratio_fwd": fwd_fast / fwd_torch,
            "speedup_fb": fb_ref / fb_fast, "speedup_fwd": fwd_ref / fwd_fast,
            # the windows a triton-loop layer keeps between calls count as its memory too
            "memory_ratio": None if not mem["fast"] or not mem["torch"] else (mem["fast"] + mem["held"]) / mem["torch"],
            "repeats": repeats, "reference_repeats": n_ref,
        }
        rows.append(row)
        versus_reference = (f"{row['speedup_fb']:.1f}x (f+b) / {row['speedup_fwd']:.1f}x (fwd) faster than "
                            "reference  " if reference else "")
        log(f"  {row['layer']:13s} {row['path']:11s} f+b {row['fb_ms']['fast']:9.1f} ms  x{row['ratio_fb']:.2f} "
            f"torch  fwd x{row['ratio_fwd']:.2f}  {versus_reference}memory x{row['memory_ratio'] or float('nan'):.2f}")
    return rows


def evaluate_targets(rows, quick):
    """The issue's targets, met or not, per row that they apply to."""
    checks = []
    for row in rows:
        where = f"{row['layer']} @ {row['shape']} ({row['device']})"
        target = TIME_TARGETS.get(row["device"], {}).get(row["layer"])
        if target is not None:
            checks.append({"target": f"f+b time / torch <= {target}", "where": where,
                           "value": row["ratio_fb"], "met": row["ratio_fb"] <= target})
        if (row["shape"] in SPEEDUP_SHAPES or quick) and row["device"] == "cpu" and row["speedup_fb"] == row["speedup_fb"]:
            checks.append({"target": "f+b at least 2x faster than the reference", "where": where,
                           "value": row["speedup_fb"], "met": row["speedup_fb"] >= 2.0})
        if row["memory_ratio"] is not None:
            checks.append({"target": f"peak memory / torch <= {MEMORY_TARGET}", "where": where,
                           "value": row["memory_ratio"], "met": row["memory_ratio"] <= MEMORY_TARGET})
    return checks


def summary(report):
    """Two compact tables per device: f+b time / torch and peak memory / torch, layers x shapes."""
    lines = []
    for device in report["machine"]["devices"]:
        rows = [r for r in report["results"] if r["device"] == device]
        shapes = list(dict.fromkeys(r["shape"] for r in rows))
        cell = {(r["layer"], r["shape"]): r for r in rows}
        layers = list(dict.fromkeys(r["layer"] for r in rows))
        for title, key in (("forward+backward time / torch's layer", "ratio_fb"),
                           ("peak memory / torch's layer", "memory_ratio"),
                           ("forward+backward speed-up over the reference", "speedup_fb")):
            lines += [f"### Summary ({device}): {title}", "",
                      "| layer | path | " + " | ".join(shapes) + " |", "|---|---|" + "---:|" * len(shapes)]
            for layer in layers:
                values = [cell.get((layer, shape), {}).get(key) for shape in shapes]
                path = next(cell[(layer, shape)]["path"] for shape in shapes if (layer, shape) in cell)
                text = ["-" if v is None or v != v else (f"{v:.1f}x" if key == "speedup_fb" else f"{v:.2f}")
                        for v in values]
                lines.append(f"| {layer} | {path} | " + " | ".join(text) + " |")
            lines.append("")
    return lines


def markdown(report):
    m = report["machine"]
    lines = [f"# momentumrnn benchmark ({report['mode']} mode)", "",
             f"Command: `{report['command']}`  ", f"Date: {report['date']}  ",
             f"Machine: {m['cpu']}, {m['cpu_cores']} CPU cores, torch {m['torch']} with {m['torch_threads']} "
             f"thread(s), GPUs: {', '.join(m['cuda']) or 'none'}; devices benchmarked: {', '.join(m['devices'])}  ",
             f"Load average at start: {m.get('load_average_at_start')}", "",
             f"Median of {report['settings']['repeats']} runs after one warm-up; the layer and torch's layer "
             "alternate, so each ratio is measured side by side. f+b = forward+backward of `output.sum()`. "
             "Reference = `impl=\"reference\"` (the input drive in one GEMM, then the rule and the cell step by "
             "step, recorded by autograd), "
             + (report['settings']['reference_repeats_note'] if report['settings'].get('reference', True)
                else "not timed in this run (`--no-reference`)")
             + f". Paths: `impl={report['settings'].get('impl', 'auto')!r}` where the rule takes it; scans: "
             f"{report['settings'].get('scan_backend', 'default')}; CPU loop engine: "
             f"{report['settings'].get('loop_engine', 'torch')}"
             + ("" if report['settings'].get('cuda_graphs', True) else "; triton-loop without CUDA graphs")
             + ("; triton-loop engine: persistent kernels where the hidden size fits them"
                if report['settings'].get('engine') == "persistent" else "")
             + ". Peak memory: one forward+backward, plus the buffers the triton-loop path keeps between "
             "calls. The orthogonal layers are compared with torch's tanh RNN of the same size.", ""]
    lines += summary(report)
    for device in report["machine"]["devices"]:
        for shape in dict.fromkeys(r["shape"] for r in report["results"] if r["device"] == device):
            rows = [r for r in report["results"] if r["device"] == device and r["shape"] == shape]
            T, B, I, H = (rows[0][k] for k in ("T", "batch", "input", "hidden"))
            lines += [f"## {shape}: T={T}, batch={B}, input={I}, hidden={H} ({device})", "",
                      "| layer | path | f+b ms | f+b / torch | fwd ms | fwd / torch | f+b ms reference | "
                      "reference / torch (f+b) | speedup vs reference (f+b / fwd) | peak MiB (torch) | "
                      "memory / torch |",
                      "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for r in rows:
                peak, peak_torch = r["peak_mib"]["fast"], r["peak_mib"]["torch"]
                mem = f"{peak:.1f} ({peak_torch:.1f})" if peak is not None and peak_torch is not None else "n/a"
                ratio = f"{r['memory_ratio']:.2f}" if r["memory_ratio"] is not None else "n/a"
                timed_reference = r["fb_ms"]["reference"] == r["fb_ms"]["reference"]     # not NaN
                ref_fb = f"{r['fb_ms']['reference']:.0f}" if timed_reference else "-"
                speedup_fb = f"{r['speedup_fb']:.1f}x / {r['speedup_fwd']:.1f}x" if timed_reference else "-"
                ref_torch = f"{r['fb_ms']['reference'] / r['fb_ms']['torch']:.2f}" if timed_reference else "-"
                lines.append(
                    f"| {r['layer']} | {r['path']} | {r['fb_ms']['fast']:.1f} | **{r['ratio_fb']:.2f}** | "
                    f"{r['fwd_ms']['fast']:.1f} | {r['ratio_fwd']:.2f} | {ref_fb} | {ref_torch} | "
                    f"{speedup_fb} | {mem} | {ratio} |")
            lines.append("")
    checks = report["targets"]
    missed = [c for c in checks if not c["met"]]
    lines += ["## Targets", "",
              f"{len(checks) - len(missed)} of {len(checks)} checks met.", ""]
    if missed:
        lines += ["| target | where | value |", "|---|---|---:|"]
        lines += [f"| {c['target']} | {c['where']} | {c['value']:.2f} |" for c in missed]
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes, fewer repeats (< 2 minutes)")
    parser.add_argument("--shape", action="append", default=None, metavar="T,B,I,H",
                        help="benchmark this shape instead (repeatable)")
    parser.add_argument("--layers", default=None, help="comma-separated layer names (default: all 14)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or both as 'cpu,cuda' (auto: cuda if available)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads (default 1: on a shared machine OpenMP with every core "
                             "stalls whenever another process holds one; pass the core count on an idle one)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (5; quick: 3)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--name", default=None, help="file name stem (default: layers or layers-quick)")
    parser.add_argument("--impl", default="auto",
                        help="path for every layer whose rule takes it (e.g. fused-drive), else auto")
    parser.add_argument("--scan-backend", default=None, choices=("triton", "torch"),
                        help="run the rules' scans with this backend (default: momentumrnn.paths decides)")
    parser.add_argument("--loop-engine", default=None, choices=LOOP_ENGINES,
                        help="the CPU loops' steps: C++ step kernels or torch ops (default: momentumrnn.paths decides)")
    parser.add_argument("--no-cuda-graphs", action="store_true",
                        help="triton-loop: launch every step from Python instead of replaying CUDA graphs")
    parser.add_argument("--engine", default="windows", choices=triton_loop.ENGINES,
                        help="triton-loop: windows of steps replayed as CUDA graphs (default) or one persistent kernel "
                             "per call where the hidden size fits it")
    parser.add_argument("--no-reference", action="store_true",
                        help="do not time impl='reference' (on CUDA it launches kernels at every step)")
    parser.add_argument("--from-json", default=None, metavar="FILE",
                        help="measure nothing: write the Markdown of an earlier run's JSON beside it")
    args = parser.parse_args(argv)
    if args.from_json:
        source = Path(args.from_json)
        report = json.loads(source.read_text())
        source.with_suffix(".md").write_text(markdown(report) + "\n")
        print(f"wrote {source.with_suffix('.md')}")
        return report
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 5)
    if args.device == "auto":
        devices = ["cuda"] if torch.cuda.is_available() else ["cpu"]
    else:
        devices = args.device.split(",")
    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    if args.shape:
        named = {shape: name for name, shape in FULL_SHAPES}
        shapes = [(named.get(shape, f"custom {s}"), shape)
                  for s, shape in ((s, tuple(int(v) for v in s.split(","))) for s in args.shape)]
    layers = LAYERS
    if args.layers:
        wanted = args.layers.split(",")
        layers = [item for item in LAYERS + ORTHOGONAL if item[1].__name__ in wanted]
    mode = "quick" if args.quick else "full"
    command = "PYTHONPATH=src python benchmarks/layers.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = {"mode": mode, "command": command.strip(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": machine(devices, torch.get_num_threads()),
              "settings": {"repeats": repeats, "warmup": 1, "dtype": "float32", "impl": args.impl,
                           "scan_backend": args.scan_backend or "default", "reference": not args.no_reference,
                           "loop_engine": args.loop_engine or "default",
                           "cuda_graphs": not args.no_cuda_graphs, "engine": args.engine,
                           "reference_repeats_note": "1 timed run after the warm-up in quick mode and at "
                                                     f"T >= 200 or hidden >= 1000, else {min(repeats, 3)}"},
              "results": []}
    started = time.perf_counter()
    for device_name in devices:
        device = torch.device(device_name)
        for name, shape in shapes:
            print(f"{name} {shape} on {device_name}", flush=True)
            with (scan_backend_override(args.scan_backend) if args.scan_backend else contextlib.nullcontext(),
                  loop_engine_override(args.loop_engine) if args.loop_engine else contextlib.nullcontext(),
                  use_cuda_graphs(not args.no_cuda_graphs), triton_loop.use_engine(args.engine)):
                rows = benchmark_shape(name, shape, device, repeats, args.quick or bool(args.shape), layers,
                                       lambda line: print(line, flush=True), args.impl, not args.no_reference)
            for row in rows:
                row["device"] = device_name
            report["results"] += rows
    report["seconds"] = time.perf_counter() - started
    try:
        report["machine"]["load_average_at_end"] = list(os.getloadavg())
    except OSError:
        pass
    report["targets"] = evaluate_targets(report["results"], args.quick or bool(args.shape))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = args.name or ("layers-quick" if args.quick else "layers")
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / f"{stem}.md").write_text(markdown(report) + "\n")
    print(f"wrote {out / stem}.md and .json in {report['seconds']:.0f} s")
    return report


if __name__ == "__main__":
    main()
