"""DICOM: scan folders into series, load them as MONAI MetaTensors, align labels, de-identify.

    inventory = scan_folder("study/")                 # patients, studies, series, problems
    image = load_series(inventory.series[0])          # MetaTensor (C, X, Y, Z), RAS affine, HU for CT
    label = load_label("mask.nii.gz", image)          # on the same grid, or an error
    report = deidentify_folder("in/", "out/", DeidOptions(retain_longitudinal_dates=True))
"""

from scalpel.medical.dicom.deid import DeidOptions, deidentify_dataset
from scalpel.medical.dicom.deid_folder import BurnedInAnnotationError, DeidReport, deidentify_folder
from scalpel.medical.dicom.labels import load_label
from scalpel.medical.dicom.pixels import WINDOW_PRESETS, UnsupportedTransferSyntaxError, apply_window
from scalpel.medical.dicom.scan import ImageFile, Inventory, Series, scan_folder
from scalpel.medical.dicom.transforms import LoadDicomSeriesd
from scalpel.medical.dicom.volume import LPS_TO_RAS, SliceSpacingWarning, load_series

__all__ = [
    "LPS_TO_RAS",
    "WINDOW_PRESETS",
    "BurnedInAnnotationError",
    "DeidOptions",
    "DeidReport",
    "ImageFile",
    "Inventory",
    "LoadDicomSeriesd",
    "Series",
    "SliceSpacingWarning",
    "UnsupportedTransferSyntaxError",
    "apply_window",
    "deidentify_dataset",
    "deidentify_folder",
    "load_label",
    "load_series",
    "scan_folder",
]
