"""MONAI dictionary transform: load a DICOM series and its label in a ``Compose`` pipeline.

    Compose([LoadDicomSeriesd(), Orientationd(["image", "label"], "RAS"), Spacingd(...)])
    sample = {"image": "exam/series1/", "label": "exam/mask.nii.gz"}   # or a Series, a SEG file
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from monai.transforms import Transform

from scalpel.medical.dicom.labels import load_label
from scalpel.medical.dicom.volume import load_series


class LoadDicomSeriesd(Transform):
    """``data[image_key]`` (a Series or a folder with one series) -> MetaTensor; ``data[label_key]``,
    if present (a NIfTI or DICOM SEG path), -> label on the image's grid (an error if it does not fit)."""

    def __init__(self, image_key: Hashable = "image", label_key: Hashable | None = "label", **load_kwargs: Any):
        self.image_key, self.label_key, self.load_kwargs = image_key, label_key, load_kwargs

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        out[self.image_key] = load_series(out[self.image_key], **self.load_kwargs)
        if self.label_key is not None and out.get(self.label_key) is not None:
            out[self.label_key] = load_label(out[self.label_key], out[self.image_key])
        return out
