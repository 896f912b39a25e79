"""The operator's one way to the Kubernetes API: an async JSON client with a single choke point.

Every request goes through :meth:`Kube.request` (timeouts, error mapping, the count of writes), on
the operator's own event loop with one shared ``aiohttp`` session: objects are plain dicts as the
API server sends them, never generated model classes. Credentials come from the official client's
config loaders (in-cluster service account, else the kubeconfig), re-read for every request so a
rotated service-account token is picked up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp

log = logging.getLogger(__name__)

# (API prefix, plural) of the kinds the operator touches.
RESOURCES: dict[str, tuple[str, str]] = {
    "Secret": ("/api/v1", "secrets"),
    "Service": ("/api/v1", "services"),
    "Pod": ("/api/v1", "pods"),
    "Event": ("/api/v1", "events"),
    "Node": ("/api/v1", "nodes"),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies"),
    "StatefulSet": ("/apis/apps/v1", "statefulsets"),
    "BndlJob": ("/apis/bndl.io/v1alpha1", "bndljobs"),
}
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MERGE_PATCH = "application/merge-patch+json"


class KubeError(Exception):
    """The API server refused a request (``status`` is its HTTP status) or could not be reached
    (``status`` 0)."""

    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}" if reason else f"{status}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


def path(kind: str, namespace: str | None = None, name: str | None = None, sub: str = "") -> str:
    prefix, plural = RESOURCES[kind]
    out = prefix
    if namespace is not None:
        out += f"/namespaces/{quote(namespace, safe='')}"
    out += f"/{plural}"
    if name is not None:
        out += f"/{quote(name, safe='')}"
    if sub:
        out += f"/{sub}"
    return out


class Credentials:
    """Host, TLS and authorization header, from the official client's configuration loaders."""

    def __init__(self, cfg: Any = None) -> None:
        from kubernetes import client, config

        if cfg is None:
            cfg = client.Configuration()
            try:
                config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
            except config.ConfigException:
                config.load_kube_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        self._cfg = cfg
        self.host = cfg.host.rstrip("/")
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
        if cfg.cert_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        if not cfg.verify_ssl:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        self.ssl = ctx

    def headers(self) -> dict[str, str]:
        # The loaders keep the token under "BearerToken" (older clients: "authorization"); the
        # call runs the refresh hook, so a rotated service-account token is read again.
        token = self._cfg.get_api_key_with_prefix("BearerToken", alias="authorization")
        return {"Authorization": token} if token else {}


class Kube:
    """Async access to the API server; create with :meth:`connect` on the operator's loop."""

    def __init__(
        self,
        credentials: Credentials,
        session: aiohttp.ClientSession,
        parent: Kube | None = None,
    ) -> None:
        self.credentials = credentials
        self.session = session
        self.parent = parent
        self.writes = 0
        """Write requests sent through this client (and its scoped children) so far."""

    def scoped(self) -> Kube:
        """A client on the same session that counts its own writes (one job's, say)."""
        return Kube(self.credentials, self.session, self)

    @classmethod
    async def connect(cls) -> Kube:
        credentials = Credentials()
        connector = aiohttp.TCPConnector(ssl=credentials.ssl, limit=256)
        timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=30)
        session = aiohttp.ClientSession(connector=connector, timeout=timeout, read_bufsize=2**20)
        return cls(credentials, session)

    async def close(self) -> None:
        await self.session.close()

    async def request(
        self,
        method: str,
        url_path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> Any:
        """One API request; the decoded JSON answer, or :class:`KubeError`."""
        headers = self.credentials.headers()
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        if method in WRITES:
            counter: Kube | None = self
            while counter is not None:
                counter.writes += 1
                counter = counter.parent
        try:
            async with self.session.request(
                method,
                self.credentials.host + url_path,
                params=params,
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                text = await response.text()
                if response.status >= 400:
                    raise _error(response.status, text)
                return json.loads(text) if text else None
        except (aiohttp.ClientError, TimeoutError) as e:
            raise KubeError(0, f"{type(e).__name__}: {e}", "Unreachable") from e

    async def get(self, url_path: str, params: Mapping[str, str] | None = None) -> Any:
        return await self.request("GET", url_path, params=params)

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create ``obj``; when it exists already, the existing object."""
        meta = obj["metadata"]
        try:
            out: dict[str, Any] = await self.request(
                "POST", path(obj["kind"], meta.get("namespace")), body=obj
            )
            return out
        except KubeError as e:
            if e.status != 409:
                raise
        existing: dict[str, Any] = await self.get(
            path(obj["kind"], meta.get("namespace"), meta["name"])
        )
        return existing

    async def patch(self, url_path: str, patch: Mapping[str, Any]) -> Any:
        return await self.request("PATCH", url_path, body=patch, content_type=MERGE_PATCH)

    async def delete(self, url_path: str, *, propagation: str = "Background") -> bool:
        """Delete; False when it was gone already."""
        try:
            await self.request(
                "DELETE",
                url_path,
                body={
                    "kind": "DeleteOptions",
                    "apiVersion": "v1",
                    "propagationPolicy": propagation,
                },
            )
        except KubeError as e:
            if e.status == 404:
                return False
            raise
        return True

    async def watch(
        self, url_path: str, params: Mapping[str, str], resource_version: str
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """The events of one watch request from ``resource_version``, until the server ends it."""
        query = {
            **params,
            "watch": "1",
            "allowWatchBookmarks": "true",
            "resourceVersion": resource_version,
            "timeoutSeconds": "60",
        }
        try:
            async with self.session.get(
                self.credentials.host + url_path,
                params=query,
                headers=self.credentials.headers(),
                timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_read=90),
            ) as response:
                if response.status >= 400:
                    raise _error(response.status, await response.text())
                async for line in response.content:
                    if line.strip():
                        event = json.loads(line)
                        yield event["type"], event["object"]
        except (aiohttp.ClientError, TimeoutError, asyncio.IncompleteReadError) as e:
            raise KubeError(0, f"{type(e).__name__}: {e}", "Unreachable") from e


def _error(status: int, text: str) -> KubeError:
    try:
        doc = json.loads(text)
        return KubeError(status, str(doc.get("message", text)), str(doc.get("reason", "")))
    except (ValueError, AttributeError):
        return KubeError(status, text[:1000])
