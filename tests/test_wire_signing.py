"""Unit tests of request signing and verification (pure: time is passed in)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from bndl.wire import AuthenticationFailed, Verifier, sign
from bndl.wire.signing import NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, signature

SECRET = b"secret"
NOW = 1_700_000_000.0


def test_signed_request_verifies() -> None:
    headers = sign(SECRET, "POST", "/v1/run?x=1", b"body", now=NOW)
    assert set(headers) == {TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER}
    assert len(headers[NONCE_HEADER]) == 32
    Verifier(SECRET).verify("POST", "/v1/run?x=1", headers, b"body", NOW)


def test_signature_covers_every_part() -> None:
    base = ("POST", "/p", "1.0", "ab", b"body")
    reference = signature(SECRET, *base)
    for changed in [
        ("GET", "/p", "1.0", "ab", b"body"),
        ("POST", "/q", "1.0", "ab", b"body"),
        ("POST", "/p", "2.0", "ab", b"body"),
        ("POST", "/p", "1.0", "ac", b"body"),
        ("POST", "/p", "1.0", "ab", b"bodY"),
    ]:
        assert signature(SECRET, *changed) != reference
    assert signature(b"other", *base) != reference


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda h: h.pop(SIGNATURE_HEADER), "missing"),
        (lambda h: h.pop(NONCE_HEADER), "missing"),
        (lambda h: h.pop(TIMESTAMP_HEADER), "missing"),
        (lambda h: h.__setitem__(SIGNATURE_HEADER, "0" * 64), "bad signature"),
        (lambda h: h.__setitem__(NONCE_HEADER, "00" * 16), "bad signature"),
        (lambda h: h.__setitem__(TIMESTAMP_HEADER, "nan"), "outside the accepted window"),
        (lambda h: h.__setitem__(TIMESTAMP_HEADER, "soon"), "malformed timestamp"),
    ],
)
def test_tampered_headers_are_refused(tamper: object, message: str) -> None:
    headers = sign(SECRET, "POST", "/v1/run", b"", now=NOW)
    tamper(headers)  # type: ignore[operator]
    with pytest.raises(AuthenticationFailed, match=message) as raised:
        Verifier(SECRET).verify("POST", "/v1/run", headers, b"", NOW)
    assert raised.value.status == 401


def test_wrong_body_method_or_path_is_refused() -> None:
    headers = sign(SECRET, "POST", "/v1/run", b"body", now=NOW)
    verifier = Verifier(SECRET)
    for method, path, body in [
        ("POST", "/v1/run", b"other"),
        ("PUT", "/v1/run", b"body"),
        ("POST", "/v1/call", b"body"),
    ]:
        with pytest.raises(AuthenticationFailed, match="bad signature"):
            verifier.verify(method, path, headers, body, NOW)


@pytest.mark.parametrize("skew", [-30.5, 30.5, -3600, 3600])
def test_timestamp_outside_the_window_is_refused(skew: float) -> None:
    headers = sign(SECRET, "GET", "/v1/held", now=NOW + skew)
    with pytest.raises(AuthenticationFailed, match="window"):
        Verifier(SECRET, window=30).verify("GET", "/v1/held", headers, b"", NOW)


@pytest.mark.parametrize("skew", [-30, -1, 0, 1, 30])
def test_timestamp_inside_the_window_is_accepted(skew: float) -> None:
    headers = sign(SECRET, "GET", "/v1/held", now=NOW + skew)
    Verifier(SECRET, window=30).verify("GET", "/v1/held", headers, b"", NOW)


def test_replayed_nonce_is_refused_and_nonces_expire() -> None:
    verifier = Verifier(SECRET, window=10)
    headers = sign(SECRET, "GET", "/v1/held", now=NOW)
    verifier.verify("GET", "/v1/held", headers, b"", NOW)
    with pytest.raises(AuthenticationFailed, match="replayed nonce"):
        verifier.verify("GET", "/v1/held", headers, b"", NOW + 5)
    assert len(verifier) == 1
    # once the timestamp has left the window the nonce is forgotten: the timestamp refuses it
    later = sign(SECRET, "GET", "/v1/held", now=NOW + 25)
    verifier.verify("GET", "/v1/held", later, b"", NOW + 25)
    assert len(verifier) == 1
    with pytest.raises(AuthenticationFailed, match="window"):
        verifier.verify("GET", "/v1/held", headers, b"", NOW + 25)


def test_refused_requests_are_not_remembered() -> None:
    verifier = Verifier(SECRET)
    forged = sign(b"not the secret", "GET", "/v1/held", now=NOW)
    with pytest.raises(AuthenticationFailed):
        verifier.verify("GET", "/v1/held", forged, b"", NOW)
    assert len(verifier) == 0


def test_header_names_are_case_insensitive_with_http_headers() -> None:
    headers = CIMultiDict({k.lower(): v for k, v in sign(SECRET, "GET", "/", now=NOW).items()})
    Verifier(SECRET).verify("GET", "/", headers, b"", NOW)


def test_verifier_requires_a_secret_and_a_window() -> None:
    with pytest.raises(ValueError):
        Verifier(b"")
    with pytest.raises(ValueError):
        Verifier(SECRET, window=0)
