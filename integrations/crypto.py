"""AES-256-GCM for secrets at rest, with key ids so that keys can be rotated.

A ciphertext is the text ``enc:v1:<key id>:<base64url(nonce ‖ ciphertext ‖ tag)>``. The
key id says which key of ``settings.ENCRYPTION_KEYS`` ("id:base64 key", newest first)
decrypts it; new values are always encrypted with the first. The associated data binds a
ciphertext to its column, so a value copied into another column does not decrypt.
"""
from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

PREFIX = "enc:v1:"
_KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


class DecryptionError(Exception):
    """A stored secret cannot be read: unknown key id, wrong key, or a damaged value."""


@dataclass(frozen=True)
class Keyring:
    current: str
    keys: dict[str, bytes]


def _parse(entries: tuple[str, ...], secret_key: str) -> Keyring:
    keys: dict[str, bytes] = {}
    order: list[str] = []
    for entry in entries:
        key_id, sep, material = entry.strip().partition(":")
        if not sep or not _KEY_ID.match(key_id):
            raise ImproperlyConfigured(
                "ENCRYPTION_KEYS entries must look like 'id:base64key' (id: letters, digits, _.-)"
            )
        try:
            raw = base64.urlsafe_b64decode(material + "=" * (-len(material) % 4))
        except (binascii.Error, ValueError):
            raise ImproperlyConfigured(f"ENCRYPTION_KEYS: key {key_id!r} is not valid base64") from None
        if len(raw) != 32:
            raise ImproperlyConfigured(f"ENCRYPTION_KEYS: key {key_id!r} must be 32 bytes (AES-256), got {len(raw)}")
        if key_id in keys:
            raise ImproperlyConfigured(f"ENCRYPTION_KEYS: key id {key_id!r} is listed twice")
        keys[key_id] = raw
        order.append(key_id)
    if not keys:
        if not secret_key:
            raise ImproperlyConfigured("Set ENCRYPTION_KEYS (or at least SECRET_KEY) to store credentials")
        # Local default only (production settings require ENCRYPTION_KEYS).
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"credentials").derive(
            secret_key.encode()
        )
        keys["local"] = derived
        order.append("local")
    return Keyring(current=order[0], keys=keys)


@lru_cache(maxsize=4)
def _keyring_for(entries: tuple[str, ...], secret_key: str) -> Keyring:
    return _parse(entries, secret_key)


def keyring() -> Keyring:
    return _keyring_for(tuple(settings.ENCRYPTION_KEYS), settings.SECRET_KEY)


def generate_key(key_id: str) -> str:
    if not _KEY_ID.match(key_id):
        raise ValueError("a key id is 1–32 letters, digits, '_', '.' or '-'")
    return f"{key_id}:{base64.urlsafe_b64encode(os.urandom(32)).decode()}"


def is_ciphertext(value: str) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def key_id_of(ciphertext: str) -> str:
    if not is_ciphertext(ciphertext):
        raise DecryptionError("the stored value is not an encrypted value")
    return ciphertext[len(PREFIX) :].split(":", 1)[0]


def encrypt(plaintext: bytes, *, context: str) -> str:
    ring = keyring()
    nonce = os.urandom(12)
    sealed = AESGCM(ring.keys[ring.current]).encrypt(nonce, plaintext, context.encode())
    return f"{PREFIX}{ring.current}:{base64.urlsafe_b64encode(nonce + sealed).decode()}"


def decrypt(ciphertext: str, *, context: str) -> bytes:
    key_id = key_id_of(ciphertext)
    key = keyring().keys.get(key_id)
    if key is None:
        raise DecryptionError(f"the value was encrypted with key {key_id!r}, which is not in ENCRYPTION_KEYS")
    try:
        blob = base64.urlsafe_b64decode(ciphertext[len(PREFIX) + len(key_id) + 1 :])
        return AESGCM(key).decrypt(blob[:12], blob[12:], context.encode())
    except (InvalidTag, binascii.Error, ValueError):
        raise DecryptionError(f"the value does not decrypt with key {key_id!r}: wrong key or damaged value") from None
