"""Atomic writes and safe reads: safetensors and JSON only, nothing unpickled.

Every write goes to a temporary file in the destination folder, is flushed to disk and
renamed over the target, so an interrupted process never leaves a half-written file.
A folder of files that belong together (an adapter) is written whole beside its target
and swapped in (:func:`atomic_folder`), so it is never half old and half new.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scalpel.core.errors import AdapterError, ScalpelError

if TYPE_CHECKING:  # torch and safetensors are imported by the functions that use them: the atomic
    import torch   # writes and JSON helpers serve commands that never touch a tensor (scalpel dicom)

#: Weight files that only unpickling can read (torch.save / PyTorch-format checkpoints).
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle")
#: Names Hugging Face gives the files it writes beside the weights: pickles, but never weights.
_PICKLE_NOT_WEIGHTS = {"training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth", "scaler.pt"}


class PickleWeightsError(ScalpelError):
    """A model or adapter folder holds its weights only as a pickle, which Scalpel never unpickles."""


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise ScalpelError(f"cannot write to {path.parent}: {err.strerror}; choose a writable directory") from err
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False, default=_json_default)
        f.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"{path} is missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AdapterError(f"{path} is not valid JSON ({err}); the file is damaged, write it again") from err


def write_safetensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> str:
    """Save tensors atomically and return the file's digest (:func:`sha256_digest`).
    Tensors are made contiguous and moved to CPU first."""
    from safetensors.torch import save

    plain = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    blob = save(plain, metadata=metadata)
    with atomic_write(path) as f:
        f.write(blob)
    return sha256_digest(blob)


def sha256_digest(data: bytes) -> str:
    """``"sha256:<64 hex digits>"`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read_bytes(path: str | os.PathLike) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"{path} is missing")
    return path.read_bytes()


def tensors_from_bytes(blob: bytes, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Parse the bytes of a safetensors file (read once, so they are the bytes a digest was checked on)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(blob)
    except (SafetensorError, ValueError) as err:
        raise AdapterError(
            f"{path} is not a readable safetensors file ({err}); it may be truncated, write it again"
        ) from err


def read_safetensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"{path} is missing")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise AdapterError(f"{path} is not a readable safetensors file ({err}); it may be truncated, write it again") from err


def refuse_pickle_weights(folder: str | os.PathLike) -> None:
    """Refuse a model folder whose weights exist only as pickles (``pytorch_model.bin``, ``*.pt``).

    Loading them would unpickle (torch's ``weights_only`` loader still runs the pickle machine,
    and refuses anything unusual with advice to turn it off); Scalpel reads safetensors only.
    A folder that also holds ``*.safetensors`` weights passes (loaders prefer those), and so
    does anything that is not a local folder (a hub name is for the loader to check).

    Raises:
        PickleWeightsError: the folder's only weights are pickles; the message says how to convert them.
    """
    folder = Path(folder)
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = sorted({p.name for pattern in PICKLE_WEIGHTS for p in folder.glob(pattern)} - _PICKLE_NOT_WEIGHTS)
    if pickles:
        raise PickleWeightsError(
            f"{folder} holds its weights only as a pickle ({', '.join(pickles)}), and Scalpel never unpickles; "
            "convert the folder to safetensors first, in an environment where you trust the file: "
            "load the model there and save it with `model.save_pretrained(DIR, safe_serialization=True)` "
            "(or `safetensors.torch.save_file(torch.load(FILE, weights_only=True), 'model.safetensors')`)"
        )


# ------------------------------------------------------------------ fault injection

#: ``LABEL:N`` (e.g. ``checkpoint:2``): the process kills itself (SIGKILL) at the N-th time it
#: reaches the point named LABEL, the moment a crash does most harm (a folder written, not yet
#: swapped in). For the fault-injection tests (tests/test_fault_injection.py); unset, it costs a lookup.
FAILPOINT_ENV = "SCALPEL_FAILPOINT"
_failpoint_hits: dict[str, int] = {}


def failpoint(label: str) -> None:
    """Die here if :data:`FAILPOINT_ENV` names ``label`` and this is its N-th arrival."""
    spec = os.environ.get(FAILPOINT_ENV)
    if not spec:
        return
    name, _, nth = spec.partition(":")
    if name != label:
        return
    _failpoint_hits[label] = _failpoint_hits.get(label, 0) + 1
    if _failpoint_hits[label] == int(nth or 1):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


# ------------------------------------------------------------------ whole folders


@contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty folder beside ``target`` to write into; on success it replaces ``target`` whole.

    The folder is ``.<name>.tmp-<pid>`` in the same parent (so the swap is a rename, never a
    copy). Leftovers of a killed earlier write are recovered first (:func:`recover_folder`).
    """
    target = _real(target)
    if target.exists() and not target.is_dir():
        raise ScalpelError(f"{target} is a file; pass a folder to write into (a new one, or one written before)")
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(target)
    stage = _sibling(target, "tmp")
    shutil.rmtree(stage, ignore_errors=True)  # ours by pid: left by an earlier failure of this process
    stage.mkdir()
    try:
        yield stage
        fsync_dir(stage)
        failpoint(target.name)  # e.g. "adapter": written whole beside the old one, not yet swapped in
        replace_folder(stage, target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def replace_folder(new: Path, target: Path) -> None:
    """Put folder ``new`` in place of ``target`` (which may not exist) and delete the old one.

    On Linux the two are exchanged in one atomic ``renameat2(RENAME_EXCHANGE)``: whenever the
    process dies, ``target`` is the old or the new folder. Elsewhere the old folder is renamed
    aside first; a death between the two renames leaves ``target`` missing and the old folder
    as ``.<name>.old-<pid>``, which :func:`recover_folder` puts back.
    """
    if not target.exists():
        os.rename(new, target)
    elif _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # it now holds the old folder; a leftover goes at the next write
    else:
        aside = _sibling(target, "old")
        os.rename(target, aside)
        os.rename(new, target)
        shutil.rmtree(aside, ignore_errors=True)
    fsync_dir(target.parent)


def recover_folder(target: str | os.PathLike) -> None:
    """Undo what a killed :func:`atomic_folder` left beside ``target``: put the old folder back
    when ``target`` is missing, and delete unfinished new folders and set-aside old ones.

    Siblings of a process that is still running (a save in progress) are left alone.
    """
    target = _real(target)
    stale = [(kind, p) for kind, pid, p in _siblings(target) if not _running(pid)]
    if not target.exists():
        olds = sorted((p for kind, p in stale if kind == "old"), key=lambda p: p.stat().st_mtime)
        if olds:
            os.rename(olds[-1], target)  # the complete previous folder; the new one never arrived
    for _, p in stale:
        if p.exists():
            shutil.rmtree(p, ignore_errors=True)


def link_or_copy(src: Path, dst: Path) -> None:
    """Give ``dst`` the contents of file or folder ``src``: hard links where the file system
    allows (instant, no second copy of a large file), else copies."""
    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy_file)
    else:
        _link_or_copy_file(src, dst)


def _link_or_copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _real(path: str | os.PathLike) -> Path:
    # A symlinked folder is replaced where it really lives; the link keeps pointing at it.
    path = Path(path)
    return path.resolve() if path.is_symlink() else path


def _sibling(target: Path, kind: str) -> Path:
    return target.parent / f".{target.name}.{kind}-{os.getpid()}"


def _siblings(target: Path) -> Iterator[tuple[str, int, Path]]:
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(tmp|old)-(\d+)")
    if not target.parent.is_dir():
        return
    for p in target.parent.iterdir():
        match = pattern.fullmatch(p.name)
        if match and p.is_dir():
            yield match.group(1), int(match.group(2)), p


def _running(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # Windows' os.kill would end the process, not probe it
        return False  # (this process has no save in progress while it recovers)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2``); False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:  # glibc < 2.28, musl
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):  # the file system cannot exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


def fsync_dir(folder: Path) -> None:
    """Make renames in ``folder`` durable: its entry list is flushed to disk (POSIX only)."""
    # The renames are durable once the parent folder's entry list is on disk (POSIX only).
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if hasattr(obj, "item"):  # numpy scalars and one-element tensors
        return obj.item()
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")
