"""De-identification of a Part 10 instance held as bytes, without decoding or copying what stays.

Reading a whole instance with pydicom and writing it again costs several times what receiving it
does, and nearly all of it goes to elements the PS3.15 profile leaves as they are, pixel data above
all. Here the top-level data elements of the received bytes are walked (tag, VR, length: no value is
decoded). What :func:`~scalpel.medical.dicom.deid_raw.left_alone` clears is handed to the output as
slices (memoryviews) of the received bytes; the rest is de-identified by
:func:`~scalpel.medical.dicom.deid.deidentify_dataset` (the decisions of ``scalpel dicom deid``, not
a second copy of them) and encoded by pydicom's own writers, after a file meta group rebuilt the same
way. The result is byte for byte what ``scalpel dicom deid`` writes for the same file and key.

The instances of a series repeat most of what the profile looks at (patient, study, dates), so
what pydicom made of an element is remembered, per patient context: by its bytes; by tag and VR
alone where :func:`~scalpel.medical.dicom.deid.element_decision` says the outcome does not depend on
the value (removed, emptied, dummy); and, for a replaced UID, as a check that pydicom wrote exactly
the new UID, after which only the new UID (a keyed hash) is computed. The file meta group pydicom
wrote for a SOP class is kept the same way, as the bytes around the new instance UID. An instance
all of whose elements were seen before is written without pydicom; one with new elements has those
(and the patient context) de-identified by pydicom in a small data set.

Only explicit VR little endian files with a 128-byte preamble and a file meta group of the usual
shape take this path; anything else (implicit VR, big endian, compressed or deflated, elements out
of order, a truncated element, a VR pydicom would rewrite...) makes
:meth:`~scalpel.medical.dicom.deid_walk.Part10Instance.parse` answer None, and the caller falls back to reading the file with pydicom.
"""

from __future__ import annotations

import struct
import threading
from collections import OrderedDict
from copy import deepcopy
from dataclasses import dataclass, field

from pydicom.charset import default_encoding
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.tag import Tag

from scalpel.medical.dicom.deid import DeidOptions, Pseudonyms, deidentify_dataset, element_decision
from scalpel.medical.dicom.deid_raw import left_alone
from scalpel.medical.dicom.deid_walk import PIXEL_DATA, Element, Part10Instance, plain_uid


def _tags(*keywords: str) -> frozenset[int]:
    return frozenset(tag_for_keyword(k) for k in keywords)


#: What the patient context of the profile is made of (pseudonym, date shift, character set).
_CONTEXT = _tags("PatientID", "PatientName", "SpecificCharacterSet")
#: Read by the profile to clean descriptions (deid._identifying_strings).
_IDENTIFYING = _tags("OtherPatientIDs", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName", "AccessionNumber",
                     "PatientBirthDate", "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName",
                     "InstitutionName", "PatientAddress", "StudyID")
#: Written by every de-identification, whatever the input held.
_WRITTEN = _tags("PatientID", "PatientName", "PatientIdentityRemoved", "DeidentificationMethod",
                 "DeidentificationMethodCodeSequence", "LongitudinalTemporalInformationModified")
_SOP_CLASS, _SOP_INSTANCE = tag_for_keyword("SOPClassUID"), tag_for_keyword("SOPInstanceUID")
_VALUE_FREE = ("X", "Z", "D")  # outcomes that do not depend on the value
_MEMO_LIMIT = 1024  # entries per table: a series repeats a few hundred elements at most


@dataclass
class _Memo:
    """What pydicom made of elements under one patient context: key -> encoded bytes (b"": removed)."""

    encoded: dict = field(default_factory=dict)
    uid_template: dict = field(default_factory=dict)  # (tag, vr) -> True when pydicom wrote just the new UID
    written: dict[int, bytes] | None = None  # the elements every de-identification writes
    meta: dict = field(default_factory=dict)  # (SOP class element, UID length) -> (before, after) the new UID


class StreamDeidentifier:
    """De-identifies :class:`Part10Instance` objects as ``scalpel dicom deid`` does, remembering what
    it learnt from pydicom (see the module docstring). Safe to share between threads."""

    def __init__(self, options: DeidOptions, pseudonyms: Pseudonyms):
        self.options, self.pseudonyms = options, pseudonyms
        self._memos: OrderedDict[tuple, _Memo] = OrderedDict()
        self._decisions: dict[tuple[int, bytes], str] = {}
        self._alone: dict[bytes, bool] = {}  # element bytes -> left_alone
        self._lock = threading.Lock()

    def pieces(self, instance: Part10Instance) -> list[bytes | memoryview]:
        """The de-identified Part 10 file, as pieces to write one after the other."""
        context_tags = _CONTEXT | (_IDENTIFYING if self.options.clean_descriptors else frozenset())
        copied: dict[int, Element] = {}
        context: list = []  # what the outcome of any element may depend on besides its own bytes
        memo_pending = []
        for e in instance.elements:
            if e.tag in context_tags or (e.tag >> 16 & 1 and self.options.safe_private_tags):  # private creators
                context.append((e.tag, instance.raw(e)))
            elif e.tag in _WRITTEN:  # overwritten, keeping the VR it was read with
                context.append((e.tag, e.vr))
            if e.tag in _WRITTEN:
                continue
            if e.tag == PIXEL_DATA or (not e.tag >> 16 & 1 and self._left_alone(instance, e)):
                copied[e.tag] = e
            else:
                memo_pending.append(e)
        memo = self._memo(tuple(context))
        out: dict[int, bytes] = {}
        missing = []
        for e in memo_pending:
            key = self._key(instance, e, memo)
            if key[0] == "uid" and memo.uid_template.get(key[1:]):
                out[e.tag] = _uid_element(e, self.pseudonyms.uid(plain_uid(instance, e)))
            elif key in memo.encoded:
                out[e.tag] = memo.encoded[key]
            else:
                missing.append((e, key))
        sop, sop_class = instance.find(_SOP_INSTANCE), instance.find(_SOP_CLASS)
        new_uid = self.pseudonyms.uid(plain_uid(instance, sop)) if sop is not None and plain_uid(instance, sop) else None
        meta_key = (instance.raw(sop_class), len(new_uid)) if sop_class is not None and new_uid else None
        if missing or memo.written is None or meta_key not in memo.meta:
            head = self._learn(instance, memo, missing, out, meta_key, new_uid)
        else:
            before, after = memo.meta[meta_key]
            head = bytes(instance.data[:128]) + before + new_uid.encode() + after
        out.update(memo.written)
        return _assemble(instance, head, copied, out)

    def _learn(self, instance: Part10Instance, memo: _Memo, missing: list, out: dict[int, bytes],
               meta_key: tuple | None, new_uid: str | None) -> bytes:
        """De-identify the new elements with pydicom, remember what it made of them, return the file's head."""
        tags = {e.tag for e, _ in missing} | _CONTEXT | _WRITTEN | {_SOP_CLASS, _SOP_INSTANCE}
        tags |= _IDENTIFYING if self.options.clean_descriptors else set()
        if self.options.safe_private_tags:
            tags |= {e.tag for e in instance.elements if e.tag >> 16 & 1}
        ds = instance.dataset(tags)
        deidentify_dataset(ds, self.options, self.pseudonyms)
        encoded = _encode(ds)
        for e, key in missing:
            out[e.tag] = result = encoded.get(e.tag, b"")
            if key[0] == "uid":
                memo.uid_template[key[1:]] = result == _uid_element(e, self.pseudonyms.uid(plain_uid(instance, e)))
                if not memo.uid_template[key[1:]]:
                    continue
            elif len(memo.encoded) < _MEMO_LIMIT:
                memo.encoded[key] = result
        memo.written = {tag: encoded[tag] for tag in _WRITTEN if tag in encoded}
        head = DicomBytesIO()
        head.is_little_endian, head.is_implicit_VR = True, False
        head.write(ds.preamble + b"DICM")
        write_file_meta_info(head, _meta_as_written(ds), enforce_standard=True)
        written = head.getvalue()
        if meta_key is not None and written[132:].count(new_uid.encode()) == 1:  # the preamble is the file's own
            at = written.index(new_uid.encode(), 132)
            memo.meta[meta_key] = (written[128:at], written[at + len(new_uid):])
        return written

    def _key(self, instance: Part10Instance, e: Element, memo: _Memo) -> tuple:
        decision = self._decisions.get((e.tag, e.vr))
        if decision is None:
            if e.tag >> 16 & 1:
                decision = "bytes" if self.options.safe_private_tags else "X"
            else:
                decision = element_decision(e.tag, e.vr.decode(), keyword_for_tag(e.tag), self.options)[1]
            self._decisions[(e.tag, e.vr)] = decision
        if decision in _VALUE_FREE or (decision == "U" and e.vr != b"UI"):
            return ("fixed", e.tag, e.vr)
        if decision == "U" and memo.uid_template.get((e.tag, e.vr), True) and plain_uid(instance, e):
            return ("uid", e.tag, e.vr)
        return ("bytes", instance.raw(e))

    def _left_alone(self, instance: Part10Instance, e: Element) -> bool:
        """``left_alone`` asked about the element as pydicom would have read it (raw, explicit VR)."""
        if e.end - e.start > 1024:  # a long value other than pixel data: looked at, not remembered (rare)
            return False
        raw = instance.raw(e)
        alone = self._alone.get(raw)
        if alone is None:
            value = raw[e.value_start - e.start:]
            alone = left_alone(RawDataElement(Tag(e.tag), e.vr.decode(), len(value), value, e.value_start, False, True), e.tag)
            if len(self._alone) < _MEMO_LIMIT:
                self._alone[raw] = alone
        return alone

    def _memo(self, context: tuple) -> _Memo:
        with self._lock:
            memo = self._memos.get(context)
            if memo is None:
                memo = self._memos[context] = _Memo()
                if len(self._memos) > 16:  # a few patients at a time are enough for a pull
                    self._memos.popitem(last=False)
            self._memos.move_to_end(context)
            return memo


def _assemble(instance: Part10Instance, head: bytes, copied: dict[int, Element], out: dict[int, bytes]) -> list:
    """The file in tag order: runs of elements copied as received become one slice of the received
    bytes each, and what lies between them (encoded elements, the head) one bytes object each."""
    pieces: list[bytes | memoryview] = []
    encoded: list[bytes] = [head]
    start = end = 0  # the run of received bytes copied as they are, gathered into one slice
    for tag in sorted(set(copied) | set(out)):
        element = copied.get(tag)
        if element is None:
            encoded.append(out[tag])
            continue
        if element.start != end or encoded:
            if end > start:
                pieces.append(instance.data[start:end])
            if encoded:
                pieces.append(b"".join(encoded))
                encoded = []
            start = element.start
        end = element.end
    pieces += [instance.data[start:end]] if end > start else []
    return pieces + ([b"".join(encoded)] if encoded else [])


def _encode(ds: Dataset) -> dict[int, bytes]:
    """Each top-level element of ``ds`` as pydicom's writer encodes it (explicit VR little endian)."""
    encodings = ds.get("SpecificCharacterSet", default_encoding)
    encoded = {}
    for tag in ds.keys():
        buffer = DicomBytesIO()
        buffer.is_little_endian, buffer.is_implicit_VR = True, False
        write_data_element(buffer, ds.get_item(tag), encodings)
        encoded[int(tag)] = buffer.getvalue()
    return encoded


def _uid_element(e: Element, uid: str) -> bytes:
    """A UI element as PS3.5 encodes it: the UID, padded to an even length with a null."""
    value = uid.encode() + b"\0" * (len(uid) % 2)
    return struct.pack("<HH2sH", e.tag >> 16, e.tag & 0xFFFF, b"UI", len(value)) + value


def _meta_as_written(ds: Dataset) -> FileMetaDataset:
    """The file meta group ``dcmwrite(..., enforce_file_format=True)`` writes for ``ds``."""
    meta = deepcopy(ds.file_meta)
    ds_class, ds_instance = ds.get("SOPClassUID"), ds.get("SOPInstanceUID")
    if meta.get("MediaStorageSOPClassUID") is None or (ds_class and ds_class != meta.MediaStorageSOPClassUID):
        meta.MediaStorageSOPClassUID = ds_class
    if meta.get("MediaStorageSOPInstanceUID") is None or (ds_instance and ds_instance != meta.MediaStorageSOPInstanceUID):
        meta.MediaStorageSOPInstanceUID = ds_instance
    return meta


