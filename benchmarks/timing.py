"""Shared by the benchmark scripts: a median of wall-clock times, and writing a report."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path


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
