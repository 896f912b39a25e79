"""Large jobs: status writes stay coalesced and the operator's memory stays modest.

The figures (API writes of a 1,000-task job, dispatch latency, the operator's peak memory while
examples/squares.yaml runs 10,000 tasks) are printed in the terminal summary.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.cluster.cluster import Cluster

from .conftest import MEASUREMENTS, OperatorProcess
from .jobs import EXAMPLES, apply, example, expected, job_doc, wait_finished

pytestmark = pytest.mark.cluster


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def job_line(operator: OperatorProcess, job: str, what: str) -> re.Match[str]:
    pattern = re.compile(rf"{re.escape(job)}: {what}")
    matches = [m for m in map(pattern.search, operator.log_text().splitlines()) if m]
    assert matches, f"no log line {pattern.pattern!r}"
    return matches[-1]


def test_a_thousand_tasks_take_few_api_writes(
    k8s_cluster: Cluster, k8s_namespace: str, operator: OperatorProcess
) -> None:
    ns = k8s_namespace
    doc = job_doc(
        "k1",
        [
            {
                "id": "sq",
                "call": "bndl_examples.squares:square",
                "forEach": {"range": 999},
                "args": [{"fromItem": True}],
            },
            {
                "id": "total",
                "call": "bndl_examples.squares:total",
                "args": [{"fromTask": "sq", "all": True}],
            },
        ],
        workers={"replicas": 2},
        concurrency=4,
    )
    apply(k8s_cluster, ns, doc)
    st = wait_finished(k8s_cluster, ns, "k1", timeout=240)
    assert st["phase"] == "Succeeded", st
    assert st["tasks"]["succeeded"] == st["tasks"]["total"] == 1000
    assert st["results"]["total"] == sum(i * i for i in range(999))
    writes = int(
        job_line(operator, "k1", r"Succeeded \(Succeeded\) after (\d+) API writes").group(1)
    )
    latency = float(job_line(operator, "k1", r"first dispatch ([\d.]+) ms").group(1))
    # 4 children created and deleted, a few events, and one status patch per second at most.
    assert writes < 60, writes
    MEASUREMENTS.append(
        f"1,000-task job: {writes} API writes by the job's runner (+1 finalizer patch by kopf); "
        f"first dispatch {latency:.1f} ms after the last worker was seen Ready"
    )


def test_ten_thousand_tasks_of_the_squares_example(
    k8s_cluster: Cluster, k8s_namespace: str, operator: OperatorProcess
) -> None:
    ns = k8s_namespace
    before = rss_kib(operator.record.pid, "VmRSS")
    k8s_cluster.kubectl("apply", "-n", ns, "-f", str(EXAMPLES / "squares.yaml"))
    st = wait_finished(k8s_cluster, ns, "squares", timeout=480)
    assert st["phase"] == "Succeeded", st
    assert st["tasks"]["succeeded"] == st["tasks"]["total"] == 10_001
    assert st["results"]["total"] == expected(example("squares"))["total"]
    # Only the sink's result comes back to the operator: the 10,000 squares stay on the workers.
    assert set(st["results"]) == {"total"} and "resultsOmitted" not in st
    peak = rss_kib(operator.record.pid, "VmHWM")
    line = job_line(
        operator,
        "squares",
        r"Succeeded \(Succeeded\) after (\d+) API writes \((\d+) status writes in ([\d.]+) s\)",
    )
    writes, status_writes, seconds = int(line.group(1)), int(line.group(2)), float(line.group(3))
    elapsed = job_line(operator, "squares", r"first dispatch .* ([\d.]+) s after").group(1)
    MEASUREMENTS.append(
        f"squares.yaml (10,001 tasks): operator RSS {before / 1024:.0f} MiB before, peak "
        f"{peak / 1024:.0f} MiB (VmHWM of the session); {writes} API writes, of them "
        f"{status_writes} status writes in {seconds:.1f} s ({status_writes / seconds:.2f}/s); "
        f"first dispatch {elapsed} s after creation"
    )
    assert status_writes / seconds <= 1.5  # coalesced: about one per --status-interval
