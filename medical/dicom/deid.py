"""De-identification: the DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile.

Every attribute of Table E.1-1 (see :mod:`scalpel.medical.dicom.annex_e`) is removed,
emptied, replaced by a dummy or, for UIDs, replaced consistently, at every nesting
depth; private attributes are removed unless listed as safe. Options (PS3.15 E.3):

- ``retain_longitudinal_dates``: Retain Longitudinal Temporal Information with Modified
  Dates - dates are shifted by a whole number of days that is the same for every file of
  a patient (derived from the key and the patient ID), times are kept.
- ``retain_device_identity``: device serial numbers, station names, ... are kept.
- ``clean_descriptors``: descriptions and comments are kept with the patient's names, IDs,
  dates and long digit runs taken out (a text filter: review free text before release).

Dates and times are also found by their value representation: every DA, DT and TM element
the table does not name (``RTPlanDate``, ``ObservationDateTime``, ... at any depth) gets the
treatment of the named ones - emptied, or shifted with the patient's other dates under
``retain_longitudinal_dates`` - unless ``keep_date_attributes`` lists it.

Replacements are keyed by a secret (``key``; :mod:`~scalpel.medical.dicom.deid_keys`): one input
UID, patient or date always gives the same output under one key, so studies and series stay
grouped across runs; a missing or empty key file is refused, never replaced by a random key.

The file meta is rebuilt from the de-identified data set: no original UID or sender's name survives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date

import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from scalpel.core.config import raise_if_problems
from scalpel.medical.dicom.annex_e import (
    BASIC_PROFILE_TAGS,
    CLEAN_DESCRIPTORS,
    NOT_LONGITUDINAL,
    OPTION_CODES,
    RETAIN_DEVICE_IDENTITY,
    repeating_group_action,
    resolve,
)
from scalpel.medical.dicom.deid_keys import KeyFileError, Pseudonyms, read_key_file  # noqa: F401  (part of this module's API)
from scalpel.medical.dicom.deid_private import is_safe_private, parse_safe_private
from scalpel.medical.dicom.deid_raw import left_alone

#: Non-zero-length dummy values for the D action, by VR.
_DUMMY = {
    "PN": "ANONYMIZED", "LO": "ANONYMIZED", "SH": "ANONYMIZED", "LT": "ANONYMIZED", "ST": "ANONYMIZED",
    "UT": "ANONYMIZED", "UC": "ANONYMIZED", "CS": "ANONYMIZED", "AE": "ANONYMIZED", "DA": "19000101",
    "TM": "000000", "DT": "19000101000000", "AS": "000Y", "IS": "0", "DS": "0",
}
_NUMERIC_VRS = {"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV", "AT"}
_DATE_VRS = ("DA", "DT", "TM")
_REMOVED_TEXT = "[removed]"
#: File meta elements rebuilt by the writer (lengths, version, who wrote the file): never logged as removed.
_META_REBUILT = ("FileMetaInformationGroupLength", "FileMetaInformationVersion", "MediaStorageSOPClassUID",
                 "TransferSyntaxUID", "ImplementationClassUID", "ImplementationVersionName")


@dataclass(frozen=True)
class DeidOptions:
    """How to de-identify (PS3.15 Annex E Basic Profile plus options)."""

    retain_longitudinal_dates: bool = field(default=False, metadata={"help": "shift dates by a per-patient offset instead of removing them"})
    """Retain Longitudinal Temporal Information, Modified Dates Option."""
    max_date_shift_days: int = field(default=365, metadata={"help": "dates move back by 1..N days (per patient)"})
    retain_device_identity: bool = field(default=False, metadata={"help": "keep device serial numbers and station names"})
    clean_descriptors: bool = field(default=False, metadata={"help": "keep descriptions/comments with identifiers taken out"})
    safe_private_tags: tuple[str, ...] = field(default=(), metadata={"help": "private tags to keep, as 'gggg,CREATOR,ee'"})
    """Private attributes kept (Retain Safe Private Option): ``"gggg,PRIVATE CREATOR,ee"`` with
    ``ee`` the element's last two hex digits within the creator's block, e.g. ``"0019,SIEMENS MR HEADER,0C"``."""
    allow_burned_in_annotation: bool = field(default=False, metadata={"help": "process files flagged BurnedInAnnotation=YES"})
    """Files flagged BurnedInAnnotation=YES carry text in their pixels; pixel redaction is out
    of scope, so they are refused unless this is set (and you have checked them)."""
    keep_date_attributes: tuple[str, ...] = field(default=(), metadata={"help": "DA/DT/TM keywords outside the profile table to keep"})
    """Dates and times the profile table does not name that are kept unchanged (keywords, e.g.
    ``"RTPlanDate"``); every other DA/DT/TM element is treated like the named ones."""
    key: str | None = field(default=None, metadata={"help": "secret for consistent UIDs/pseudonyms across runs"})
    strict: bool = field(default=False, metadata={"help": "stop at the first unreadable file"})
    workers: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.max_date_shift_days < 1:
            problems.append(f"max_date_shift_days must be >= 1, got {self.max_date_shift_days}")
        for entry in self.safe_private_tags:
            if parse_safe_private(entry) is None:
                problems.append(f"safe private tag {entry!r} is not 'gggg,CREATOR,ee' with an odd group, e.g. '0019,SIEMENS MR HEADER,0C'")
        problems.extend(p for p in map(_kept_date_problem, self.keep_date_attributes) if p)
        if self.workers is not None and self.workers < 1:
            problems.append(f"workers must be >= 1, got {self.workers}")
        if self.key is not None and not self.key.strip():
            problems.append("key is empty: give a secret (see read_key_file), or None for a random key used for one run only")
        raise_if_problems("de-identification options", problems)

    def profile(self) -> dict[str, object]:
        """The options that decide what an output file holds (not how the run goes, nor the key)."""
        return {
            "retain_longitudinal_dates": self.retain_longitudinal_dates,
            "max_date_shift_days": self.max_date_shift_days,
            "retain_device_identity": self.retain_device_identity,
            "clean_descriptors": self.clean_descriptors,
            "safe_private_tags": list(self.safe_private_tags),
            "keep_date_attributes": list(self.keep_date_attributes),
        }

    def method_codes(self) -> list[tuple[str, str]]:
        chosen = ["basic"]
        chosen += ["clean_descriptors"] if self.clean_descriptors else []
        chosen += ["retain_longitudinal_modified_dates"] if self.retain_longitudinal_dates else []
        chosen += ["retain_device_identity"] if self.retain_device_identity else []
        chosen += ["retain_safe_private"] if self.safe_private_tags else []
        return [OPTION_CODES[c] for c in chosen]


@dataclass(frozen=True)
class Change:
    """One attribute changed in one file: what and how, never the value."""

    tag: str  # "(0010,0010)"
    keyword: str
    action: str  # removed, emptied, dummy, uid-replaced, pseudonymized, date-shifted, cleaned, private-removed, added


def deidentify_dataset(ds: Dataset, options: DeidOptions, pseudonyms: Pseudonyms) -> list[Change]:
    """De-identify ``ds`` in place; return what changed (no values).

    A file meta group, if ``ds`` has one, is replaced by one rebuilt from the de-identified data set.
    """
    patient = str(ds.get("PatientID", "") or "") or str(ds.get("PatientName", "") or "")
    context = _Context(options, pseudonyms, patient, _identifying_strings(ds) if options.clean_descriptors else [])
    changes: list[Change] = []
    _walk(ds, context, changes)
    pseudonym = pseudonyms.patient(patient)
    for keyword in ("PatientID", "PatientName"):  # Z allows a dummy: a pseudonym keeps a patient's studies together
        setattr(ds, keyword, pseudonym)
        changes.append(Change(_tag_text(ds[keyword].tag), keyword, "pseudonymized"))
    if getattr(ds, "file_meta", None) is not None:
        _rebuild_file_meta(ds, pseudonyms, changes)
    _mark(ds, options, changes)
    return changes


def _rebuild_file_meta(ds: Dataset, pseudonyms: Pseudonyms, changes: list[Change]) -> None:
    """A new file meta group made from the de-identified data set.

    The old group can hold the original SOP Instance UID (when the data set has none), who sent
    the file and private content; only the SOP class, the instance UID (the data set's new one,
    or the old one mapped like every other UID) and the transfer syntax carry over.
    """
    old = ds.file_meta
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    sop_class = ds.get("SOPClassUID") or old.get("MediaStorageSOPClassUID")
    if sop_class:
        meta.MediaStorageSOPClassUID = sop_class
    instance = ds.get("SOPInstanceUID")
    if not instance and old.get("MediaStorageSOPInstanceUID"):
        instance = pseudonyms.uid(str(old.MediaStorageSOPInstanceUID))
    if instance:
        meta.MediaStorageSOPInstanceUID = instance
    if "TransferSyntaxUID" in old:
        meta.TransferSyntaxUID = old.TransferSyntaxUID
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"PYDICOM {pydicom.__version__}"[:16]
    for elem in old:
        if elem.keyword == "MediaStorageSOPInstanceUID":
            changes.append(Change(_tag_text(elem.tag), elem.keyword, "uid-replaced"))
        elif elem.keyword not in _META_REBUILT:  # who sent the file, private meta content
            changes.append(Change(_tag_text(elem.tag), elem.keyword, "removed"))
    ds.file_meta = meta


@dataclass
class _Context:
    options: DeidOptions
    pseudonyms: Pseudonyms
    patient: str
    identifying: list[str]
    safe: set[tuple[int, str, int]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.safe = {s for s in (parse_safe_private(e) for e in self.options.safe_private_tags) if s is not None}


def element_decision(tag: int, vr: str, keyword: str, options: DeidOptions) -> tuple[str, str]:
    """(keyword, what the profile does) to a public element that is not left alone: ``keep``, ``recurse``
    (a sequence whose items are walked), ``clean``, ``shift``, or an action of :func:`_apply` (X, R, U, D, Z).
    Depends on the tag, VR and options only, never on the value (the byte-level path relies on it)."""
    keyword, action = BASIC_PROFILE_TAGS.get(tag, (keyword, repeating_group_action(tag)))
    if action is None and vr in _DATE_VRS and keyword not in options.keep_date_attributes:
        # A date the table does not name dates the patient's care as much as those it does:
        # treat it by its VR, like StudyDate (Z: emptied, or shifted below with the option).
        action = "Z"
    if action is None:
        return keyword, "recurse" if vr == "SQ" else "keep"
    if options.retain_device_identity and keyword in RETAIN_DEVICE_IDENTITY:
        return keyword, "keep"
    if options.clean_descriptors and keyword in CLEAN_DESCRIPTORS and vr != "SQ":
        return keyword, "clean"
    if options.retain_longitudinal_dates and vr in _DATE_VRS and keyword not in NOT_LONGITUDINAL:
        return keyword, "keep" if vr == "TM" else "shift"  # whole-day shifts leave times as they are
    return keyword, resolve(keyword, action)


def _walk(ds: Dataset, ctx: _Context, changes: list[Change]) -> None:
    for tag in sorted(ds.keys()):
        tag = int(tag)
        if tag >> 16 & 1 and not ctx.safe:  # private, and none is kept
            del ds[tag]
            changes.append(Change(_tag_text(tag), "", "private-removed"))
            continue
        if left_alone(ds.get_item(tag), tag):  # never decoded: written back byte for byte
            continue
        elem = ds[tag]
        if elem.tag.is_private:
            if not is_safe_private(elem, ctx.safe):
                del ds[elem.tag]
                changes.append(Change(_tag_text(tag), "", "private-removed"))
            continue
        keyword, decision = element_decision(tag, elem.VR, elem.keyword, ctx.options)
        if decision == "recurse":
            for item in elem.value:
                _walk(item, ctx, changes)
        elif decision == "clean":
            _clean(elem, ctx)
            changes.append(Change(_tag_text(tag), keyword, "cleaned"))
        elif decision == "shift":
            changes.append(Change(_tag_text(tag), keyword, _shift(elem, ctx)))
        elif decision != "keep":
            changes.append(Change(_tag_text(tag), keyword, _apply(ds, elem, decision, ctx, changes)))


def _apply(ds: Dataset, elem: DataElement, action: str, ctx: _Context, changes: list[Change]) -> str:
    if action == "X":
        del ds[elem.tag]
        return "removed"
    if action == "R":
        for item in elem.value:
            _walk(item, ctx, changes)
        return "references-kept"
    if action == "U":
        if elem.VR != "UI":
            del ds[elem.tag]
            return "removed"
        values = elem.value if elem.VM > 1 else [elem.value]
        mapped = [ctx.pseudonyms.uid(str(v)) for v in values if v]
        elem.value = mapped if elem.VM > 1 else (mapped[0] if mapped else "")
        return "uid-replaced"
    if action == "D" and elem.VR in _DUMMY:
        elem.value = _DUMMY[elem.VR][: 16 if elem.VR in ("SH", "CS", "AE") else None]
        return "dummy"
    _empty(elem)
    return "emptied"


def _empty(elem: DataElement) -> None:
    if elem.VR == "SQ":
        elem.value = Sequence()
    elif elem.VR in _NUMERIC_VRS or elem.VR.startswith("O") or elem.VR == "UN":
        elem.value = None
    else:
        elem.value = ""


def _shift(elem: DataElement, ctx: _Context) -> str:
    shift = ctx.pseudonyms.date_shift(ctx.patient)
    values = list(elem.value) if elem.VM > 1 else [elem.value]
    out = []
    for v in values:
        text = str(v or "")
        try:
            day = date(int(text[:4]), int(text[4:6]), int(text[6:8])) + shift
        except (ValueError, IndexError):
            _empty(elem)
            return "emptied"
        out.append(day.strftime("%Y%m%d") + text[8:])
    elem.value = out if elem.VM > 1 else out[0]
    return "date-shifted"


def _identifying_strings(ds: Dataset) -> list[str]:
    """Text that must not survive in cleaned descriptions: names (and their parts), IDs, dates."""
    found: set[str] = set()
    for keyword in ("PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthName",
                    "PatientMotherBirthName", "AccessionNumber", "PatientBirthDate", "ReferringPhysicianName",
                    "PerformingPhysicianName", "OperatorsName", "InstitutionName", "PatientAddress", "StudyID"):
        value = ds.get(keyword)
        for v in value if isinstance(value, (MultiValue, list)) else [value]:
            text = str(v or "").strip()
            if text:
                found.add(text)
                found.update(p for p in re.split(r"[\^\s=,]+", text) if len(p) >= 3)
    return sorted(found, key=len, reverse=True)


def _clean(elem: DataElement, ctx: _Context) -> None:
    def clean_text(text: str) -> str:
        for secret in ctx.identifying:
            text = re.sub(re.escape(secret), _REMOVED_TEXT, text, flags=re.IGNORECASE)
        text = re.sub(r"\d{5,}", _REMOVED_TEXT, text)  # IDs, phone numbers
        return re.sub(r"\b\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}\b", _REMOVED_TEXT, text)  # written dates

    if elem.VM > 1:
        elem.value = [clean_text(str(v)) for v in elem.value]
    elif isinstance(elem.value, (str, bytes)) or elem.value is not None:
        elem.value = clean_text(str(elem.value))


def _mark(ds: Dataset, options: DeidOptions, changes: list[Change]) -> None:
    """PatientIdentityRemoved, DeidentificationMethod(+CodeSequence), LongitudinalTemporalInformationModified."""
    ds.PatientIdentityRemoved = "YES"
    codes = options.method_codes()
    ds.DeidentificationMethod = ("DICOM PS3.15 Annex E: " + "; ".join(m for _, m in codes) + " (scalpel)")[:64]
    items = []
    for value, meaning in codes:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)
    ds.LongitudinalTemporalInformationModified = "MODIFIED" if options.retain_longitudinal_dates else "REMOVED"
    for keyword in ("PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
                    "LongitudinalTemporalInformationModified"):
        changes.append(Change(_tag_text(ds[keyword].tag), keyword, "added"))


def _kept_date_problem(keyword: str) -> str | None:
    tag = tag_for_keyword(keyword)
    if tag is None:
        return f"keep_date_attributes: {keyword!r} is not a DICOM keyword (e.g. 'RTPlanDate')"
    if dictionary_VR(tag) not in _DATE_VRS:
        return f"keep_date_attributes: {keyword} is not a date or time (VR {dictionary_VR(tag)}); list DA, DT or TM attributes only"
    if tag in BASIC_PROFILE_TAGS:
        return f"keep_date_attributes: {keyword} is in the profile table and cannot be kept; retain_longitudinal_dates shifts it instead"
    return None


def _tag_text(tag: int) -> str:
    return f"({int(tag) >> 16:04X},{int(tag) & 0xFFFF:04X})"
