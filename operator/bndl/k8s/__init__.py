"""The BndlJob operator: ``kubectl apply`` a BndlJob, the operator runs it on worker pods.

Run it with ``python -m bndl.k8s`` (kopf). Layers, top to bottom: ``handlers`` (thin kopf
handlers), ``runner`` (one job's life: children, workers, scheduler, status), ``builders`` (pure
manifests of the children), ``status`` (pure phases, conditions, counts, diagnosis), ``kube`` (the
one choke point to the API server) and ``settings`` (flags and environment).
"""

from bndl.k8s.builders import BuildSettings, JobRef
from bndl.k8s.settings import OperatorSettings, parse
from bndl.k8s.status import JobStatus, Phase, Reason

__all__ = ["BuildSettings", "JobRef", "JobStatus", "OperatorSettings", "Phase", "Reason", "parse"]
