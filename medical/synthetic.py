"""Two synthetic CT "scanners" written as real DICOM series with NIfTI labels, for demos and tests.

No medical weights or data can be downloaded at run time, so the embedded default makes its
own: MONAI's sphere phantoms (``monai.data.create_test_image_3d``) whose label is set by
the sphere's intensity (``label = ceil(intensity x classes)``), turned into Hounsfield
units and written slice by slice as CT Image Storage files. A scanner differs from another
the way real ones do:

* intensity calibration: measured HU = ``gain`` x true HU + ``offset`` (a drifted or
  differently calibrated scanner, or another kernel/kVp); since the structures differ by
  intensity, a model trained on one scanner mis-labels the other's;
* noise: Gaussian, ``noise_hu`` standard deviation;
* grid: pixel spacing and slice spacing;
* storage: ``RescaleSlope``/``RescaleIntercept`` (stored = (HU - intercept) / slope), which
  the loader must undo.

Layout of a site folder (what ``scalpel medical adapt`` reads)::

    site/dicom/<case>/<instance>.dcm      one CT series per case folder
    site/labels/<case>.nii.gz             label map on that series' grid (0 = background)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from scalpel.core.errors import ConfigError, DataError
from scalpel.core.files import atomic_write

#: The structures of the phantom labels, in label-value order (1, 2).
STRUCTURES = ("dim sphere", "bright sphere")


@dataclass(frozen=True)
class ScannerProfile:
    """How one synthetic scanner measures and stores a phantom."""

    name: str
    gain: float
    """measured HU = gain x true HU + offset"""
    offset: float
    noise_hu: float
    """standard deviation of the additive Gaussian noise, HU"""
    pixel_spacing: tuple[float, float]
    """(row, column) spacing in mm"""
    slice_spacing: float
    rescale_slope: float
    rescale_intercept: float
    manufacturer: str

    def measure(self, true_hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """What this scanner reads from a phantom of ``true_hu``: its calibration, then its noise."""
        return self.gain * true_hu + self.offset + rng.normal(0.0, self.noise_hu, size=true_hu.shape)


SCANNERS: dict[str, ScannerProfile] = {
    "A": ScannerProfile("A", gain=1.0, offset=0.0, noise_hu=20.0, pixel_spacing=(1.0, 1.0), slice_spacing=2.0,
                        rescale_slope=1.0, rescale_intercept=-1024.0, manufacturer="Synthetic Scanner A"),
    "B": ScannerProfile("B", gain=1.6, offset=-180.0, noise_hu=45.0, pixel_spacing=(0.8, 0.8), slice_spacing=2.5,
                        rescale_slope=0.5, rescale_intercept=-2048.0, manufacturer="Synthetic Scanner B"),
}

#: true HU of the phantom: background soft tissue, spheres brighter with their intensity in [0, 1]
_TISSUE_HU, _CONTRAST_HU = -50.0, 300.0


@dataclass(frozen=True)
class SyntheticCase:
    case: str
    series_dir: Path
    label_path: Path
    hu: np.ndarray
    """(X, Y, Z) measured HU before storage rounding, X = columns, Y = rows, Z = slices"""
    label: np.ndarray
    """(X, Y, Z) uint8"""
    affine: np.ndarray
    """4x4 RAS voxel-to-mm affine (what ``load_series`` returns)"""


def phantom(shape: tuple[int, int, int], seed: int, num_objs: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """True HU ``(X, Y, Z)`` float32 and label ``(X, Y, Z)`` uint8 with values 0..len(STRUCTURES)."""
    from monai.data import create_test_image_3d

    radius = max(3, min(shape) // 5)
    image, label = create_test_image_3d(*shape, num_objs=num_objs, rad_max=radius, rad_min=max(2, radius // 2),
                                        num_seg_classes=len(STRUCTURES), random_state=np.random.RandomState(seed))
    return (_TISSUE_HU + _CONTRAST_HU * image).astype(np.float32), label.astype(np.uint8)


def write_site(
    folder: str | os.PathLike,
    scanner: str | ScannerProfile,
    *,
    cases: int = 4,
    shape: tuple[int, int, int] = (32, 32, 32),
    seed: int = 0,
) -> list[SyntheticCase]:
    """Write ``cases`` phantoms as seen by ``scanner`` under ``folder`` (layout in the module doc).

    Raises:
        ConfigError: unknown scanner name, fewer than one case, or a dimension under 8 voxels.
    """
    profile = SCANNERS.get(scanner) if isinstance(scanner, str) else scanner
    problems = []
    if profile is None:
        problems.append(f"unknown scanner {scanner!r}; choose from {sorted(SCANNERS)} or pass a ScannerProfile")
    if cases < 1:
        problems.append(f"cases must be >= 1, got {cases}")
    if len(shape) != 3 or min(shape) < 8:
        problems.append(f"shape must be three sizes >= 8, got {tuple(shape)}")
    if problems:
        raise ConfigError("synthetic site", problems)
    root = Path(folder)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 7919 * (ord(profile.name[0]) if profile.name else 0))
    written = []
    for k in range(cases):
        case = f"{profile.name}{k:03d}"
        true_hu, label = phantom(shape, seed=seed * 1000 + k + 100 * (ord(profile.name[0]) if profile.name else 0))
        measured = profile.measure(true_hu, rng)
        series_dir = root / "dicom" / case
        affine = write_ct_series(series_dir, measured, profile, patient_id=f"SYN-{case}", patient_name=f"Synthetic^{case}")
        label_path = root / "labels" / f"{case}.nii.gz"
        write_nifti(label_path, label, affine)
        written.append(SyntheticCase(case, series_dir, label_path, measured.astype(np.float32), label, affine))
    return written


def write_ct_series(
    folder: Path, hu: np.ndarray, profile: ScannerProfile, *, patient_id: str, patient_name: str
) -> np.ndarray:
    """Write ``hu`` ``(X, Y, Z)`` as an axial CT series, one file per slice; return the RAS affine.

    Slice ``z`` holds ``hu[:, :, z].T`` (rows = Y, columns = X); positions advance along +z
    (LPS superior), so :func:`~scalpel.medical.dicom.load_series` returns ``hu`` unchanged.
    """
    stored = np.round((hu - profile.rescale_intercept) / profile.rescale_slope)
    if stored.min() < 0 or stored.max() > 65535:
        raise DataError(f"scanner {profile.name}: HU range [{hu.min():.0f}, {hu.max():.0f}] does not fit 16-bit storage "
                        f"with slope {profile.rescale_slope} and intercept {profile.rescale_intercept}; change them")
    row_mm, col_mm = profile.pixel_spacing
    origin = np.array([-hu.shape[0] * col_mm / 2, -hu.shape[1] * row_mm / 2, 0.0])  # LPS

    def describe(ds: Dataset, z: int) -> None:
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, "19700101", "O"
        ds.StudyDate, ds.StudyTime, ds.SeriesDate, ds.ContentDate = "20260101", "120000", "20260101", "20260101"
        ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = "SYN1", "1", ""
        ds.InstitutionName, ds.StationName = f"Synthetic site {profile.name}", f"SYN-{profile.name}"
        ds.Manufacturer, ds.ManufacturerModelName = profile.manufacturer, f"Phantom {profile.name}"
        ds.Modality, ds.SeriesDescription, ds.BodyPartExamined = "CT", "Synthetic phantom", "PHANTOM"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in origin + [0.0, 0.0, z * profile.slice_spacing]]
        ds.PixelSpacing = [f"{v:g}" for v in profile.pixel_spacing]
        ds.SliceThickness = f"{profile.slice_spacing:g}"
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = f"{profile.rescale_slope:g}", f"{profile.rescale_intercept:g}", "HU"
        ds.WindowCenter, ds.WindowWidth = "40", "400"

    write_series(folder, stored.astype(np.uint16), CTImageStorage, describe)
    lps = np.diag([col_mm, row_mm, profile.slice_spacing, 1.0])
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def write_series(folder: Path, stored: np.ndarray, sop_class: str, describe: Callable[[Dataset, int], None]) -> None:
    """Write ``stored`` ``(X, Y, Z)`` (uint16 or int16) as one single-frame image per slice
    ``folder/NNNN.dcm`` (slice ``z`` holds ``stored[:, :, z].T``), new study, series and frame
    of reference; ``describe(dataset, z)`` adds the patient, geometry and modality attributes."""
    folder.mkdir(parents=True, exist_ok=True)
    uids = generate_uid(), generate_uid(), generate_uid()
    for z in range(stored.shape[2]):
        pixels = np.ascontiguousarray(stored[:, :, z].T)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = uids
        ds.SeriesNumber, ds.InstanceNumber = 1, z + 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = pixels.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, int(pixels.dtype.kind == "i")
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
        describe(ds, z)
        with atomic_write(folder / f"{z:04d}.dcm") as handle:
            ds.save_as(handle, enforce_file_format=True)


def write_nifti(path: Path, label: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    image = nib.Nifti1Image(np.ascontiguousarray(label.astype(np.uint8)), affine)
    with atomic_write(path) as handle:
        handle.write(image.to_bytes() if not str(path).endswith(".gz") else _gzip(image.to_bytes()))


def _gzip(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data, mtime=0)
