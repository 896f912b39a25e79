"""Mutual TLS between the driver (or operator) and the workers: a certificate authority per
cluster, its certificates, and the ``ssl`` contexts both ends speak through.

A worker runs whatever a connected peer sends it, so a peer must prove it belongs to the cluster
before a single byte of a request is read. Every cluster (a :class:`~bndl.local.LocalCluster`, a
``bndl run``, a BndlJob on Kubernetes) gets its own authority, made when the cluster starts:

- the authority signs exactly two certificates, then its private key is dropped: the *worker*
  certificate (shared by all the cluster's workers; usable to serve and, for fetches from peers,
  as a client) and the *client* certificate of the driver or operator (client use only);
- both ends require the other's certificate and verify it against the cluster's authority, and
  speak TLS 1.3 only;
- certificates are valid for :data:`DEFAULT_DAYS` (from a few minutes in the past, for clock
  skew); a cluster lives far shorter, and nothing outside the cluster trusts its authority.

**Chain only, no host names.** A worker's address (a pod IP, a free port on loopback) is not known
when the certificates are made, so the client does not check host names
(``check_hostname = False``): it requires a certificate chaining to the cluster's own authority,
which signed nothing but the cluster's members. All members are equally trusted (any of them may
run code on any worker anyway), so naming the worker would protect nothing more. The extended key
usage still separates roles: the client certificate is ``clientAuth`` only, so the driver's key
cannot serve as a worker.

**What this replaces.** A request is bound to its TLS session: a captured request cannot be
replayed (on the same worker or another, even one restarted) and an answer cannot be forged or
reflected, because neither end accepts a session without the other's key. Hence no request
signatures, nonces or timestamps: an unauthenticated peer costs a worker one failed handshake and
no request body is ever read from it.

Files use the names of a Kubernetes TLS Secret: ``ca.crt``, ``tls.crt``, ``tls.key``.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import ssl
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where certificates are made: a worker never makes any
    from cryptography import x509

CA_FILE = "ca.crt"
CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"

DEFAULT_DAYS = 30
"""Validity of a cluster's certificates, in days."""
SKEW = datetime.timedelta(minutes=5)
"""Certificates are valid from this long before they are made (clocks of nodes differ)."""

BENCH_INSECURE_ENV = "BNDL_BENCH_INSECURE"
"""Set to ``1`` (together with an explicit switch, see :func:`bench_insecure`) to turn encryption
off, for ``bench/dispatch.py`` to measure what it costs. Never use it otherwise."""


class TlsError(Exception):
    """TLS material that is missing, unreadable or not usable."""


@dataclass(frozen=True, slots=True)
class Identity:
    """One member's TLS material, in PEM: the cluster's authority, its certificate and key."""

    ca: bytes
    cert: bytes
    key: bytes

    def server_context(self) -> ssl.SSLContext:
        return _context(ssl.PROTOCOL_TLS_SERVER, self.ca, self.cert, self.key)

    def client_context(self) -> ssl.SSLContext:
        return _context(ssl.PROTOCOL_TLS_CLIENT, self.ca, self.cert, self.key)

    def write(self, directory: str | os.PathLike[str]) -> TlsFiles:
        """Write the three files into ``directory`` (the key readable by the owner only)."""
        files = TlsFiles.in_dir(directory)
        for path, data, mode in (
            (files.ca, self.ca, 0o644),
            (files.cert, self.cert, 0o644),
            (files.key, self.key, 0o600),
        ):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "wb") as file:
                file.write(data)
        return files


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where a worker finds its TLS material."""

    ca: str
    cert: str
    key: str

    @classmethod
    def in_dir(cls, directory: str | os.PathLike[str]) -> TlsFiles:
        d = Path(directory)
        return cls(str(d / CA_FILE), str(d / CERT_FILE), str(d / KEY_FILE))

    def read(self) -> Identity:
        parts = []
        for what, path in (("CA certificate", self.ca), ("certificate", self.cert),
                           ("key", self.key)):  # fmt: skip
            try:
                parts.append(Path(path).read_bytes())
            except OSError as e:
                raise TlsError(f"cannot read the {what} {path}: {e.strerror or e}") from e
        return Identity(*parts)


@dataclass(frozen=True, slots=True)
class ClusterTls:
    """The material of one cluster: what its workers and what its driver (or operator) hold."""

    worker: Identity
    client: Identity


def new_cluster(name: str, days: int = DEFAULT_DAYS) -> ClusterTls:
    """A fresh authority for cluster ``name`` and its two certificates; the authority's key is
    not kept (it signs nothing else)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    if days < 1:
        raise ValueError(f"certificates must be valid for at least a day, not {days}")
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - SKEW, now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"bndl cluster {name}")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)

    def issue(common_name: str, usages: list[x509.ObjectIdentifier]) -> Identity:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True, key_agreement=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
            .sign(ca_key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return Identity(ca_pem, cert.public_bytes(serialization.Encoding.PEM), key_pem)

    server_and_client = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    return ClusterTls(
        worker=issue(f"bndl worker of {name}", server_and_client),
        client=issue(f"bndl driver of {name}", [ExtendedKeyUsageOID.CLIENT_AUTH]),
    )


def bench_insecure(explicit: bool, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether encryption is off: only when asked for ``explicit``-ly (a command-line switch, a
    keyword argument) *and* with ``BNDL_BENCH_INSECURE=1`` in the environment. Raises when only
    one of the two is given, so neither alone can turn it off by accident."""
    env = environ.get(BENCH_INSECURE_ENV, "") == "1"
    if explicit != env:
        raise TlsError(
            "encryption can only be turned off for benchmarks, with both the explicit switch "
            f"and {BENCH_INSECURE_ENV}=1 in the environment"
        )
    return explicit


def _key_usage(**granted: bool) -> x509.KeyUsage:
    from cryptography import x509

    usages = dict.fromkeys(
        ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
         "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"),
        False,
    )  # fmt: skip
    return x509.KeyUsage(**{**usages, **granted})


def _name(common_name: str) -> x509.Name:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])


def _context(protocol: int, ca: bytes, cert: bytes, key: bytes) -> ssl.SSLContext:
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    if protocol == ssl.PROTOCOL_TLS_CLIENT:
        context.check_hostname = False  # chain only: see the module's docstring
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_verify_locations(cadata=ca.decode("ascii"))
        with _file(cert) as cert_path, _file(key) as key_path:
            context.load_cert_chain(cert_path, key_path)
    except (ssl.SSLError, ValueError, UnicodeDecodeError) as e:
        raise TlsError(f"unusable TLS material: {e}") from e
    return context


@contextlib.contextmanager
def _file(data: bytes) -> Iterator[str]:
    """A path holding ``data`` for the duration (``ssl`` loads certificates from files only): an
    anonymous memory file on Linux, a private temporary file elsewhere."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("bndl-tls", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="bndl-tls-") as directory:
        path = os.path.join(directory, "pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        yield path
