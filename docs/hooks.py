"""MkDocs hooks: the evidence in results/ and the recipe table, taken from the repository
when the site is built, so that the docs quote what the project holds, never a copy.

* ``on_files``: ``results/README.md`` becomes the page ``results/index.md``, with every
  ``report.md``, figure and script it links to;
* ``on_page_markdown``: ``<!-- recipes -->`` becomes the table of
  ``momentumrnn.experiments.presets.RECIPES``, ``<!-- differences -->`` that of
  ``REMAINING_DIFFERENCES``.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

_KEEP = {".png", ".sh"}


def on_files(files, config):
    root = Path(config["config_file_path"]).parent
    for path in sorted((root / "results").rglob("*")):
        if not path.is_file() or "checkpoints" in path.parts:
            continue
        uri = path.relative_to(root).as_posix()
        if uri == "results/README.md":
            uri = "results/index.md"
        elif not (path.suffix in _KEEP or path.name in ("report.md", "README.md", "aggregate.md", "PROVENANCE.md")
                  or uri.startswith("results/smnist-h200/make_run_dirs.py")):
            continue
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def on_page_markdown(markdown, page, config, files):
    if "<!-- differences -->" in markdown:
        from momentumrnn.experiments.presets import REMAINING_DIFFERENCES

        rows = ["| where it differs | why it is kept |", "|---|---|"]
        rows += [f"| {what} | {why} |" for what, why in REMAINING_DIFFERENCES]
        markdown = markdown.replace("<!-- differences -->", "\n".join(rows))
    if "<!-- recipes -->" not in markdown:
        return markdown
    from momentumrnn.experiments.presets import EXPERIMENT_TASK, RECIPE_NOTES, RECIPES

    rows = ["| task | model | H | settings |", "|---|---|---|---|"]
    for recipe in RECIPES:
        settings = ", ".join(f"{k} {v}" for k, v in recipe.settings.items())
        note = RECIPE_NOTES.get((recipe.experiment, recipe.model))
        settings += f" (note: {note})" if note else ""
        rows.append(f"| {EXPERIMENT_TASK[recipe.experiment]} | `{recipe.model}` | "
                    f"{', '.join(map(str, recipe.hidden))} | {settings} |")
    return markdown.replace("<!-- recipes -->", "\n".join(rows))
