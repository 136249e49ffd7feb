"""Kosli CLI config: a YAML file ``{target}.yml`` in the fleet's ``files_dir`` (only its owner may read it) with the
fleet's org, the Kosli host and the value as ``api-token``.

No service and no connection: the product writes the file itself. The directory must be one the product may write
to (``KOSLI_ROTATION_CLI_CONFIG_DIRS``). Quirks: ``host`` (default: the fleet's Kosli URL) and ``directory``
(instead of ``files_dir``, for a caller whose allowed directory is only known after the fleet started).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import yaml

from sandbox.adapters.base import FixtureAdapter, SeededConsumer


class KosliCliConfigAdapter(FixtureAdapter):
    kind = "kosli_cli_config"
    service = "Kosli CLI config files"
    no_faults = "a local file: no credentials, rate limits or HTTP statuses"

    def start(self, stack: contextlib.ExitStack) -> None:
        """Nothing to start: files need no sandbox, and no connection reaches them."""

    def seed(
        self,
        name: str,
        value: str | None,
        target: str,
        *,
        host: str | None = None,
        directory: Path | None = None,
    ) -> SeededConsumer:
        """``value`` None: the directory exists, the file not yet."""
        folder = directory or self.settings.files_dir
        if folder is None:
            raise ValueError("kosli_cli_config consumers need the fleet's files_dir (or a directory quirk)")
        path = Path(folder) / f"{target}.yml"
        path.parent.mkdir(parents=True, exist_ok=True)
        if value is not None:
            text = yaml.safe_dump(
                {"org": self.settings.org, "host": host or self.settings.kosli_url, "api-token": value}
            )
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as stream:
                stream.write(text)

        def read() -> str | None:
            try:
                return (yaml.safe_load(path.read_text()) or {}).get("api-token")
            except FileNotFoundError:
                return None

        def stamp() -> tuple[int, int] | None:
            try:
                stat = os.stat(path)
            except FileNotFoundError:
                return None
            return (stat.st_ino, stat.st_mtime_ns)

        entry = {"name": name, "kind": self.kind, "path": str(path)}
        return SeededConsumer(entry, f"Kosli CLI config {path}", str(path), read, stamp)


ADAPTER = KosliCliConfigAdapter
