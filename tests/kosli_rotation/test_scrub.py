"""The one scrubber: what it removes from text bound for a notice, the Vault record, XCom, the page or an error."""

from __future__ import annotations

import base64
import secrets

import pytest

from kosli_rotation.scrub import describe_error, hold_secret, one_line, scrub, scrub_data
from sandbox.secret_scan import find_secrets_in_text


@pytest.fixture
def held() -> str:
    return hold_secret(secrets.token_urlsafe(32))


def test_a_held_secret_is_removed_raw_and_inside_base64_at_every_alignment(held):
    assert scrub(f"key {held}.") == "key ***."
    for prefix in (b"", b"u", b"us"):
        blob = base64.b64encode(prefix + held.encode() + b"\n").decode()
        assert find_secrets_in_text(blob, [held]), "the scan sees it before"
        assert not find_secrets_in_text(scrub(blob), [held])


@pytest.mark.parametrize(
    "text",
    [
        "ghp_" + "a" * 36,
        "github_pat_" + "B" * 40,
        "glpat-" + "c" * 20,
        "CCIPAT_" + "d" * 40,
        "hvs." + "e" * 90,
        "AKIAIOSFODNN7EXAMPLE",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----",
    ],
)
def test_known_token_shapes_are_removed_though_the_process_never_held_them(text):
    assert scrub(f"before {text} after") == "before *** after"


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("api-token: @abc-unquoted-yaml", "api-token: ***"),
        ('{"password": "hunter2x"}', '{"password": "***"}'),
        ("Authorization: Bearer opaque.value", "Authorization: ***"),
        ("X-Vault-Token=s3cr3tvalue", "X-Vault-Token=***"),
    ],
)
def test_assignments_keep_the_name_and_lose_the_value(text, kept):
    assert scrub(text) == kept


def test_ordinary_words_next_to_secret_names_stay_readable():
    text = "the Vault token expired: renew the token or widen its TTL"
    assert scrub(text) == text


def test_control_characters_cannot_forge_lines_and_long_text_is_cut():
    assert one_line("error\nPhase: idle\r\x1b[2J") == "error Phase: idle [2J"
    assert scrub("x" * 5000, limit=100).endswith(" [truncated]")
    assert len(scrub("x" * 5000, limit=100)) == 100


def test_scrub_data_scrubs_keys_and_values_and_leaves_numbers(held):
    assert scrub_data({held: [held, 3, None], "n": True}) == {"***": ["***", 3, None], "n": True}


def test_an_error_is_described_on_one_line_without_the_secret(held):
    assert describe_error(ValueError(f"bad\nline {held}")) == "bad line ***"
    assert describe_error(None) == "unknown error"
