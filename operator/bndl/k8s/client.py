"""The user's side of BndlJobs on a cluster: submit, wait, results, logs, profile, delete.

This is what ``bndl submit``/``get``/``results``/``logs``/``profile``/``delete`` (and the
``kubectl bndl`` plugin) and Python code use. It talks to the API server with the user's
kubeconfig and current context, like kubectl (``kubeconfig``/``context`` pick others; inside a
pod the service account is used). Every call goes through :class:`Api`, the one place that knows
the ``kubernetes`` package (imported lazily: the engine and ``bndl run`` work without it) and
turns its errors into :class:`ClientError`; tests replace it with a fake.

Task output: worker pods echo what each task run prints as ``[<run key>] line`` (see
:mod:`bndl.worker.tasklogs`), run keys ending in ``/<task id>.<attempt>``, so :func:`logs` with a
task id keeps the lines of that task's runs.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from bndl.k8s import results as job_results
from bndl.k8s.builders import LABEL_COMPONENT, LABEL_JOB_UID, WORKER_CONTAINER, JobRef
from bndl.k8s.profiling import PROFILE_KEY, config_map_name
from bndl.manifest import API_VERSION, GROUP, KIND, PLURAL, VERSION

FINISHED = ("Succeeded", "Failed", "Cancelled")
"""Phases a job does not leave."""
DEFAULT_POLL = 1.0
"""Seconds between reads of a job's status while waiting for it."""
PROFILE_WAIT = 60.0
"""Seconds :func:`wait_profile` waits for a finished job's profile (merging takes a moment)."""
REQUEST_TIMEOUT = 30.0
"""Seconds one API request may take (an unreachable server is an error, not a hang)."""


class ClientError(Exception):
    """A request the API server refused or could not answer, with its message."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class JobNotFound(ClientError):
    """No BndlJob of that name in that namespace."""


class WaitTimeout(ClientError):
    """The job did not finish in time."""


class Api:
    """The calls the client makes, over the ``kubernetes`` package (its errors mapped)."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None) -> None:
        try:
            from kubernetes import client, config
        except ImportError as e:
            raise ClientError(
                "talking to a cluster needs the kubernetes package: "
                "pip install 'bndl-kubernetes[operator]'"
            ) from e
        try:
            api_client = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, context=context
            )
            self.default_namespace = _context_namespace(kubeconfig, context)
        except config.ConfigException as e:
            if kubeconfig or context:
                raise ClientError(f"kubeconfig: {e}") from e
            try:  # no kubeconfig: inside a pod
                config.load_incluster_config()  # type: ignore[no-untyped-call]
            except config.ConfigException:
                raise ClientError(f"no cluster configured (kubeconfig: {e})") from e
            api_client = client.ApiClient()
            self.default_namespace = _pod_namespace()
        self._custom = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            return fn(*args, _request_timeout=REQUEST_TIMEOUT, **kwargs)
        except ApiException as e:
            message = _api_message(e)
            error = JobNotFound if e.status == 404 else ClientError
            raise error(f"{what}: {message}", e.status) from e
        except Exception as e:  # urllib3's connection errors and the like
            raise ClientError(f"{what}: {type(e).__name__}: {e}") from e

    def get_job(self, namespace: str, name: str) -> dict[str, Any]:
        return self._call(  # type: ignore[no-any-return]
            f"bndljob {namespace}/{name}",
            self._custom.get_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
        )

    def list_jobs(self, namespace: str | None) -> list[dict[str, Any]]:
        if namespace is None:
            answer = self._call(
                "bndljobs", self._custom.list_cluster_custom_object, GROUP, VERSION, PLURAL
            )
        else:
            answer = self._call(
                f"bndljobs in {namespace}",
                self._custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
            )
        return list(answer.get("items", []))

    def create_job(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call(  # type: ignore[no-any-return]
            f"creating bndljob {namespace}/{body['metadata']['name']}",
            self._custom.create_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            body,
        )

    def replace_job(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call(  # type: ignore[no-any-return]
            f"replacing bndljob {namespace}/{name}",
            self._custom.replace_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            body,
        )

    def delete_job(self, namespace: str, name: str) -> None:
        self._call(
            f"deleting bndljob {namespace}/{name}",
            self._custom.delete_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
        )

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        answer = self._call(
            f"pods {selector} in {namespace}",
            self._core.list_namespaced_pod,
            namespace,
            label_selector=selector,
        )
        return [self._core.api_client.sanitize_for_serialization(p) for p in answer.items]

    def pod_log(self, namespace: str, pod: str, container: str, previous: bool) -> str:
        return self._call(  # type: ignore[no-any-return]
            f"log of pod {namespace}/{pod}" + (" (previous container)" if previous else ""),
            self._core.read_namespaced_pod_log,
            pod,
            namespace,
            container=container,
            previous=previous,
        )

    def get_config_map(self, namespace: str, name: str) -> dict[str, Any]:
        answer = self._call(
            f"configmap {namespace}/{name}", self._core.read_namespaced_config_map, name, namespace
        )
        return self._core.api_client.sanitize_for_serialization(answer)  # type: ignore[no-any-return]


def _api_message(error: Any) -> str:
    import json

    try:
        return str(json.loads(error.body)["message"])
    except (TypeError, ValueError, KeyError):
        return f"{error.status} {error.reason}"


def _context_namespace(kubeconfig: str | None, context: str | None) -> str:
    from kubernetes import config

    contexts, active = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
        config_file=kubeconfig
    )
    chosen = active
    if context is not None:
        chosen = next((c for c in contexts if c.get("name") == context), active)
    return str((chosen or {}).get("context", {}).get("namespace") or "default")


def _pod_namespace() -> str:
    path = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    return path.read_text().strip() if path.exists() else "default"


# --- manifests ----------------------------------------------------------------------------------


def load_manifest(manifest: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """The BndlJob of a dict, a YAML/JSON file path, or YAML text (a ``str`` with a newline)."""
    if isinstance(manifest, Mapping):
        body = copy.deepcopy(dict(manifest))
    else:
        text = manifest if isinstance(manifest, str) and "\n" in manifest else None
        if text is None:
            try:
                text = Path(manifest).read_text()
            except OSError as e:
                raise ClientError(f"{manifest}: {e.strerror or e}") from e
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
        jobs = [d for d in documents if isinstance(d, dict) and d.get("kind") == KIND]
        if len(jobs) != 1:
            raise ClientError(f"want exactly one kind: {KIND} document, found {len(jobs)}")
        body = jobs[0]
    if body.get("kind") != KIND or body.get("apiVersion") != API_VERSION:
        raise ClientError(f"not a BndlJob: want apiVersion {API_VERSION} and kind {KIND}")
    if not isinstance(body.get("metadata"), dict) or not body["metadata"].get("name"):
        raise ClientError("the BndlJob has no metadata.name")
    return body


def _namespace(api: Api, namespace: str | None, body: Mapping[str, Any] | None = None) -> str:
    """kubectl's rule: the flag, else the manifest's, else the context's; flag and manifest
    must agree."""
    declared = (body or {}).get("metadata", {}).get("namespace")
    if namespace and declared and namespace != declared:
        raise ClientError(
            f"the manifest's namespace {declared!r} does not match the requested {namespace!r}"
        )
    return str(namespace or declared or api.default_namespace)


# --- the Python API -----------------------------------------------------------------------------


def submit(
    manifest: str | Path | Mapping[str, Any],
    namespace: str | None = None,
    *,
    api: Api | None = None,
) -> str:
    """Create the BndlJob, or replace the one of that name (``kubectl apply``); returns its name.

    A running job's tasks, code and workers cannot change (the API server refuses): delete it
    first to run it again.
    """
    api = api or Api()
    body = load_manifest(manifest)
    ns = _namespace(api, namespace, body)
    body["metadata"]["namespace"] = ns
    name = str(body["metadata"]["name"])
    try:
        api.create_job(ns, body)
    except ClientError as e:
        if e.status != 409:
            raise
        current = api.get_job(ns, name)
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        api.replace_job(ns, name, body)
    return name


def status(name: str, namespace: str | None = None, *, api: Api | None = None) -> dict[str, Any]:
    """The job's ``.status`` (``{}`` before the operator wrote one)."""
    api = api or Api()
    return dict(api.get_job(_namespace(api, namespace), name).get("status") or {})


def watch(
    name: str,
    namespace: str | None = None,
    timeout: float | None = None,
    *,
    api: Api | None = None,
    poll: float = DEFAULT_POLL,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[dict[str, Any]]:
    """The job's status, read every ``poll`` seconds, until (and including) a finished phase.

    ``WaitTimeout`` after ``timeout`` seconds; ``JobNotFound`` when the job is (or gets) deleted.
    """
    api = api or Api()
    ns = _namespace(api, namespace)
    deadline = None if timeout is None else clock() + timeout
    while True:
        job = api.get_job(ns, name)
        current = dict(job.get("status") or {})
        yield current
        # a job replaced by submit() shows its last run's phase until the operator sees the edit
        observed = current.get("observedGeneration")
        generation = job.get("metadata", {}).get("generation")
        fresh = observed is None or generation is None or observed >= generation
        if current.get("phase") in FINISHED and fresh:
            return
        if deadline is not None and clock() >= deadline:
            raise WaitTimeout(
                f"bndljob {ns}/{name} did not finish within {timeout:g} s "
                f"(phase {current.get('phase', 'Pending')})"
            )
        sleep(poll)


def wait(
    name: str, namespace: str | None = None, timeout: float | None = None, *, api: Api | None = None
) -> dict[str, Any]:
    """Wait until the job finishes (Succeeded, Failed or Cancelled); returns its status."""
    last: dict[str, Any] = {}
    for current in watch(name, namespace, timeout, api=api):
        last = current
    return last


@dataclass(frozen=True, slots=True)
class Results:
    """A job's sink results by task id, how many were left out, and where they were read (the
    job's status, or its ``<job>-results`` ConfigMap when the status could not hold them)."""

    values: dict[str, Any]
    omitted: int
    source: str


def read_results(
    name: str,
    namespace: str | None = None,
    *,
    api: Api | None = None,
    job_status: Mapping[str, Any] | None = None,
) -> Results:
    """The job's sink results: from its results ConfigMap when the status names one (900 KiB
    of JSON at most), else from the status (16 KiB at most). ``job_status`` saves a read."""
    api = api or Api()
    ns = _namespace(api, namespace)
    st = status(name, ns, api=api) if job_status is None else job_status
    stored = job_results.summary(st)
    if stored:
        try:
            data = api.get_config_map(ns, str(stored["name"])).get("data") or {}
            return Results(
                job_results.parse(str(data.get(job_results.RESULTS_KEY, ""))),
                int(data.get(job_results.OMITTED_KEY, 0) or 0),
                f"configmap {stored['name']}",
            )
        except JobNotFound:  # deleted by hand: what the status kept is still there
            pass
    return Results(
        dict(st.get("results") or {}), int(st.get("resultsOmitted") or 0), "the job's status"
    )


def results(name: str, namespace: str | None = None, *, api: Api | None = None) -> dict[str, Any]:
    """The job's sink results by task id (:func:`read_results`)."""
    return read_results(name, namespace, api=api).values


def failed_task(job_status: Mapping[str, Any]) -> tuple[str, str] | None:
    """The id of the task that failed the job and the end of what it printed (kept in the
    status: its worker pod is deleted by the default cleanupPolicy); None if none did."""
    failed = job_status.get("failedTask")
    if not isinstance(failed, Mapping) or not failed.get("id"):
        return None
    return str(failed["id"]), str(failed.get("output") or "")


def delete(name: str, namespace: str | None = None, *, api: Api | None = None) -> None:
    """Delete the job (its running tasks are cancelled; its children go with it)."""
    api = api or Api()
    api.delete_job(_namespace(api, namespace), name)


def profile(name: str, namespace: str | None = None, *, api: Api | None = None) -> str:
    """The merged profile of a job run with ``spec.profiling`` (its ``<job>-profile``
    ConfigMap); ``JobNotFound`` when there is none (yet)."""
    api = api or Api()
    ns = _namespace(api, namespace)
    job = api.get_job(ns, name)
    ref = JobRef(name, ns, str(job["metadata"].get("uid", "")))
    try:
        config_map = api.get_config_map(ns, config_map_name(ref))
    except JobNotFound as e:
        raise JobNotFound(
            f"bndljob {ns}/{name} has no profile (yet): it is written when a job with "
            "spec.profiling ends",
            404,
        ) from e
    return str((config_map.get("data") or {}).get(PROFILE_KEY, ""))


def profiled(manifest: Mapping[str, Any]) -> bool:
    """Whether the BndlJob asks for a profile (``spec.profiling.cpu`` or ``.memory``)."""
    spec = (manifest.get("spec") or {}).get("profiling") or {}
    return bool(spec.get("cpu") or spec.get("memory"))


def wait_profile(
    name: str,
    namespace: str | None = None,
    timeout: float = PROFILE_WAIT,
    *,
    api: Api | None = None,
    poll: float = DEFAULT_POLL,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """:func:`profile`, waiting up to ``timeout`` seconds for it: the operator writes it just
    after a job's final phase."""
    deadline = clock() + timeout
    while True:
        try:
            return profile(name, namespace, api=api)
        except JobNotFound:
            if clock() >= deadline:
                raise
        sleep(poll)


@dataclass(frozen=True, slots=True)
class PodLog:
    """The log of one container of one worker pod (``previous``: the one before a restart)."""

    pod: str
    previous: bool
    text: str


def task_lines(text: str, task: str) -> str:
    """The lines of a worker's log that runs of ``task`` printed (``[<...>/<task>.<n>] ...``)."""
    pattern = re.compile(rf"^\[(?:[^\]\s]*/)?{re.escape(task)}\.\d+\] ")
    return "".join(line for line in text.splitlines(keepends=True) if pattern.match(line))


def logs(
    name: str,
    namespace: str | None = None,
    task: str | None = None,
    *,
    api: Api | None = None,
) -> list[PodLog]:
    """The logs of the job's worker pods (a restarted container's previous log too), only the
    lines of ``task``'s runs when given. Empty when the pods are gone (``cleanupPolicy``)."""
    api = api or Api()
    ns = _namespace(api, namespace)
    job = api.get_job(ns, name)
    uid = str(job["metadata"].get("uid", ""))
    selector = f"{LABEL_JOB_UID}={uid},{LABEL_COMPONENT}=worker"
    out = []
    pods = sorted(api.list_pods(ns, selector), key=lambda p: str(p["metadata"]["name"]))
    for pod in pods:
        pod_name = str(pod["metadata"]["name"])
        restarted = any(
            s.get("restartCount", 0) > 0 for s in pod.get("status", {}).get("containerStatuses", [])
        )
        for previous in (True, False) if restarted else (False,):
            try:
                text = api.pod_log(ns, pod_name, WORKER_CONTAINER, previous)
            except ClientError as e:  # not started yet, or the previous log is gone
                text = f"[bndl: no log: {e}]\n" if not previous else ""
            if task is not None:
                text = task_lines(text, task)
            if text:
                out.append(PodLog(pod_name, previous, text))
    return out


# --- rendering ----------------------------------------------------------------------------------


def age(created: str | None, now: datetime | None = None) -> str:
    """kubectl's AGE column: ``42s``, ``5m``, ``3h``, ``2d``."""
    if not created:
        return "<unknown>"
    then = datetime.fromisoformat(created.replace("Z", "+00:00"))
    seconds = max(0, int(((now or datetime.now(UTC)) - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "m" else 1):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def table(jobs: list[dict[str, Any]], now: datetime | None = None, namespaces: bool = False) -> str:
    """``bndl get``: a row per job, like ``kubectl get bndljobs``."""
    header = ["NAME", "PHASE", "WORKERS", "TASKS", "REASON", "AGE"]
    if namespaces:
        header.insert(0, "NAMESPACE")
    rows = [header]
    for job in jobs:
        meta, st = job.get("metadata", {}), job.get("status") or {}
        row = [
            str(meta.get("name", "")),
            str(st.get("phase", "Pending")),
            str(st.get("workersSummary", "")),
            str(st.get("tasksSummary", "")),
            str(st.get("reason", "")),
            age(meta.get("creationTimestamp"), now),
        ]
        if namespaces:
            row.insert(0, str(meta.get("namespace", "")))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "".join(
        "   ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() + "\n"
        for r in rows
    )
