"""The chart's CRD is the repository's crds/bndljob.yaml, byte for byte (one source of the schema).

Helm installs files under a chart's crds/ as they are (no templating), so a copy is what the chart
ships; this test fails on any drift. Fix a failure with:

    cp crds/bndljob.yaml charts/bndl/crds/bndljob.yaml
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from tests.test_chart_render import CHART, REPO, helm

pytestmark = pytest.mark.usefixtures("helm_binary")

SOURCE = REPO / "crds" / "bndljob.yaml"


def test_chart_crd_is_identical_to_the_source() -> None:
    copy = CHART / "crds" / "bndljob.yaml"
    assert copy.read_bytes() == SOURCE.read_bytes(), (
        "charts/bndl/crds/bndljob.yaml differs from crds/bndljob.yaml: "
        "cp crds/bndljob.yaml charts/bndl/crds/bndljob.yaml"
    )
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == ["bndljob.yaml"]


def test_packaged_chart_ships_the_same_crd(tmp_path: Path) -> None:
    """What users install is the packaged chart: its crds/ must hold the same bytes."""
    helm("package", str(CHART), "--destination", str(tmp_path))
    [archive] = tmp_path.glob("bndl-*.tgz")
    with tarfile.open(archive) as tar:
        member = tar.extractfile("bndl/crds/bndljob.yaml")
        assert member is not None
        assert member.read() == SOURCE.read_bytes()
    assert helm("show", "crds", str(archive)).stdout.strip() == SOURCE.read_text().strip()
