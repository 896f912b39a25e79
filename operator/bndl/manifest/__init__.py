"""BndlJob manifests: read, validate against the CRD's schema, and plan, for both modes.

``bndl run`` and the operator take the same ``kind: BndlJob``; this package is where its meaning is
decided once. Everything public is listed here; the modules below are private layers.
"""

from .calls import CALL_PATTERN, NamedCall, resolve_call, split_call
from .errors import ManifestError
from .expand import MAX_DEPENDENCIES
from .graph import CycleError, topological_order
from .jsonvalues import MAX_DEPTH, MAX_VALUES
from .loader import (
    CEL_RULES_CHECKED,
    MAX_TASKS_HINT,
    load_plan,
    plan_job,
    validate_manifest,
)
from .markers import FromTask, FromTasks, Marker, references, substitute
from .model import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    AwaitWorkers,
    CleanupPolicy,
    CodeSource,
    JobPlan,
    Locality,
    Preference,
    Profiling,
    TaskSpec,
    WorkersSpec,
)
from .reading import MAX_ALIAS_VALUES, parse_manifest, read_manifest
from .schema import crd, crd_schema, json_schema

__all__ = [
    "API_VERSION",
    "CALL_PATTERN",
    "CEL_RULES_CHECKED",
    "GROUP",
    "KIND",
    "MAX_ALIAS_VALUES",
    "MAX_DEPENDENCIES",
    "MAX_DEPTH",
    "MAX_TASKS_HINT",
    "MAX_VALUES",
    "PLURAL",
    "VERSION",
    "AwaitWorkers",
    "CleanupPolicy",
    "CodeSource",
    "CycleError",
    "FromTask",
    "FromTasks",
    "JobPlan",
    "Locality",
    "ManifestError",
    "Marker",
    "NamedCall",
    "Preference",
    "Profiling",
    "TaskSpec",
    "WorkersSpec",
    "crd",
    "crd_schema",
    "json_schema",
    "load_plan",
    "parse_manifest",
    "plan_job",
    "read_manifest",
    "references",
    "resolve_call",
    "split_call",
    "substitute",
    "topological_order",
    "validate_manifest",
]
