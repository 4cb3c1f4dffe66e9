"""Build-time hooks: the command line's reference from its own definitions, result tables
from the benchmark result files, and the result plots copied into the site."""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def on_files(files, config):
    """The benchmark plots, served as ``results/NAME.png``."""
    for plot in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"results/{plot.name}", abs_src_path=str(plot)))
    return files


def on_page_markdown(markdown, page, config, files):
    if "<!-- cli-reference -->" in markdown:
        markdown = markdown.replace("<!-- cli-reference -->", _cli_reference())
    return re.sub(r"<!-- results: (\w+) -->", lambda m: _results(m.group(1)), markdown)


def _results(stem: str) -> str:
    """A result file's Markdown, its own title demoted under the page's."""
    text = (RESULTS / f"{stem}.md").read_text()
    return re.sub(r"(?m)^(#+) ", lambda m: "#" + m.group(1) + " ", text)


def _cli_reference() -> str:
    import click
    import typer

    from prunekit.cli.commands import app

    group = typer.main.get_command(app)
    sections = []
    for name, command in group.commands.items():
        with click.Context(command, info_name=f"prunekit {name}",
                           max_content_width=100, terminal_width=100) as context:
            sections.append(f"## prunekit {name}\n\n```text\n{command.get_help(context)}\n```")
    return "\n\n".join(sections)
