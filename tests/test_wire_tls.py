"""The per-cluster certificate authority and its material (in process; the handshakes between
real processes are in test_wire_attacks and test_worker_auth)."""

from __future__ import annotations

import datetime
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from bndl.wire.tls import TlsError, TlsFiles, bench_insecure, new_cluster


def test_a_cluster_gets_an_authority_and_two_certificates_of_it() -> None:
    tls = new_cluster("ns/job", days=3)
    assert tls.worker.ca == tls.client.ca
    ca = x509.load_pem_x509_certificate(tls.worker.ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    now = datetime.datetime.now(datetime.UTC)
    usages = {}
    for role, identity in (("worker", tls.worker), ("client", tls.client)):
        cert = x509.load_pem_x509_certificate(identity.cert)
        assert cert.issuer == ca.subject
        cert.verify_directly_issued_by(ca)
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
        assert cert.not_valid_before_utc < now < cert.not_valid_after_utc
        assert cert.not_valid_after_utc - now < datetime.timedelta(days=3, minutes=1)
        usages[role] = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert usages["worker"] == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert usages["client"] == {ExtendedKeyUsageOID.CLIENT_AUTH}  # it cannot serve as a worker
    assert b"PRIVATE KEY" not in tls.worker.ca  # the authority's key is not kept
    assert new_cluster("ns/job").worker.ca != tls.worker.ca
    with pytest.raises(ValueError, match="at least a day"):
        new_cluster("x", days=0)


def test_files_are_written_privately_and_read_back(tmp_path: Path) -> None:
    identity = new_cluster("files").worker
    files = identity.write(tmp_path)
    assert files == TlsFiles.in_dir(tmp_path)
    assert stat.S_IMODE(os.stat(files.key).st_mode) == 0o600
    assert files.read() == identity
    identity.server_context()
    identity.client_context()
    os.remove(files.cert)
    with pytest.raises(TlsError, match="cannot read the certificate"):
        files.read()


def test_unusable_material_is_a_tls_error() -> None:
    identity = new_cluster("a").worker
    other = new_cluster("b").worker
    with pytest.raises(TlsError, match="unusable TLS material"):
        type(identity)(identity.ca, identity.cert, other.key).server_context()  # mismatched key
    with pytest.raises(TlsError, match="unusable TLS material"):
        type(identity)(b"not a certificate", identity.cert, identity.key).client_context()


@pytest.mark.parametrize(
    ("explicit", "environ", "outcome"),
    [
        (False, {}, False),
        (True, {"BNDL_BENCH_INSECURE": "1"}, True),
        (True, {}, TlsError),
        (False, {"BNDL_BENCH_INSECURE": "1"}, TlsError),
        (True, {"BNDL_BENCH_INSECURE": "yes"}, TlsError),
    ],
)
def test_encryption_is_off_only_with_both_switches(
    explicit: bool, environ: dict[str, str], outcome: bool | type[Exception]
) -> None:
    if isinstance(outcome, bool):
        assert bench_insecure(explicit, environ) is outcome
    else:
        with pytest.raises(outcome, match="only be turned off for benchmarks"):
            bench_insecure(explicit, environ)
