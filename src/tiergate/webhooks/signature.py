"""Meta webhook signatures: ``X-Hub-Signature-256: sha256=<hex>``.

Meta signs every webhook POST with HMAC-SHA256 of the raw body, keyed with the
app secret. tiergate checks it before it parses anything, compares in constant
time, and treats a missing, malformed or wrong signature the same way: the
body is rejected and nothing from it is applied.
"""

from __future__ import annotations

import hashlib
import hmac

PREFIX = "sha256="
_HEX_LEN = 64  # SHA-256 digest, lower- or upper-case hex


class SignatureError(ValueError):
    """The webhook's signature is missing, malformed or does not match."""


def sign(body: bytes, secret: str | bytes) -> str:
    """The ``X-Hub-Signature-256`` header value Meta would send for ``body``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return PREFIX + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify(body: bytes, signature: str | bytes | None, secret: str | bytes) -> None:
    """Raise :class:`SignatureError` unless ``signature`` signs ``body`` with ``secret``.

    ``signature`` is the header value as received (``"sha256=<hex>"``). The hex
    digest may be in either case; surrounding whitespace is tolerated, nothing
    else is.
    """
    if not secret:
        raise SignatureError("no app secret configured to verify the signature with")
    if signature is None:
        raise SignatureError("missing X-Hub-Signature-256 header")
    if isinstance(signature, bytes):
        try:
            signature = signature.decode("ascii")
        except UnicodeDecodeError:
            raise SignatureError("X-Hub-Signature-256 is not ASCII") from None
    value = signature.strip()
    if not value:
        raise SignatureError("missing X-Hub-Signature-256 header")
    if not value.startswith(PREFIX):
        raise SignatureError("X-Hub-Signature-256 must start with 'sha256='")
    digest = value[len(PREFIX) :].lower()
    if len(digest) != _HEX_LEN or any(c not in "0123456789abcdef" for c in digest):
        raise SignatureError("X-Hub-Signature-256 must be 'sha256=' and 64 hex digits")
    expected = sign(body, secret)[len(PREFIX) :]
    if not hmac.compare_digest(digest.encode("ascii"), expected.encode("ascii")):
        raise SignatureError("X-Hub-Signature-256 does not match the body")


def is_valid(body: bytes, signature: str | bytes | None, secret: str | bytes) -> bool:
    """True when ``signature`` signs ``body`` with ``secret``."""
    try:
        verify(body, signature, secret)
    except SignatureError:
        return False
    return True
