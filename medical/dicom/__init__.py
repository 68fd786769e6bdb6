"""DICOM: scan folders into series, load them as MONAI MetaTensors, align labels, de-identify.

    inventory = scan_folder("study/")                 # patients, studies, series, problems
    image = load_series(inventory.series[0])          # MetaTensor (C, X, Y, Z), RAS affine, HU for CT
    label = load_label("mask.nii.gz", image)          # on the same grid, or an error
    report = deidentify_folder("in/", "out/", DeidOptions(retain_longitudinal_dates=True))

Names are imported when first used (PEP 562): scanning and de-identifying need only pydicom,
while loading volumes and labels imports torch and MONAI, which take seconds to start.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

#: name -> the module that defines it.
_EXPORTS = {
    "DeidOptions": "deid",
    "KeyFileError": "deid",
    "deidentify_dataset": "deid",
    "read_key_file": "deid",
    "BurnedInAnnotationError": "deid_folder",
    "DeidReport": "deid_folder",
    "NothingDeidentifiedError": "deid_folder",
    "ResumeError": "deid_folder",
    "deidentify_folder": "deid_folder",
    "load_label": "labels",
    "WINDOW_PRESETS": "pixels",
    "UnsupportedTransferSyntaxError": "pixels",
    "apply_window": "pixels",
    "ImageFile": "scan",
    "Inventory": "scan",
    "Series": "scan",
    "scan_folder": "scan",
    "LoadDicomSeriesd": "transforms",
    "LPS_TO_RAS": "volume",
    "SliceSpacingWarning": "volume",
    "load_series": "volume",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from scalpel.medical.dicom.deid import DeidOptions, KeyFileError, deidentify_dataset, read_key_file
    from scalpel.medical.dicom.deid_folder import (
        BurnedInAnnotationError,
        DeidReport,
        NothingDeidentifiedError,
        ResumeError,
        deidentify_folder,
    )
    from scalpel.medical.dicom.labels import load_label
    from scalpel.medical.dicom.pixels import WINDOW_PRESETS, UnsupportedTransferSyntaxError, apply_window
    from scalpel.medical.dicom.scan import ImageFile, Inventory, Series, scan_folder
    from scalpel.medical.dicom.transforms import LoadDicomSeriesd
    from scalpel.medical.dicom.volume import LPS_TO_RAS, SliceSpacingWarning, load_series


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    elif importlib.util.find_spec(f"{__name__}.{name}") is not None:  # a submodule, as `dicom.volume`
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # the next lookup skips this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
