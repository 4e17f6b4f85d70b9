"""The consortium key: one secret shared by every site, never by the server.

The key file is plain text: one line of at least 64 hexadecimal characters (32 bytes of secret).
Blank lines and lines starting with ``#`` are ignored, so a key file can carry a comment saying
which consortium it belongs to. Everything secret in a site store is derived from this key with
HMAC-SHA256 (:func:`derive`): the permutation of fingerprint bits and the scaffold-fold hash.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from fedmol.errors import InputError

__all__ = ["MIN_KEY_BYTES", "derive", "generate_key_file", "key_fingerprint", "load_key"]

MIN_KEY_BYTES = 32
_PURPOSE_PREFIX = b"fedmol/v1/"


def generate_key_file(path: str | Path, n_bytes: int = MIN_KEY_BYTES) -> Path:
    """Write a new random consortium key to ``path`` (mode 0600) and return the path.

    Refuses to overwrite an existing file: replacing a key silently would change every fold and
    every feature position of the consortium.
    """
    path = Path(path)
    if n_bytes < MIN_KEY_BYTES:
        raise InputError(f"a consortium key needs at least {MIN_KEY_BYTES} bytes, not {n_bytes}")
    if path.exists():
        raise InputError(f"{path} already exists: choose another path or delete the old key first")
    if not path.parent.exists():
        raise InputError(f"folder {path.parent} does not exist: create it first")
    text = (
        "# fedmol consortium key: share it with every site of the consortium, never with the server\n"
        f"{secrets.token_hex(n_bytes)}\n"
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return path


def load_key(path: str | Path) -> bytes:
    """Read a key file and return the secret bytes (at least 32).

    Raises InputError with a one-line message when the file is missing, unreadable, not hex,
    has several key lines, or is too short.
    """
    path = Path(path)
    fix = "create one with `fedmol keygen KEYFILE` and share it with every site"
    if not path.exists():
        raise InputError(f"key file {path} not found: {fix}")
    if path.is_dir():
        raise InputError(f"key file {path} is a folder: pass the key file itself")
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read key file {path} ({type(exc).__name__}): check its permissions and "
                         "that it holds one line of hex characters") from None
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise InputError(f"key file {path} holds no key: {fix}")
    if len(lines) > 1:
        raise InputError(f"key file {path} holds {len(lines)} non-comment lines, expected one line of hex")
    try:
        key = bytes.fromhex(lines[0])
    except ValueError:
        raise InputError(f"key file {path} is malformed: expected hex characters 0-9a-f only") from None
    if len(key) < MIN_KEY_BYTES:
        raise InputError(
            f"key in {path} is too short: {len(key)} bytes, need at least {MIN_KEY_BYTES} "
            f"({2 * MIN_KEY_BYTES} hex characters); {fix}"
        )
    return key


def derive(key: bytes, purpose: str) -> bytes:
    """A 32-byte sub-key for one purpose ("permutation", "folds", ...): HMAC-SHA256(key, purpose)."""
    if not isinstance(key, bytes | bytearray) or len(key) == 0:
        raise InputError("derive() needs the key bytes from load_key()")
    return hmac.new(bytes(key), _PURPOSE_PREFIX + purpose.encode(), hashlib.sha256).digest()


def key_fingerprint(key: bytes) -> str:
    """A 16-hex-character identifier of the key, safe to log: sites compare it to see they share a key."""
    return derive(key, "fingerprint")[:8].hex()
