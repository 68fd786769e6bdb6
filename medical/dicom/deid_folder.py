"""De-identify a folder of DICOM files into a new folder, with a CSV audit log.

Guarantees: the input is never written to (the output may not be the input, inside it or
around it); each output file is written to a temporary name and renamed when complete, so
an interrupted run leaves no half-written file; output paths are built from pseudonyms and
new UIDs only (``<patient pseudonym>/<study UID>/<series UID>/<SOP UID>.dcm``), never from
input names, which often hold patient names. The audit log lists, per file, each attribute
changed and how - never a value - and is written beside the output folder, not inside it,
because it links input paths to outputs.
"""

from __future__ import annotations

import csv
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from threading import Lock
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from scalpel.core.errors import DataError, ScalpelError
from scalpel.core.files import atomic_write
from scalpel.medical.dicom.deid import Change, DeidOptions, Pseudonyms, _identifying_strings, deidentify_dataset
from scalpel.medical.dicom.scan import DICOMDIR_SOP_CLASS

AUDIT_COLUMNS = ("input", "output", "status", "tag", "keyword", "action")


class BurnedInAnnotationError(DataError):
    """A file says its pixels carry burned-in text (BurnedInAnnotation=YES)."""


@dataclass
class DeidReport:
    """What a de-identification run did."""

    input_dir: Path
    output_dir: Path
    audit_log: Path
    written: list[Path] = field(default_factory=list)  # output files
    refused: list[tuple[str, str]] = field(default_factory=list)  # (input, reason)
    errors: list[tuple[str, str]] = field(default_factory=list)
    non_dicom: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # DICOMDIR, duplicates

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": str(self.input_dir),
            "output": str(self.output_dir),
            "audit_log": str(self.audit_log),
            "written": len(self.written),
            "refused": self.refused,
            "errors": self.errors,
            "non_dicom_skipped": self.non_dicom,
            "skipped": self.skipped,
        }


def deidentify_folder(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    options: DeidOptions | None = None,
    audit_log: str | os.PathLike | None = None,
) -> DeidReport:
    """De-identify every DICOM file under ``input_dir`` into ``output_dir`` (which must be new or empty).

    Args:
        input_dir: folder read recursively; never modified.
        output_dir: where de-identified files go; must not overlap ``input_dir``.
        options: profile options; see :class:`DeidOptions`.
        audit_log: CSV path; default ``<output_dir>-deid-audit.csv`` beside the output folder.

    Returns:
        A :class:`DeidReport`. One bad file is recorded and skipped unless ``options.strict``.
    """
    options = options or DeidOptions()
    src, dst = Path(input_dir).resolve(), Path(output_dir).resolve()
    _check_folders(src, dst)
    log = Path(audit_log) if audit_log else dst.parent / f"{dst.name}-deid-audit.csv"
    if log.resolve().is_relative_to(src):
        raise ScalpelError(f"the audit log {log} would be written inside the input folder {src}; choose another path")
    report = DeidReport(src, dst, log)
    pseudonyms = Pseudonyms(options.key, options.max_date_shift_days)
    files = sorted(p for p in src.rglob("*") if p.is_file()) if src.is_dir() else [src]
    rows: list[tuple[str, ...]] = []
    lock = Lock()
    reserved: set[Path] = set()

    def one(numbered: tuple[int, Path]) -> None:
        n, path = numbered
        status, label, out, changes = _one_file(path, src, dst, n, options, pseudonyms, lock, reserved)
        with lock:
            if status == "written":
                report.written.append(dst / out)
            elif status == "refused":
                report.refused.append((label, changes))
            elif status == "non-dicom":
                report.non_dicom += 1
            elif status == "skipped":
                report.skipped.append((label, changes))
            else:
                report.errors.append((label, changes))
            if isinstance(changes, list):
                rows.extend((label, out, status, c.tag, c.keyword, c.action) for c in changes)
            elif status != "non-dicom":
                rows.append((label, out, status, "", "", changes))

    dst.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=options.workers or min(8, max(1, len(files)))) as pool:
        for _ in pool.map(one, enumerate(files)):
            pass
    _write_audit(log, rows)
    return report


def _check_folders(src: Path, dst: Path) -> None:
    if not src.exists():
        raise ScalpelError(f"input {src} does not exist; give the folder of DICOM files to de-identify")
    if dst == src or dst.is_relative_to(src) or src.is_relative_to(dst):
        raise ScalpelError(
            f"output {dst} overlaps input {src}; de-identification never writes into or over its input, choose a separate output folder"
        )
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ScalpelError(f"output {dst} already exists and is not empty; choose a new folder so no earlier result is mixed in")


def _one_file(
    path: Path, src: Path, dst: Path, n: int, options: DeidOptions, pseudonyms: Pseudonyms, lock: Lock, reserved: set[Path]
):
    label = f"#{n}"
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        return "non-dicom", label, "", "not a DICOM file"
    except (OSError, EOFError, ValueError, KeyError, TypeError) as err:
        if options.strict:
            raise DataError(f"{path}: not a readable DICOM file ({err}); it may be truncated") from err
        return "error", _safe_label(path, src, n, []), "", f"unreadable ({type(err).__name__})"
    label = _safe_label(path, src, n, _identifying_strings(ds))
    sop_class = str(ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID", ""))
    if sop_class == DICOMDIR_SOP_CLASS:
        return "skipped", label, "", "DICOMDIR index (rebuild it for the output if needed)"
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES" and not options.allow_burned_in_annotation:
        reason = "BurnedInAnnotation=YES: the pixels carry text that may identify the patient; pixel redaction is not supported"
        if options.strict:
            raise BurnedInAnnotationError(f"{path}: {reason}; check the images and pass allow_burned_in_annotation (--allow-burned-in) to process them")
        return "refused", label, "", reason
    try:
        changes: list[Change] = deidentify_dataset(ds, options, pseudonyms)
        out = _output_name(ds, n)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
    except (ValueError, TypeError, AttributeError, KeyError, OverflowError) as err:
        if options.strict:
            raise DataError(f"{path}: cannot be de-identified ({type(err).__name__}: {err})") from err
        return "error", label, "", f"cannot be de-identified ({type(err).__name__})"
    target = dst / out
    with lock:  # reserve the name in memory: a placeholder on disk could outlive an interrupted run
        if target.exists() or target in reserved:
            return "skipped", label, "", "duplicate SOPInstanceUID: already written from another file"
        reserved.add(target)
    with atomic_write(target) as handle:
        handle.write(buffer.getvalue())
    return "written", label, out, changes


def _output_name(ds: pydicom.Dataset, n: int) -> str:
    parts = [str(ds.get("PatientID", "") or "UNKNOWN"), str(ds.get("StudyInstanceUID", "") or "no-study"),
             str(ds.get("SeriesInstanceUID", "") or "no-series")]
    name = str(ds.get("SOPInstanceUID", "") or f"instance-{n}")
    return "/".join(parts + [f"{name}.dcm"])


def _safe_label(path: Path, src: Path, n: int, identifying: list[str]) -> str:
    """The input path relative to the input folder, unless it contains identifying text."""
    relative = str(path.relative_to(src)) if path != src else path.name
    lowered = relative.lower()
    if any(len(s) >= 3 and s.lower() in lowered for s in identifying):
        return f"#{n} (name withheld: it contains identifying text)"
    return relative


def _write_audit(log: Path, rows: list[tuple[str, ...]]) -> None:
    with atomic_write(log, "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(AUDIT_COLUMNS)
        writer.writerows(sorted(rows))
