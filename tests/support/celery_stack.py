"""The distributed parts of a Celery deployment, from Debian packages: PostgreSQL (metadata database, Celery result
backend) and Redis (Celery broker), each a real server on a free loopback port in a temporary directory.

PostgreSQL refuses to run as root, so when the tests run as root its ``initdb`` and ``postgres`` run as the
``postgres`` user (``setpriv``), in a data directory that user owns. Its secret scan reads every column of every
table, as ``sandbox.secret_scan.scan_database`` reads SQLite, with the same forms of each secret (plain, base64).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from demo.processes import LOOPBACK, ManagedProcess, Supervisor, free_ports, wait_for
from sandbox.secret_scan import secret_forms

REDIS = "/usr/bin/redis-server"
DATABASE = "airflow"
#: A worker killed mid-task is noticed when its task stops heartbeating: seconds, not Airflow's default 5 minutes.
TASK_HEARTBEAT_TIMEOUT = 20


def postgres_bin() -> Path:
    """The Debian PostgreSQL binaries (``/usr/lib/postgresql/<version>/bin``), newest version first."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda path: int(Path(path).parts[4]))
    if not found or not Path(REDIS).exists():
        raise RuntimeError("PostgreSQL or Redis is missing: run make system-packages (postgresql, redis-server)")
    return Path(found[-1]).parent


def as_postgres(command: Sequence[str]) -> list[str]:
    """``command`` as the ``postgres`` user when we are root (PostgreSQL will not run as root)."""
    if os.geteuid() != 0:
        return list(command)
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *command]


class CeleryStack:
    """PostgreSQL and Redis for one Airflow deployment; ``airflow_env`` is what the deployment needs of them."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        # Not under pytest's tmp_path: its parents are root's alone (0700), the postgres user could not enter them.
        self.data = Path(tempfile.mkdtemp(prefix="airflow-postgres-"))
        self.pg_port, self.redis_port = free_ports(2)
        self.bin = postgres_bin()
        self.supervisor = Supervisor()
        self.processes: list[ManagedProcess] = []

    def __enter__(self) -> CeleryStack:
        try:
            self._start_postgres()
            self._start_redis()
        except BaseException:
            self.supervisor.stop_all()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.supervisor.stop_all()
        shutil.rmtree(self.data, ignore_errors=True)

    def _start_postgres(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.data, "postgres", "postgres")
        subprocess.run(
            as_postgres([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust"]),
            check=True,
            capture_output=True,
        )
        self.processes.append(
            self.supervisor.start(
                "postgres",
                as_postgres(
                    [
                        str(self.bin / "postgres"),
                        "-D",
                        str(self.data),
                        "-p",
                        str(self.pg_port),
                        "-c",
                        f"listen_addresses={LOOPBACK}",
                        "-c",
                        f"unix_socket_directories={self.data}",
                        "-c",
                        "fsync=off",
                    ]
                ),
                log=self.workdir / "postgres.log",
                stop_signal=2,  # SIGINT: PostgreSQL's fast shutdown
            )
        )
        ready = [str(self.bin / "pg_isready"), "-h", LOOPBACK, "-p", str(self.pg_port), "-U", "postgres"]
        wait_for(
            "PostgreSQL to accept connections",
            lambda: subprocess.run(ready, capture_output=True).returncode == 0 or None,
            timeout=60,
            watch=self.processes,
            hint=f"Log: {self.workdir / 'postgres.log'}",
        )
        self.sql(f"CREATE DATABASE {DATABASE}", database="postgres")

    def _start_redis(self) -> None:
        command = [REDIS, "--port", str(self.redis_port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no"]
        command += ["--dir", str(self.workdir)]
        self.processes.append(self.supervisor.start("redis-server", command, log=self.workdir / "redis.log"))
        wait_for("Redis to answer", self._redis_answers, timeout=30, watch=self.processes)

    def _redis_answers(self) -> bool | None:
        import redis

        try:
            return redis.Redis(host=LOOPBACK, port=self.redis_port).ping() or None
        except redis.ConnectionError:
            return None

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@{LOOPBACK}:{self.pg_port}/{DATABASE}"

    @property
    def sqlalchemy_url(self) -> str:
        """The driver named: a bare ``postgresql://`` means psycopg 3 to this SQLAlchemy; psycopg2 is installed."""
        return self.dsn.replace("postgresql://", "postgresql+psycopg2://")

    def airflow_env(self) -> dict[str, str]:
        """The settings of a CeleryExecutor deployment on these servers (see the README's "Run on Celery")."""
        return {
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.sqlalchemy_url,
            "AIRFLOW__CELERY__BROKER_URL": f"redis://{LOOPBACK}:{self.redis_port}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + self.sqlalchemy_url,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "4",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(TASK_HEARTBEAT_TIMEOUT),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
        }

    def sql(self, statement: str, database: str = DATABASE) -> None:
        import psycopg2

        connection = psycopg2.connect(host=LOOPBACK, port=self.pg_port, user="postgres", dbname=database)
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                cursor.execute(statement)
        finally:
            connection.close()

    def scan(self, secrets: Iterable[str]) -> tuple[list[str], list[str]]:
        """Every ``table.column`` of the metadata database holding one of ``secrets`` (plain or base64), and the
        tables read. Findings name the place, never the value."""
        import psycopg2

        forms = [form for secret in secrets for form in secret_forms(secret)]
        hits: set[str] = set()
        connection = psycopg2.connect(host=LOOPBACK, port=self.pg_port, user="postgres", dbname=DATABASE)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                tables = [row[0] for row in cursor.fetchall()]
                for table in tables:
                    cursor.execute(f'SELECT * FROM "{table}"')
                    columns = [description[0] for description in cursor.description]
                    for row in cursor.fetchall():
                        for column, value in zip(columns, row, strict=True):
                            blob = bytes(value) if isinstance(value, bytes | memoryview) else str(value).encode()
                            if any(form in blob for form in forms):
                                hits.add(f"{table}.{column}")
        finally:
            connection.close()
        return sorted(hits), tables
