"""Smoke run of the benchmark scripts' quick mode on tiny shapes: the files are written and
well-formed; and the commands of the GPU script (``cuda_checks.sh``) parse. Nothing is
timed or compared here (CI machines are too noisy for that)."""

import importlib.util
import json
import pathlib

import pytest

import momentumrnn as mrnn

BENCHMARKS = pathlib.Path(__file__).parent.parent / "benchmarks"


def load(name):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_layers_quick_mode_writes_markdown_and_json(tmp_path):
    layers = load("layers")
    layers.main(["--quick", "--shape", "5,2,3,4", "--repeats", "1", "--device", "cpu", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "layers-quick.json").read_text())
    assert report["mode"] == "quick"
    assert {"cpu", "cpu_cores", "torch", "torch_threads", "platform"} <= set(report["machine"])
    rows = report["results"]
    assert sorted(r["layer"] for r in rows) == sorted(c.__name__ for c in mrnn.LAYERS.values())
    for row in rows:
        assert row["path"] in ("fused", "loop")
        for timing in ("fb_ms", "fwd_ms"):
            assert set(row[timing]) == {"fast", "torch", "reference"}
            assert all(v > 0 for v in row[timing].values())
        assert row["ratio_fb"] > 0 and row["speedup_fb"] > 0
    assert report["targets"] and all({"target", "where", "value", "met"} <= set(c) for c in report["targets"])
    text = (tmp_path / "layers-quick.md").read_text()
    assert "| MomentumLSTM | fused |" in text and "## Targets" in text and "### Summary (cpu)" in text
    (tmp_path / "layers-quick.md").unlink()
    layers.main(["--from-json", str(tmp_path / "layers-quick.json")])     # re-rendered, nothing measured
    assert (tmp_path / "layers-quick.md").read_text() == text


def test_scan_quick_mode_prints_a_table(capsys):
    load("scan").main(["--quick", "--repeats", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("| shape (T, B, F) | mu |")
    assert len([line for line in lines if line.startswith("| short") or line.startswith("| long")]) == 4


@pytest.mark.parametrize("name", ["layers", "scan", "loops"])
def test_benchmark_scripts_have_a_quick_mode(name):
    assert "--quick" in (BENCHMARKS / f"{name}.py").read_text()


def test_loops_quick_mode_prints_a_table(capsys):
    load("loops").main(["--quick", "--repeats", "1", "--methods", "torch,autograd,function"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "| shape (T, B, H) | torch | autograd | function |"
    assert lines[3].startswith("| tiny (20, 4, 8) |")


def test_second_order_benchmark_writes_markdown_and_json(tmp_path):
    load("second_order").main(["--quick", "--repeats", "1", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "second-order.json").read_text())
    assert [r["layer"] for r in report["rows"]] == ["NesterovLSTM"]
    assert all(r["with_node_ms"] > 0 and r["penalty_reference_ms"] > 0 for r in report["rows"])


def test_torch_func_benchmark_writes_markdown_and_json(tmp_path):
    load("torch_func").main(["--quick", "--repeats", "1", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "torch-func.json").read_text())
    assert [r["layer"] for r in report["rows"]] == ["NesterovLSTM"]
    assert all(r["func_grad_ms"] > 0 and r["torch_func_grad_ms"] > 0 and r["vmap_ms"] > 0 for r in report["rows"])


def test_loops_quick_mode_times_torch_lstm_cell(capsys):
    load("loops").main(["--quick", "--repeats", "1", "--methods", "torch,lstm_cell"])
    assert capsys.readouterr().out.splitlines()[3].startswith("| tiny (20, 4, 8) |")


def test_input_drive_benchmark_prints_a_table(capsys):
    load("input_drive").main(["--quick", "--repeats", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "| shape | (T, B, I, G) | F.linear | input_drive | ratio |"
    assert lines[4].startswith("| tiny | (20, 4, 3, 16) |")


def test_compile_benchmark_writes_markdown_and_json(tmp_path):
    load("compile").main(["--shape", "6,2,3,4", "--repeats", "1", "--backend", "eager",
                          "--layers", "torch.nn.LSTM,NesterovLSTM", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "compile.json").read_text())
    assert [r["layer"] for r in report["rows"]] == ["torch.nn.LSTM", "NesterovLSTM"]
    assert all(r["compiled_ms"] > 0 and r["eager_ms"] > 0 and r["frames"] >= 0 for r in report["rows"])
    assert "| NesterovLSTM |" in (tmp_path / "compile.md").read_text()


def test_compile_split_benchmark_clocks_the_parts_and_restores_torch(tmp_path):
    import torch
    from torch._inductor.output_code import CompiledFxGraph

    from momentumrnn import compiled

    grad, call, kept = torch.autograd.grad, CompiledFxGraph.__call__, compiled._GRAPHS
    split = load("compile_split")
    split.main(["--shape", "5,2,3,4", "--repeats", "2", "--layers", f"MomentumLSTM,{split.CONTROL}",
                "--out", str(tmp_path)])
    assert (torch.autograd.grad, CompiledFxGraph.__call__, compiled._GRAPHS) == (grad, call, kept)
    row, control = json.loads((tmp_path / "compile-split.json").read_text())["rows"]
    assert row["layer"] == "MomentumLSTM"
    assert all(row[key] > 0 for key in ("eager layer", "compiled layer", "kept bwd", "graphs", "release"))
    assert row["graphs"] > row["compiled layer"] + row["kept bwd"]          # the graphs hold the op
    assert control["layer"] == split.CONTROL                                 # no layer: its clocks are empty
    assert all(control[key] is None for key in split.LAYER_CLOCKS)
    assert control["graphs"] > 0 and control["outside"] > 0
    table = (tmp_path / "compile-split.md").read_text()
    assert "| MomentumLSTM |" in table and f"| {split.CONTROL} | " in table and "| – |" in table


class _Parsed(Exception):
    """Raised instead of running a benchmark once its arguments are parsed."""


def _cuda_check_commands():
    """The ``$python benchmarks/NAME.py ...`` commands of ``cuda_checks.sh`` as (NAME, argv),
    its shell variables filled in."""
    import shlex

    script = (BENCHMARKS / "cuda_checks.sh").read_text().replace("\\\n", " ")
    values = {"coupled": next(line.split("=", 1)[1] for line in script.splitlines()
                              if line.startswith("coupled=")), "out": "OUT", "data": "DATA"}
    commands = []
    for line in script.splitlines():
        if "$python benchmarks/" not in line:
            continue
        words = shlex.split(line.split(">")[0].strip())
        for name, value in values.items():
            words = [w.replace(f"${name}", value) for w in words]
        name, argv = pathlib.Path(words[1]).stem, words[2:]
        commands.append(pytest.param(name, argv, id=argv[argv.index("--name") + 1] if "--name" in argv else name))
    return commands


@pytest.mark.parametrize("name, argv", _cuda_check_commands())
def test_cuda_checks_commands_parse(name, argv, monkeypatch):
    """Each benchmark command of the GPU script takes its arguments (the GPU run is short,
    a wrong flag would cost it), and names layers, paths and models that exist."""
    import argparse

    from momentumrnn.experiments.models import MODELS

    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(parse(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    with pytest.raises(_Parsed) as parsed:
        load(name).main(argv)
    args = vars(parsed.value.args[0])
    for layer in (args.get("layers") or "").split(","):
        assert not layer or layer == "torch.nn.LSTM" or hasattr(mrnn, layer), layer
    if "impl" in args:
        assert args["impl"] in mrnn.paths.IMPLS
    for model in (args.get("models") or "").split(","):
        model, _, impl = model.partition("@")
        assert not model or model in MODELS, model
        assert not impl or impl in mrnn.paths.IMPLS, impl
