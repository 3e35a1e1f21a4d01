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
# Random bytes are read from the kernel for this many ids at once: each read gives up the
# interpreter lock, which under load costs a wait of up to a switch interval to get back.
_BATCH = 64
_lock = threading.Lock()
_last = (0, 0)  # (milliseconds, random bits) of the last id
_random = b""
_used = 0


def _forget_random() -> None:
    """A forked child must not hand out its parent's random bits again."""
    global _random, _used
    _random, _used = b"", 0


os.register_at_fork(after_in_child=_forget_random)


def uuid7() -> uuid.UUID:
    """Return a UUIDv7: 48 bits of Unix milliseconds, then random bits, monotonic."""
    global _last, _random, _used
    millis = time.time_ns() // 1_000_000
    with _lock:
        if _used >= len(_random):
            _random, _used = os.urandom(10 * _BATCH), 0
        bits = int.from_bytes(_random[_used : _used + 10], "big") & _RANDOM_MASK
        _used += 10
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
