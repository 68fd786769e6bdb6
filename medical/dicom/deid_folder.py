"""De-identify a folder of DICOM files into a new folder, with a CSV audit log.

Guarantees:

- The input is never written to (the output may not be the input, inside it or around it).
- Output paths are built from pseudonyms and new UIDs only (``<patient pseudonym>/<study
  UID>/<series UID>/<SOP UID>.dcm``), never from input names, which often hold patient names.
- A damaged file is never written: pixel data shorter than its image, compressed pixel data
  whose fragments do not parse or whose first frame does not decode, an image header without
  pixel data. Every file not written is named in the report and the audit log with a short
  reason; names that contain identifying text are withheld.
- Each output file is written to a hidden temporary name and renamed when complete, and the
  audit log gets each file's rows once the file is in place, so a killed run leaves only whole
  files and a valid log of what it did. Run again with the same key and options, it goes on
  where it stopped: files already written are kept, temporary files removed, and the log is
  appended to. Which key (a salted hash, never the key) and options a run used is kept in a
  state file beside the log.
- The audit log lists, per file, each attribute changed and how - never a value - and is
  written beside the output folder, not inside it, because it links input paths to outputs.
"""

from __future__ import annotations

import csv
import io
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from threading import Lock
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from scalpel.core.errors import DataError, ScalpelError
from scalpel.medical.dicom.deid import Change, DeidOptions, Pseudonyms, _identifying_strings, deidentify_dataset
from scalpel.medical.dicom.reading import integrity_problem, not_dicom_reason, read_dicom
from scalpel.medical.dicom.scan import DICOMDIR_SOP_CLASS
from scalpel.medical.dicom.deid_state import (  # noqa: F401  (ResumeError, atomic_write: part of this module's API)
    ResumeError,
    _mark_finished,
    _prepare_output,
    _state_path,
    atomic_write,
)

AUDIT_COLUMNS = ("input", "output", "status", "tag", "keyword", "action")
#: Version of the state file beside the audit log; another version cannot be continued.
#: PBKDF2 rounds of the key check in the state file: slow to guess a weak key from it.
#: What reading a damaged file can raise (struct.error: a length field that runs past the end).
_READ_ERRORS = (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, IndexError, struct.error)


class BurnedInAnnotationError(DataError):
    """A file says its pixels carry burned-in text (BurnedInAnnotation=YES)."""


class NothingDeidentifiedError(DataError):
    """No file of the input could be de-identified."""


@dataclass
class DeidReport:
    """What a de-identification run did."""

    input_dir: Path
    output_dir: Path
    audit_log: Path
    written: list[Path] = field(default_factory=list)  # output files written by this run
    kept: list[Path] = field(default_factory=list)  # written by an interrupted earlier run, kept as they are
    refused: list[tuple[str, str]] = field(default_factory=list)  # (input, reason)
    errors: list[tuple[str, str]] = field(default_factory=list)  # damaged or unreadable (input, reason)
    non_dicom: int = 0  # how many of ``skipped`` are not DICOM
    skipped: list[tuple[str, str]] = field(default_factory=list)  # not DICOM, DICOMDIR, duplicates (input, reason)

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": str(self.input_dir),
            "output": str(self.output_dir),
            "audit_log": str(self.audit_log),
            "written": len(self.written),
            "kept_from_earlier_run": len(self.kept),
            "refused": self.refused,
            "errors": self.errors,
            "non_dicom_skipped": self.non_dicom,
            "skipped": self.skipped,
        }

    def nothing_done(self) -> bool:
        """True when the output holds no de-identified file from this input."""
        return not self.written and not self.kept

    def summary(self) -> str:
        counts = ((len(self.skipped), "skipped"), (len(self.refused), "refused"), (len(self.errors), "with errors"))
        return ", ".join(f"{n} {what}" for n, what in counts if n) or "no files found"


def deidentify_folder(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    options: DeidOptions | None = None,
    audit_log: str | os.PathLike | None = None,
) -> DeidReport:
    """De-identify every DICOM file under ``input_dir`` into ``output_dir``.

    Args:
        input_dir: folder read recursively; never modified.
        output_dir: where de-identified files go; must not overlap ``input_dir``. It must be new
            or empty, or hold an interrupted run of the same input with the same key and options,
            which is then continued.
        options: profile options; see :class:`DeidOptions`.
        audit_log: CSV path; default ``<output_dir>-deid-audit.csv`` beside the output folder.

    Returns:
        A :class:`DeidReport`. One bad file is recorded and skipped unless ``options.strict``.

    Raises:
        ResumeError: ``output_dir`` holds a run made with another key, options or input.
    """
    options = options or DeidOptions()
    src, dst = Path(input_dir).resolve(), Path(output_dir).resolve()
    _check_folders(src, dst)
    log = Path(audit_log) if audit_log else dst.parent / f"{dst.name}-deid-audit.csv"
    _check_log(log, src, dst)
    pseudonyms = Pseudonyms(options.key, options.max_date_shift_days)
    state_path = _state_path(log)
    resuming = _prepare_output(src, dst, state_path, options, pseudonyms)
    run = _Run(src, dst, options, pseudonyms, DeidReport(src, dst, log), _AuditLog(log, fresh=not resuming))
    files = sorted(p for p in src.rglob("*") if p.is_file()) if src.is_dir() else [src]
    with ThreadPoolExecutor(max_workers=options.workers or min(8, max(1, len(files)))) as pool:
        for _ in pool.map(run.one, enumerate(files)):
            pass
    run.finish()
    _mark_finished(state_path, True)
    return run.report


def _check_folders(src: Path, dst: Path) -> None:
    if not src.exists():
        raise ScalpelError(f"input {src} does not exist; give the folder of DICOM files to de-identify")
    if dst == src or dst.is_relative_to(src) or src.is_relative_to(dst):
        raise ScalpelError(
            f"output {dst} overlaps input {src}; de-identification never writes into or over its input, choose a separate output folder"
        )
    if dst.exists() and not dst.is_dir():
        raise ScalpelError(f"output {dst} is a file; give a new folder")


def _check_log(log: Path, src: Path, dst: Path) -> None:
    where = log.resolve()
    if where.is_relative_to(src):
        raise ScalpelError(f"the audit log {log} would be written inside the input folder {src}; choose another path")
    if where.is_relative_to(dst):
        raise ScalpelError(f"the audit log {log} would be written inside the output folder {dst}; it links inputs to "
                           "pseudonyms, so it must not travel with the data: choose a path outside it")


class _Run:
    """One pass over the input: files are processed on threads, their outcomes recorded one by one."""

    def __init__(self, src: Path, dst: Path, options: DeidOptions, pseudonyms: Pseudonyms, report: DeidReport, audit: _AuditLog):
        self.src, self.dst, self.options, self.pseudonyms = src, dst, options, pseudonyms
        self.report, self.audit = report, audit
        self.lock = Lock()
        # Names are reserved in memory: a placeholder on disk could outlive an interrupted run.
        self.reserved: set[Path] = set()
        self.identifying: set[str] = set()  # every file's identifying text, to vet the names of unreadable files
        self.unread: list[tuple[Path, int, _Outcome]] = []

    def one(self, numbered: tuple[int, Path]) -> None:
        n, path = numbered
        outcome = self._process(path)
        if outcome.identifying is None:  # named at the end, against the identifying text of the whole run
            with self.lock:
                self.unread.append((path, n, outcome))
            return
        with self.lock:
            self.identifying.update(outcome.identifying)
        self._record(_safe_label(path, self.src, n, outcome.identifying), outcome)

    def finish(self) -> None:
        known = sorted(self.identifying, key=len, reverse=True)
        for path, n, outcome in sorted(self.unread, key=lambda item: item[1]):
            self._record(_safe_label(path, self.src, n, known), outcome)

    def _process(self, path: Path) -> _Outcome:
        try:
            ds = read_dicom(path)
        except InvalidDicomError:
            return _Outcome("non-dicom", not_dicom_reason(path))
        except _READ_ERRORS as err:
            if self.options.strict:
                raise DataError(f"{path}: not a readable DICOM file ({err}); it may be truncated, copy it again") from err
            return _Outcome("error", f"not a readable DICOM file ({type(err).__name__}); it may be truncated, copy it again")
        identifying = _identifying_strings(ds)
        blocked = self._blocked(path, ds)
        if blocked is not None:
            return _Outcome(*blocked, identifying=identifying)
        try:
            changes = deidentify_dataset(ds, self.options, self.pseudonyms)
            out = _output_name(ds)
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
        except (ValueError, TypeError, AttributeError, KeyError, OverflowError) as err:
            if self.options.strict:
                raise DataError(f"{path}: cannot be de-identified ({type(err).__name__}: {err})") from err
            # The exception's text can quote a header value, so only its kind goes to the log.
            reason = f"cannot be de-identified: pydicom raised {type(err).__name__} on its header (run with --strict to see the details)"
            return _Outcome("error", reason, identifying=identifying)
        return self._store(out, buffer.getvalue(), changes, identifying)

    def _blocked(self, path: Path, ds: pydicom.Dataset) -> tuple[str, str] | None:
        """(status, reason) when the file must not be de-identified, else None."""
        meta = getattr(ds, "file_meta", None) or {}
        if str(ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID", "")) == DICOMDIR_SOP_CLASS:
            return "skipped", "DICOMDIR index (rebuild it for the output if needed)"
        problem = integrity_problem(ds, file_size=path.stat().st_size, decode=True)
        if problem is None and not (ds.get("SOPInstanceUID") or meta.get("MediaStorageSOPInstanceUID")):
            problem = "no SOP Instance UID in the data set or its file meta, so it cannot be stored as a DICOM instance; export it again"
        if problem is not None:
            if self.options.strict:
                raise DataError(f"{path}: {problem}")
            return "error", problem
        if str(ds.get("BurnedInAnnotation", "")).upper() == "YES" and not self.options.allow_burned_in_annotation:
            reason = "BurnedInAnnotation=YES: the pixels carry text that may identify the patient; pixel redaction is not supported"
            if self.options.strict:
                raise BurnedInAnnotationError(f"{path}: {reason}; check the images and pass allow_burned_in_annotation (--allow-burned-in) to process them")
            return "refused", reason
        return None

    def _store(self, out: str, data: bytes, changes: list[Change], identifying: list[str]) -> _Outcome:
        target = self.dst / out
        with self.lock:
            if target in self.reserved:
                return _Outcome("skipped", "duplicate SOPInstanceUID: already written from another file", identifying=identifying)
            self.reserved.add(target)
        if target.exists():  # only when continuing: renamed into place, so whole, by the interrupted run
            return _Outcome("kept", output=out, changes=changes, identifying=identifying)
        with atomic_write(target) as handle:
            handle.write(data)
        return _Outcome("written", output=out, changes=changes, identifying=identifying)

    def _record(self, label: str, outcome: _Outcome) -> None:
        report = self.report
        with self.lock:
            if outcome.status in ("written", "kept"):
                (report.written if outcome.status == "written" else report.kept).append(self.dst / outcome.output)
            elif outcome.status == "refused":
                report.refused.append((label, outcome.reason))
            elif outcome.status == "error":
                report.errors.append((label, outcome.reason))
            else:
                report.skipped.append((label, outcome.reason))
                if outcome.status == "non-dicom":
                    report.non_dicom += 1
        if outcome.status in ("written", "kept"):
            self.audit.append([(label, outcome.output, "written", c.tag, c.keyword, c.action) for c in outcome.changes])
        else:
            status = "skipped" if outcome.status == "non-dicom" else outcome.status
            self.audit.append([(label, "", status, "", "", outcome.reason)])


@dataclass
class _Outcome:
    status: str  # written, kept, refused, skipped, error, non-dicom
    reason: str = ""
    output: str = ""
    changes: list[Change] = field(default_factory=list)
    #: The file's identifying text; None when it could not be read, so its name is vetted at the end.
    identifying: list[str] | None = None


class _AuditLog:
    """The CSV audit log, appended one file at a time, so a killed run leaves a valid log of what it did.

    A file already in the log is not logged again: a continued run recomputes the rows of the
    files the interrupted one finished, and adds only those it had not logged yet. A file's rows
    go out in one write, so (input, output, status) of its first row stands for all of them.
    """

    def __init__(self, path: Path, fresh: bool):
        self.path = path
        self.lock = Lock()
        self.logged: set[tuple[str, ...]] = set()  # (input, output, status) of each file logged
        if fresh or not path.exists():
            with atomic_write(path) as handle:
                handle.write(_csv_bytes([AUDIT_COLUMNS]))
        else:
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        rows = list(csv.reader(io.StringIO(data[: data.rfind(b"\n") + 1].decode("utf-8"), newline="")))
        if not rows or tuple(rows[0]) != AUDIT_COLUMNS:
            raise ResumeError(f"{self.path} is not an audit log of `scalpel dicom deid` (its first line is not "
                              f"{','.join(AUDIT_COLUMNS)}); give the log of the interrupted run with --audit-log")
        if not data.endswith(b"\n"):  # cut in the middle of a file's rows: drop them all, that file is logged again
            last = tuple(rows[-1][:3])
            while len(rows) > 1 and tuple(rows[-1][:3]) == last:
                rows.pop()
            with atomic_write(self.path) as handle:
                handle.write(_csv_bytes(rows))
        self.logged = {tuple(row[:3]) for row in rows[1:]}

    def append(self, rows: list[tuple[str, ...]]) -> None:
        """Log the rows of one file, unless that file is in the log already."""
        with self.lock:
            if not rows or tuple(rows[0][:3]) in self.logged:
                return
            with self.path.open("ab") as handle:
                handle.write(_csv_bytes(rows))  # one write per file: a kill cuts at most its last line
                handle.flush()
                os.fsync(handle.fileno())
            self.logged.add(tuple(rows[0][:3]))


def _csv_bytes(rows: list[tuple[str, ...]]) -> bytes:
    text = io.StringIO()
    csv.writer(text).writerows(rows)
    return text.getvalue().encode("utf-8")


def _output_name(ds: pydicom.Dataset) -> str:
    parts = [str(ds.get("PatientID", "") or "UNKNOWN"), str(ds.get("StudyInstanceUID", "") or "no-study"),
             str(ds.get("SeriesInstanceUID", "") or "no-series")]
    # The rebuilt file meta holds the (new) instance UID also when the data set has none.
    name = str(ds.get("SOPInstanceUID", "") or ds.file_meta.MediaStorageSOPInstanceUID)
    return "/".join(parts + [f"{name}.dcm"])


def _safe_label(path: Path, src: Path, n: int, identifying: list[str]) -> str:
    """The input path relative to the input folder, unless it contains identifying text."""
    relative = str(path.relative_to(src)) if path != src else path.name
    lowered = relative.lower()
    if any(len(s) >= 3 and s.lower() in lowered for s in identifying):
        return f"#{n} (name withheld: it contains identifying text)"
    return relative
