"""Worker configuration from flags and environment (pure: the environment is passed in)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bndl.worker.config import DEFAULT_MAX_BODY, parse


def test_defaults_need_only_a_secret() -> None:
    config, level = parse([], {"BNDL_SECRET": "s"})
    assert config.secret == b"s"
    assert (config.bind, config.port, config.url) == ("127.0.0.1", 0, None)
    assert config.max_body == DEFAULT_MAX_BODY
    assert (config.auth_window, config.heartbeat_interval) == (30.0, 1.0)
    assert config.name  # the hostname
    assert config.orphan_grace == 600.0
    assert level == "WARNING"


def test_orphan_grace_from_environment_or_flag() -> None:
    config, _ = parse([], {"BNDL_SECRET": "s", "BNDL_ORPHAN_GRACE": "2.5"})
    assert config.orphan_grace == 2.5
    config, _ = parse(["--orphan-grace", "1"], {"BNDL_SECRET": "s", "BNDL_ORPHAN_GRACE": "2.5"})
    assert config.orphan_grace == 1.0


def test_environment_sets_defaults_and_flags_override_it(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(b"from-file\n")
    environ = {
        "BNDL_SECRET": "from-env",
        "BNDL_WORKER_NAME": "env-name",
        "BNDL_WORKER_PORT": "7000",
        "BNDL_WORKER_BIND": "0.0.0.0",
        "BNDL_WORKER_URL": "http://10.0.0.5:7000",
        "BNDL_WORKER_MAX_BODY": "1000",
    }
    config, _ = parse([], environ)
    assert (config.name, config.port, config.bind) == ("env-name", 7000, "0.0.0.0")
    assert (config.url, config.max_body, config.secret) == (
        "http://10.0.0.5:7000",
        1000,
        b"from-env",
    )
    config, _ = parse(
        ["--name", "flag", "--port", "0", "--secret-file", str(secret_file), "--max-body", "5"],
        environ,
    )
    assert (config.name, config.port, config.max_body) == ("flag", 0, 5)
    assert config.secret == b"from-file"  # the file wins over the environment


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        ([], {}, "a secret is required"),
        ([], {"BNDL_SECRET": ""}, "a secret is required"),
        (["--secret-file", "/nonexistent/secret"], {}, "cannot read the secret file"),
        (["--max-body", "0"], {"BNDL_SECRET": "s"}, "must be positive"),
        (["--orphan-grace", "-1"], {"BNDL_SECRET": "s"}, "must not be negative"),
    ],
)
def test_invalid_configuration_is_a_usage_error(
    argv: list[str], environ: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as raised:
        parse(argv, environ)
    assert raised.value.code == 2
    assert message in capsys.readouterr().err


def test_empty_secret_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"\n")
    with pytest.raises(SystemExit):
        parse(["--secret-file", str(empty)], {"BNDL_SECRET": "ignored"})
    assert "a secret is required" in capsys.readouterr().err
