"""Where pulled instances go: checked, de-identified when asked, written atomically one at a time.

Layout: ``OUT/<study UID>/<series UID>/<SOP instance UID>.dcm``. With de-identification the
UIDs are the pseudonyms the key gives (the same as ``scalpel dicom deid`` with that key), known
before an instance is fetched, so a rerun skips what is on disk and fetches only the rest. The
PS3.15 profile is applied in memory, before a byte reaches the disk; original UIDs, names and
dates never do. A state file (``OUT/.scalpel-pull.json``: de-identified or not, the profile and
a salted check of the key, never the key) makes sure a rerun continues the same pull.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import secrets
import struct
import threading
from collections.abc import Collection
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from scalpel.core.errors import ScalpelError
from scalpel.core.files import atomic_write
from scalpel.medical.dicom.deid import DeidOptions, Pseudonyms, deidentify_dataset
from scalpel.medical.dicom.deid_state import _key_check
from scalpel.medical.dicom.reading import integrity_problem
from scalpel.medical.pacs.errors import NotDicomAnswerError, PacsError, SeriesChangedError
from scalpel.medical.pacs.originals import originals_of, write_originals
from scalpel.medical.pacs.query import SeriesRef

STATE_NAME = ".scalpel-pull.json"
_READ_ERRORS = (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, IndexError, struct.error)
_STATE_VERSION = 1


class InstanceSink:
    """Writes the instances of pulled series under ``out``."""

    def __init__(self, out: str | Path, deid: DeidOptions | None = None):
        self.out = Path(out)
        self.deid = deid
        if deid is not None and deid.key is None:
            raise ScalpelError("de-identifying a pull needs a key file (--key-file, with --create-key-file the first "
                               "time): the same key gives the same pseudonyms, lets a rerun resume and maps a SEG back "
                               "to the original series when it is pushed")
        self.pseudonyms = Pseudonyms(deid.key, deid.max_date_shift_days) if deid is not None else None
        self._originals: dict[str, dict] = {}  # original series UID -> originals seen this run (de-identified pulls)
        self._lock = threading.Lock()
        self._made: set[Path] = set()
        self._numbers = itertools.count()  # names for temporary files (next() on a count is atomic)
        self._open_state()

    def uid(self, original: str) -> str:
        """The UID an original UID has on disk (its pseudonym under de-identification)."""
        return self.pseudonyms.uid(original) if self.pseudonyms is not None else original

    def folder(self, ref: SeriesRef) -> Path:
        return self.out / self.uid(ref.study_uid) / self.uid(ref.series_uid)

    def target(self, ref: SeriesRef, sop_uid: str) -> Path:
        return self.folder(ref) / f"{self.uid(sop_uid)}.dcm"

    def have(self, ref: SeriesRef, sop_uid: str) -> bool:
        """Whether the instance is on disk and whole. Files are renamed into place without an fsync
        each, so after a power loss one may be empty or torn: such a file is removed and pulled again."""
        target = self.target(ref, sop_uid)
        if not target.is_file():
            return False
        try:
            ds = pydicom.dcmread(target, defer_size="4 KB")
            whole = integrity_problem(ds, file_size=target.stat().st_size) is None
        except (InvalidDicomError, *_READ_ERRORS):
            whole = False
        if not whole:
            target.unlink(missing_ok=True)
        return whole

    def has_any(self, ref: SeriesRef) -> bool:
        """Whether any instance of the series is on disk (from an earlier run)."""
        folder = self.folder(ref)
        return folder.is_dir() and next(folder.glob("[!.]*.dcm"), None) is not None

    def clean_partial(self, ref: SeriesRef) -> None:
        """Remove temporary files an interrupted write left in the series folder."""
        folder = self.folder(ref)
        if folder.is_dir():
            for partial in folder.glob(".*.tmp"):
                partial.unlink(missing_ok=True)

    def temporary(self, ref: SeriesRef, sop_uid: str = "") -> Path:
        """A hidden file in the series folder to receive an instance (removed by :meth:`clean_partial`)."""
        folder = self.folder(ref)
        if folder not in self._made:  # once per series: a mkdir per instance cost as much as receiving it
            folder.mkdir(parents=True, exist_ok=True)
            self._made.add(folder)
        return folder / f".{self.uid(sop_uid) if sop_uid else 'instance'}.{os.getpid()}-{next(self._numbers)}.tmp"

    def accept(self, received: Path, ref: SeriesRef, expected: Collection[str] | None) -> tuple[str, int]:
        """Check the file ``received`` is one of the instances ``expected`` (original SOP UIDs; None:
        any instance of the series) and whole, de-identify it when asked, and put it in place; its
        SOP UID and the bytes now on disk. ``received`` is consumed.

        Without de-identification a Part 10 file is renamed into place as received (the PACS's
        bytes, never re-encoded, and never held in memory); with it, the instance is read, the
        profile applied in memory and only the result written.
        """
        try:
            ds = pydicom.dcmread(received, defer_size=None if self.deid else "4 KB")
        except (InvalidDicomError, *_READ_ERRORS) as err:
            raise NotDicomAnswerError(f"the PACS answered with something that is not a readable DICOM file ({type(err).__name__}); check the URL and any proxy in between") from err
        sop_uid, series_uid = str(ds.get("SOPInstanceUID", "")), str(ds.get("SeriesInstanceUID", ""))
        if not sop_uid:
            raise NotDicomAnswerError("the PACS sent an object without a SOP Instance UID; the server or a proxy in "
                                      "between answers wrongly")
        if expected is not None and sop_uid not in expected:
            if len(expected) == 1:
                raise NotDicomAnswerError(f"asked for instance {self.uid(next(iter(expected)))}, the PACS sent another "
                                          "object; the server or a proxy in between answers wrongly")
            raise SeriesChangedError(f"the PACS sent instance {self.uid(sop_uid)}, which it did not list for series "
                                     f"{self.uid(ref.series_uid)}: the series changed during the pull; run it again once it is stable")
        if series_uid != ref.series_uid:
            raise SeriesChangedError(f"instance {self.uid(sop_uid)} now belongs to another series; the series changed on "
                                     "the PACS: run the pull again once it is stable")
        problem = integrity_problem(ds, file_size=received.stat().st_size)
        if problem is not None:
            raise PacsError(f"instance {self.uid(sop_uid)} arrived damaged ({problem})")
        target = self.target(ref, sop_uid)
        if self.deid is None and getattr(ds, "preamble", None) and "TransferSyntaxUID" in ds.file_meta:
            os.replace(received, target)
            return sop_uid, target.stat().st_size
        if self.deid is not None:
            with self._lock:
                seen = self._originals.setdefault(ref.series_uid, {"uids": set(), "attrs": None})
                found = originals_of(ds, with_attrs=seen["attrs"] is None)  # the attributes of one instance are kept
                seen["uids"].update(found["uids"])
                seen["attrs"] = seen["attrs"] or found["attrs"]
            if str(ds.get("BurnedInAnnotation", "")).upper() == "YES" and not self.deid.allow_burned_in_annotation:
                raise ScalpelError(f"instance {self.uid(sop_uid)} is flagged BurnedInAnnotation=YES: its pixels carry text "
                                   "that may identify the patient; check the images and pass --allow-burned-in to pull them")
            deidentify_dataset(ds, self.deid, self.pseudonyms)
        # Written to a new temporary file and renamed into place, like an instance taken as received:
        # a half-written file is never the target. No fsync per instance (it cost more than the pull of
        # a slice): after a power loss a rerun finds a torn file by its integrity check (`have`) and pulls it again.
        written = self.temporary(ref, sop_uid)
        try:
            as_part10(ds).save_as(written, enforce_file_format=True)
            os.replace(written, target)
        finally:
            written.unlink(missing_ok=True)
        received.unlink(missing_ok=True)
        return sop_uid, target.stat().st_size

    def finish_series(self, ref: SeriesRef, listed: list[str]) -> None:
        """Seal the originals of a de-identified series (see :mod:`~scalpel.medical.pacs.originals`)."""
        if self.deid is None:
            return
        seen = self._originals.pop(ref.series_uid, {"uids": set(), "attrs": None})
        uids = seen["uids"] | set(listed) | {ref.study_uid, ref.series_uid}
        write_originals(self.out, self.deid.key, self.uid(ref.series_uid), uids, seen["attrs"])

    def _open_state(self) -> None:
        path = self.out / STATE_NAME
        settings = {"deidentified": self.deid is not None, "profile": self.deid.profile() if self.deid else None}
        if path.is_file():
            try:
                state = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                raise ScalpelError(f"{path} is damaged ({err}); pull into a new folder") from err
            same_key = self.deid is None or _key_check(self.pseudonyms.key, bytes.fromhex(state.get("key_salt", ""))) == state.get("key_check")
            if state.get("version") != _STATE_VERSION or state.get("settings") != settings or not same_key:
                raise ScalpelError(f"{self.out} holds a pull made with other de-identification settings or another key; "
                                   "give the same --deid options and key file to continue it, or pull into a new folder")
            return
        if self.out.exists() and any(self.out.iterdir()):
            raise ScalpelError(f"{self.out} is not empty and holds no `scalpel dicom pull`; pull into a new or empty folder")
        salt = secrets.token_bytes(16)
        state = {"version": _STATE_VERSION, "settings": settings, "key_salt": salt.hex(),
                 "key_check": _key_check(self.pseudonyms.key, salt) if self.pseudonyms else ""}
        with atomic_write(path, "w") as handle:
            json.dump(state, handle, indent=2)


def as_part10(ds: Dataset) -> Dataset:
    """``ds`` made ready to be written as a DICOM Part 10 file: a 128-byte preamble and a complete
    file meta group (SOP class and instance, transfer syntax), whatever it was read from.

    Some archives store exactly the bytes they receive, and a data set sent without the preamble
    comes back from them unreadable to most tools.
    """
    meta = getattr(ds, "file_meta", None) or pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta = meta
    if not getattr(ds, "preamble", None):
        ds.preamble = b"\x00" * 128
    return ds


def part10_bytes(ds: Dataset) -> bytes:
    """``ds`` as a DICOM Part 10 file in memory (see :func:`as_part10`)."""
    buffer = io.BytesIO()
    as_part10(ds).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
