"""Looking for leaked secrets where Airflow keeps things: its metadata database, its log files, captured output.

Demo and test infrastructure (not product code). A secret counts as leaked in its plain form and in base64 at
each of the three alignments, so a key inside a base64-encoded blob (XCom, serialized DAGs, log payloads) is
found too. Findings name the place (``table.column``, a file path), never the value.
"""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Iterable
from pathlib import Path


def secret_forms(secret: str) -> list[bytes]:
    """A secret as it could leak: plain, and base64 of it at each of the three alignments."""
    raw = secret.encode()
    forms = [raw]
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw)
        forms.append(encoded[4 if offset else 0 : -4])  # drop the groups mixed with padding
    return [form for form in forms if len(form) >= 16]


def _all_forms(secrets: Iterable[str]) -> list[bytes]:
    return [form for secret in secrets for form in secret_forms(secret)]


def _holds(blob: bytes, forms: list[bytes]) -> bool:
    return any(form in blob for form in forms)


def scan_database(database: Path, secrets: Iterable[str]) -> tuple[list[str], list[str]]:
    """Every (table, column) of a SQLite database whose content holds one of the secrets, and the tables read.

    Opened read-only, so it can look at the database of a running Airflow.
    """
    forms = _all_forms(secrets)
    hits: set[str] = set()
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
    try:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            cursor = connection.execute(f'SELECT * FROM "{table}"')
            columns = [description[0] for description in cursor.description]
            for row in cursor:
                for column, value in zip(columns, row, strict=True):
                    blob = value if isinstance(value, bytes) else str(value).encode()
                    if _holds(blob, forms):
                        hits.add(f"{table}.{column}")
    finally:
        connection.close()
    return sorted(hits), tables


def find_secrets_in_database(database: Path, secrets: list[str]) -> list[str]:
    """Every (table, column) of the Airflow metadata DB whose content holds one of the secrets."""
    return scan_database(database, secrets)[0]


def scan_files(paths: Iterable[Path], secrets: Iterable[str]) -> tuple[list[str], int]:
    """The files (and every file below the directories) among ``paths`` holding one of the secrets, and how many
    files were read. A file that vanishes while we look (a log being rotated) is skipped."""
    forms = _all_forms(secrets)
    hits: set[str] = set()
    read = 0
    for root in paths:
        for path in [root] if root.is_file() else sorted(root.rglob("*")):
            if not path.is_file():
                continue
            try:
                blob = path.read_bytes()
            except FileNotFoundError:
                continue
            read += 1
            if _holds(blob, forms):
                hits.add(str(path))
    return sorted(hits), read


def find_secrets_in_files(root: Path, secrets: list[str]) -> list[str]:
    """Every file below ``root`` that holds one of the secrets."""
    return scan_files([root], secrets)[0]


def find_secrets_in_text(text: str, secrets: list[str]) -> bool:
    return _holds(text.encode(), _all_forms(secrets))
