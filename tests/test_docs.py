"""The documentation builds strictly, and every Python and shell example in it runs.

Examples are the fenced ```python and ```bash blocks of README.md and docs/**/*.md. A block
right after a line ``<!-- example: skip (reason) -->`` is reported as skipped with that
reason (installs, a GPU, data sets, hours of training). Display-only blocks use ```text.
Each example runs in a fresh process in its own folder, with this checkout on PYTHONPATH
and the interpreter's scripts (``momentumrnn``) on PATH.
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SKIP = re.compile(r"<!-- example: skip \((.+)\) -->")


def examples():
    found = []
    for page in PAGES:
        lines = page.read_text().splitlines()
        i = 0
        while i < len(lines):
            match = re.fullmatch(r"```(python|bash)\s*", lines[i])
            if not match:
                i += 1
                continue
            end = lines.index("```", i + 1)
            skip = SKIP.fullmatch(lines[i - 1].strip()) if i else None
            found.append((page.relative_to(ROOT).as_posix(), i + 1, match.group(1), "\n".join(lines[i + 1:end]),
                          skip.group(1) if skip else None))
            i = end + 1
    return found


EXAMPLES = examples()


def environment() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""), "MPLBACKEND": "Agg"}


def commands(code: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments and blank lines dropped."""
    lines = [line.split("  #")[0].strip() for line in code.replace("\\\n", " ").splitlines()]
    return [" ".join(line.split()) for line in lines if line and not line.startswith("#")]


def blocks_of(page: str) -> list[str]:
    return [code for where, _, lang, code, _ in EXAMPLES if where == page and lang == "bash"]


@pytest.mark.parametrize("page, line, lang, code, skip", [e for e in EXAMPLES if e[0] != "README.md"],
                         ids=[f"{e[0]}:{e[1]}" for e in EXAMPLES if e[0] != "README.md"])
def test_example_runs(tmp_path, page, line, lang, code, skip):
    if skip:
        pytest.skip(skip)
    command = [sys.executable, "-c", code] if lang == "python" else ["bash", "-e", "-c", code]
    result = subprocess.run(command, cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{page}:{line} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"


def test_readme_has_two_commands_the_docs_and_ci_run():
    """README's first command installs and runs the getting-started sweep and report (which
    test_example_runs executes); its second is the test command of the docs and .ci/run."""
    readme = blocks_of("README.md")
    assert len(readme) == 2 and all(len(commands(b)) == 1 for b in readme)
    job = [code for code in blocks_of("docs/getting-started.md") if "momentumrnn sweep" in code]
    assert len(job) == 1
    assert commands(readme[0])[0] == " && ".join(["pip install -e ."] + commands(job[0]))
    tests = ['pip install -e ".[test]"', "python -m pytest -q"]
    assert commands(readme[1])[0] == " && ".join(tests)
    assert any(commands(code) == tests for code in blocks_of("docs/getting-started.md"))
    assert any(commands(code) == tests for code in blocks_of("docs/development.md"))
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r'pip install .*-e "\.\[test\]"$', ci, re.M) and re.search(r"^python3? -m pytest -q$", ci, re.M)


def test_docs_build_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs tools come with the test extra")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                            cwd=ROOT, env={**environment(), "NO_MKDOCS_2_WARNING": "1"}, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "index.html").exists()
    assert "mnist" in (tmp_path / "site" / "toolkit" / "presets" / "index.html").read_text()
    # equations typeset by the bundled KaTeX, nothing fetched from elsewhere
    page = (tmp_path / "site" / "layers" / "momentum" / "index.html").read_text()
    assert 'class="arithmatex"' in page and "assets/katex/katex.min.js" in page
    assert (tmp_path / "site" / "assets" / "katex" / "fonts" / "KaTeX_Main-Regular.woff2").exists()
    scripts = re.findall(r'<(?:script|link)[^>]+(?:src|href)="(https?://[^"]+)"', page)
    assert not [url for url in scripts if "katex" in url or "mathjax" in url.lower()], scripts
    # the layer tables have a header row with words in it
    for name in ("momentum", "adam", "rmsprop", "nesterov", "restart"):
        html = (tmp_path / "site" / "layers" / name / "index.html").read_text()
        assert "<th></th>" not in html, name


def test_the_api_page_documents_every_public_class():
    """Every class in momentumrnn.__all__ has a ``:::`` entry on docs/api.md or is a listed
    member of one, and each layer page's classes have a section of their own."""
    import momentumrnn as mrnn

    text = (ROOT / "docs" / "api.md").read_text()
    documented = {line.split()[1].rsplit(".", 1)[-1] for line in text.splitlines() if line.startswith("::: ")}
    for members in re.findall(r"members: \[([^\]]*)\]", text):
        documented |= {m.strip() for m in members.split(",")}
    classes = {name for name in mrnn.__all__ if isinstance(getattr(mrnn, name), type)}
    assert classes - documented == set()
    for title in ("### Momentum", "### Adam", "### RMSProp", "### Nesterov (SRLSTM)", "### Restart",
                  "### Orthogonal (DTRIV)"):
        assert title in text
