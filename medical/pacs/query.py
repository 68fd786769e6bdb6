"""What to pull: a search over patients, studies and series, and the series it finds.

    query = PacsQuery(patient_id="PID-1", modality="CT", date_from="20200101", date_to="20201231")
    query.filters()   # {"PatientID": "PID-1", "Modality": "CT", "StudyDate": "20200101-20201231"}

Dates are DICOM ``YYYYMMDD``; a range is inclusive (PS3.4 C.2.2.2.5). The same query drives a
QIDO-RS search (DICOMweb) and a C-FIND (DIMSE).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

from scalpel.core.errors import ConfigError

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_DATE = re.compile(r"^\d{8}$")


@dataclass(frozen=True)
class PacsQuery:
    """Series to find; every field given must match (empty fields match anything)."""

    patient_id: str = ""
    study_uid: str = ""
    series_uid: str = ""
    modality: str = ""
    date_from: str = ""
    """First study date, ``YYYYMMDD`` (inclusive)."""
    date_to: str = ""
    """Last study date, ``YYYYMMDD`` (inclusive)."""
    accession: str = ""

    def __post_init__(self) -> None:
        problems = []
        if not any(getattr(self, f.name) for f in fields(self)):
            problems.append("the query is empty and would pull the whole PACS; give at least one of patient, study, "
                            "series, modality, dates or accession")
        for name in ("study_uid", "series_uid"):
            value = getattr(self, name)
            if value and not _UID.match(value):
                problems.append(f"{name} {value!r} is not a DICOM UID (digits and dots, e.g. 1.2.840.113619.2.55)")
        for name in ("date_from", "date_to"):
            value = getattr(self, name)
            if value and not _DATE.match(value):
                problems.append(f"{name} {value!r} is not a DICOM date YYYYMMDD (e.g. 20240131)")
        if _DATE.match(self.date_from) and _DATE.match(self.date_to) and self.date_from > self.date_to:
            problems.append(f"date_from {self.date_from} is after date_to {self.date_to}")
        if problems:
            raise ConfigError("PACS query", problems)

    def filters(self) -> dict[str, str]:
        """DICOM keyword -> matching value, as QIDO-RS and C-FIND take them."""
        out = {"PatientID": self.patient_id, "StudyInstanceUID": self.study_uid, "SeriesInstanceUID": self.series_uid,
               "Modality": self.modality, "AccessionNumber": self.accession}
        if self.date_from or self.date_to:
            out["StudyDate"] = f"{self.date_from}-{self.date_to}" if self.date_from != self.date_to else self.date_from
        return {k: v for k, v in out.items() if v}


@dataclass(frozen=True)
class SeriesRef:
    """One series found on the PACS."""

    study_uid: str
    series_uid: str
    modality: str = ""
    description: str = ""
    patient_id: str = ""
    study_date: str = ""
    instances: int | None = None
    """NumberOfSeriesRelatedInstances as the PACS reported it (None when it did not)."""

    @classmethod
    def from_json(cls, item: dict) -> SeriesRef:
        """From a QIDO-RS result (DICOM JSON, PS3.18 F.2)."""
        count = json_value(item, "00201209")
        return cls(study_uid=json_value(item, "0020000D"), series_uid=json_value(item, "0020000E"),
                   modality=json_value(item, "00080060"), description=json_value(item, "0008103E"),
                   patient_id=json_value(item, "00100020"), study_date=json_value(item, "00080020"),
                   instances=int(count) if str(count).strip().isdigit() else None)

    def to_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def json_value(item: dict, tag: str) -> str:
    """The first value of ``tag`` in a DICOM JSON object, as text ('' when absent)."""
    values = (item.get(tag) or {}).get("Value") or [""]
    value = values[0]
    if isinstance(value, dict):  # person names: {"Alphabetic": ...}
        value = value.get("Alphabetic", "")
    return str(value)
