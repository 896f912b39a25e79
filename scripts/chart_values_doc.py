"""Write the "Values" table of charts/bndl/README.md from the chart's values.yaml.

values.yaml is the one source of the chart's documentation: every value has a helm-docs style
``# -- `` comment right above its key (tests/test_chart_render.py checks that). This script turns
those comments and the defaults into a Markdown table (key, default, description) and puts it
between the two marker comments of the README, so the README cannot drift from the values;
tests/test_chart_docs.py regenerates it in memory and fails when the README differs.

Usage: ``python scripts/chart_values_doc.py`` (rewrites the README) or ``--check`` (exit 1 when
the README is out of date).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "bndl"
README = CHART / "README.md"
COMMAND = "python scripts/chart_values_doc.py"
BEGIN = (
    f"<!-- values table: generated from values.yaml by `{COMMAND}`; edit values.yaml, not this -->"
)
END = "<!-- end of values table -->"


class DocError(Exception):
    """values.yaml or the README is not in the shape this script reads."""


def documented_paths(values: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of the values documented one by one: leaves, and free-form objects whole
    (an object is walked into only where the schema lists its properties)."""
    out: list[str] = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        node = schema.get("properties", {}).get(key, {})
        if isinstance(value, dict) and "properties" in node:
            out += documented_paths(value, node, f"{path}.")
        else:
            out.append(path)
    return out


def description(lines: list[str], path: str) -> str:
    """The ``# -- `` comment above the key of ``path``, its continuation lines joined."""
    idx = -1
    for depth, part in enumerate(path.split(".")):
        key_line = re.compile(rf"^{'  ' * depth}{re.escape(part)}:")
        idx = next((i for i in range(idx + 1, len(lines)) if key_line.match(lines[i])), -1)
        if idx < 0:
            raise DocError(f"values.yaml: no line for the key {path}")
    above = idx - 1
    while above >= 0 and lines[above].lstrip().startswith("#"):
        if lines[above].lstrip().startswith("# -- "):
            comment = [line.lstrip().removeprefix("#").strip() for line in lines[above:idx]]
            return " ".join(comment).removeprefix("-- ")
        above -= 1
    raise DocError(f"values.yaml: {path} has no '# -- ' comment above its key")


def lookup(values: dict[str, Any], path: str) -> Any:
    node: Any = values
    for part in path.split("."):
        node = node[part]
    return node


def cell(text: str, code: bool = False) -> str:
    """``text`` safe inside a table cell: no column breaks, and outside a code span ``<fullname>``
    is not read as an HTML tag."""
    text = text.replace("|", "\\|")
    return f"`{text}`" if code else text.replace("<", "&lt;").replace(">", "&gt;")


def values_table(values_text: str, schema: dict[str, Any]) -> str:
    """The Markdown table of every documented value, in the order of values.yaml."""
    values = yaml.safe_load(values_text)
    lines = values_text.splitlines()
    rows = ["| Key | Default | Description |", "| --- | --- | --- |"]
    for path in documented_paths(values, schema):
        default = json.dumps(lookup(values, path), separators=(", ", ": "))
        rows.append(
            f"| {cell(path, True)} | {cell(default, True)} | {cell(description(lines, path))} |"
        )
    return "\n".join(rows)


def render_readme(readme: str, table: str) -> str:
    """``readme`` with the text between the markers replaced by ``table``."""
    if readme.count(BEGIN) != 1 or readme.count(END) != 1:
        raise DocError(f"{README.name}: expected the markers {BEGIN!r} and {END!r} once each")
    head, rest = readme.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{table}\n{END}{tail}"


def expected_readme(chart: Path = CHART) -> str:
    """The README as this script would write it from the chart's current values.yaml."""
    schema = json.loads((chart / "values.schema.json").read_text())
    table = values_table((chart / "values.yaml").read_text(), schema)
    return render_readme((chart / "README.md").read_text(), table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the README is stale")
    args = parser.parse_args(argv)
    try:
        expected = expected_readme()
    except DocError as e:
        print(e, file=sys.stderr)
        return 2
    if README.read_text() == expected:
        return 0
    if args.check:
        print(f"{README.relative_to(REPO)} is out of date: run {COMMAND}", file=sys.stderr)
        return 1
    README.write_text(expected)
    print(f"wrote {README.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
