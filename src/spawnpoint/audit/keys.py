"""The Ed25519 key that signs audit checkpoints, and how others check its signatures.

The key comes from AUDIT_SIGNING_KEY (the raw 32-byte private key in base64, or a PKCS#8
PEM); in development `Settings.audit_key_material` generates one under DATA_DIR. Its id
is the first 16 hex digits of SHA-256 over the raw 32-byte public key, so a tenant who
pinned the public key can tell which key signed a checkpoint.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from spawnpoint.audit.chain import checkpoint_message, tenant_of
from spawnpoint.models import AuditCheckpoint

if TYPE_CHECKING:
    from spawnpoint.config import Settings

ALGORITHM = "Ed25519"


class SigningKeyError(ValueError):
    """AUDIT_SIGNING_KEY is missing or is not an Ed25519 private key."""


def parse_private_key(text: str) -> Ed25519PrivateKey:
    """An Ed25519 private key from base64 (raw 32 bytes) or PEM text.

    Raises:
        SigningKeyError: `text` is neither.
    """
    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(text.encode(), password=None)
        except (ValueError, TypeError) as exc:
            raise SigningKeyError(f"AUDIT_SIGNING_KEY is not a readable PEM key: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise SigningKeyError("AUDIT_SIGNING_KEY is a PEM key, but not an Ed25519 one")
        return key
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise SigningKeyError("AUDIT_SIGNING_KEY is neither base64 nor PEM") from exc
    if len(raw) != 32:
        raise SigningKeyError(
            f"AUDIT_SIGNING_KEY must hold 32 bytes (an Ed25519 private key), not {len(raw)}"
        )
    return Ed25519PrivateKey.from_private_bytes(raw)


def key_id_of(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey

    @classmethod
    def from_settings(cls, settings: Settings) -> SigningKey:
        """The configured key (generated in development on first use).

        Raises:
            SigningKeyError: none is configured, or it cannot be read.
        """
        material = settings.audit_key_material
        if not material:
            raise SigningKeyError("AUDIT_SIGNING_KEY is not set")
        return cls(parse_private_key(material))

    @cached_property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @cached_property
    def public_raw(self) -> bytes:
        return self.public.public_bytes_raw()

    @cached_property
    def key_id(self) -> str:
        return key_id_of(self.public_raw)

    @property
    def public_base64(self) -> str:
        return base64.b64encode(self.public_raw).decode()

    @property
    def public_pem(self) -> str:
        return self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    def sign(self, message: bytes) -> str:
        """The signature of `message`, in base64."""
        return base64.b64encode(self.private.sign(message)).decode()

    def verifies(self, signature: str, message: bytes) -> bool:
        """Whether `signature` (base64) is this key's signature of `message`."""
        try:
            self.public.verify(base64.b64decode(signature, validate=True), message)
        except (InvalidSignature, binascii.Error, ValueError):
            return False
        return True


def sign_checkpoint(
    key: SigningKey, *, chain_id: uuid.UUID, seq: int, hash: str, now: datetime
) -> AuditCheckpoint:
    """A new checkpoint of `chain_id` at (`seq`, `hash`), signed by `key`."""
    tenant_id = tenant_of(chain_id)
    message = checkpoint_message(
        tenant_id=tenant_id, seq=seq, hash=hash, time=now, key_id=key.key_id
    )
    return AuditCheckpoint(
        chain_id=chain_id,
        tenant_id=tenant_id,
        seq=seq,
        hash=hash,
        time=now,
        key_id=key.key_id,
        signature=key.sign(message),
    )


def checkpoint_problem(key: SigningKey, checkpoint: AuditCheckpoint) -> str | None:
    """Why `checkpoint` cannot be trusted (None: it is signed by `key`)."""
    if checkpoint.key_id != key.key_id:
        return (
            f"the checkpoint at entry {checkpoint.seq} is signed by key {checkpoint.key_id}, "
            f"not by the configured key {key.key_id}"
        )
    message = checkpoint_message(
        tenant_id=checkpoint.tenant_id,
        seq=checkpoint.seq,
        hash=checkpoint.hash,
        time=checkpoint.time,
        key_id=checkpoint.key_id,
    )
    if checkpoint.tenant_id != tenant_of(checkpoint.chain_id) or not key.verifies(
        checkpoint.signature, message
    ):
        return f"the checkpoint at entry {checkpoint.seq} has an invalid signature"
    return None
