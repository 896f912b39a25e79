"""The chart README's "Values" table is generated from values.yaml and must not drift from it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent
GENERATOR = REPO / "scripts" / "chart_values_doc.py"


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chart_values_doc", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_the_readme_values_table_is_generated_from_values_yaml() -> None:
    gen = load_generator()
    expected = gen.expected_readme()
    assert gen.README.read_text() == expected, (
        f"charts/bndl/README.md's values table differs from values.yaml: run `{gen.COMMAND}`"
    )


def test_every_documented_value_has_a_row() -> None:
    gen = load_generator()
    readme = gen.README.read_text()
    table = readme.split(gen.BEGIN)[1].split(gen.END)[0]
    for key in ("replicaCount", "image.repository", "worker.resources", "watch.namespaces"):
        assert f"| `{key}` |" in table, key


def test_a_changed_comment_or_default_changes_the_table(tmp_path: Path) -> None:
    gen = load_generator()
    for name in ("values.yaml", "values.schema.json", "README.md"):
        (tmp_path / name).write_text((gen.CHART / name).read_text())
    values = tmp_path / "values.yaml"
    values.write_text(
        values.read_text()
        .replace("replicaCount: 2", "replicaCount: 3")
        .replace("# -- Operator replicas.", "# -- Operator replicas | pods.")
    )
    table = gen.expected_readme(tmp_path).split(gen.BEGIN)[1]
    assert "| `replicaCount` | `3` | Operator replicas \\| pods." in table
    assert gen.expected_readme(tmp_path) != gen.README.read_text()
