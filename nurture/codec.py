"""Encryption of every Temporal payload with AES-256-GCM, so lead data in
workflow histories is unreadable to anyone without PAYLOAD_ENCRYPTION_KEYS.

An encrypted payload has the metadata `encoding: binary/encrypted` and
`encryption-key-id: <id>`, and its data is a random 12-byte nonce followed by
the AES-GCM ciphertext and tag of the original serialized payload. The format
is the one of Temporal's encryption samples in Go, TypeScript and Python, so
their codec servers can read it too.

Keys rotate: the first key of the setting encrypts, and every listed key
decrypts the payloads that carry its id. Payloads without the encrypted
encoding, such as histories recorded before encryption was on, pass through.
"""

import base64
import binascii
import dataclasses
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
)

SETTING = "PAYLOAD_ENCRYPTION_KEYS"
ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
KEY_BYTES = 32
NONCE_BYTES = 12

_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class PayloadDecryptionError(ValueError):
    """An encrypted payload that no configured key can decrypt."""


@dataclass(frozen=True)
class EncryptionKey:
    """One AES-256 key and the id that payloads encrypted with it carry."""

    id: str
    secret: bytes = field(repr=False)


def parse_encryption_keys(text: str) -> list[EncryptionKey]:
    """Parse "id:base64key,id2:base64key" into keys, the active one first.

    Raises ValueError naming PAYLOAD_ENCRYPTION_KEYS and the key id, never
    the key material, for a malformed entry, a duplicate id or a key that is
    not 32 bytes of base64 (standard or URL-safe alphabet).
    """
    keys: list[EncryptionKey] = []
    entries = [entry.strip() for entry in text.split(",") if entry.strip()]
    for position, entry in enumerate(entries, 1):
        key_id, separator, encoded = (part.strip() for part in entry.partition(":"))
        if not separator or not encoded:
            raise ValueError(
                f"{SETTING}: entry {position} is not ID:BASE64KEY; write "
                "comma-separated id:key pairs, e.g. 2026-01:<output of "
                "`openssl rand -base64 32`>"
            )
        if not _KEY_ID.fullmatch(key_id):
            raise ValueError(
                f"{SETTING}: invalid key id {key_id!r} in entry {position}: use "
                "1 to 64 letters, digits, dots, dashes or underscores"
            )
        if any(key.id == key_id for key in keys):
            raise ValueError(f"{SETTING}: key id {key_id!r} is listed twice")
        standard = encoded.replace("-", "+").replace("_", "/")
        try:
            secret = base64.b64decode(standard, validate=True)
        except binascii.Error:
            raise ValueError(
                f"{SETTING}: the key of {key_id!r} is not valid base64"
            ) from None
        if len(secret) != KEY_BYTES:
            raise ValueError(
                f"{SETTING}: the key of {key_id!r} is {len(secret)} bytes, but "
                f"AES-256 needs {KEY_BYTES}; generate one with "
                "`openssl rand -base64 32`"
            )
        keys.append(EncryptionKey(key_id, secret))
    return keys


def generate_key_entry(key_id: str) -> str:
    """Return a new random key as one PAYLOAD_ENCRYPTION_KEYS entry."""
    secret = base64.b64encode(os.urandom(KEY_BYTES)).decode()
    return f"{key_id}:{secret}"


class EncryptionCodec(PayloadCodec):
    """A payload codec that encrypts with the first key and decrypts with any."""

    def __init__(self, keys: Sequence[EncryptionKey]) -> None:
        if not keys:
            raise ValueError(f"{SETTING} is empty: the codec needs at least one key")
        self.active_key_id = keys[0].id
        self._ciphers = {key.id: AESGCM(key.secret) for key in keys}

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        cipher = self._ciphers[self.active_key_id]
        encoded = []
        for payload in payloads:
            # NOTE: NIST SP 800-38D limits a key to 2^32 encryptions with random
            # 12-byte nonces, so rotate keys long before that many payloads.
            nonce = os.urandom(NONCE_BYTES)
            ciphertext = cipher.encrypt(nonce, payload.SerializeToString(), None)
            encoded.append(
                Payload(
                    metadata={
                        "encoding": ENCODING,
                        KEY_ID_METADATA: self.active_key_id.encode(),
                    },
                    data=nonce + ciphertext,
                )
            )
        return encoded

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._decrypt(payload) for payload in payloads]

    def _decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        key_id = payload.metadata.get(KEY_ID_METADATA, b"").decode(errors="replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise PayloadDecryptionError(
                f"payload encrypted with unknown key id {key_id!r}: add that key "
                f"to {SETTING} (known ids: {', '.join(self._ciphers)})"
            )
        nonce, ciphertext = payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:]
        try:
            plaintext = cipher.decrypt(nonce, ciphertext, None)
        except InvalidTag:
            raise PayloadDecryptionError(
                f"payload encrypted with key id {key_id!r} failed authentication: "
                f"the data was altered, or the key listed as {key_id!r} in "
                f"{SETTING} is not the one that encrypted it"
            ) from None
        return Payload.FromString(plaintext)


def payload_codec(keys_setting: str) -> EncryptionCodec | None:
    """Build the codec for a PAYLOAD_ENCRYPTION_KEYS value, or None when it is empty."""
    keys = parse_encryption_keys(keys_setting)
    return EncryptionCodec(keys) if keys else None


def data_converter(keys_setting: str) -> DataConverter:
    """Return the pydantic data converter, encrypting payloads when keys are set.

    With keys, failure messages and stack traces are encrypted too: they go
    into the failure's encoded attributes, and the history shows only
    "Encoded failure". Error texts can quote an address or a provider's reply.
    """
    codec = payload_codec(keys_setting)
    if codec is None:
        return pydantic_data_converter
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=codec,
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )
