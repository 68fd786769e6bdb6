"""A Part 10 instance held as bytes, seen element by element: tags, VRs and lengths of the top-level
data elements, found without decoding a value (for :mod:`~scalpel.medical.dicom.deid_stream`).

Only explicit VR little endian files with a 128-byte preamble and a file meta group that starts with
its length are walked; anything else (implicit VR, big endian, compressed or deflated, elements out
of order or repeated, a truncated element, an unknown VR, reserved bytes set, pixel data pydicom would
write otherwise) makes :meth:`Part10Instance.parse` answer None, and the caller reads the file with
pydicom instead.
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, STANDARD_VR

LONG_VRS = frozenset(vr.encode() for vr in EXPLICIT_VR_LENGTH_32)
_SHORT = frozenset(vr.encode() for vr in STANDARD_VR - EXPLICIT_VR_LENGTH_32)
_UNDEFINED = 0xFFFFFFFF
PIXEL_DATA = 0x7FE00010
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_OTHER_PIXELS = (0x7FE00008, 0x7FE00009)  # float pixel data: left to the pydicom path
_PLAIN_UID = re.compile(rb"[0-9.]{1,64}\0?")  # decoded by pydicom as itself, the trailing null dropped


class _Unusual(Exception):
    """Something the byte walk does not handle: the caller takes the pydicom path."""


@dataclass
class Element:
    tag: int
    vr: bytes
    start: int  # first byte of the tag
    end: int  # one past the last byte of the value (or of the sequence delimiter)

    @property
    def value_start(self) -> int:
        return self.start + (12 if self.vr in LONG_VRS else 8)


class Part10Instance:
    """One Part 10 instance in memory, seen element by element (see the module docstring)."""

    def __init__(self, data: memoryview, elements: list[Element], meta_end: int):
        self.data = data
        self.elements = elements
        self._meta_end = meta_end
        self._by_tag = {e.tag: e for e in elements}

    def read_meta(self) -> FileMetaDataset:
        """The file meta group as received, read by pydicom (a new object each time)."""
        return FileMetaDataset(read_dataset(io.BytesIO(self.data[132:self._meta_end]), is_implicit_VR=False, is_little_endian=True))

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> Part10Instance | None:
        """The instance in ``data``, or None when it is not one this path handles (see the module docstring)."""
        view = memoryview(data).cast("B")
        try:
            meta_end = _file_meta_end(view)
            elements = _top_level(view, meta_end)
        except (_Unusual, struct.error, ValueError):
            return None
        for element in elements:
            if element.tag == PIXEL_DATA and (element.vr not in (b"OB", b"OW") or (element.end - element.start) % 2):
                return None  # pydicom would rewrite its VR or pad it
            if element.tag in _OTHER_PIXELS or element.tag >> 16 in (0, 2):
                return None  # pydicom refuses to write these groups, or checks these pixels another way
        return cls(view, elements, meta_end)

    def raw(self, element: Element) -> bytes:
        return bytes(self.data[element.start:element.end])

    def find(self, tag: int) -> Element | None:
        return self._by_tag.get(tag)

    def uid(self, tag: int) -> str:
        """A UID element's value as pydicom decodes it ("" when absent), read straight from the bytes
        when it is a plain single UID, by pydicom otherwise."""
        element = self._by_tag.get(tag)
        if element is None:
            return ""
        plain = plain_uid(self, element)
        return plain or str(self.dataset({tag}).get(tag).value or "")

    def dataset(self, tags: frozenset[int] | set[int]) -> Dataset:
        """The elements with these tags read by pydicom (values decoded when asked for), with the file
        meta and preamble; Pixel Data as a raw element over the received bytes, never copied."""
        chosen = [e for e in self.elements if e.tag in tags]
        ds = read_dataset(io.BytesIO(b"".join(self.raw(e) for e in chosen if e.tag != PIXEL_DATA)),
                          is_implicit_VR=False, is_little_endian=True)
        for e in chosen:
            if e.tag == PIXEL_DATA:
                value = self.data[e.value_start:e.end]
                ds._dict[Tag(PIXEL_DATA)] = RawDataElement(Tag(PIXEL_DATA), e.vr.decode(), len(value), value,
                                                            e.value_start, False, True)
        ds.file_meta = self.read_meta()
        ds.preamble = bytes(self.data[:128])
        return ds


def plain_uid(instance: Part10Instance, e: Element | None) -> str:
    """A single UID value as pydicom decodes it; "" when it is not a plain one (digits and dots)."""
    value = bytes(instance.data[e.value_start:e.end]) if e is not None and e.vr == b"UI" else b""
    return value.rstrip(b"\0").decode() if _PLAIN_UID.fullmatch(value) else ""


def _file_meta_end(data: memoryview) -> int:
    """Where the file meta group ends; only a group that starts with its length, holds nothing but
    group 2 and says explicit VR little endian."""
    if len(data) < 144 or bytes(data[128:132]) != b"DICM":
        raise _Unusual("no preamble")
    if struct.unpack_from("<HH", data, 132) != (2, 0) or bytes(data[136:138]) != b"UL":
        raise _Unusual("no group length")
    end = 144 + struct.unpack_from("<L", data, 140)[0]
    elements = _walk(data, 132, end)
    if not all(e.tag >> 16 == 2 for e in elements) or (end + 4 <= len(data) and struct.unpack_from("<H", data, end)[0] == 2):
        raise _Unusual("the group length does not end the file meta group")
    syntax = [bytes(data[e.value_start:e.end]) for e in elements if e.tag == 0x00020010]
    if syntax != [ExplicitVRLittleEndian.encode() + b"\0"]:
        raise _Unusual("another transfer syntax")
    return end


def _top_level(data: memoryview, start: int) -> list[Element]:
    """The data set's elements, in strictly increasing tag order, without the group lengths
    pydicom's writer drops (gggg,0000 with gggg > 6)."""
    elements = _walk(data, start, len(data))
    if any(a.tag >= b.tag for a, b in zip(elements, elements[1:])):
        raise _Unusual("elements out of order or repeated")
    return [e for e in elements if e.tag & 0xFFFF or e.tag >> 16 <= 6]


def _walk(data: memoryview, pos: int, end: int, until: int | None = None) -> list[Element]:
    """The elements from ``pos`` to ``end`` (or to the item delimiter ``until``); headers only."""
    found = []
    while pos < end:
        group, number = struct.unpack_from("<HH", data, pos)
        tag = group << 16 | number
        if until is not None and tag == until:
            found.append(Element(tag, b"", pos, pos + 8))  # the item delimiter
            return found
        vr = bytes(data[pos + 4:pos + 6])
        if vr in LONG_VRS:
            if data[pos + 6] or data[pos + 7]:
                raise _Unusual("reserved bytes set")  # pydicom writes them as zeros
            length, value = struct.unpack_from("<L", data, pos + 8)[0], pos + 12
        elif vr in _SHORT:
            length, value = struct.unpack_from("<H", data, pos + 6)[0], pos + 8
        else:
            raise _Unusual(f"VR {vr!r}")
        if length == _UNDEFINED:
            if vr != b"SQ":
                raise _Unusual("undefined length outside a sequence")
            stop = _sequence_end(data, value, end)
        else:
            stop = value + length
        if stop > end:
            raise _Unusual("truncated")
        found.append(Element(tag, vr, pos, stop))
        pos = stop
    if until is not None or pos != end:
        raise _Unusual("truncated")
    return found


def _sequence_end(data: memoryview, pos: int, end: int) -> int:
    """One past the delimiter of the undefined-length sequence whose items start at ``pos``."""
    while pos + 8 <= end:
        group, number, length = struct.unpack_from("<HHL", data, pos)
        tag = group << 16 | number
        if tag == _SEQUENCE_END:
            return pos + 8
        if tag != _ITEM:
            raise _Unusual("not an item")
        pos = _walk(data, pos + 8, end, until=_ITEM_END)[-1].end if length == _UNDEFINED else pos + 8 + length
    raise _Unusual("truncated sequence")
