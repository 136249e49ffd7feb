"""A Kosli CLI config file (``--config-file`` / ``~/.kosli.yml``) that hard-codes ``api-token``.

The file holds a live key, so where it may go is not the inventory's choice alone: only under a directory listed in
``KOSLI_ROTATION_CLI_CONFIG_DIRS`` (colon-separated absolute paths, set for every Airflow component like
``KOSLI_ROTATION_INVENTORY``); nothing when it is unset. The file is never opened through a symlink, its directory
must resolve inside a listed directory, it is written atomically (a new file beside it, renamed over it) and never
readable by group or other.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator

from kosli_rotation import safe_yaml
from kosli_rotation.consumers.base import Consumer, ConsumerConfig
from kosli_rotation.errors import ConsumerError
from kosli_rotation.fingerprints import digest

TOKEN_KEY = "api-token"
DIRS_ENV_VAR = "KOSLI_ROTATION_CLI_CONFIG_DIRS"


def allowed_dirs() -> list[str]:
    """The directories CLI configs may be written under, as configured (absolute, normalised)."""
    listed = [part for part in os.environ.get(DIRS_ENV_VAR, "").split(":") if part]
    return [os.path.normpath(part) for part in listed if os.path.isabs(part)]


def _under(path: str, directory: str) -> bool:
    return path.startswith(directory.rstrip("/") + "/")


class KosliCliConfigConfig(ConsumerConfig):
    kind: Literal["kosli_cli_config"]
    path: str = Field(description="Absolute path of the YAML config file, as the Airflow worker sees it.")
    mode: int = Field(default=0o600, ge=0, le=0o777, description="File permissions: owner only (0o600 or 0o400).")

    @field_validator("path")
    @classmethod
    def _allowed_path(cls, path: str) -> str:
        if any(ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F for char in path):
            raise ValueError(f"{path!r} has control characters")
        if not os.path.isabs(path):
            raise ValueError(f"{path!r} must be an absolute path")
        if os.path.normpath(path) != path or path.startswith("//"):
            raise ValueError(f"{path!r} must be normalised (no '.', '..', '//' or trailing '/'): write it as the file")
        directories = allowed_dirs()
        if not directories:
            raise ValueError(f"{DIRS_ENV_VAR} is not set: list the directories CLI configs may be written under")
        if not any(_under(path, directory) for directory in directories):
            raise ValueError(f"{path!r} is not under a directory listed in {DIRS_ENV_VAR} ({':'.join(directories)})")
        return path

    @field_validator("mode")
    @classmethod
    def _private(cls, mode: int) -> int:
        if mode & 0o077:
            raise ValueError(f"{oct(mode)} grants group or other bits: the file holds a live key (use 0o600 or 0o400)")
        if not mode & 0o400:
            raise ValueError(f"{oct(mode)} does not let the owner read the file (use 0o600 or 0o400)")
        return mode


class KosliCliConfigConsumer(Consumer[KosliCliConfigConfig]):
    """Rewrites the file atomically, keeping every other setting (org, host, ...) as it was."""

    kind = "kosli_cli_config"

    @property
    def path(self) -> Path:
        return Path(self.config.path)

    def describe(self) -> str:
        return f"Kosli CLI config file {self.path} ({TOKEN_KEY})"

    def _refuse(self, problem: str) -> ConsumerError:
        return ConsumerError(self.name, f"{self.path}: {problem}", retryable=False)

    def _open_directory(self) -> int:
        """A descriptor of the file's directory, reached from an allowed directory without following a symlink.

        The directory may be reached through symlinks that resolve inside an allowed directory; the walk from that
        allowed directory then opens each component with ``O_NOFOLLOW``, so a symlink swapped in afterwards fails
        the open instead of leading elsewhere."""
        resolved = os.path.realpath(self.path.parent)
        roots = [os.path.realpath(directory) for directory in allowed_dirs()]
        root = next((r for r in roots if resolved == r or _under(resolved, r)), None)
        if root is None:
            raise self._refuse(
                f"its directory resolves to {resolved}, which is not under a directory listed in {DIRS_ENV_VAR}"
            )
        flags = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)
        parts = Path(os.path.relpath(resolved, root)).parts if resolved != root else ()
        try:
            handle = os.open(root, flags)
            try:
                for part in parts:
                    child = os.open(part, flags | os.O_NOFOLLOW, dir_fd=handle)
                    os.close(handle)
                    handle = child
            except BaseException:
                os.close(handle)
                raise
        except FileNotFoundError:  # perhaps an unmounted volume: worth a retry
            raise ConsumerError(self.name, f"{self.path}: directory {self.path.parent} does not exist") from None
        except OSError as error:
            raise self._refuse(f"cannot open its directory ({error.strerror})") from None
        return handle

    def _settings(self, directory: int) -> dict[str, Any]:
        """The file's settings, read without following a symlink; {} if it does not exist."""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        try:
            handle = os.open(self.path.name, flags, dir_fd=directory)
        except FileNotFoundError:
            return {}
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise self._refuse("is a symlink; it is never followed (replace it by the file)") from None
            raise self._refuse(f"cannot read it ({error.strerror})") from None
        try:
            if not stat.S_ISREG(os.fstat(handle).st_mode):
                raise self._refuse("is not a regular file")
            settings = safe_yaml.loads(safe_yaml.read_limited(handle)) or {}
        except safe_yaml.YamlInputError as error:
            raise self._refuse(f"not valid YAML: {error}") from None
        except OSError as error:
            raise self._refuse(f"cannot read it ({error.strerror})") from None
        finally:
            os.close(handle)
        if not isinstance(settings, dict):
            raise self._refuse("is not a YAML mapping")
        return settings

    def _read(self) -> dict[str, Any]:
        directory = self._open_directory()
        try:
            return self._settings(directory)
        finally:
            os.close(directory)

    def check_access(self) -> None:
        directory = self._open_directory()
        try:
            if not os.access(".", os.W_OK, dir_fd=directory):
                raise self._refuse("its directory is not writable by the Airflow worker (the file is replaced)")
            self._settings(directory)
        finally:
            os.close(directory)

    def read_digest(self) -> str | None:
        value = self._read().get(TOKEN_KEY)
        return digest(str(value)) if value else None

    def write(self, key: str) -> None:
        directory = self._open_directory()
        temporary = f".{self.path.name}.{secrets.token_hex(8)}"
        try:
            settings = self._settings(directory)
            settings[TOKEN_KEY] = key
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
            handle = os.open(temporary, flags, self.config.mode, dir_fd=directory)
            with os.fdopen(handle, "w") as stream:
                os.fchmod(stream.fileno(), self.config.mode)
                yaml.safe_dump(settings, stream, default_flow_style=False, sort_keys=False)
                stream.flush()
                os.fsync(stream.fileno())
            # rename() replaces whatever is at the path (a symlink included) and never follows it.
            os.replace(temporary, self.path.name, src_dir_fd=directory, dst_dir_fd=directory)
        except OSError as error:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=directory)
            raise ConsumerError(self.name, f"cannot write {self.path}: {error.strerror}") from None
        finally:
            os.close(directory)
