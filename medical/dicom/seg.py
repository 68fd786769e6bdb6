"""Predicted label maps -> DICOM Segmentation (SEG) objects that reference their source series.

    seg = build_seg(labels, source_datasets, ["liver", "lesion"], AlgorithmInfo("scalpel UNet", "0.1", site="B",
                    method="lora", adapter_fingerprint="sha256:..."))
    data = seg_bytes(seg)                              # or seg.save_as("pred.dcm")
    label = load_label("pred.dcm", image)              # our own loader reads it back on the image grid

Follows DICOM PS3.3 A.51 (Segmentation IOD) through highdicom: one segment per structure
(segment number = label value), BINARY frames for the source images in slice order, the
source images and their FrameOfReferenceUID referenced, and the algorithm that made the
masks in each segment's Segmentation Algorithm Identification Sequence (name, family
``DCM 123110 Artificial Intelligence``, version, and parameters: site, method, adapter
fingerprint, base fingerprint). Structure names that SNOMED CT knows through pydicom's code
dictionary (``liver``, ``spleen``, ``kidney``...) get that code; others a code in a local
``99SCALPEL`` scheme (PS3.3 8.2: private coding schemes start with ``99``).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from scalpel.core.errors import DataError
from scalpel.core.files import atomic_write

#: Patient/study attributes a SEG copies from its source (Type 2: present, possibly empty). Images
#: converted from NIfTI or stripped by other tools may lack them; the SEG then gets them empty.
_TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                 "ReferringPhysicianName", "AccessionNumber", "StudyID")
#: The coding scheme of structure codes that SNOMED CT does not provide here (PS3.3 8.2: "99" = private).
LOCAL_SCHEME = "99SCALPEL"
SERIES_DESCRIPTION = "Scalpel segmentation"


@dataclass(frozen=True)
class AlgorithmInfo:
    """What made the masks: written into the SEG's algorithm identification."""

    name: str
    version: str
    site: str = ""
    method: str = ""
    adapter_fingerprint: str = ""
    base_fingerprint: str = ""

    def parameters(self) -> dict[str, str]:
        values = {"site": self.site, "method": self.method, "adapter_fingerprint": self.adapter_fingerprint,
                  "base_fingerprint": self.base_fingerprint}
        return {k: v for k, v in values.items() if v}


def build_seg(
    labels: np.ndarray,
    source: Sequence[Dataset],
    structures: Sequence[str],
    algorithm: AlgorithmInfo,
    *,
    series_number: int = 901,
    manufacturer: str = "Scalpel",
    frame_order: Sequence[int] | None = None,
):
    """Make a ``highdicom.seg.Segmentation`` of ``labels`` on the images ``source``: single-frame
    slices, or one multi-frame image (Enhanced CT/MR) with ``frame_order``.

    Args:
        labels: ``(X, Y, Z)`` integer label map (0 = background, ``k`` = ``structures[k - 1]``) on
            the series grid as :func:`~scalpel.medical.dicom.load_series` returns it: X = columns,
            Y = rows, Z = slices in the order of ``source``.
        source: the series' image datasets (pixel data may be absent), sorted along the slice normal.
        structures: one name per foreground label value.
        algorithm: name, version and adapter identity recorded in the SEG.
        frame_order: for a multi-frame ``source``, the source frame (0-based) of each label slice
            ``Z`` (``load_series(...).meta["frame_indices"]``); default: stored frame order.

    Raises:
        DataError: the label map does not fit the source images, holds values above the number
            of structures, or the source images are not one series (of single-frame slices or
            one multi-frame image).
    """
    import highdicom as hd

    labels = np.asarray(labels)
    _check(labels, source, structures, frame_order)
    frames = labels.transpose(2, 1, 0)  # (Z, rows, cols) in source order
    if frame_order is not None:  # frame f of the source holds the label slice z with frame_order[z] == f
        frames = frames[np.argsort(np.asarray(frame_order))]
    frames = np.ascontiguousarray(frames).astype(np.uint8)
    identification = hd.AlgorithmIdentificationSequence(
        name=algorithm.name, family=_codes().cid7162.ArtificialIntelligence, version=algorithm.version,
        source="scalpel", parameters=algorithm.parameters() or None,
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=k, segment_label=name[:64], segmented_property_category=category,
            segmented_property_type=prop, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=identification,
        )
        for k, name in enumerate(structures, start=1)
        for category, prop in [structure_codes(name, k)]
    ]
    return hd.seg.Segmentation(
        source_images=[_with_type2(ds) for ds in source],
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=manufacturer,
        manufacturer_model_name=algorithm.name[:64],
        software_versions=algorithm.version,
        device_serial_number=(algorithm.adapter_fingerprint or "none")[:64],
        series_description=f"{SERIES_DESCRIPTION} ({algorithm.site or 'base'})"[:64],
        content_description=f"{algorithm.method or 'base'} adapter"[:64],
        content_label="SCALPEL_SEG",
        omit_empty_frames=False,  # every source image keeps its frame: readers map slices 1:1
    )


def seg_bytes(seg) -> bytes:
    """The SEG as a DICOM Part 10 file in memory (for a download; nothing touches the disk)."""
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_seg(seg, path: str | os.PathLike) -> Path:
    """Write the SEG atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as handle:
        handle.write(seg_bytes(seg))
    return path


def structure_codes(name: str, number: int):
    """``(category, property type)`` codes of a structure: SNOMED CT where pydicom knows the
    name as an organ (``liver`` -> SCT 10200004), else ``Tissue`` and a local code."""
    from highdicom.sr import CodedConcept

    codes = _codes()
    key = "".join(part.capitalize() for part in name.replace("-", " ").replace("_", " ").split())
    known = getattr(codes.SCT, key, None) if key else None
    if known is not None:
        return codes.SCT.AnatomicalStructure, known
    return codes.SCT.Tissue, CodedConcept(value=f"S{number:03d}", scheme_designator=LOCAL_SCHEME, meaning=name[:64])


def _with_type2(ds: Dataset) -> Dataset:
    """``ds`` itself, or a shallow copy with the missing Type 2 attributes empty (never edits ``ds``)."""
    missing = [name for name in _TYPE2_COPIED if name not in ds]
    if not missing:
        return ds
    out = Dataset()  # a new element dict sharing the elements (pixel data is not copied)
    for element in ds:
        out.add(element)
    if hasattr(ds, "file_meta"):
        out.file_meta = ds.file_meta
    for name in missing:
        setattr(out, name, "")
    return out


def _codes():
    from pydicom.sr.codedict import codes

    return codes


def _check(labels: np.ndarray, source: Sequence[Dataset], structures: Sequence[str], frame_order: Sequence[int] | None) -> None:
    problems = []
    if not source:
        raise DataError("no source images to reference: give the series' datasets in slice order")
    frames = [int(ds.get("NumberOfFrames", 1) or 1) for ds in source]
    multi_frame = len(source) == 1 and frames[0] > 1
    if max(frames) > 1 and not multi_frame:
        problems.append("the source mixes several images with several frames each; give one multi-frame image or single-frame slices")
    slices = frames[0] if multi_frame else len(source)
    if frame_order is not None and sorted(int(f) for f in frame_order) != list(range(slices)):
        problems.append(f"frame_order must list each of the {slices} source frames once, got {list(frame_order)[:8]}")
    if labels.ndim != 3:
        problems.append(f"labels must be (X, Y, Z), got shape {labels.shape}")
    elif labels.shape != (int(source[0].Columns), int(source[0].Rows), slices):
        what = f"{slices} frames" if multi_frame else f"{slices} images"
        problems.append(f"labels {labels.shape} do not fit {what} of {source[0].Columns} columns x "
                        f"{source[0].Rows} rows (expected (columns, rows, slices))")
    if np.issubdtype(labels.dtype, np.floating) and not np.all(np.mod(labels, 1) == 0):
        problems.append("labels must be integers (argmax of the network output), not probabilities")
    if labels.size and (labels.min() < 0 or labels.max() > len(structures)):
        problems.append(f"label values {int(labels.min())}..{int(labels.max())} but only {len(structures)} structure(s) named")
    if len({str(ds.get('SeriesInstanceUID', '')) for ds in source}) > 1:
        problems.append("the source images come from several series; a SEG references one series")
    if problems:
        raise DataError("cannot write the DICOM SEG: " + "; ".join(problems))
