"""A Kosli CLI config file (``--config-file`` / ``~/.kosli.yml``) that hard-codes ``api-token``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator

from kosli_rotation.consumers.base import Consumer, ConsumerConfig
from kosli_rotation.errors import ConsumerError
from kosli_rotation.fingerprints import digest

TOKEN_KEY = "api-token"


class KosliCliConfigConfig(ConsumerConfig):
    kind: Literal["kosli_cli_config"]
    path: str = Field(description="Absolute path of the YAML config file, as the Airflow worker sees it.")
    mode: int = Field(default=0o600, ge=0, le=0o777, description="File permissions to keep it private.")

    @field_validator("path")
    @classmethod
    def _absolute(cls, path: str) -> str:
        if not os.path.isabs(path):
            raise ValueError(f"{path!r} must be an absolute path")
        return path


class KosliCliConfigConsumer(Consumer[KosliCliConfigConfig]):
    """Rewrites the file atomically, keeping every other setting (org, host, ...) as it was."""

    kind = "kosli_cli_config"

    @property
    def path(self) -> Path:
        return Path(self.config.path)

    def describe(self) -> str:
        return f"Kosli CLI config file {self.path} ({TOKEN_KEY})"

    def _settings(self) -> dict[str, Any]:
        if not self.path.exists():
            return {}
        try:
            settings = yaml.safe_load(self.path.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ConsumerError(self.name, f"cannot read {self.path}: {error}", retryable=False) from None
        if not isinstance(settings, dict):
            raise ConsumerError(self.name, f"{self.path} is not a YAML mapping", retryable=False)
        return settings

    def check_access(self) -> None:
        directory = self.path.parent
        if not directory.is_dir():
            raise ConsumerError(self.name, f"directory {directory} does not exist", retryable=False)
        target = self.path if self.path.exists() else directory
        if not os.access(target, os.W_OK):
            raise ConsumerError(self.name, f"{target} is not writable by the Airflow worker", retryable=False)
        self._settings()

    def read_digest(self) -> str | None:
        value = self._settings().get(TOKEN_KEY)
        return digest(str(value)) if value else None

    def write(self, key: str) -> None:
        settings = self._settings()
        settings[TOKEN_KEY] = key
        directory = self.path.parent
        try:
            handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{self.path.name}.")
            with os.fdopen(handle, "w") as stream:
                os.fchmod(stream.fileno(), self.config.mode)
                yaml.safe_dump(settings, stream, default_flow_style=False, sort_keys=False)
            os.replace(temporary, self.path)
        except OSError as error:
            raise ConsumerError(self.name, f"cannot write {self.path}: {error.strerror}") from None
