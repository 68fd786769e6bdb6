"""Reading DICOM files as they come: with or without the part-10 header, checked for damage,
and, for files that are not DICOM, a reason a person understands.

A part-10 file (PS3.10 7.1) starts with a 128-byte preamble, ``DICM`` and the file meta group.
Some archives and older tools store the bare data set instead. pydicom reads those only when
forced, and forcing turns any file into "elements", so a bare data set is read only when the
file starts like one (an element of group 0002 or 0008) and what is read names a SOP class.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from scalpel.medical.dicom.pixels import pixel_data_problem

#: The keywords that hold pixels.
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
#: A bare data set starts with its lowest group: the file meta (0002) or Identifying (0008).
_FIRST_GROUPS = (0x0002, 0x0008)
#: Signatures of files often found beside DICOM, to say what a skipped file is.
_SIGNATURES = (
    (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
    (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"), (b"BM", "a BMP image"), (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"), (b"\x1f\x8b", "a gzip file (a compressed NIfTI or archive)"),
    (b"\x93NUMPY", "a NumPy array"), (b"\xd0\xcf\x11\xe0", "an Office document"),
)


def read_dicom(path: str | os.PathLike, **kwargs) -> Dataset:
    """``pydicom.dcmread(path, **kwargs)``, which also reads a data set stored without the part-10 header.

    A bare data set gets a file meta group holding the transfer syntax it was read with, so it
    can be written back as a proper part-10 file.

    Raises:
        InvalidDicomError: the file is not DICOM (see :func:`not_dicom_reason`).
    """
    try:
        return pydicom.dcmread(path, **kwargs)
    except InvalidDicomError:
        if not _starts_like_a_data_set(Path(path)):
            raise
    ds = pydicom.dcmread(path, force=True, **kwargs)
    if "SOPClassUID" not in ds and "MediaStorageSOPClassUID" not in ds.file_meta:
        raise InvalidDicomError(f"{path} starts like a DICOM data set but names no SOP class")
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = _syntax_read_with(ds)
    return ds


def not_dicom_reason(path: str | os.PathLike) -> str:
    """Why ``path`` is not taken for DICOM, naming what it seems to be instead (a PNG image, a text file...)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    if not head:
        return "not DICOM: an empty file"
    for signature, kind in _SIGNATURES:
        if head.startswith(signature):
            return f"not DICOM: {kind}"
    if head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return "not DICOM: a NIfTI image"
    if _looks_like_text(head):
        return "not DICOM: a text file"
    return "not DICOM: no 'DICM' marker at byte 128 and no DICOM data set at the start"


def integrity_problem(ds: Dataset, *, file_size: int | None = None, decode: bool = False) -> str | None:
    """What is cut short or missing in a DICOM object read from a file, as a sentence; None if nothing.

    Catches what an interrupted copy or an incomplete export leaves: pixel data shorter than the
    image it describes or compressed data that does not parse or decode (see
    :func:`~scalpel.medical.dicom.pixels.pixel_data_problem`), an image header without pixel
    data, and a file that ends before its SOP Class UID. A DICOMDIR (no SOP Class UID in its
    data set) is not an image: check for it first.

    Args:
        ds: the dataset, as read from the file.
        file_size: the file's size in bytes, for pixel data whose reading was deferred.
        decode: decode the first frame of compressed pixel data.
    """
    if any(keyword in ds for keyword in PIXEL_KEYWORDS):
        return pixel_data_problem(ds, file_size=file_size, decode=decode)
    meta = getattr(ds, "file_meta", None) or {}
    declared = {str(ds.get("SOPClassUID") or ""), str(meta.get("MediaStorageSOPClassUID", "") or "")} - {""}
    if "Rows" in ds or any("Image Storage" in UID(uid).name for uid in declared):
        return f"image header ({ds.get('Modality', '?')}) without pixel data; the file is truncated or the export incomplete, export it again"
    if "SOPClassUID" not in ds:
        return "DICOM file ends before its SOP Class UID and pixel data; it is probably truncated, copy it again"
    return None


def _starts_like_a_data_set(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
    except OSError:
        return False
    if len(head) < 8:
        return False
    group, _ = struct.unpack("<HH", head[:4])
    explicit_vr = head[4:6].isalpha() and head[4:6].isupper()
    implicit_length = struct.unpack("<I", head[4:8])[0]
    return group in _FIRST_GROUPS and (explicit_vr or implicit_length < 0x10000)


def _syntax_read_with(ds: Dataset) -> UID:
    implicit_vr, little_endian = ds.original_encoding
    if implicit_vr:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little_endian else ExplicitVRBigEndian


def _looks_like_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    printable = sum(1 for b in head if b >= 0x20 or b in b"\t\r\n\f")
    return printable >= 0.95 * len(head)
