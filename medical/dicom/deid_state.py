"""Continuing an interrupted ``scalpel dicom deid``: the state file beside the audit log (which
key, as a salted hash, and which options a run used) and the checks that a rerun is the same run.
Split from ``deid_folder`` so each module reads on its own."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from pathlib import Path
from typing import Any

from scalpel.core.errors import ScalpelError
from scalpel.core.files import atomic_write
from scalpel.medical.dicom.deid import DeidOptions, Pseudonyms

STATE_VERSION = 1
_KEY_CHECK_ROUNDS = 200_000


class ResumeError(ScalpelError):
    """The output folder holds a run that cannot be continued with this key, these options or this input."""


def _state_path(log: Path) -> Path:
    return log.with_name(f"{log.stem}.state.json")


def _prepare_output(src: Path, dst: Path, state_path: Path, options: DeidOptions, pseudonyms: Pseudonyms) -> bool:
    """Make ``dst`` ready; True when it holds an earlier run (interrupted, or finished) that this one continues."""
    if not (dst.exists() and any(dst.iterdir())):
        dst.mkdir(parents=True, exist_ok=True)
        _write_state(state_path, src, options, pseudonyms)
        return False
    if not state_path.is_file():
        raise ScalpelError(f"output {dst} already exists, is not empty and holds no run of `scalpel dicom deid` to continue "
                           f"(no {state_path.name} beside its audit log); choose a new folder so no earlier result is mixed in")
    _check_same_run(_read_state(state_path), src, dst, options, pseudonyms)
    for partial in dst.rglob(".*.tmp"):  # temporary files of writes the interruption cut short
        partial.unlink(missing_ok=True)
    _mark_finished(state_path, False)
    return True


def _write_state(path: Path, src: Path, options: DeidOptions, pseudonyms: Pseudonyms) -> None:
    salt = secrets.token_bytes(16)
    state = {
        "version": STATE_VERSION,
        "input": _input_check(src),
        "key": "random" if options.key is None else "given",
        "key_salt": salt.hex(),
        "key_check": _key_check(pseudonyms.key, salt),
        "options": options.profile(),
        "finished": False,
    }
    with atomic_write(path, "w") as handle:
        json.dump(state, handle, indent=2)


def _mark_finished(path: Path, finished: bool) -> None:
    """Note whether every input file was handled, so a later message can say which run the output holds."""
    state = _read_state(path)
    state["finished"] = finished
    with atomic_write(path, "w") as handle:
        json.dump(state, handle, indent=2)


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ResumeError(f"{path} cannot be read ({err}); delete the output folder and its audit log to start again") from err
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise ResumeError(f"{path} was written by another version of scalpel; delete the output folder and its audit log to start again")
    return state


def _check_same_run(state: dict[str, Any], src: Path, dst: Path, options: DeidOptions, pseudonyms: Pseudonyms) -> None:
    run = "a finished run" if state.get("finished") else "an unfinished run"
    again = "give the same key file and options to continue it, or choose a new output folder"
    if state.get("key") == "random":
        raise ResumeError(f"output {dst} holds {run} that used a random key (no key file), so its pseudonyms cannot be "
                          "reproduced; choose a new output folder, or delete this one and its audit log, and run with --key-file "
                          "to be able to continue")
    if options.key is None:
        raise ResumeError(f"output {dst} holds {run} made with a key; {again}")
    if not hmac.compare_digest(str(state.get("key_check")), _key_check(pseudonyms.key, bytes.fromhex(str(state.get("key_salt", ""))))):
        raise ResumeError(f"output {dst} holds {run} made with another key; {again}")
    before = state.get("options") or {}
    differ = [f"{name}: {value!r} here, {before.get(name)!r} in that run"
              for name, value in options.profile().items() if before.get(name) != value]
    if differ:
        raise ResumeError(f"output {dst} holds {run} made with other options ({'; '.join(differ)}); {again}")
    if state.get("input") != _input_check(src):
        raise ResumeError(f"output {dst} holds {run} of another input folder; give that folder to continue it, or choose a new output folder")


def _key_check(key: bytes, salt: bytes) -> str:
    return hashlib.pbkdf2_hmac("sha256", key, salt, _KEY_CHECK_ROUNDS).hex()


def _input_check(src: Path) -> str:
    return hashlib.sha256(str(src).encode()).hexdigest()  # a check, not the path: names can identify
