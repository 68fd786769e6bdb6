"""DICOM uploads held in memory: files or zips -> datasets -> series -> volumes -> a site
adapter's segmentation and its DICOM SEG (no Streamlit).

Nothing is written to disk: pydicom reads each file from a ``BytesIO``, and zip members
are read from the in-memory archive. A zip's total uncompressed size is limited (a
"zip bomb" is refused before it is inflated). Slices are ordered by their position along
the slice normal (``ImagePositionPatient . (row x column cosines)``, PS3.3 C.7.6.2.1.1),
falling back to ``InstanceNumber``.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from scalpel.core.errors import DataError
from scalpel.medical.dicom.pixels import modality_values, window_from

MAX_UNZIPPED_MB = 1024
#: Header fields that identify (or may name) the patient: shown only when the user opts in.
#: Free-text descriptions are included: they often carry names and dates.
PHI_FIELDS = ("SeriesDescription", "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyDate", "InstitutionName")
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


@dataclass
class UploadedSeries:
    """The image slices of one SeriesInstanceUID, in slice order."""

    series_uid: str
    datasets: list[Dataset]
    sorted_by: str = "position"
    problems: list[str] = field(default_factory=list)

    @property
    def first(self) -> Dataset:
        return self.datasets[0]

    def row(self, show_phi: bool = False) -> dict[str, object]:
        """One inventory row; identifying fields only with ``show_phi``."""
        ds = self.first
        row: dict[str, object] = {
            "modality": str(ds.get("Modality", "")), "slices": len(self.datasets), "size": f"{ds.get('Rows', '?')} x {ds.get('Columns', '?')}",
            "spacing (mm)": " x ".join(f"{float(v):g}" for v in ds.get("PixelSpacing", [])) or "?",
            "series UID": self.series_uid,
        }
        if show_phi:
            row.update({name: str(ds.get(name, "")) for name in PHI_FIELDS})
        return row

    def volume(self) -> np.ndarray:
        """(Z, rows, cols) float32 modality values (HU for CT), in slice order.

        Raises:
            DataError: pixel data missing, undecodable, or slices of different sizes.
        """
        planes = []
        for ds in self.datasets:
            try:
                stored = ds.pixel_array
            except Exception as err:  # noqa: BLE001  decoder errors come in many types
                raise DataError(f"slice {ds.get('InstanceNumber', '?')} of series {self.series_uid} cannot be decoded "
                                f"({str(err).splitlines()[0][:200]}); install the decoders with pip install 'scalpel-peft[demo]'") from err
            values = np.asarray(modality_values(stored, ds), dtype=np.float32)
            planes.extend(values if values.ndim == 3 else [values])
        if len({p.shape for p in planes}) > 1:
            raise DataError(f"series {self.series_uid} mixes slice sizes {sorted({p.shape for p in planes})}; upload one series at a time")
        return np.stack(planes)

    @property
    def key(self) -> str:
        """Identifies these exact slices (series UID + SOP instance UIDs)."""
        return self.series_uid + ":" + ",".join(str(ds.get("SOPInstanceUID", i)) for i, ds in enumerate(self.datasets))

    def file_window(self) -> tuple[float, float] | None:
        return window_from(self.first)


def read_uploads(files: Iterable[tuple[str, bytes]], max_unzipped_mb: float = MAX_UNZIPPED_MB) -> tuple[list[Dataset], list[str]]:
    """Parse uploaded ``(name, bytes)``: DICOM files and zips of them; returns (datasets, problems).

    A file that is not DICOM is a problem (named), not an exception; so is a damaged zip.
    """
    datasets: list[Dataset] = []
    problems: list[str] = []
    for name, data in files:
        if zipfile.is_zipfile(io.BytesIO(data)):
            try:
                with zipfile.ZipFile(io.BytesIO(data)) as archive:
                    members = [m for m in archive.infolist() if not m.is_dir() and not m.filename.startswith("__MACOSX")]
                    total = sum(m.file_size for m in members)
                    if total > max_unzipped_mb * 2**20:
                        problems.append(f"{name}: unzips to {total / 2**20:.0f} MB, over the {max_unzipped_mb:g} MB limit; upload one series")
                        continue
                    for member in members:
                        _parse(f"{name}/{member.filename}", archive.read(member), datasets, problems)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, RuntimeError, OSError) as err:
                problems.append(f"{name}: a damaged or encrypted zip ({err})")
        else:
            _parse(name, data, datasets, problems)
    return datasets, problems


def _parse(name: str, data: bytes, datasets: list[Dataset], problems: list[str]) -> None:
    base = name.rsplit("/", 1)[-1]
    if base.upper() == "DICOMDIR" or base.startswith("."):
        return
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=False)
    except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError, OSError) as err:
        problems.append(f"{name}: not a DICOM file ({str(err).splitlines()[0][:120] if str(err) else type(err).__name__})")
        return
    if str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS:
        problems.append(f"{name}: a DICOM SEG, not an image; skipped")
        return
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        problems.append(f"{name}: DICOM without pixel data; skipped")
        return
    datasets.append(ds)


def group_series(datasets: list[Dataset]) -> list[UploadedSeries]:
    """Datasets grouped by SeriesInstanceUID, each in slice order; largest series first."""
    groups: dict[str, list[Dataset]] = {}
    for ds in datasets:
        groups.setdefault(str(ds.get("SeriesInstanceUID", "unknown")), []).append(ds)
    series = [_ordered(uid, items) for uid, items in groups.items()]
    return sorted(series, key=lambda s: (-len(s.datasets), s.series_uid))


def _ordered(uid: str, items: list[Dataset]) -> UploadedSeries:
    orientation = items[0].get("ImageOrientationPatient")
    if orientation is not None and all(ds.get("ImagePositionPatient") is not None for ds in items):
        normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
        keyed = sorted(items, key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))))
        return UploadedSeries(uid, keyed, "position")
    keyed = sorted(items, key=lambda ds: int(ds.get("InstanceNumber") or 0))
    return UploadedSeries(uid, keyed, "instance number", ["no ImagePositionPatient: slices ordered by InstanceNumber"])


def to_display(plane: np.ndarray, center: float, width: float, invert: bool = False) -> np.ndarray:
    """(rows, cols) modality values -> uint8 grey image with the DICOM linear window."""
    from scalpel.medical.dicom.pixels import apply_window

    return (apply_window(plane, center, width, invert) * 255).round().astype(np.uint8)


#: Overlay colours by label value (0 = background, unused); names for the page's legend.
PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48]], np.float32)
COLOUR_NAMES = ("none", "red", "green", "yellow", "blue", "orange")


def overlay(grey: np.ndarray, mask: np.ndarray, opacity: float = 0.4) -> np.ndarray:
    """(rows, cols) uint8 grey + integer label mask -> (rows, cols, 3) uint8 RGB, labels coloured."""
    palette = PALETTE
    rgb = np.repeat(grey[..., None].astype(np.float32), 3, axis=-1)
    labelled = mask > 0
    colours = palette[np.clip(mask, 0, len(palette) - 1)]
    rgb[labelled] = (1 - opacity) * rgb[labelled] + opacity * colours[labelled]
    return rgb.round().astype(np.uint8)


@dataclass
class UploadPrediction:
    """A site adapter's segmentation of an uploaded series, all in memory."""

    labels: np.ndarray
    """(X, Y, Z) uint8 on the series grid (X = columns, Y = rows, Z = slices in slice order)"""
    seg: bytes
    """the DICOM SEG file referencing the uploaded slices"""
    structures: list[str]

    def plane(self, index: int) -> np.ndarray:
        """(rows, cols) labels of slice ``index`` (0-based, the order of :meth:`UploadedSeries.volume`)."""
        return self.labels[:, :, index].T


def predict_upload(series: UploadedSeries, sites, adapter_dir) -> UploadPrediction:
    """Segment ``series`` with the base in ``sites`` (a :class:`~scalpel.medical.predict.SiteAdapters`)
    and the adapter at ``adapter_dir``; the SEG is built in memory, nothing touches the disk.

    Raises:
        DataError: slices without geometry, a series smaller than the base's patch, a
            multi-frame upload; BaseModelMismatchError: the adapter is another base's.
    """
    from scalpel.medical.dicom.seg import seg_bytes
    from scalpel.medical.predict import read_series

    prepared = read_series(series.datasets)
    labels = sites.predict(prepared, adapter_dir)
    return UploadPrediction(labels, seg_bytes(sites.seg(prepared, labels)), list(sites.spec.structures))
