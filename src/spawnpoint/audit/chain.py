"""The hash chain: what an entry is, how its hash is computed, and how a chain is checked.

An entry's hash is SHA-256 over the previous entry's hash and the entry's canonical JSON:

    hash = sha256(prev_hash.encode("ascii") + canonical(entry)).hexdigest()

`canonical` is `json.dumps` of the fields in `HASHED_FIELDS`, keys sorted, no whitespace,
UTF-8, with times as UTC ISO 8601 with microseconds (`2024-06-08T12:34:56.123456+00:00`),
UUIDs in their hyphenated lowercase form, missing values as `null`. The first entry of a
chain links to `GENESIS_HASH`. The README spells the same recipe out for anyone who wants
to recompute it without this code; everything here exists to make it fast.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from json import encoder as json_encoder
from typing import Any

import orjson

from spawnpoint.kit.clock import utcnow

# Light on purpose (the standard library, orjson and the clock): the worker processes that
# verify a long chain in ranges import this module, and start in a fraction of a second.

GENESIS_HASH = "0" * 64
PLATFORM_CHAIN = uuid.UUID(int=0)  # the chain of entries that belong to no tenant
HASHED_FIELDS = (
    "action",
    "actor_id",
    "actor_type",
    "details",
    "ip",
    "reason",
    "request_id",
    "resource_id",
    "resource_type",
    "result",
    "seq",
    "tenant_id",
    "time",
    "user_agent",
)
# Read from the database in this order by verification and export.
ENTRY_COLUMNS = ("seq", "time", *(f for f in HASHED_FIELDS if f not in {"seq", "time"}))
ENTRY_COLUMNS_WITH_HASHES = (*ENTRY_COLUMNS, "prev_hash", "hash")


@dataclass
class AuditDraft:
    """One entry before it has `seq`, `prev_hash` and `hash` (given by `AuditLog.append`)."""

    tenant_id: uuid.UUID | None  # None: the platform chain
    actor_type: str  # "user" | "api_key" | "system"
    actor_id: str | None  # user id as str, or a system actor's name ("scheduler")
    action: str  # "workspace.spawn", "template.update", ...
    resource_type: str
    resource_id: str | None
    result: str  # "success" | "denied" | "failed"
    reason: str = "unspecified"  # the X-Reason header
    ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)  # JSON; never secrets
    time: datetime = field(default_factory=utcnow)


def chain_of(tenant_id: uuid.UUID | None) -> uuid.UUID:
    """The chain a tenant's entries go to; the platform chain for None."""
    return PLATFORM_CHAIN if tenant_id is None else tenant_id


def tenant_of(chain_id: uuid.UUID) -> uuid.UUID | None:
    return None if chain_id == PLATFORM_CHAIN else chain_id


def json_time(value: datetime) -> str:
    """How a time is written in canonical JSON: UTC, microseconds, `+00:00`."""
    if value.tzinfo is None:
        raise ValueError("audit times must be timezone-aware")
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return json_time(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _reject(value: object) -> Any:
    raise TypeError(f"not a JSON value: {type(value).__name__}")


_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)
# The C encoder behind json.dumps, built once: json.dumps builds a new one per call, which
# costs more than encoding a small entry. Same output (a test holds them to it).
_c_make_encoder = getattr(json_encoder, "c_make_encoder", None)
_fast_encode = (
    None
    if _c_make_encoder is None
    else _c_make_encoder(
        None, _reject, json_encoder.encode_basestring, None, ":", ",", True, False, False
    )
)


def encode_document(document: Mapping[str, Any]) -> str:
    """`json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`."""
    if _fast_encode is None:
        return _ENCODER.encode(document)
    return "".join(_fast_encode(document, 0))


def canonical(entry_fields: Mapping[str, Any]) -> bytes:
    """The canonical JSON of an entry: the `HASHED_FIELDS` of `entry_fields` (see above)."""
    document = {name: _json_value(entry_fields[name]) for name in HASHED_FIELDS}
    return encode_document(document).encode("utf-8")


def canonical_around(entry_fields: Mapping[str, Any]) -> tuple[str, str, str]:
    """An entry's canonical JSON in three pieces around its `seq` and its `time`.

    `canonical(fields)` is `head + str(seq) + mid + json_time(time) + tail`, for the fields
    of `entry_fields` (all of `HASHED_FIELDS` but `seq` and `time`). PostgreSQL appends an
    entry in one statement this way (`AuditLog.append_steps`): it numbers the entry and
    floors its time under the chain head's lock, then hashes the pieces around them.
    Every key before `seq` sorts before it, `tenant_id` and `time` between `seq` and
    `user_agent`, the last key.
    """
    before = {name: _json_value(entry_fields[name]) for name in HASHED_FIELDS if name < "seq"}
    head = encode_document(before)[:-1] + ',"seq":'
    tenant_id = encode_document({"": _json_value(entry_fields["tenant_id"])})[4:-1]
    user_agent = encode_document({"": entry_fields["user_agent"]})[4:-1]
    return head, f',"tenant_id":{tenant_id},"time":"', f'","user_agent":{user_agent}}}'


def entry_hash(prev_hash: str, entry_fields: Mapping[str, Any]) -> str:
    """SHA-256 (hex) over `prev_hash` (ASCII hex) followed by the entry's canonical JSON."""
    return hashlib.sha256(prev_hash.encode("ascii") + canonical(entry_fields)).hexdigest()


def checkpoint_message(
    *, tenant_id: uuid.UUID | None, seq: int, hash: str, time: datetime, key_id: str
) -> bytes:
    """What a checkpoint's Ed25519 signature covers: its canonical JSON, like an entry's."""
    document = {
        "hash": hash,
        "key_id": key_id,
        "seq": seq,
        "tenant_id": None if tenant_id is None else str(tenant_id),
        "time": json_time(time),
    }
    return encode_document(document).encode("utf-8")


@dataclass(frozen=True)
class VerifyResult:
    valid: bool
    checked: int
    first_invalid_seq: int | None
    reason: str | None


@dataclass(frozen=True)
class Link:
    """A point of a chain that something outside the entries vouches for."""

    seq: int
    hash: str


def _quoted(value: str | None) -> str:
    return "null" if value is None else _encode_string(value)


_encode_string = json_encoder.encode_basestring
MEMO_SIZE = 4_096


class ChainVerifier:
    """Checks one chain from rows fed in `seq` order, stopping at the first break.

    Rows are tuples in `ENTRY_COLUMNS_WITH_HASHES` order, in the form `AuditLog.stream`
    reads them: `time` and `tenant_id` as the strings the hash covers, `details` as its
    stored JSON text. The canonical JSON is put together from them as `json.dumps` would
    write it (strings escaped by the same encoder), with `details` as stored: `append`
    stores it canonical. Only when a hash does not match is `details` parsed and
    re-encoded, in case it was stored in another layout, before the entry counts as
    altered. The chain starts after `start` (the genesis, or the last archived link);
    `checkpoint` is the latest signed head and `head` what `audit_heads` says, both
    checked once every row is in (`finish`).

    Each kind of tampering is reported where it happened: an edited entry at its own
    `seq` (its hash no longer matches), a deleted one at the `seq` that is missing, an
    entry inserted with renumbered successors at its own `seq` (its successor links past
    it to the same predecessor), a duplicated `seq` where it repeats, entries moved at the
    first position whose link breaks, an entry still stored though archived, and a
    truncated tail at the first `seq` the signed checkpoint (or the head) still counts.
    """

    def __init__(
        self,
        *,
        tenant_id: uuid.UUID | None,
        start: Link,
        checkpoint: Link | None,
        head: Link | None,
    ) -> None:
        self.tenant_text = None if tenant_id is None else str(tenant_id)
        self.start = start
        self.checkpoint = checkpoint
        self.head = head
        self.expected = start.seq + 1
        self.prev = start.hash
        self.prev_prev: str | None = None
        self.checked = 0
        self.failure: VerifyResult | None = None
        self._memo: dict[str | None, str] = {}

    def _remember(self, *values: str | None) -> tuple[str, ...]:
        """The JSON of each of `values`, kept for the next rows (up to `MEMO_SIZE` values)."""
        encoded = tuple(_quoted(value) for value in values)
        if len(self._memo) < MEMO_SIZE:
            self._memo.update(zip(values, encoded, strict=True))
        return encoded

    def _fail(self, seq: int, reason: str) -> bool:
        self.failure = VerifyResult(
            valid=False, checked=self.checked, first_invalid_seq=seq, reason=reason
        )
        return False

    def feed(self, rows: Iterable[Sequence[Any]]) -> bool:
        """Check `rows`; False once the chain is broken (`finish` then says where)."""
        if self.failure is not None:
            return False
        sha256 = hashlib.sha256
        string = _encode_string
        # Most fields take few values (actions, actor types, results, reasons, agents):
        # each is encoded once. The ids are unique and encoded directly.
        memo = self._memo
        tenant_text = self.tenant_text
        tenant_json = _quoted(tenant_text)
        checkpoint = self.checkpoint
        for row in rows:
            (seq, time, action, actor_id, actor_type, details, ip, reason, request_id) = row[:9]
            (resource_id, resource_type, result, tenant_id, user_agent, prev_hash, hash_) = row[9:]
            if seq != self.expected or prev_hash != self.prev or tenant_id != tenant_text:
                return self._broken(seq, tenant_id, prev_hash)
            common: tuple[str, ...]
            try:
                common = (
                    memo[action], memo[actor_type], memo[ip], memo[reason],
                    memo[resource_type], memo[result], memo[user_agent],
                )  # fmt: skip
            except KeyError:
                common = self._remember(
                    action, actor_type, ip, reason, resource_type, result, user_agent
                )
            head = (
                f'{{"action":{common[0]},'
                f'"actor_id":{"null" if actor_id is None else string(actor_id)},'
                f'"actor_type":{common[1]},"details":'
            )
            tail = (
                f',"ip":{common[2]},"reason":{common[3]},'
                f'"request_id":{"null" if request_id is None else string(request_id)},'
                f'"resource_id":{"null" if resource_id is None else string(resource_id)},'
                f'"resource_type":{common[4]},"result":{common[5]},"seq":{seq},'
                f'"tenant_id":{tenant_json},"time":"{time}","user_agent":{common[6]}}}'
            )
            if sha256(f"{prev_hash}{head}{details}{tail}".encode()).hexdigest() != hash_:
                relaid = encode_document(orjson.loads(details))
                if sha256((prev_hash + head + relaid + tail).encode()).hexdigest() != hash_:
                    return self._fail(seq, f"entry {seq} was altered: its hash does not match")
            if checkpoint is not None and seq == checkpoint.seq and hash_ != checkpoint.hash:
                return self._fail(seq, f"entry {seq} differs from the signed checkpoint")
            self.prev_prev = prev_hash
            self.prev = hash_
            self.expected = seq + 1
            self.checked += 1
        return True

    def feed_documents(
        self,
        rows: Iterable[Sequence[Any]],
        entry: Callable[[int], Sequence[Any] | None],
    ) -> bool:
        """Check rows of (seq, same tenant, prev_hash, hash, canonical JSON) written by the
        database (SQLite's range query). A row that does not check out on this shortcut is
        judged by `feed` from its fields, read with `entry(seq)`, so every break is found and
        reported exactly as `feed` reports it, and an entry the database wrote differently
        from Python (it should not) still verifies."""
        if self.failure is not None:
            return False
        sha256 = hashlib.sha256
        checkpoint = self.checkpoint
        for seq, same_tenant, prev_hash, hash_, document in rows:
            if (
                seq == self.expected
                and prev_hash == self.prev
                and same_tenant
                and sha256(f"{prev_hash}{document}".encode()).hexdigest() == hash_
                and (checkpoint is None or seq != checkpoint.seq or hash_ == checkpoint.hash)
            ):
                self.prev_prev = prev_hash
                self.prev = hash_
                self.expected = seq + 1
                self.checked += 1
                continue
            fields = entry(seq)
            if fields is None:  # gone since the range was read
                return self._fail(seq, f"entry {seq} is missing")
            if not self.feed([fields]):
                return False
        return True

    def _broken(self, seq: int, tenant_id: str | None, prev_hash: str) -> bool:
        expected = self.expected
        if seq <= self.start.seq:
            return self._fail(
                seq, f"entry {seq} is stored though archived (up to {self.start.seq})"
            )
        if seq < expected:
            return self._fail(seq, f"entry {seq} appears more than once")
        if seq > expected:
            return self._fail(expected, f"entry {expected} is missing")
        if prev_hash != self.prev:
            if prev_hash == self.prev_prev:
                return self._fail(
                    seq - 1, f"entry {seq - 1} was inserted: entry {seq} links past it"
                )
            return self._fail(seq, f"entry {seq} does not link to entry {seq - 1}")
        return self._fail(seq, f"entry {seq} belongs to another chain")

    def finish(self) -> VerifyResult:
        if self.failure is not None:
            return self.failure
        last = self.expected - 1
        checkpoint, head = self.checkpoint, self.head
        if checkpoint is not None and last < checkpoint.seq:
            self._fail(
                last + 1,
                f"the chain ends at entry {last} but the signed checkpoint counts "
                f"{checkpoint.seq}: entries were removed from the end",
            )
        elif head is not None and last < head.seq:
            self._fail(last + 1, f"the chain ends at entry {last} but its head is {head.seq}")
        elif head is not None and last > head.seq:
            self._fail(head.seq + 1, f"entries after the chain head ({head.seq}) were added")
        elif head is not None and self.checked and self.prev != head.hash:
            self._fail(last, f"entry {last} differs from the chain head")
        if self.failure is not None:
            return self.failure
        return VerifyResult(valid=True, checked=self.checked, first_invalid_seq=None, reason=None)
