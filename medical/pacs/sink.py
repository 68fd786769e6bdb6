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
from typing import NamedTuple

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.utils import get_expected_length

from scalpel.core.errors import ScalpelError
from scalpel.core.files import atomic_write
from scalpel.medical.dicom.deid import DeidOptions, Pseudonyms, deidentify_dataset
from scalpel.medical.dicom.deid_state import _key_check
from scalpel.medical.dicom.deid_stream import StreamDeidentifier
from scalpel.medical.dicom.deid_walk import PIXEL_DATA, Part10Instance
from scalpel.medical.dicom.reading import integrity_problem
from scalpel.medical.pacs.errors import NotDicomAnswerError, PacsError, SeriesChangedError
from scalpel.medical.pacs.originals import RESTORED, originals_of, write_originals
from scalpel.medical.pacs.query import SeriesRef

STATE_NAME = ".scalpel-pull.json"
_READ_ERRORS = (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, IndexError, struct.error)
_STATE_VERSION = 1


def _tags(*keywords: str) -> frozenset[int]:
    return frozenset(tag_for_keyword(k) for k in keywords)


#: What the pixel data's expected length depends on.
_DESCRIPTION = _tags("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "NumberOfFrames", "PhotometricInterpretation")
_ORIGINAL_UIDS = _tags("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID")
_BURNED_IN = tag_for_keyword("BurnedInAnnotation")
#: What the checks of a received instance read (and, de-identified, the originals kept for a SEG).
_CHECKED = _DESCRIPTION | _ORIGINAL_UIDS | {_BURNED_IN} | _tags("SOPClassUID", "Modality", "PixelData", "SpecificCharacterSet", *RESTORED)
_IOV_MAX = 1024  # pieces one writev takes (Linux and macOS)
_WRITEV = hasattr(os, "writev")  # POSIX; elsewhere one write per piece
_SOP_INSTANCE, _SERIES = tag_for_keyword("SOPInstanceUID"), tag_for_keyword("SeriesInstanceUID")


class PreparedInstance(NamedTuple):
    """An instance checked (and de-identified) in memory, to be written to ``target``."""

    sop_uid: str  # the original one
    target: Path
    pieces: list  # bytes and memoryviews, written one after the other
    path: Path | None  # the file it was received in, consumed
    move: bool = False  # the received file is renamed into place as it is


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
        self._deidentifier = StreamDeidentifier(deid, self.pseudonyms) if deid is not None else None
        self._originals: dict[str, dict] = {}  # original series UID -> originals seen this run (de-identified pulls)
        self._lock = threading.Lock()
        self._made: set[Path] = set()
        self._expected: dict[tuple, int] = {}  # image description (element bytes) -> pixel data bytes it asks for
        self._placed: set[Path] = set()  # checked in memory and written by this run: whole on disk
        self._numbers = itertools.count()  # names for temporary files (next() on a count is atomic)
        self._pid = os.getpid()
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
        if target in self._placed:  # checked in memory before this run wrote it
            return target.is_file()
        if not target.is_file():
            return False
        try:
            data = target.read_bytes()
            instance = Part10Instance.parse(data)  # a torn file is not walked: pydicom then says what is wrong
            if instance is not None:
                whole = self._pixel_problem(instance) is None
            else:
                whole = integrity_problem(pydicom.dcmread(io.BytesIO(data)), file_size=len(data)) is None
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
        return folder / f".{self.uid(sop_uid) if sop_uid else 'instance'}.{self._pid}-{next(self._numbers)}.tmp"

    def accept(self, received: Path | bytes | bytearray, ref: SeriesRef, expected: Collection[str] | None) -> tuple[str, int]:
        """Check the instance ``received`` (a file, consumed, or its bytes) is one of the instances
        ``expected`` (original SOP UIDs; None: any instance of the series) and whole, de-identify it when
        asked, and put it in place; its SOP UID and the bytes now on disk.

        Without de-identification a Part 10 instance goes to disk as received (the PACS's bytes, never
        re-encoded). With it, the profile is applied in memory and only the result written: on the
        bytes (:mod:`~scalpel.medical.dicom.deid_stream`: only the elements the profile changes are
        encoded again) for explicit VR little endian, by pydicom on the whole instance otherwise. The
        checks read only the elements they need; the pixel data is never decoded nor copied.
        """
        return self.store(ref, self.prepare(received, ref, expected))

    def prepare(self, received: Path | bytes | bytearray, ref: SeriesRef, expected: Collection[str] | None) -> PreparedInstance:
        """What :meth:`accept` does in memory (checks, de-identification), nothing written yet: a pull
        does it in the receiving thread, and leaves :meth:`store`, which waits on the file system, to
        worker threads (Python work spread over threads would wait on the interpreter lock instead)."""
        path = received if isinstance(received, Path) else None
        data = path.read_bytes() if path is not None else received
        instance = Part10Instance.parse(data)
        ds = None if instance is not None else _read(data)
        if instance is not None:
            sop_uid, series_uid = instance.uid(_SOP_INSTANCE), instance.uid(_SERIES)
        else:
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
        problem = self._pixel_problem(instance) if instance is not None else integrity_problem(ds, file_size=len(data))
        if problem is not None:
            raise PacsError(f"instance {self.uid(sop_uid)} arrived damaged ({problem})")
        target = self.target(ref, sop_uid)
        if self.deid is None:
            if instance is None and not (getattr(ds, "preamble", None) and "TransferSyntaxUID" in ds.file_meta):
                return PreparedInstance(sop_uid, target, [part10_bytes(ds)], path)  # never without a preamble
            return PreparedInstance(sop_uid, target, [data], path, move=path is not None)
        with self._lock:
            seen = self._originals.setdefault(ref.series_uid, {"uids": set(), "attrs": None})
            first = seen["attrs"] is None  # the attributes of one instance are kept
        uids = None
        if instance is not None:  # UIDs from the bytes; the attributes (once) and the flag (when there) by pydicom
            ds = instance.dataset(_CHECKED) if first or instance.find(_BURNED_IN) else Dataset()
            uids = [u for u in map(instance.uid, _ORIGINAL_UIDS) if u]
        found = originals_of(ds, with_attrs=first)
        with self._lock:
            seen["uids"].update(found["uids"] if uids is None else uids)
            seen["attrs"] = seen["attrs"] or found["attrs"]
        if str(ds.get("BurnedInAnnotation", "")).upper() == "YES" and not self.deid.allow_burned_in_annotation:
            raise ScalpelError(f"instance {self.uid(sop_uid)} is flagged BurnedInAnnotation=YES: its pixels carry text "
                               "that may identify the patient; check the images and pass --allow-burned-in to pull them")
        if instance is not None:
            return PreparedInstance(sop_uid, target, self._deidentifier.pieces(instance), path)
        deidentify_dataset(ds, self.deid, self.pseudonyms)
        return PreparedInstance(sop_uid, target, [part10_bytes(ds)], path)

    def store(self, ref: SeriesRef, prepared: PreparedInstance) -> tuple[str, int]:
        """Put a prepared instance in place (a received file consumed); its SOP UID and the bytes on disk."""
        if prepared.move:  # a file taken as received
            os.replace(prepared.path, prepared.target)
            self._placed.add(prepared.target)
            return prepared.sop_uid, sum(len(piece) for piece in prepared.pieces)
        size = self._write(ref, prepared.sop_uid, prepared.target, prepared.pieces)
        if prepared.path is not None:
            prepared.path.unlink(missing_ok=True)
        return prepared.sop_uid, size

    def _pixel_problem(self, instance: Part10Instance) -> str | None:
        """:func:`integrity_problem` of an instance in memory, reading only the pixel data's length: the
        length its image description asks for is worked out by pydicom once per description."""
        pixels = instance.find(PIXEL_DATA)
        if pixels is not None:
            description = tuple(instance.raw(e) for e in instance.elements if e.tag in _DESCRIPTION)
            expected = self._expected.get(description)
            if expected is None:
                try:
                    expected = get_expected_length(instance.dataset(_DESCRIPTION), unit="bytes")
                except (AttributeError, KeyError, TypeError, ValueError):
                    expected = -1  # integrity_problem says what is missing
                self._expected[description] = expected
            if 0 <= expected <= pixels.end - pixels.value_start:
                return None
        return integrity_problem(instance.dataset(_CHECKED), file_size=len(instance.data))

    def _write(self, ref: SeriesRef, sop_uid: str, target: Path, pieces: list) -> int:
        """Write ``pieces`` to a new temporary file and rename it to ``target``; the bytes written.

        A half-written file is never the target. No fsync per instance (it cost more than the pull of
        a slice): after a power loss a rerun finds a torn file by its integrity check (`have`) and pulls it again.
        """
        written = self.temporary(ref, sop_uid)
        views = [memoryview(piece).cast("B") for piece in pieces if len(piece)]
        size = sum(len(v) for v in views)
        try:
            fd = os.open(written, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                while views:  # one system call for all the pieces, however many (less if the kernel takes less)
                    done = os.writev(fd, views[:_IOV_MAX]) if _WRITEV else os.write(fd, views[0])
                    while views and done >= len(views[0]):
                        done -= len(views.pop(0))
                    if done:
                        views[0] = views[0][done:]
            finally:
                os.close(fd)
            os.replace(written, target)
        except BaseException:
            written.unlink(missing_ok=True)
            raise
        self._placed.add(target)
        return size

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


def _read(data: bytes | bytearray) -> Dataset:
    """An instance this module's byte walk does not handle, read whole by pydicom."""
    try:
        return pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, *_READ_ERRORS) as err:
        raise NotDicomAnswerError(f"the PACS answered with something that is not a readable DICOM file ({type(err).__name__}); "
                                  "check the URL and any proxy in between") from err


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
