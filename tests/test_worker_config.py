"""Worker configuration from flags and environment (pure: the environment is passed in)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bndl.wire.tls import TlsFiles
from bndl.worker.config import DEFAULT_MAX_BODY, DEFAULT_MAX_CONNECTIONS, parse
from tests.test_worker_harness import MATERIAL, TLS_DIR, TLS_FILES

TLS_ENV = {"BNDL_TLS_DIR": TLS_DIR}


def test_defaults_need_only_tls_material() -> None:
    config, level = parse([], TLS_ENV)
    assert config.tls == TLS_FILES
    assert (config.bind, config.port, config.url, config.health_port) == (
        "127.0.0.1",
        0,
        None,
        None,
    )
    assert (config.max_body, config.max_connections) == (DEFAULT_MAX_BODY, DEFAULT_MAX_CONNECTIONS)
    assert (config.handshake_timeout, config.idle_timeout, config.heartbeat_interval) == (
        10.0,
        75.0,
        1.0,
    )
    assert config.name  # the hostname
    assert config.orphan_grace == 600.0
    assert level == "WARNING"


def test_orphan_grace_from_environment_or_flag() -> None:
    config, _ = parse([], {**TLS_ENV, "BNDL_ORPHAN_GRACE": "2.5"})
    assert config.orphan_grace == 2.5
    config, _ = parse(["--orphan-grace", "1"], {**TLS_ENV, "BNDL_ORPHAN_GRACE": "2.5"})
    assert config.orphan_grace == 1.0


def test_environment_sets_defaults_and_flags_override_it(tmp_path: Path) -> None:
    environ = {
        **TLS_ENV,
        "BNDL_WORKER_NAME": "env-name",
        "BNDL_WORKER_PORT": "7000",
        "BNDL_HEALTH_PORT": "7100",
        "BNDL_WORKER_BIND": "0.0.0.0",
        "BNDL_WORKER_URL": "https://10.0.0.5:7000",
        "BNDL_WORKER_MAX_BODY": "1000",
    }
    config, _ = parse([], environ)
    assert (config.name, config.port, config.bind) == ("env-name", 7000, "0.0.0.0")
    assert (config.url, config.max_body) == ("https://10.0.0.5:7000", 1000)
    assert config.health_port == 7100
    MATERIAL.worker.write(tmp_path)
    config, _ = parse(
        ["--name", "flag", "--port", "0", "--max-body", "5", "--tls-key", TLS_FILES.key],
        {**environ, "BNDL_TLS_DIR": str(tmp_path)},  # the key's flag wins over the directory
    )
    assert (config.name, config.port, config.max_body) == ("flag", 0, 5)
    ca, cert = str(tmp_path / "ca.crt"), str(tmp_path / "tls.crt")
    assert config.tls == TlsFiles(ca, cert, TLS_FILES.key)


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        ([], {}, "TLS material is required"),
        ([], {"BNDL_TLS_DIR": ""}, "TLS material is required"),
        (["--tls-ca", "/x"], {}, "--tls-cert, --tls-key missing"),
        (["--tls-dir", "/nonexistent"], {}, "cannot read the CA certificate /nonexistent/ca.crt"),
        (["--tls-cert", "/etc/hostname"], TLS_ENV, "unusable TLS material"),
        (["--insecure-benchmark-only"], TLS_ENV, "only be turned off for benchmarks"),
        ([], {**TLS_ENV, "BNDL_BENCH_INSECURE": "1"}, "only be turned off for benchmarks"),
        (["--max-body", "0"], TLS_ENV, "must be positive"),
        (["--orphan-grace", "-1"], TLS_ENV, "must not be negative"),
        (["--max-connections", "0"], TLS_ENV, "at least 1"),
        (["--handshake-timeout", "0"], TLS_ENV, "must be positive"),
        (["--health-port", "70000"], TLS_ENV, "between 0 and 65535"),
    ],
)
def test_invalid_configuration_is_a_usage_error(
    argv: list[str], environ: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as raised:
        parse(argv, environ)
    assert raised.value.code == 2
    assert message in capsys.readouterr().err


def test_benchmarks_may_turn_encryption_off_with_both_switches() -> None:
    config, _ = parse(["--insecure-benchmark-only"], {"BNDL_BENCH_INSECURE": "1"})
    assert config.tls is None
