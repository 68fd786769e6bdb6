"""The secret behind de-identification: reading (or creating) a key file, and the pseudonyms,
UIDs and date shifts it determines (HMAC-SHA256), the same for every run with the same key.

The same input UID always gives the same output UID (``2.25.<uuid>`` from a hash of key and
UID), the same patient the same pseudonym and date shift. Without a key a random one is used
for the run; a key kept in a file is read with :func:`read_key_file`, which refuses a missing
or empty file rather than falling back to a random key (the pseudonyms would then change
between runs)."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import uuid
from datetime import timedelta
from pathlib import Path

from scalpel.core.errors import ScalpelError

#: How to make a key file, for the messages about a missing or empty one.
_MAKE_KEY = ("create one with `python -c \"import secrets; print(secrets.token_hex(32))\" > {path}` "
             "(or add --create-key-file), keep it private and outside the output, and reuse it for every run whose "
             "pseudonyms must match")


class KeyFileError(ScalpelError):
    """The file that should hold the de-identification key is missing, empty or misplaced."""


def read_key_file(path: str | os.PathLike, *, create: bool = False) -> str:
    """The secret held in a key file (surrounding whitespace dropped).

    Args:
        path: the key file.
        create: when the file does not exist, write a new random key to it first (readable by
            its owner only). An existing file is never overwritten.

    Raises:
        KeyFileError: the file is missing (and ``create`` is not set), empty or unreadable.
    """
    path = Path(path)
    if create and not path.exists():
        _write_new_key(path)
    if not path.is_file():
        raise KeyFileError(f"key file {path} does not exist; {_MAKE_KEY.format(path=path)}")
    try:
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise KeyFileError(f"key file {path} cannot be read ({err}); {_MAKE_KEY.format(path=path)}") from err
    if not key:
        raise KeyFileError(f"key file {path} is empty, so every run would use another random key and other pseudonyms; "
                           + _MAKE_KEY.format(path=path))
    return key


def _write_new_key(path: Path) -> None:
    try:  # O_EXCL: never replace a key another process has just written
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as err:
        raise KeyFileError(f"cannot create key file {path} ({err.strerror}); choose a writable folder") from err
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secrets.token_hex(32) + "\n")


class Pseudonyms:
    """Deterministic replacements under one secret key (HMAC-SHA256)."""

    def __init__(self, key: str | None, max_shift_days: int = 365):
        self.key = (key or secrets.token_hex(32)).encode()
        self.max_shift_days = max_shift_days
        self._uids: dict[str, str] = {}

    def _digest(self, kind: str, value: str) -> bytes:
        return hmac.new(self.key, f"{kind}\0{value}".encode(), hashlib.sha256).digest()

    def uid(self, uid: str) -> str:
        if uid not in self._uids:  # 2.25.<UUID as an integer> (PS3.5 B.2), a function of key and input UID
            name_based = uuid.UUID(bytes=self._digest("uid", uid)[:16], version=5)
            self._uids[uid] = f"2.25.{name_based.int}"
        return self._uids[uid]

    def patient(self, patient_id: str) -> str:
        return "ANON-" + self._digest("patient", patient_id).hex()[:12].upper()

    def date_shift(self, patient_id: str) -> timedelta:
        """Move dates back by 1..max days, the same for every file of the patient."""
        return -timedelta(days=1 + int.from_bytes(self._digest("shift", patient_id)[:8], "big") % self.max_shift_days)
