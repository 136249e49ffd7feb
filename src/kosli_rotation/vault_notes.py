"""How a note (a consumer status, an audit entry) fits OpenBao's JSON limits: its own module, apart from the key
store's reads and writes, because it is pure data shaping (``key_store`` and the dashboard both unpack notes).

OpenBao refuses a request whose JSON holds more than 1000 strings, keys included ("refused JSON input due to high
complexity"). A note above ``NOTE_STRING_BUDGET`` (an audit entry listing hundreds of consumers) keeps its top-level
scalars as they are and carries its largest fields as JSON text, named in ``PACKED_FIELDS``; ``unpack_note`` undoes it.
"""

from __future__ import annotations

import json
from typing import Any

NOTE_STRING_BUDGET = 400
PACKED_FIELDS = "packed_as_json_text"


def _strings(value: Any) -> int:
    """How many JSON strings ``value`` is written as (object keys count, as Vault's request limits count them)."""
    if isinstance(value, dict):
        return sum(1 + _strings(item) for item in value.values())
    if isinstance(value, list):
        return sum(_strings(item) for item in value)
    return 1 if isinstance(value, str) else 0


def pack_note(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` as written to Vault: unchanged when small; else its largest fields as JSON text, largest first,
    until it fits ``NOTE_STRING_BUDGET``."""
    if _strings(data) <= NOTE_STRING_BUDGET:
        return data
    packed, names = dict(data), []
    for name in sorted((n for n, v in data.items() if isinstance(v, dict | list)), key=lambda n: -_strings(data[n])):
        packed[name] = json.dumps(data[name], sort_keys=True)
        names.append(name)
        if _strings(packed) + len(names) + 1 <= NOTE_STRING_BUDGET:
            break
    packed[PACKED_FIELDS] = names
    return packed


def unpack_note(data: dict[str, Any]) -> dict[str, Any]:
    """A note as ``pack_note`` was given it."""
    names = data.get(PACKED_FIELDS)
    if not names:
        return data
    unpacked = {name: value for name, value in data.items() if name != PACKED_FIELDS}
    for name in names:
        unpacked[name] = json.loads(data[name])
    return unpacked
