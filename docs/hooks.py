"""MkDocs hooks: README.md as the front page, the worked examples run at build time, and
MathJax served from the site itself.

The front page, ``docs/index.md``, is the marker ``<!-- README.md -->``: README.md is written
for the repository, so its links point into ``docs/``, and on the site the same pages sit at
the root. An example page holds one marker line,
``<!-- run-example: examples/NAME.py -->``, which is replaced by the script's source, what it
printed and the figures it saved, from a fresh run in a temporary directory. A failing
example fails the build. The marker ``<!-- estimator-registry -->`` becomes the table of
``scorefn.registry``, so that the docs list exactly the estimators the code has.

MathJax (its self-contained SVG build) comes from the ``django-static-mathjax`` package of the
``docs`` extra and is copied into the site, so the pages render their formulas with no
network access.
"""

from __future__ import annotations

import base64
import html
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README_MARKER = "<!-- README.md -->"
REGISTRY_MARKER = "<!-- estimator-registry -->"
MARKER = re.compile(r"^<!-- run-example: (?P<path>\S+) -->$", re.MULTILINE)
# The ANSI codes and carriage-return redraws of rich's progress bars, which a page cannot show.
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_example(relative: str) -> str:
    script = ROOT / relative
    if not script.is_file():
        raise FileNotFoundError(f"run-example marker names {relative}, which does not exist")
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        completed = subprocess.run(
            [sys.executable, str(script)], cwd=workdir, capture_output=True, text=True,
            env={**os.environ, "MPLBACKEND": "Agg", "COLUMNS": "100"}, timeout=900)
        seconds = time.perf_counter() - start
        output = ANSI.sub("", completed.stdout + completed.stderr)
        output = "\n".join(line.rsplit("\r", 1)[-1] for line in output.splitlines())
        if completed.returncode != 0:
            raise RuntimeError(f"{relative} failed with exit code {completed.returncode}:\n{output}")
        figures = sorted(Path(workdir).glob("*.png"))
        images = [
            f'<img alt="{html.escape(png.name)}" src="data:image/png;base64,'
            f'{base64.b64encode(png.read_bytes()).decode()}"/>'
            for png in figures
        ]
    source = script.read_text()
    parts = [
        f"Source: `{relative}` (run when this page was built, in {seconds:.0f} s).",
        "",
        "```python",
        source.rstrip(),
        "```",
        "",
        "Output:",
        "",
        "```text",
        output.rstrip(),
        "```",
        "",
    ]
    parts += [image + "\n" for image in images]
    return "\n".join(parts)


def registry_table() -> str:
    """``scorefn.registry`` as a Markdown table, one row per estimator."""
    from scorefn import registry

    def yes(flag):
        return "yes" if flag else "no"

    rows = ["| estimator | family | unbiased | first order only | `scorefn.grad` | programs | "
            "needs | gradient |", "|---|---|---|---|---|---|---|---|"]
    for e in registry.ESTIMATORS.values():
        single = yes(e.single_distribution)
        if e.single_distribution and e.options:
            single += " (" + ", ".join(f"`{o}`" for o in e.options) + ")"
        cells = (f"`{e.name}`", e.family, yes(e.unbiased), yes(e.first_order_only),
                 single, yes(e.program), e.needs, e.formula)
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if markdown.strip() == README_MARKER:
        # Read here rather than through a snippet, which would be inserted only after this hook.
        readme = (ROOT / "README.md").read_text()
        markdown = readme.replace("](docs/", "](").replace("](BENCHMARKS.md)", "](benchmarks.md)")
    if REGISTRY_MARKER in markdown:
        markdown = markdown.replace(REGISTRY_MARKER, registry_table())
    return MARKER.sub(lambda match: run_example(match["path"]), markdown)


MATHJAX = "javascripts/mathjax/tex-svg.js"


def on_files(files, config):
    from importlib.resources import files as package_files

    from mkdocs.structure.files import File

    source = package_files("mathjax") / "static" / "mathjax" / "es5" / "tex-svg.js"
    if not source.is_file():
        raise FileNotFoundError(f"MathJax is missing ({source}): pip install '.[docs]'")
    files.append(File.generated(config, MATHJAX, abs_src_path=str(source)))
    return files
