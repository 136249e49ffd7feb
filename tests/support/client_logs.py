"""Running code the way a deployment at DEBUG would, and collecting every line it logged or printed."""

from __future__ import annotations

import logging

import pytest


def configure_airflow_at_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    """``logging_level = DEBUG`` for what reads Airflow's configuration during the test. Airflow's own logging was
    configured at its default level when tests/conftest.py imported it, so this never leaves a worker at DEBUG.
    Call it from a fixture, before the test's call phase."""
    monkeypatch.setenv("AIRFLOW__LOGGING__LOGGING_LEVEL", "DEBUG")
    import airflow  # noqa: F401  (configures logging on first import)


def log_everything_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    """The root logger, Airflow's loggers and caplog at DEBUG; client loggers are left as the product left them."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="airflow")


def everything_logged(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> str:
    """Every captured record (formatted and as a message) and everything written to the process's stdout/stderr."""
    output = capfd.readouterr()
    return "\n".join([caplog.text, *(record.getMessage() for record in caplog.records), output.out, output.err])


def held_by_the_masker(secret: str) -> bool:
    """Whether Airflow's log masker (what task logs pass through) knows ``secret``."""
    from airflow.sdk.log import redact

    return secret not in str(redact(f"<{secret}>"))
