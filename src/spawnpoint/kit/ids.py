"""Time-ordered UUIDs (RFC 9562 version 7), so primary keys double as keyset cursors.

Ids made by one process never go backwards: within one millisecond (or when the clock
steps back) the 74 random bits are the previous id's plus a random step (RFC 9562 §6.2,
method 2), so events written one after another list in the order they happened.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

RANDOM_BITS = 74
_RANDOM_MASK = (1 << RANDOM_BITS) - 1
_lock = threading.Lock()
_last = (0, 0)  # (milliseconds, random bits) of the last id


def uuid7() -> uuid.UUID:
    """Return a UUIDv7: 48 bits of Unix milliseconds, then random bits, monotonic."""
    global _last
    millis = time.time_ns() // 1_000_000
    bits = int.from_bytes(os.urandom(10), "big") & _RANDOM_MASK
    with _lock:
        last_millis, last_bits = _last
        if millis <= last_millis:
            millis = last_millis
            bits = last_bits + 1 + (bits >> (RANDOM_BITS - 32))
            if bits > _RANDOM_MASK:  # 2**74 ids in a millisecond: borrow the next one
                millis, bits = millis + 1, bits & _RANDOM_MASK
        _last = (millis, bits)
    value = (millis & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76
    value |= (bits >> 62) << 64
    value |= 0x2 << 62
    value |= bits & ((1 << 62) - 1)
    return uuid.UUID(int=value)
