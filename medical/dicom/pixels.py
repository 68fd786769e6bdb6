"""Pixel values: decoding checks, the modality LUT (stored values -> Hounsfield units for CT),
windowing for display, and photometric interpretation.

Follows DICOM PS3.3 C.7.6.3.1 (photometric interpretation), C.11.1 (modality LUT:
``HU = stored * RescaleSlope + RescaleIntercept`` or a Modality LUT Sequence) and
C.11.2.1.2 (VOI LUT window: linear function of centre ``c`` and width ``w``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import UID

from scalpel.core.errors import DataError, UnknownNameError

#: Named display windows (centre, width) in Hounsfield units, as commonly used in radiology.
WINDOW_PRESETS: Mapping[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "abdomen": (40.0, 400.0),
    "liver": (60.0, 160.0),
    "mediastinum": (50.0, 350.0),
}

#: Which pip packages bring a decoder for a pydicom plugin name (for the error message).
_PLUGIN_PACKAGES = {
    "pylibjpeg": "pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle",
    "gdcm": "python-gdcm",
    "pyjpegls": "pyjpegls",
    "pillow": "pillow",
}


class UnsupportedTransferSyntaxError(DataError):
    """Pixel data is encoded with a transfer syntax that no installed decoder reads."""


def check_transfer_syntax(uid: str | UID, where: str = "file") -> None:
    """Raise :class:`UnsupportedTransferSyntaxError` if pixel data in ``uid`` cannot be decoded here.

    The message names the syntax and the package(s) to install.
    """
    uid = UID(str(uid))
    if not uid.is_transfer_syntax:
        raise UnsupportedTransferSyntaxError(
            f"{where}: transfer syntax {uid} is not a known DICOM transfer syntax; the file header is damaged "
            "or written by a non-conforming tool; re-export it from the source system"
        )
    if not uid.is_compressed:
        return
    try:
        decoder = get_decoder(uid)
    except NotImplementedError as err:
        raise UnsupportedTransferSyntaxError(
            f"{where}: transfer syntax '{uid.name}' ({uid}) has no pixel decoder in pydicom; "
            "convert the files to an uncompressed syntax (e.g. `dcmdjpeg`/`gdcmconv --raw`) and try again"
        ) from err
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
        plugins = sorted({p.split(" ")[0] for p in decoder.missing_dependencies})
        install = " or ".join(f"`pip install {_PLUGIN_PACKAGES.get(p, p)}`" for p in plugins) or "`pip install pylibjpeg`"
        raise UnsupportedTransferSyntaxError(
            f"{where}: transfer syntax '{uid.name}' ({uid}) needs a decoder that is not installed ({needs}); run {install}"
        )


def pixel_data_problem(ds: Dataset, *, file_size: int | None = None, decode: bool = False) -> str | None:
    """Why the Pixel Data of ``ds`` is not whole, as a sentence for a person; None when it looks whole.

    Uncompressed data must hold rows x columns x samples x bits/8 x frames bytes (pydicom's
    expected length, which also covers 1-bit and YBR_FULL_422 data). When the value was not
    read (``dcmread(defer_size=...)``), ``file_size`` tells how much of it the file really holds.
    Compressed (encapsulated) data must split into its fragments and declared number of frames;
    with ``decode``, its first frame must also decode when a decoder is installed.

    Args:
        ds: a dataset read from a file; without Pixel Data there is nothing to check.
        file_size: size of the file ``ds`` was read from, in bytes.
        decode: decode the first frame of compressed data (slower: real decoding work).
    """
    if "PixelData" not in ds:
        return None
    meta = getattr(ds, "file_meta", None) or {}
    syntax = UID(str(meta.get("TransferSyntaxUID", "1.2.840.10008.1.2")))
    if syntax.is_encapsulated:
        return _encapsulated_problem(ds, syntax, decode)
    try:
        expected = get_expected_length(ds, unit="bytes")
    except (AttributeError, KeyError, TypeError, ValueError):
        return ("pixel data without a complete image description (Rows, Columns, BitsAllocated, SamplesPerPixel); "
                "the pixels cannot be read, export the file again")
    # A deflated file's offsets count decompressed bytes, so its size says nothing about them.
    stored = _stored_length(ds.get_item("PixelData", keep_deferred=True), None if syntax.is_deflated else file_size)
    if stored < expected:
        return (f"pixel data is truncated: {stored} of {expected} bytes (rows x columns x samples x bits/8 x frames); "
                "the file was cut short, copy it again")
    return None


def _stored_length(raw, file_size: int | None) -> int:
    if isinstance(raw, RawDataElement):
        if raw.value is None:  # deferred: the header says how long, the file how much is there
            available = file_size - raw.value_tell if file_size is not None and raw.value_tell is not None else raw.length
            return max(0, min(raw.length, available))
        return len(raw.value)
    return len(raw.value or b"")


def _encapsulated_problem(ds: Dataset, syntax: UID, decode: bool) -> str | None:
    raw = ds.get_item("PixelData", keep_deferred=True)
    if isinstance(raw, RawDataElement) and raw.value is None and not decode:
        return None  # not read (a header scan); reading compressed data here would cost what the scan saves
    declared = int(ds.get("NumberOfFrames") or 1)
    try:
        found = sum(1 for _ in generate_frames(ds.PixelData, number_of_frames=declared))
    except (ValueError, EOFError, KeyError, TypeError) as err:
        return f"compressed pixel data is damaged: its fragments do not parse ({err}); copy the file again"
    if found < declared:
        return f"compressed pixel data holds {found} of {declared} frames; the file was cut short, copy it again"
    if decode:
        return _first_frame_problem(ds, syntax)
    return None


def _first_frame_problem(ds: Dataset, syntax: UID) -> str | None:
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        return None  # no decoder exists in pydicom: loading says so (check_transfer_syntax)
    if not decoder.is_available:
        return None
    try:
        decoder.as_array(ds, index=0)
    except Exception as err:  # noqa: BLE001 - decoders raise many kinds of error; any of them means undecodable
        why = (str(err).strip().splitlines() or [type(err).__name__])[-1][:160]
        return f"the first frame of the compressed pixel data cannot be decoded ({why}); the file is damaged, copy it again"
    return None


def modality_values(stored: np.ndarray, ds: Dataset, frame_item: Dataset | None = None) -> np.ndarray:
    """Stored pixel values -> modality values (HU for CT) through the modality LUT.

    Exactly :func:`pydicom.pixels.apply_modality_lut` (float64 ``stored * slope + intercept``,
    or the LUT), with the rescale of an enhanced multi-frame object taken from the frame's
    Pixel Value Transformation Sequence when the top level has none.

    Args:
        stored: (rows, cols) or (frames, rows, cols) stored values.
        ds: the dataset the values came from.
        frame_item: a per-frame or shared functional group item holding
            PixelValueTransformationSequence, for enhanced objects.
    """
    if "RescaleSlope" in ds and not ds.get("ModalityLUTSequence"):
        exact = exact_rescale_float32(stored, ds.RescaleSlope, ds.get("RescaleIntercept", 0))
        if exact is not None:
            return exact
    if "RescaleSlope" in ds or ds.get("ModalityLUTSequence") or frame_item is None:
        return apply_modality_lut(stored, ds)
    transform = frame_item.get("PixelValueTransformationSequence")
    if not transform:
        return stored
    shim = Dataset()
    shim.RescaleSlope = transform[0].get("RescaleSlope", 1.0)
    shim.RescaleIntercept = transform[0].get("RescaleIntercept", 0.0)
    return apply_modality_lut(stored, shim)


def exact_rescale_float32(stored: np.ndarray, slope, intercept) -> np.ndarray | None:
    """``stored * slope + intercept`` in float32 when every value is an integer below 2**24, so
    float32 holds it exactly and the result equals pydicom's float64 one cast to float32
    (half the memory traffic). None when that cannot be guaranteed."""
    try:
        slope, intercept = float(slope), float(intercept)
    except (TypeError, ValueError):
        return None
    if stored.dtype.kind not in "ui" or stored.dtype.itemsize > 2 or not (slope.is_integer() and intercept.is_integer()):
        return None
    if abs(slope) * 65536 + abs(intercept) >= 2**24:
        return None
    out = stored.astype(np.float32)
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)
    return out


def invert_monochrome1(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """MONOCHROME1 shows low values bright; mirror values within their representable range so
    that, as with MONOCHROME2, larger means brighter (PS3.3 C.7.6.3.1.2).

    The range is that of the stored values (BitsStored, PixelRepresentation) passed through
    the rescale, so the result stays in the same units and range.
    """
    bits = int(ds.get("BitsStored", 16))
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if ds.get("PixelRepresentation", 0) else (0, 2**bits - 1)
    slope, intercept = float(ds.get("RescaleSlope", 1.0)), float(ds.get("RescaleIntercept", 0.0))
    a, b = lo * slope + intercept, hi * slope + intercept
    return (a + b) - values


def window_from(ds: Dataset) -> tuple[float, float] | None:
    """The first (centre, width) window the file recommends, or None."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    return _first(center), _first(width)


def _first(value) -> float:
    return float(value[0]) if isinstance(value, (MultiValue, list, tuple)) else float(value)


def resolve_window(window: str | tuple[float, float], ds: Dataset | None = None) -> tuple[float, float]:
    """A preset name, ``"file"`` (the window stored in ``ds``) or an explicit (centre, width)."""
    if isinstance(window, str):
        if window == "file":
            found = window_from(ds) if ds is not None else None
            if found is None:
                raise DataError("window='file' but the file has no WindowCenter/WindowWidth; name a preset: " + ", ".join(WINDOW_PRESETS))
            return found
        if window not in WINDOW_PRESETS:
            raise UnknownNameError(f"unknown window preset {window!r}; choose one of: file, {', '.join(WINDOW_PRESETS)}")
        return WINDOW_PRESETS[window]
    center, width = (float(v) for v in window)
    if width < 1:
        raise DataError(f"window width must be >= 1, got {width}; give (centre, width) in modality units")
    return center, width


def apply_window(values: np.ndarray, center: float, width: float, invert: bool = False) -> np.ndarray:
    """Map modality values to [0, 1] with the DICOM linear VOI function (PS3.3 C.11.2.1.2.1):

    ``y = ((x - (c - 0.5)) / (w - 1) + 0.5)`` clipped to [0, 1]; ``invert`` gives ``1 - y``
    (MONOCHROME1 display).
    """
    out = ((np.asarray(values, dtype=np.float32) - (center - 0.5)) / max(width - 1.0, 1.0)) + 0.5
    np.clip(out, 0.0, 1.0, out=out)
    return 1.0 - out if invert else out
