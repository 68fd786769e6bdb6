"""Scan a folder of DICOM files and group them into patients, studies and series.

Files are found recursively under any names (a DICOMDIR, if present, is just one more
file and is not needed). A series (SeriesInstanceUID) is split further where its images
differ in orientation, echo or acquisition, because such images do not stack into one
volume; localizers (scouts) are dropped and reported with the reason. Headers only are
read here (pixel data is skipped), in parallel threads.
"""

from __future__ import annotations

import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from scalpel.core.errors import DataError
from scalpel.medical.dicom.grouping import ImageFile, Series, group_series
from scalpel.medical.dicom.reading import PIXEL_KEYWORDS, integrity_problem, read_dicom

#: Media Storage Directory (DICOMDIR) SOP class: an index, not an image.
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
SEGMENTATION_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


@dataclass
class Inventory:
    """Everything found under a folder: series to load, and what was skipped, dropped or broken."""

    root: Path
    series: list[Series] = field(default_factory=list)
    non_dicom: list[Path] = field(default_factory=list)  # skipped: not DICOM at all
    non_image: list[tuple[Path, str]] = field(default_factory=list)  # DICOMDIR, SR, RT, SEG ... (path, SOP class)
    dropped: list[tuple[Path, str]] = field(default_factory=list)  # localizers, ... (path, reason)
    errors: list[tuple[Path, str]] = field(default_factory=list)  # unreadable DICOM (path, message)
    #: Whole datasets read by ``scan_folder(keep_datasets=True)``, so loading need not read them again.
    datasets: dict[Path, pydicom.Dataset] = field(default_factory=dict, repr=False)

    def refuse_damaged(self, fix: str = "copy them again or remove them") -> None:
        """Raise if any DICOM file could not be read whole: a damaged slice left out of a series
        gives a volume with a hole (and a SEG that misses it), and nothing else would say so.

        Raises:
            DataError: naming the first damaged files and ``fix``.
        """
        if self.errors:
            listed = "; ".join(why for _, why in self.errors[:3]) + ("; ..." if len(self.errors) > 3 else "")
            raise DataError(f"{self.root} holds {len(self.errors)} damaged or unreadable DICOM file(s): {listed}; {fix}")

    def patients(self) -> dict[str, dict[str, list[Series]]]:
        """patient ID -> study UID -> series."""
        out: dict[str, dict[str, list[Series]]] = defaultdict(lambda: defaultdict(list))
        for s in self.series:
            out[s.patient_id][s.study_uid].append(s)
        return {p: dict(studies) for p, studies in out.items()}

    def segmentations(self) -> list[Path]:
        return [p for p, sop in self.non_image if sop == SEGMENTATION_SOP_CLASS]

    def find(self, text: str) -> Series:
        """The one series whose key or description contains ``text``."""
        hits = [s for s in self.series if text in s.key or text == s.description]
        if len(hits) != 1:
            raise DataError(f"{len(hits)} series match {text!r} under {self.root}; give a longer part of the SeriesInstanceUID")
        return hits[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "patients": {
                patient: {
                    study: [
                        {
                            "series": s.key,
                            "modality": s.modality,
                            "description": s.description,
                            "files": len(s.files),
                            "shape": list(s.shape),
                            "spacing": list(s.spacing() or []),
                            "problems": s.problems,
                        }
                        for s in series
                    ]
                    for study, series in studies.items()
                }
                for patient, studies in self.patients().items()
            },
            "non_dicom_skipped": len(self.non_dicom),
            "non_image": [[str(p), pydicom.uid.UID(sop).name] for p, sop in self.non_image],
            "dropped": [[str(p), why] for p, why in self.dropped],
            "errors": [[str(p), why] for p, why in self.errors],
        }


def scan_folder(
    path: str | os.PathLike,
    *,
    strict: bool = False,
    drop_localizers: bool = True,
    keep_datasets: bool = False,
    verify_pixels: bool = False,
    workers: int | None = None,
) -> Inventory:
    """Read every DICOM header under ``path`` and group the images into series.

    Args:
        path: a folder (searched recursively) or a single file.
        strict: raise on the first unreadable DICOM file instead of recording it in
            ``Inventory.errors``.
        drop_localizers: leave out localizers/scouts (listed in ``Inventory.dropped`` with the reason).
        keep_datasets: read whole files (pixels too) and keep them in ``Inventory.datasets``;
            saves a second read when the series are loaded right away.
        verify_pixels: also read compressed pixel data and decode its first frame, so damaged
            files are listed as errors (slower). The length of uncompressed pixel data is
            always checked against the image size, so truncated files are errors either way.
        workers: reader threads (default: one per core, at most 4).

    Returns:
        An :class:`Inventory`. Non-DICOM files are skipped and counted; they never raise. Data
        sets stored without the part-10 header are read as DICOM.
    """
    root = Path(path)
    if not root.exists():
        raise DataError(f"{root} does not exist; give a folder of DICOM files")
    paths = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    inventory = Inventory(root=root)
    results = parallel_map(lambda p: _read_header(p, keep_datasets, verify_pixels), paths, workers)
    images: list[ImageFile] = []
    for p, kind, value in results:
        if kind == "image":
            image, ds = value
            images.append(image)
            if keep_datasets:
                inventory.datasets[p] = ds
        elif kind == "non_dicom":
            inventory.non_dicom.append(p)
        elif kind == "non_image":
            inventory.non_image.append((p, value))
        else:
            if strict:
                raise DataError(value)
            inventory.errors.append((p, value))
    inventory.series = group_series(images, inventory.dropped if drop_localizers else None)
    return inventory


def parallel_map(fn, items: list, workers: int | None = None) -> list:
    """``[fn(x) for x in items]`` on a few threads. Header parsing holds the GIL, so more threads
    than cores only add contention; threads pay off for file I/O and for C decoders (JPEG 2000,
    JPEG-LS) that release the GIL."""
    if workers is None:  # a handful of files is read faster than threads start
        workers = 1 if len(items) < 8 else min(4, os.cpu_count() or 1)
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


def _read_header(path: Path, whole: bool = False, verify_pixels: bool = False) -> tuple[Path, str, Any]:
    try:
        ds = read_dicom(path, defer_size=None if whole else 1024)
    except InvalidDicomError:
        return path, "non_dicom", None
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as err:
        return path, "error", f"{path}: not a readable DICOM file ({type(err).__name__}: {err}); it may be truncated, copy it again"
    try:
        sop_class = str(ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID", ""))
        if sop_class == DICOMDIR_SOP_CLASS:
            return path, "non_image", sop_class
        problem = integrity_problem(ds, file_size=path.stat().st_size, decode=verify_pixels)
        if problem:
            return path, "error", f"{path}: {problem}"
        if sop_class == SEGMENTATION_SOP_CLASS or not any(k in ds for k in PIXEL_KEYWORDS):
            return path, "non_image", sop_class
        return path, "image", (_image_file(path, ds), ds)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as err:
        return path, "error", f"{path}: DICOM header has invalid values ({type(err).__name__}: {err})"


def _image_file(path: Path, ds: pydicom.Dataset) -> ImageFile:
    orientation, position, spacing = _geometry(ds)
    number = ds.get("InstanceNumber")
    return ImageFile(
        path=path,
        patient_id=str(ds.get("PatientID", "") or ""),
        study_uid=str(ds.get("StudyInstanceUID", "") or ""),
        series_uid=str(ds.get("SeriesInstanceUID", "") or f"no-series-uid:{path.parent}"),
        sop_uid=str(ds.get("SOPInstanceUID", "")),
        modality=str(ds.get("Modality", "") or ""),
        description=str(ds.get("SeriesDescription", "") or ""),
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        frames=int(ds.get("NumberOfFrames") or 1),
        orientation=orientation,
        position=position,
        pixel_spacing=spacing,
        echo=str(ds.get("EchoNumbers", "") or ""),
        acquisition=str(ds.get("AcquisitionNumber", "") or ""),
        instance_number=int(number) if number not in (None, "") else None,
        image_type=tuple(str(v).upper() for v in (ds.get("ImageType") or ())),
        transfer_syntax=str(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2")),
        bits_allocated=int(ds.get("BitsAllocated", 16)),
        bits_stored=int(ds.get("BitsStored", ds.get("BitsAllocated", 16))),
        signed=int(ds.get("PixelRepresentation", 0)) == 1,
        samples_per_pixel=int(ds.get("SamplesPerPixel", 1)),
        photometric=str(ds.get("PhotometricInterpretation", "")),
        rescale=(float(ds.RescaleSlope), float(ds.get("RescaleIntercept", 0.0))) if "RescaleSlope" in ds else None,
        modality_lut=bool(ds.get("ModalityLUTSequence")),
    )


def _geometry(ds: pydicom.Dataset) -> tuple[tuple[float, ...] | None, tuple[float, float, float] | None, tuple[float, float] | None]:
    """Orientation, first position and pixel spacing, from the top level or the functional groups."""
    orientation, position, spacing = ds.get("ImageOrientationPatient"), ds.get("ImagePositionPatient"), ds.get("PixelSpacing")
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    per_frame = (ds.get("PerFrameFunctionalGroupsSequence") or [None])[0]
    for group in (g for g in (per_frame, shared) if g is not None):
        if orientation is None and group.get("PlaneOrientationSequence"):
            orientation = group.PlaneOrientationSequence[0].get("ImageOrientationPatient")
        if position is None and group.get("PlanePositionSequence"):
            position = group.PlanePositionSequence[0].get("ImagePositionPatient")
        if spacing is None and group.get("PixelMeasuresSequence"):
            spacing = group.PixelMeasuresSequence[0].get("PixelSpacing")
    return (
        tuple(float(v) for v in orientation) if orientation else None,
        tuple(float(v) for v in position) if position else None,  # type: ignore[return-value]
        (float(spacing[0]), float(spacing[1])) if spacing else None,
    )
