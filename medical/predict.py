"""Inference with a base checkpoint and its site adapters: a DICOM series -> a label map -> a DICOM SEG.

    sites = SiteAdapters("base/")                         # the base is loaded once
    series = read_series("patient/CT/")                    # or read_series(list_of_pydicom_datasets)
    labels = sites.predict(series, "runs/site_b/adapter")  # (X, Y, Z) uint8 on the series grid
    seg = sites.seg(series, labels)                        # highdicom Segmentation naming the adapter
    sites.predict(series, "runs/site_c/adapter")           # switches adapters; the base is not reloaded

    find_site_adapters("base/", "runs/")                   # every site adapter trained on this base

Input normalisation is the base's own (:class:`~scalpel.medical.adapt.BaseSpec`: HU window,
patch, grid); inference is :class:`~scalpel.medical.segmentation.SegmentationTask`'s sliding
window with Gaussian blending. A base with a ``spacing``/``orientation`` sees the series on
that grid, as in training, and its class probabilities are resampled back onto the series'
own grid before the argmax; otherwise the series is used voxel for voxel.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
from monai.data import MetaTensor
from pydicom.dataset import Dataset
from torch import nn

from scalpel.core.artifacts import SCALPEL_FILE, STATS_PREFIX, WEIGHTS_FILE, load_adapter, read_adapter_meta
from scalpel.core.delta import base_name, load_norm_statistics, set_active_adapter
from scalpel.core.errors import BaseModelMismatchError, DataError
from scalpel.core.files import read_safetensors
from scalpel.medical.adapt import BaseSpec, load_base
from scalpel.medical.dicom import load_series, scan_folder
from scalpel.medical.dicom.pixels import modality_values
from scalpel.medical.dicom.scan import slice_normal
from scalpel.medical.dicom.seg import AlgorithmInfo, build_seg
from scalpel.medical.dicom.volume import LPS_TO_RAS, slices_affine
from scalpel.medical.networks import checkpoint_sha256
from scalpel.medical.segmentation import SegmentationTask
from scalpel.medical.site import from_grid, normalise_hu, to_grid


@dataclass
class SeriesInput:
    """One image series ready for inference."""

    hu: torch.Tensor
    """(X, Y, Z) float32 modality values (HU for CT); X = columns, Y = rows, Z = slices"""
    datasets: list[Dataset]
    """the slices' headers in Z order (what a DICOM SEG references)"""
    series_uid: str = ""
    problems: list[str] = field(default_factory=list)
    affine: torch.Tensor | None = None
    """(4, 4) voxel -> RAS mm of ``hu``'s grid (what resampling to a base's grid needs)"""
    frame_order: list[int] | None = None
    """one multi-frame image (Enhanced CT/MR): the frame of ``datasets[0]`` that each slice ``Z`` is"""


def read_series(source: str | os.PathLike | Sequence[Dataset], *, series_uid: str | None = None) -> SeriesInput:
    """A series from a folder (scanned with :func:`scan_folder`) or from in-memory datasets.

    Args:
        source: a folder, or pydicom datasets with pixel data (e.g. an upload), any order.
        series_uid: which series when the folder holds several.

    Raises:
        DataError: no usable image series, several without ``series_uid``, several multi-frame
            images in one series (or one in memory: read it from its file), or slices without
            the geometry (position, orientation) a SEG needs.
    """
    if isinstance(source, (str, os.PathLike)):
        return _series_from_folder(Path(source), series_uid)
    datasets = [ds for ds in source if str(ds.get("SeriesInstanceUID", "")) == series_uid] if series_uid else list(source)
    if not datasets:
        raise DataError("no image datasets to predict on; give the slices of one series")
    uids = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(uids) > 1:
        raise DataError(f"the datasets come from {len(uids)} series; pick one with series_uid= ({', '.join(sorted(uids))})")
    ordered = _sorted_slices(datasets)
    planes = []
    for ds in ordered:
        try:
            planes.append(np.asarray(modality_values(ds.pixel_array, ds), dtype=np.float32))
        except Exception as err:  # noqa: BLE001  pydicom's decoders raise many types
            raise DataError(f"slice {ds.get('InstanceNumber', '?')} cannot be decoded ({str(err)[:160]}); "
                            "install the decoders with pip install 'scalpel-peft[demo]'") from err
    if len({p.shape for p in planes}) > 1:
        raise DataError(f"the slices have different sizes {sorted({p.shape for p in planes})}; give one series")
    hu = torch.from_numpy(np.stack(planes).transpose(2, 1, 0).copy())  # (Z, rows, cols) -> (X, Y, Z)
    return SeriesInput(hu, ordered, uids.pop(), affine=_ras_affine(ordered))


def _series_from_folder(path: Path, series_uid: str | None) -> SeriesInput:
    if not path.is_dir():
        raise DataError(f"{path} is not a folder; give the folder holding one DICOM series")
    inventory = scan_folder(path)
    images = [s for s in inventory.series if s.modality != "SEG" and (series_uid is None or s.series_uid == series_uid)]
    if not images:
        why = f"non-DICOM files: {len(inventory.non_dicom)}, unreadable: {len(inventory.errors)}, dropped: {len(inventory.dropped)}"
        wanted = f" with SeriesInstanceUID {series_uid}" if series_uid else ""
        raise DataError(f"no usable image series{wanted} in {path} ({why}); point at a folder of DICOM image files")
    if len(images) > 1:
        listing = "; ".join(f"{s.series_uid} ({s.modality}, {len(s.files)} files)" for s in images)
        raise DataError(f"{path} holds {len(images)} image series: {listing}; choose one with --series UID")
    series = images[0]
    multi_frame = any(f.frames > 1 for f in series.files)
    if multi_frame and len(series.files) > 1:
        raise DataError(f"series {series.series_uid} has {len(series.files)} images of several frames each; a DICOM SEG "
                        "references one multi-frame image or single-frame slices: give one of its images' folders")
    volume = load_series(series)
    if multi_frame:
        headers = [pydicom.dcmread(series.files[0].path, stop_before_pixels=True)]
        frame_order = [int(i) for i in volume.meta["frame_indices"]]
    else:
        by_uid = {f.sop_uid: f.path for f in series.files}
        headers = [pydicom.dcmread(by_uid[uid], stop_before_pixels=True) for uid in volume.meta["sop_instance_uids"]]
        frame_order = None
    return SeriesInput(volume.as_tensor()[0].float(), headers, series.series_uid, list(volume.meta.get("problems", [])),
                       torch.as_tensor(volume.affine, dtype=torch.float64), frame_order)


def _sorted_slices(datasets: list[Dataset]) -> list[Dataset]:
    orientation = datasets[0].get("ImageOrientationPatient")
    if orientation is None or any(ds.get("ImagePositionPatient") is None for ds in datasets):
        raise DataError("slices without ImagePositionPatient/ImageOrientationPatient: their order and geometry are "
                        "unknown, so no DICOM SEG can reference them; give a series with patient geometry")
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in datasets):
        raise DataError("a multi-frame image in memory is not read here; save it and give its folder to "
                        "read_series (or `scalpel medical predict`), or give single-frame slices")
    normal = slice_normal([float(v) for v in orientation])
    return sorted(datasets, key=lambda ds: float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient])))


def _ras_affine(datasets: list[Dataset]) -> torch.Tensor:
    """Voxel ``(column, row, slice)`` -> RAS mm of slices sorted along their normal."""
    first = datasets[0]
    thickness = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)
    lps = slices_affine([float(v) for v in first.ImageOrientationPatient], first.get("PixelSpacing", (1.0, 1.0)),
                        [[float(v) for v in ds.ImagePositionPatient] for ds in datasets], thickness)
    return torch.as_tensor(LPS_TO_RAS @ lps)


def predict_labels(model: nn.Module, spec: BaseSpec, hu: torch.Tensor, affine: torch.Tensor | None = None) -> np.ndarray:
    """``(X, Y, Z)`` HU -> ``(X, Y, Z)`` uint8 label map (argmax), by sliding-window inference.

    A 2-D base predicts slice by slice (Z as the batch). A base with a ``spacing`` or
    ``orientation`` predicts on that grid (``affine``, voxel -> RAS mm, places ``hu``); its
    class probabilities are resampled back (trilinear) onto ``hu``'s grid before the argmax.

    Raises:
        DataError: the series is smaller than the base's patch (``X x Y`` for a 2-D base,
            after resampling), or the base needs a grid and ``affine`` is missing.
    """
    if hu.dim() != 3:
        raise DataError(f"a series is an (X, Y, Z) volume, got shape {tuple(hu.shape)}")
    resample = bool(spec.spacing or spec.orientation)
    if resample and affine is None:
        raise DataError(f"the base expects a {spec.orientation or 'stored'} grid at {spec.spacing or 'native'} mm, but the "
                        "series has no affine to resample it; read it with read_series (which records its geometry)")
    image = normalise_hu(hu.float(), spec.window)
    if resample:
        image = to_grid(MetaTensor(image[None], affine=torch.as_tensor(affine, dtype=torch.float64)), **spec.grid)
    else:
        image = image[None]
    size = tuple(image.shape[1 : 1 + len(spec.patch)])
    if any(s < p for s, p in zip(size, spec.patch, strict=True)):
        resampled = " (on the base's grid)" if resample else ""
        raise DataError(f"the series is {'x'.join(map(str, image.shape[1:]))} voxels{resampled}, smaller than the base's "
                        f"{'x'.join(map(str, spec.patch))} patch; this base cannot segment it (use a larger series or a base "
                        "trained with a smaller patch)")
    task = SegmentationTask(spec.structures, spec.patch, hd95=False)
    device = next(model.parameters()).device
    model.eval()
    pixels = torch.as_tensor(image).to(device)
    if spec.unet.spatial_dims == 2:
        logits = task.logits(model, pixels.permute(3, 0, 1, 2))  # (Z, classes, X, Y)
        logits = logits.permute(1, 2, 3, 0)
    else:
        logits = task.logits(model, pixels[None])[0]  # (classes, X, Y, Z)
    if not resample:
        return logits.argmax(0).to(torch.uint8).cpu().numpy()
    probabilities = MetaTensor(logits.softmax(0).float().cpu(), affine=image.affine)
    back = from_grid(probabilities, affine, hu.shape)
    return back.argmax(0).to(torch.uint8).numpy()


def adapter_fingerprint(adapter_dir: str | os.PathLike) -> str:
    """``sha256:`` + the SHA-256 of the adapter's weights file (what a SEG records)."""
    return "sha256:" + hashlib.sha256((Path(adapter_dir) / WEIGHTS_FILE).read_bytes()).hexdigest()


class SiteAdapters:
    """A base checkpoint loaded once, with any number of its site adapters switched on it.

    Each adapter is loaded once under its own name (``core.load_adapter``); :meth:`use`
    switches with ``core.set_active_adapter``. Tensors an adapter overwrites in the base
    (fully trained weights of ``full``/``layerwise``, normalisation statistics) are put back
    from a copy of the pristine base before the next adapter's own are copied in, so a
    ``full`` adapter never leaks into a LoRA one.
    """

    def __init__(self, base_dir: str | os.PathLike, device: str | torch.device | None = None):
        self.base_dir = Path(base_dir)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, self.spec, self.base_sha256 = load_base(self.base_dir)
        self._pristine = {name: t.detach().clone() for name, t in self.model.state_dict().items()}
        self._overrides: dict[str, dict[str, torch.Tensor]] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self.active: Path | None = None

    def use(self, adapter_dir: str | os.PathLike | None) -> nn.Module:
        """Activate the adapter at ``adapter_dir`` (None: the base alone); returns the model.

        Raises:
            BaseModelMismatchError: the adapter was trained on another base checkpoint.
        """
        self._restore_base()
        if adapter_dir is None:
            set_active_adapter(self.model, None)
            self.active = None
            return self.model.to(self.device).eval()
        adapter_dir = Path(adapter_dir)
        name = _slot(adapter_dir)
        if name not in self._overrides:
            meta = read_adapter_meta(adapter_dir) if (adapter_dir / SCALPEL_FILE).is_file() else {}
            recorded = meta.get("extra", {}).get("base_sha256")
            if recorded and recorded != self.base_sha256:
                raise BaseModelMismatchError(
                    f"the adapter {adapter_dir} was trained on the base with SHA-256 {recorded[:12]}..., not on "
                    f"{self.base_dir} ({self.base_sha256[:12]}...); load it onto its own base or adapt this base again")
            load_adapter(self.model, adapter_dir, adapter_name=name)
            self.model.to(self.device)  # the adapter's new modules are made on the CPU
            tensors = read_safetensors(adapter_dir / WEIGHTS_FILE)
            self._overrides[name] = {k: v for k, v in tensors.items() if k.startswith(("scalpel.full.", STATS_PREFIX))}
            self._meta[name] = meta
        else:
            set_active_adapter(self.model, name)
            params = {base_name(n): p for n, p in self.model.named_parameters()}
            for key, value in self._overrides[name].items():
                if key.startswith("scalpel.full."):
                    params[key.removeprefix("scalpel.full.")].data.copy_(value)
            load_norm_statistics(self.model, self._overrides[name], STATS_PREFIX)
        self.active = adapter_dir
        return self.model.to(self.device).eval()

    @property
    def loaded(self) -> int:
        """How many adapters are loaded on the base."""
        return len(self._overrides)

    def predict(self, series: SeriesInput, adapter_dir: str | os.PathLike | None = None) -> np.ndarray:
        """Label map ``(X, Y, Z)`` uint8 of ``series`` with ``adapter_dir`` (default: the active one)."""
        if adapter_dir is not None:
            self.use(adapter_dir)
        return predict_labels(self.model, self.spec, series.hu, series.affine)

    def algorithm(self) -> AlgorithmInfo:
        """Name, version and adapter identity of the active model, for the SEG."""
        meta = self._meta.get(_slot(self.active), {}) if self.active is not None else {}
        extra = meta.get("extra", {})
        return AlgorithmInfo(
            name=f"Scalpel {getattr(self.spec.unet, 'architecture', None) or getattr(self.spec.unet, 'name', 'network')}", version=_library_version(),
            site=str(extra.get("site", "")), method=str(extra.get("method", "base")),
            adapter_fingerprint=adapter_fingerprint(self.active) if self.active is not None else "",
            base_fingerprint="sha256:" + self.base_sha256,
        )

    def seg(self, series: SeriesInput, labels: np.ndarray):
        """A ``highdicom.seg.Segmentation`` of ``labels`` referencing ``series``, naming the active adapter."""
        return build_seg(labels, series.datasets, self.spec.structures, self.algorithm(), frame_order=series.frame_order)

    def _restore_base(self) -> None:
        state = self.model.state_dict()
        by_base = {base_name(k): k for k in state}
        with torch.no_grad():
            for key, value in self._pristine.items():
                current = state.get(by_base.get(key, key))
                if current is not None and current.shape == value.shape:
                    current.copy_(value)


def find_site_adapters(base_dir: str | os.PathLike, runs_dir: str | os.PathLike) -> tuple[list[dict[str, Any]], int]:
    """Site adapters under ``runs_dir`` trained on the base in ``base_dir`` (matched by SHA-256).

    Returns:
        ``(rows, others)``: one row per adapter (``site``, ``method``, ``task``, ``dice`` or ``auc``, ``trainable``,
        ``total``, ``created``, ``adapter_dir``), newest first, and how many site adapters of
        other bases were seen. Training checkpoints and intermediate ``fit/`` adapters are skipped.
    """
    sha = checkpoint_sha256(base_dir)
    rows, others = [], 0
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise DataError(f"runs folder {runs_dir} does not exist; pass --runs DIR where `scalpel medical adapt --out` wrote runs")
    for meta_path in sorted(runs_dir.rglob(SCALPEL_FILE)):
        if {"checkpoints", "fit"} & set(meta_path.relative_to(runs_dir).parts[:-1]):
            continue
        try:
            meta = read_adapter_meta(meta_path.parent)
        except Exception:  # noqa: BLE001  an unreadable adapter is not this base's; skip it
            continue
        extra = meta.get("extra") or {}
        if "base_sha256" not in extra:
            continue
        if extra["base_sha256"] != sha:
            others += 1
            continue
        metrics = meta.get("metrics") or {}
        rows.append({"site": extra.get("site", "?"), "method": extra.get("method", "?"), "task": extra.get("task", "?"),
                     "dice": metrics.get("dice"), "auc": metrics.get("auc"), "trainable": meta.get("trainable_parameters"),
                     "total": meta.get("total_parameters"), "created": meta.get("created", ""), "adapter_dir": str(meta_path.parent)})
    rows.sort(key=lambda r: (r["created"], r["adapter_dir"]), reverse=True)
    return rows, others


def _slot(adapter_dir: Path | None) -> str:
    return "site_" + re.sub(r"\W", "_", str(Path(adapter_dir).resolve()))[-80:]


def _library_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("scalpel-peft")
    except PackageNotFoundError:
        return "unknown"

