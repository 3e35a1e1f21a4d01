"""The API key format: `sp_`, 32 random base62 characters, a 6-character CRC32 checksum.

The prefix lets secret scanners recognise a leaked key; the checksum lets a mistyped or
truncated key be refused before any database read. Only the key's SHA-256 is stored, with
its first characters (`display_prefix`) to tell keys apart in a list.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
import zlib

PREFIX = "sp_"
ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase
BODY_LENGTH = 32  # 32 base62 characters: about 190 random bits
CHECKSUM_LENGTH = 6  # 62**6 > 2**32: a CRC32 fits
SHAPE = re.compile(rf"^{PREFIX}[0-9A-Za-z]{{{BODY_LENGTH + CHECKSUM_LENGTH}}}$")
DISPLAY_LENGTH = len(PREFIX) + 8


def _base62(value: int, width: int) -> str:
    digits = []
    while value:
        value, digit = divmod(value, 62)
        digits.append(ALPHABET[digit])
    return "".join(reversed(digits)).rjust(width, "0")


def checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), CHECKSUM_LENGTH)


def generate() -> str:
    body = "".join(secrets.choice(ALPHABET) for _ in range(BODY_LENGTH))
    return f"{PREFIX}{body}{checksum(body)}"


def looks_like_key(value: str) -> bool:
    """Whether `value` claims to be an API key (rather than a JWT)."""
    return value.startswith(PREFIX)


def well_formed(key: str) -> bool:
    """The shape and checksum are right: worth looking up."""
    if not SHAPE.match(key):
        return False
    body, check = key[len(PREFIX) : -CHECKSUM_LENGTH], key[-CHECKSUM_LENGTH:]
    return secrets.compare_digest(checksum(body), check)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def display_prefix(key: str) -> str:
    return key[:DISPLAY_LENGTH]
