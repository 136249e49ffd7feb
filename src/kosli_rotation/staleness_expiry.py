"""The staleness check's view of time running out: Kosli's expiry of the key, and a ``rotate``'s old key at the gate.

``check_expiry`` reads Kosli's present ``expires_at`` of the key in Vault (never a stored copy). Within
``expiry_warning_days`` of it the check fails every day, naming the date and time of expiry and whether a rotation
is scheduled before it; it *notifies* only when it crosses a threshold: ``expiry_warning_days`` (30), then 7, then
1 day before. What was announced is remembered in a note beside the record (``<vault_path>/notices/expiry``),
written only once the notice is sent. The note is a memory, never the truth: one that is missing, unreadable, or
about another key or another expiry is ignored, so the worst a lost note does is send one notice again.

``check_grace`` says, while a ``rotate`` waits at the gate (``wait_grace``), how many hours the old key has left and
which consumers are not yet proven on the new key.
"""

from __future__ import annotations

import logging
from typing import Any

from kosli_rotation.errors import RotationError
from kosli_rotation.inventory import KeyEntry
from kosli_rotation.key_store import KeyStore, Phase
from kosli_rotation.kosli_hook import ApiKey, KosliHook
from kosli_rotation.staleness_findings import DAY, AgeUnknown, Finding, KeyHealth, RecordView, _iso, kosli_key

log = logging.getLogger(__name__)

EXPIRY_NOTE = "notices/expiry"
#: The warnings after the first (``expiry_warning_days``): a week, and a day, before Kosli kills the key.
LATER_WARNINGS = (7, 1)


def warning_thresholds(first: int) -> tuple[int, ...]:
    """Days before expiry at which a notice goes out, furthest first: ``first`` and the later ones below it."""
    return tuple(sorted({first, *(days for days in LATER_WARNINGS if days < first)}, reverse=True))


def threshold_reached(seconds_left: float, first: int) -> int | None:
    """The nearest threshold the key is within (30, 7 or 1 days by default); None before the first."""
    reached = [days for days in warning_thresholds(first) if seconds_left <= days * DAY]
    return min(reached) if reached else None


def notice_due(note: dict[str, Any] | None, key_id: str, expires_at: int, threshold: int) -> bool:
    """Whether this threshold is still to be announced. Only a note about this very key and expiry counts, and only
    if it announced this threshold or a nearer one; anything else (no note, another key, a changed expiry, a note
    that cannot be read) means: announce."""
    if not isinstance(note, dict) or note.get("key_id") != key_id or note.get("expires_at") != expires_at:
        return True
    sent = note.get("threshold_days")
    return not isinstance(sent, int) or isinstance(sent, bool) or sent > threshold


def _left(seconds: float) -> str:
    return f"{seconds / DAY:.1f} days" if seconds >= DAY else f"{seconds / 3600:.1f} hours"


def _rotation_before(entry: KeyEntry, view: RecordView, key: ApiKey, now: float) -> str:
    """Whether a rotation is coming before the expiry, and when."""
    if view.failed_step:
        return (
            f"NO rotation is scheduled before it: the last one failed at {view.failed_step} (see [state]); fix it and "
            f"trigger {entry.dag_id} before then."
        )
    if view.state != Phase.IDLE:
        return f"A rotation is in flight (phase {view.state.value!r}): the key it mints replaces this one."
    by_age = (view.rotated_at or key.created_at) + entry.max_age_days * DAY
    by_expiry = key.expires_at - entry.expiry_lead_days * DAY
    due, rule = min((by_age, "max_age_days"), (by_expiry, "expiry_lead_days"))
    if due > now:
        return f"A rotation is scheduled before it: {entry.dag_id} is due to rotate the key on {_iso(due)} ({rule})."
    return (
        f"NO rotation has come although one was due on {_iso(due)} ({rule}): is {entry.dag_id} paused, or are its runs "
        "failing? Trigger it before then."
    )


def check_expiry(health: KeyHealth, view: RecordView, *, now: float, kosli: KosliHook) -> list[Finding]:
    """Is Kosli about to expire the key? A problem within ``expiry_warning_days``, notified at each threshold once;
    the note to remember it by is left in ``health.notes`` for after the notice."""
    entry = health.entry
    try:
        key = kosli_key(entry, view, kosli)
    except (AgeUnknown, RotationError) as unknown:  # [age] reports why Kosli cannot say
        return [Finding("expiry", f"unknown: {unknown}", problem=False)]
    if not key.expires_at:
        return [Finding("expiry", "Kosli sets no expiry on the key", problem=False)]
    left = key.expires_at - now
    threshold = threshold_reached(left, entry.expiry_warning_days)
    if threshold is None:
        text = (
            f"Kosli expires the key on {_iso(key.expires_at)} (in {_left(left)}); warnings start "
            f"{entry.expiry_warning_days} days before (expiry_warning_days)"
        )
        return [Finding("expiry", text, problem=False)]
    store = KeyStore(entry.vault_path, conn_id=entry.vault_conn_id, mount=entry.vault_mount)
    try:
        note = store.read_note(EXPIRY_NOTE)
    except Exception as error:  # an unreadable note is no memory: announce rather than stay silent
        log.warning("Cannot read %s/%s (%s): announcing the expiry", store.location, EXPIRY_NOTE, type(error).__name__)
        note = None
    notify = notice_due(note, key.id, key.expires_at, threshold)
    if notify:
        health.notes[EXPIRY_NOTE] = {
            "key_id": key.id,
            "expires_at": key.expires_at,
            "expires": _iso(key.expires_at),
            "threshold_days": threshold,
            "sent_at": _iso(now),
        }
    text = (
        f"Kosli expires the key {key.id} on {_iso(key.expires_at)} (in {_left(left)}, within expiry_warning_days "
        f"of {entry.expiry_warning_days}): every consumer still using it fails then. "
        + _rotation_before(entry, view, key, now)
        + ("" if notify else f" (announced at {threshold} days; the next notice at the next threshold)")
    )
    return [Finding("expiry", text, notify=notify)]


def remember_notices(health: KeyHealth) -> None:
    """Write the notes of the notices just sent (best effort: a note that is not written only repeats a notice)."""
    entry = health.entry
    store = KeyStore(entry.vault_path, conn_id=entry.vault_conn_id, mount=entry.vault_mount)
    for relative, note in health.notes.items():
        try:
            store.write_note(relative, note)
        except Exception as error:
            log.warning("Cannot write %s/%s (%s): the notice may be sent again", store.location, relative, error)


def check_grace(entry: KeyEntry, view: RecordView, *, now: float, store: KeyStore) -> list[Finding]:
    """While a ``rotate`` waits at the gate: the hours its old key has left, and the consumers not yet proven on the
    new key (their status notes beside the record). A problem only once the grace is over with some unproven."""
    if view.state != Phase.STORED or view.strategy != "rotate" or not view.grace_ends_at:
        return []
    unproven = [
        name
        for name in entry.consumer_names
        if not view.digest or (store.read_note(f"consumers/{name}") or {}).get("verified_digest") != view.digest
    ]
    left = view.grace_ends_at - now
    old = f"the old key {view.previous_fingerprint}" if view.previous_fingerprint else "the old key"
    if left > 0:
        when = f"{old} has {left / 3600:.1f} hours left (Kosli revokes it at {_iso(view.grace_ends_at)})"
    else:
        when = f"{old} was revoked by Kosli at {_iso(view.grace_ends_at)}"
    who = ", ".join(unproven) if unproven else "none, every consumer is proven"
    text = f"a rotate waits at the gate (wait_grace): {when}; not yet proven on the new key {view.fingerprint}: {who}"
    return [Finding("grace", text, problem=bool(unproven) and left <= 0)]
