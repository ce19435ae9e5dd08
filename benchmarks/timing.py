"""Shared by the benchmark scripts: a median of wall-clock times, the options and cases of a
benchmark over (layer, shape) cases, and writing a report."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def median_time(fn, repeats: int, warmup: bool = True) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` (after one untimed call if ``warmup``)."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def print_and_write(lines: list[str], report: dict, out: str | None, name: str) -> None:
    """Print the Markdown ``lines``; with ``out``, write them to ``out/NAME.md`` and ``report``
    to ``out/NAME.json``."""
    print("\n".join(lines))
    if out:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
        (folder / f"{name}.md").write_text("\n".join(lines) + "\n")


def markdown_table(title: str, columns: list[str], rows: list[list[str]]) -> list[str]:
    """A title line and a Markdown table of ``rows`` (cells already formatted)."""
    return [title, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] + [
        "| " + " | ".join(row) + " |" for row in rows]


def case_parser(doc: str, name: str, repeats: int) -> argparse.ArgumentParser:
    """The options of a benchmark over (layer, shape) cases; ``doc``'s first line describes it."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="write NAME.json and NAME.md here (e.g. benchmarks/results)")
    parser.add_argument("--name", default=name)
    parser.add_argument("--quick", action="store_true", help="one tiny case (a smoke run)")
    return parser


def run_cases(args, measure, cases, quick_case):
    """``measure(layer name, (T, B, I, H), device, repeats)`` for each ``(name, "T,B,I,H")`` of
    ``cases`` (``quick_case`` alone with ``--quick``) on ``args.threads`` threads: the rows and
    the device."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    chosen = [quick_case] if args.quick else cases
    return [measure(name, tuple(int(v) for v in shape.split(",")), device, args.repeats) for name, shape in chosen], device
