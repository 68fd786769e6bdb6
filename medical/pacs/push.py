"""Push DICOM files (a SEG that ``predict`` wrote, a folder of them) to a PACS: STOW-RS, idempotent.

Before sending, the PACS is asked which instances of each series it holds already; those are not
sent again, so a re-push (after an interruption, or by mistake) does no harm and no duplicate.
Every file goes out as a Part 10 file with its preamble (see ``sink.as_part10``), at most
``batch`` instances per request, so memory stays bounded whatever the folder holds.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from scalpel.core.errors import DataError
from scalpel.medical.dicom.reading import not_dicom_reason, read_dicom
from scalpel.medical.pacs.sink import as_part10


class PushTarget(Protocol):
    def instance_uids(self, study_uid: str, series_uid: str) -> list[str]: ...
    def store(self, datasets: Iterable[Dataset], what: str = ...) -> None: ...


@dataclass
class PushReport:
    files: int = 0
    sent: int = 0
    already_on_pacs: int = 0
    series: list[str] = field(default_factory=list)  # Series Instance UIDs pushed to

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def dicom_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The files named, and every file under the folders named (hidden files left out)."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(p for p in sorted(path.rglob("*")) if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
        elif path.is_file():
            found.append(path)
        else:
            raise DataError(f"{path} does not exist; give DICOM files or folders to push")
    if not found:
        raise DataError("nothing to push: the folders given hold no files")
    return found


def push(pacs: PushTarget, paths: Iterable[str | os.PathLike], *, batch: int = 16) -> PushReport:
    """Store every DICOM file under ``paths`` on the PACS that it does not hold yet."""
    return push_datasets(pacs, (_read(path) for path in dicom_files(paths)), batch=batch)


def push_datasets(pacs: PushTarget, datasets: Iterable[Dataset], *, batch: int = 16) -> PushReport:
    """Store the data sets the PACS does not hold yet (read one by one: ``datasets`` may be a generator)."""
    report = PushReport()
    on_pacs: dict[tuple[str, str], set[str]] = {}
    pending: list[Dataset] = []
    for ds in datasets:
        report.files += 1
        key = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))
        if key not in on_pacs:
            on_pacs[key] = set(pacs.instance_uids(*key))
            report.series.append(key[1])
        if str(ds.SOPInstanceUID) in on_pacs[key]:
            report.already_on_pacs += 1
            continue
        pending.append(as_part10(ds))
        on_pacs[key].add(str(ds.SOPInstanceUID))
        if len(pending) >= batch:
            _send(pacs, pending, report)
    _send(pacs, pending, report)
    return report


def _read(path: Path) -> Dataset:
    try:
        ds = read_dicom(path)
    except InvalidDicomError as err:
        raise DataError(f"{path} cannot be pushed: {not_dicom_reason(path)}") from err
    missing = [k for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID") if not ds.get(k)]
    if missing:
        raise DataError(f"{path} cannot be pushed: it has no {', '.join(missing)}; a PACS files instances by these UIDs")
    return ds


def _send(pacs: PushTarget, pending: list[Dataset], report: PushReport) -> None:
    if pending:
        pacs.store(pending, what=f"STOW-RS of {len(pending)} instance(s)")
        report.sent += len(pending)
        pending.clear()
