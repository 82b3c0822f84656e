"""Sealed values: what only the investigators can open, and pgveil can only write.

Theory of operation
-------------------
The investigators hold an X25519 key pair (``pgveil audit keygen``); pgveil is given only the
public half (``--audit-seal-key``).  A libsodium sealed box (an ephemeral X25519 exchange per
box) costs a curve25519 scalar multiplication, about 50 us: too much for every statement.  So
each worker seals with a **data key**:

* a random 32-byte key, itself sealed to the investigators' public key in a ``seal_key`` record
  of its own (written to the journal before any record that uses it);
* each record's values are encrypted under it with a SecretBox (XSalsa20-Poly1305, a fresh
  random nonce per box): a few microseconds;
* the key is replaced after ``max_records`` boxes or ``max_seconds`` seconds, whichever comes
  first, and :meth:`Sealer.expire` (called every second by the server) drops a key that has
  grown too old even when nothing is sealed.  A dropped key is no longer referenced by pgveil;
  Python gives no promise that the memory it occupied is overwritten at once.

pgveil never holds the private key, so it cannot open a data key's record, nor any box.  The
boxes are fields of ordinary records, so the journal's hash chain covers their bytes.

Files: ``pgveil-seal-public <base64>`` and ``pgveil-seal-private <base64>``, one line each.

>>> private, public = generate()
>>> seen = []
>>> sealer = Sealer(public, seen.append)
>>> box = sealer.seal({"sql": "SELECT 1"})
>>> opener = Opener(private)
>>> [opener.add_key(r) for r in seen]
[True]
>>> opener.open(box)
{'sql': 'SELECT 1'}
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from pathlib import Path
from typing import Callable

import orjson
from nacl.bindings import crypto_secretbox
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox
from nacl.secret import SecretBox
from nacl.utils import random as random_bytes

from .records import base, new_id

PUBLIC_TAG = "pgveil-seal-public"
PRIVATE_TAG = "pgveil-seal-private"


class SealKeyError(Exception):
    """A key file is missing or not a pgveil seal key; the message says which."""


# ----------------------------------------------------------------------------- key files
def generate() -> tuple[bytes, bytes]:
    """A fresh (private, public) X25519 key pair, 32 bytes each."""
    key = PrivateKey.generate()
    return bytes(key), bytes(key.public_key)


def write_key_pair(out: str | Path) -> tuple[Path, Path]:
    """``OUT`` (private, mode 0600, never overwritten) and ``OUT.pub`` (public)."""
    private, public = generate()
    out = Path(out)
    pub_path = Path(f"{out}.pub")
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(f"{PRIVATE_TAG} {base64.b64encode(private).decode()}\n")
    pub_path.write_text(f"{PUBLIC_TAG} {base64.b64encode(public).decode()}\n", encoding="ascii")
    return out, pub_path


def read_key(path: str | Path, tag: str) -> bytes:
    """The 32-byte key of a key file written by :func:`write_key_pair`."""
    try:
        text = Path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SealKeyError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None
    found, _, value = text.partition(" ")
    if found != tag:
        other = PRIVATE_TAG if tag == PUBLIC_TAG else PUBLIC_TAG
        hint = f" (it is a {other.split('-')[-1]} key)" if found == other else ""
        raise SealKeyError(f"{path}: not a {tag.split('-')[-1]} pgveil seal key{hint}")
    try:
        key = base64.b64decode(value, validate=True)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise SealKeyError(f"{path}: the key is not 32 bytes of base64")
    return key


def recipient(public: bytes) -> str:
    """A public key's short name, recorded with each data key: which key pair opens it."""
    return hashlib.sha256(public).hexdigest()[:16]


# ----------------------------------------------------------------------------- sealing
class Sealer:
    """Seals payloads (JSON-able dicts) for one writer; ``emit`` takes the ``seal_key`` records."""

    def __init__(self, public: bytes, emit: Callable[[dict], None], max_records: int = 10_000,
                 max_seconds: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._public = PublicKey(public)
        self.recipient = recipient(public)
        self._emit = emit
        self.max_records = max_records
        self.max_seconds = max_seconds
        self._clock = clock
        self._key: bytes | None = None
        self._key_id = ""
        self._used = 0
        self._born = 0.0
        self.keys = 0  # data keys made so far

    def seal(self, payload: dict) -> dict:
        """``{"key": data key id, "box": base64(nonce + ciphertext)}`` of the payload's JSON."""
        key = self._key
        if key is None or self._used >= self.max_records or self._clock() - self._born > self.max_seconds:
            key = self._rotate()
        self._used += 1
        nonce = os.urandom(SecretBox.NONCE_SIZE)  # what SecretBox.encrypt does, without its objects
        sealed = nonce + crypto_secretbox(orjson.dumps(payload), nonce, key)
        return {"key": self._key_id, "box": base64.b64encode(sealed).decode("ascii")}

    def expire(self) -> None:
        """Drop a data key older than ``max_seconds`` (the next seal makes a new one)."""
        if self._key is not None and self._clock() - self._born > self.max_seconds:
            self._key = None

    def _rotate(self) -> bytes:
        key = random_bytes(SecretBox.KEY_SIZE)
        self._key_id = new_id()
        self._emit(dict(base("seal_key", {}), key_id=self._key_id, recipient=self.recipient,
                        sealed_key=base64.b64encode(SealedBox(self._public).encrypt(key)).decode("ascii")))
        self._key = key  # the previous key is no longer referenced
        self._used = 0
        self._born = self._clock()
        self.keys += 1
        return key


# ----------------------------------------------------------------------------- opening
class Opener:
    """The investigators' side: data keys opened with the private key, then the boxes."""

    def __init__(self, private: bytes) -> None:
        self._private = PrivateKey(private)
        self.recipient = recipient(bytes(self._private.public_key))
        self._boxes: dict[str, SecretBox] = {}
        self.keys_seen = 0
        self.keys_opened = 0

    @property
    def public(self) -> bytes:
        return bytes(self._private.public_key)

    def add_key(self, record: dict) -> bool:
        """A ``seal_key`` record: True if this private key opens it."""
        self.keys_seen += 1
        try:
            key = SealedBox(self._private).decrypt(base64.b64decode(record.get("sealed_key", "")))
        except (CryptoError, ValueError, TypeError):
            return False
        self._boxes[record.get("key_id", "")] = SecretBox(key)
        self.keys_opened += 1
        return True

    def open(self, sealed) -> dict | None:
        """The payload of a ``sealed`` field, or None when its data key is unknown or it was altered."""
        if not isinstance(sealed, dict):
            return None
        box = self._boxes.get(sealed.get("key"))
        if box is None:
            return None
        try:
            return orjson.loads(box.decrypt(base64.b64decode(sealed.get("box", ""))))
        except (CryptoError, ValueError, TypeError, orjson.JSONDecodeError):
            return None


def seal_once(public: bytes, payload: dict) -> str:
    """One payload in a sealed box of its own (base64): for the rare record, such as an investigation."""
    return base64.b64encode(SealedBox(PublicKey(public)).encrypt(orjson.dumps(payload))).decode("ascii")


def open_once(private: bytes, text: str) -> dict | None:
    try:
        return orjson.loads(SealedBox(PrivateKey(private)).decrypt(base64.b64decode(text)))
    except (CryptoError, ValueError, TypeError, orjson.JSONDecodeError):
        return None
