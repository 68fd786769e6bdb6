"""Write small, valid CT series to disk for tests, with known geometry and values."""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@dataclass
class WrittenSeries:
    paths: list[Path]  # in slice order (by position along the normal)
    datasets: list[Dataset]
    stored: np.ndarray  # (Z, rows, cols) stored values in slice order
    hu: np.ndarray  # (Z, rows, cols) = stored * slope + intercept
    orientation: tuple[float, ...]
    origin: np.ndarray
    pixel_spacing: tuple[float, float]  # (row, column) spacing
    step: np.ndarray  # position difference between consecutive slices (LPS mm)


def tilted_orientation(degrees: float = 20.0) -> tuple[float, ...]:
    """Axial rotated about the patient's y axis then x axis: an oblique plane."""
    a, b = np.radians(degrees), np.radians(degrees / 2)
    ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    r = rx @ ry
    return tuple(float(v) for v in np.concatenate([r[:, 0], r[:, 1]]))


def write_series(
    folder: Path,
    *,
    n: int = 6,
    rows: int = 10,
    cols: int = 12,
    pixel_spacing: tuple[float, float] = (0.75, 0.5),
    gap: float = 2.5,
    orientation: tuple[float, ...] = AXIAL,
    origin: tuple[float, float, float] = (-30.0, -40.0, 15.0),
    skip: tuple[int, ...] = (),
    shuffle: bool = True,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_name: str = "Doe^Jane",
    patient_id: str = "PID-12345",
    description: str = "Chest Doe^Jane 2020-01-02",
    seed: int = 0,
    prefix: str = "",
    extra: dict | None = None,
) -> WrittenSeries:
    """A CT series of ``n`` slices (minus ``skip`` indices) with random stored values, written
    under random file names and (by default) in shuffled order with InstanceNumber by position."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    o = np.asarray(orientation)
    normal = np.cross(o[:3], o[3:])
    step = normal * gap
    study_uid, series_uid = study_uid or generate_uid(), series_uid or generate_uid()
    frame_uid = generate_uid()
    indices = [k for k in range(n) if k not in skip]
    order = list(range(len(indices)))
    if shuffle:
        random.Random(seed).shuffle(order)
    paths, datasets, stored = [None] * len(indices), [None] * len(indices), []
    for k in indices:
        stored.append(rng.integers(0, 2000, size=(rows, cols), dtype=np.uint16))
    for pos_in_file_order, slot in enumerate(order):
        k = indices[slot]
        ds = _ct_slice(stored[slot], study_uid, series_uid, frame_uid, orientation, np.asarray(origin) + k * step,
                       pixel_spacing, gap, slot + 1, patient_name, patient_id, description)
        for key, value in (extra or {}).items():
            setattr(ds, key, value)
        path = folder / f"{prefix}{rng.integers(1e9):09d}_{pos_in_file_order}"
        ds.save_as(path, enforce_file_format=True)
        paths[slot], datasets[slot] = path, ds
    stored_array = np.stack(stored)
    return WrittenSeries(paths, datasets, stored_array, stored_array.astype(np.float64) * 1.0 - 1024.0,
                         tuple(orientation), np.asarray(origin, dtype=float), pixel_spacing, step)


def _ct_slice(pixels, study_uid, series_uid, frame_uid, orientation, position, pixel_spacing, gap, number,
              patient_name, patient_id, description) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, "19700101", "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
    ds.StudyDate, ds.StudyTime, ds.SeriesDate, ds.ContentDate = "20200102", "101500", "20200102", "20200102"
    ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = "ACC777", "S1", "House^Gregory"
    ds.InstitutionName, ds.StationName, ds.DeviceSerialNumber = "General Hospital", "CT-STATION-9", "SN-4242"
    ds.Manufacturer, ds.ManufacturerModelName = "ACME", "Scanner 1"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = "CT", 1, number, description
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.PixelSpacing = [str(v) for v in pixel_spacing]
    ds.SliceThickness = str(gap)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = "1", "-1024", "HU"
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    ds.PixelData = pixels.tobytes()
    return ds


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to ``keep`` of its length, as an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def write_without_part10_header(ds: Dataset, path: Path, *, implicit_vr: bool = True) -> Path:
    """Write ``ds`` as a bare data set: no 128-byte preamble, no 'DICM', no file meta group,
    as some old archives and tools store DICOM."""
    bare = copy.deepcopy(ds)
    bare.preamble = None
    bare.file_meta = FileMetaDataset()
    path.parent.mkdir(parents=True, exist_ok=True)
    bare.save_as(path, implicit_vr=implicit_vr, little_endian=True, enforce_file_format=False)
    return path
