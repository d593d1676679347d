"""X-Hub-Signature-256: HMAC-SHA256 of the raw body with the app secret."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from tiergate.webhooks.signature import SignatureError, is_valid, sign, verify

pytestmark = pytest.mark.engine_independent

BODY = (
    Path(__file__).parents[1] / "fixtures/meta-webhooks/messages__message-text__pywa.json"
).read_bytes()
SECRET = "app-secret-123"


def test_sign_matches_hmac_sha256_of_the_raw_body() -> None:
    expected = hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
    assert sign(BODY, SECRET) == "sha256=" + expected
    assert sign(BODY, SECRET.encode()) == sign(BODY, SECRET)


def test_valid_signature_passes_in_either_hex_case() -> None:
    signature = sign(BODY, SECRET)
    verify(BODY, signature, SECRET)
    verify(BODY, "sha256=" + signature[7:].upper(), SECRET)
    verify(BODY, signature.encode(), SECRET)
    verify(BODY, f"  {signature}\r\n", SECRET)
    assert is_valid(BODY, signature, SECRET)


@pytest.mark.parametrize(
    ("signature", "message"),
    [
        (None, "missing"),
        ("", "missing"),
        ("   ", "missing"),
        ("sha1=" + "0" * 40, "must start with 'sha256='"),
        ("sha256=", "64 hex digits"),
        ("sha256=" + "g" * 64, "64 hex digits"),
        ("sha256=" + "0" * 63, "64 hex digits"),
        ("sha256=" + "0" * 64, "does not match"),
        (b"sha256=\xff", "not ASCII"),
    ],
)
def test_missing_malformed_or_invalid_signature_is_rejected(
    signature: str | bytes | None, message: str
) -> None:
    with pytest.raises(SignatureError, match=message):
        verify(BODY, signature, SECRET)
    assert not is_valid(BODY, signature, SECRET)


def test_wrong_secret_is_rejected() -> None:
    with pytest.raises(SignatureError, match="does not match"):
        verify(BODY, sign(BODY, "another-secret"), SECRET)


def test_every_single_byte_change_of_the_body_is_rejected() -> None:
    signature = sign(BODY, SECRET)
    for offset in range(0, len(BODY), 97):
        altered = bytearray(BODY)
        altered[offset] ^= 0x01
        assert not is_valid(bytes(altered), signature, SECRET), offset
    assert not is_valid(BODY + b" ", signature, SECRET)
    assert not is_valid(BODY[:-1], signature, SECRET)


def test_no_secret_cannot_verify() -> None:
    with pytest.raises(SignatureError, match="no app secret"):
        verify(BODY, sign(BODY, ""), "")
