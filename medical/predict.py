"""Inference with adapted medical models: a DICOM series -> a label map on its own grid -> a DICOM
SEG (or NIfTI), or class probabilities.

    sites = SiteAdapters("base/")                         # the base is loaded once
    series = read_series("patient/CT/")                    # or read_series(list_of_pydicom_datasets)
    labels = sites.predict(series, "runs/site_b/adapter")  # (X, Y, Z) uint8 on the series grid
    seg = sites.seg(series, labels)                        # highdicom Segmentation naming the adapter
    sites.predict(series, "runs/site_c/adapter")           # switches adapters; the base is not reloaded

    find_site_adapters("base/", "runs/")                   # every adapter trained on this base
    predict("runs/x/adapter", ["SERIES_DIR"], {"out": "masks/"})   # scalpel predict medical.*

Input normalisation and grid are the base's own (:class:`~scalpel.medical.base.BaseSpec`), by the
training's own transforms (:func:`~scalpel.medical.transforms.to_model_grid`); inference is
:class:`~scalpel.medical.segmentation.SegmentationTask`'s sliding window with Gaussian blending;
on a base with a ``spacing``/``orientation`` the class probabilities are moved back onto the
series' own grid (:func:`~scalpel.medical.transforms.to_series_grid`) before the argmax.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from scalpel.core.artifacts import SCALPEL_FILE, STATS_PREFIX, WEIGHTS_FILE, load_adapter, read_adapter_meta
from scalpel.core.delta import base_name, load_norm_statistics, set_active_adapter
from scalpel.core.errors import AdapterError, DataError, ScalpelError
from scalpel.core.files import read_safetensors
from scalpel.medical.base import SEGMENTATION, BaseSpec, check_base, load_base
from scalpel.medical.classification import presence_samples
from scalpel.medical.dicom.seg import AlgorithmInfo, build_seg
from scalpel.medical.kits import classification_preprocess
from scalpel.medical.networks import checkpoint_sha256, load_checkpoint, spec_from_dict
from scalpel.medical.segmentation import SegmentationTask
from scalpel.medical.series import SeriesInput, read_series
from scalpel.medical.synthetic import write_nifti
from scalpel.medical.transforms import preprocessing, scalpel_errors, to_model_grid, to_series_grid

__all__ = ["SiteAdapters", "find_site_adapters", "load_adapted", "predict", "predict_labels", "read_series"]


def predict_labels(model: nn.Module, spec: BaseSpec, hu: torch.Tensor, affine: torch.Tensor | None = None) -> np.ndarray:
    """``(X, Y, Z)`` HU -> ``(X, Y, Z)`` uint8 label map (argmax), by sliding-window inference.

    A 2-D base predicts slice by slice. A base with a ``spacing`` or ``orientation`` predicts on
    that grid (``affine``, voxel -> RAS mm, places ``hu``); its class probabilities are
    resampled back (trilinear) onto ``hu``'s grid before the argmax.

    Raises:
        DataError: the series is smaller than the base's patch (``X x Y`` for a 2-D base, on the
            base's grid), or the base needs a grid and ``affine`` is missing.
    """
    return label_maps(model, spec, hu, affine, parts=1)[0]


def label_maps(model: nn.Module, spec: BaseSpec, hu: torch.Tensor, affine: torch.Tensor | None, parts: int) -> list[np.ndarray]:
    """:func:`predict_labels` for a model whose logits hold ``parts`` predictions side by side
    along the channel axis (:class:`~scalpel.core.lora.mixed.AdaptersSideBySide`): one map each."""
    if hu.dim() != 3:
        raise DataError(f"a series is an (X, Y, Z) volume, got shape {tuple(hu.shape)}")
    if (spec.spacing or spec.orientation) and affine is None:
        raise DataError(f"the base expects a {spec.orientation or 'stored'} grid at {spec.spacing or 'native'} mm, but the "
                        "series has no affine to resample it; read it with read_series (which records its geometry)")
    sample, chain = to_model_grid(spec.preprocess(), SeriesInput(hu, [], affine=affine).volume())
    device = next(model.parameters()).device
    model.eval()
    logits = SegmentationTask(spec.structures, spec.patch, hd95=False).logits(model, sample["image"].as_tensor()[None].to(device))[0]
    return [to_series_grid(part.softmax(0).float().cpu(), sample, chain).argmax(0).to(torch.uint8).numpy()
            for part in logits.chunk(parts, 0)]


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
            meta = check_base(adapter_dir, self.base_sha256, self.base_dir) if (adapter_dir / SCALPEL_FILE).is_file() else {}
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
        other bases were seen. Training checkpoints, the adapters of K-fold evaluation
        (``RUN/fold<k>/``) and networks trained from scratch (no base) are skipped.
    """
    sha = checkpoint_sha256(base_dir)
    rows, others = [], 0
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise DataError(f"runs folder {runs_dir} does not exist; pass --runs DIR where `scalpel medical adapt --out` wrote runs")
    for meta_path in sorted(runs_dir.rglob(SCALPEL_FILE)):
        if "checkpoints" in meta_path.relative_to(runs_dir).parts[:-1]:
            continue
        try:
            meta = read_adapter_meta(meta_path.parent)
        except Exception:  # noqa: BLE001  an unreadable adapter is not this base's; skip it
            continue
        extra = meta.get("extra") or {}
        if not extra.get("base_sha256") or "fold" in extra:
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


def load_adapted(adapter_dir: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """The base recorded in an adapter of a medical run, with the adapter loaded (eval mode), and its ``extra``.

    Raises:
        AdapterError: not a medical adapter; BaseModelMismatchError: the base's weights changed.
    """
    if not Path(adapter_dir).is_dir():
        raise AdapterError(f"adapter directory {adapter_dir} does not exist; pass the run's adapter folder (runs/<name>/adapter)")
    meta = read_adapter_meta(adapter_dir)
    return load_adapter(base_for_adapter(meta, Path(adapter_dir)), adapter_dir).eval(), meta["extra"]


def base_for_adapter(meta: dict[str, Any], adapter_dir: Path) -> nn.Module:
    """The network a medical adapter was trained on: its base checkpoint (checked against the digest
    the adapter recorded), or the bare network for a run trained from scratch (the builder of
    ``scalpel adapter merge`` for both medical pipelines).

    Raises:
        AdapterError: not a medical adapter; BaseModelMismatchError: the base's weights changed.
    """
    extra = meta.get("extra", {})
    if not str(extra.get("task", "")).startswith("medical.") or "network" not in extra:
        raise AdapterError(f"{adapter_dir} was not written by a medical pipeline (no medical task/network in scalpel.json)")
    if extra.get("base_dir"):
        model, _, _, sha = load_checkpoint(extra["base_dir"])
        check_base(adapter_dir, sha, extra["base_dir"])
        return model
    return spec_from_dict(extra["network"]).build()  # a run trained from scratch: the adapter holds every weight


def predict(adapter_dir: Path, inputs: list[str], options: dict[str, Any]) -> list[dict[str, Any]]:
    """``scalpel predict medical.*``: one row per series folder: voxels and millilitres per structure
    (segmentation) or class probabilities (classification). Option ``out=DIR`` writes each label map
    as ``DIR/<series>.nii.gz`` on the series' own grid (``load_label(path, load_series(series))`` reads it).
    Option ``precision``: ``auto`` (bf16 where the device runs it natively, as ``fit`` trains) or ``no`` (fp32)."""
    from scalpel.core.fit.precision import inference_autocast

    model, extra = load_adapted(adapter_dir)
    with inference_autocast(str(options.get("precision", "auto")), next(model.parameters()).device):
        return _predict(model, extra, inputs, options, parts=1)[0]


def compare(adapter_dirs: list[Path], inputs: list[str], options: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """:func:`predict`'s rows for each adapter of one base (site adapters, methods), in order, every
    series through all adapters in one mixed-adapter pass per window (:func:`load_side_by_side`).
    Adapters that cannot share a batch (sparse, layer-wise, full) run one at a time. Option
    ``out=DIR`` writes ``DIR/<i>/<series>.nii.gz`` for adapter ``i``.

    Raises:
        AdapterError: the adapters were not trained on the same base checkpoint and task.
    """
    from scalpel.core.fit.precision import inference_autocast

    outs = [{**options, "out": str(Path(options["out"]) / str(i))} if options.get("out") else options for i in range(len(adapter_dirs))]
    try:
        model, extra = load_side_by_side(adapter_dirs)
    except AdapterError:
        raise
    except ScalpelError:  # not mixable (e.g. a sparse delta or full fine-tuning): exact only one at a time
        return [predict(p, inputs, o) for p, o in zip(adapter_dirs, outs)]
    with inference_autocast(str(options.get("precision", "auto")), next(model.parameters()).device):
        return _predict(model, extra, inputs, options, parts=len(adapter_dirs), outs=outs)


def load_side_by_side(adapter_dirs: list[str | os.PathLike]) -> tuple[nn.Module, dict[str, Any]]:
    """The base of ``adapter_dirs`` with all of them loaded, as one
    :class:`~scalpel.core.lora.mixed.AdaptersSideBySide` network (eval mode: each sample keeps
    its adapter's BatchNorm statistics), and the adapters' shared ``extra``; its logits hold
    the adapters' predictions side by side (``parts=len(adapter_dirs)`` in :func:`label_maps`).

    Raises:
        AdapterError: the adapters were not trained on the same base checkpoint and task;
        ScalpelError: they cannot share a batch (see :mod:`scalpel.core.lora.mixed`).
    """
    from scalpel.core.lora.mixed import AdaptersSideBySide, load_adapters

    metas = [read_adapter_meta(p) for p in adapter_dirs]
    keys = [tuple(m.get("extra", {}).get(k) for k in ("task", "base_sha256", "network")) for m in metas]
    if any(k != keys[0] for k in keys):
        raise AdapterError(f"{adapter_dirs[0]} and the other adapters were not trained on the same base and task; compare "
                           "adapters of one base")
    model = base_for_adapter(metas[0], Path(adapter_dirs[0]))
    slots = load_adapters(model, adapter_dirs)
    return AdaptersSideBySide(model, slots).eval(), metas[0]["extra"]


def _predict(model: nn.Module, extra: dict[str, Any], inputs: list[str], options: dict[str, Any], parts: int,
             outs: list[dict[str, Any]] | None = None) -> list[list[dict[str, Any]]]:
    """Rows for each of the ``parts`` predictions the model makes side by side."""
    if extra["task"] != SEGMENTATION:
        per_series = [_classify(model, extra, folder, parts) for folder in inputs]
        return [[rows[i] for rows in per_series] for i in range(parts)]
    spec, per_part = BaseSpec.from_dict(extra), [[] for _ in range(parts)]
    for folder in inputs:
        series = read_series(folder)
        for rows, labels, part_options in zip(per_part, label_maps(model, spec, series.hu, series.affine, parts), outs or [options]):
            rows.append(_segmentation_row(folder, series, spec, labels, part_options))
    return per_part


def _segmentation_row(folder: str, series: Any, spec: BaseSpec, labels: np.ndarray, options: dict[str, Any]) -> dict[str, Any]:
    voxel_ml = float(torch.as_tensor(series.volume().affine)[:3, :3].norm(dim=0).prod()) / 1000.0
    counts = np.bincount(labels.reshape(-1), minlength=len(spec.structures) + 1)
    row = {"series": folder, "voxels": {n: int(counts[i]) for i, n in enumerate(spec.structures, start=1)},
           "ml": {n: round(int(counts[i]) * voxel_ml, 3) for i, n in enumerate(spec.structures, start=1)}}
    if options.get("out"):
        path = Path(options["out"]) / f"{Path(folder).name}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_nifti(path, labels, series.volume().affine.numpy())
        row["mask"] = str(path)
    return row


def _classify(model: nn.Module, extra: dict[str, Any], folder: str, parts: int = 1) -> list[dict[str, Any]]:
    from monai.transforms import Compose

    size, dims, names = int(extra["size"]), int(extra["spatial_dims"]), extra["class_names"]
    with scalpel_errors():  # the training's own loading, window and grid
        image = Compose(preprocessing(classification_preprocess(extra), keys=("image",)))({"image": folder})["image"]
    samples = presence_samples([(folder, image, torch.zeros_like(image, dtype=torch.long))], 1, spatial_dims=dims, size=size)
    with torch.no_grad():
        logits = model(torch.stack([s["image"] for s in samples])).float()
    rows = []
    for part in logits.chunk(parts, 1):
        probabilities = part.softmax(-1)
        if dims == 2:  # a volume is positive where its most positive slice is
            top = probabilities[:, 1].max()
            probabilities = torch.stack([1 - top, top])[None]
        p = probabilities[0]
        rows.append({"series": folder, "label": names[int(p.argmax())],
                     "probabilities": {n: round(float(v), 4) for n, v in zip(names, p)}})
    return rows


def _slot(adapter_dir: Path | None) -> str:
    return "site_" + re.sub(r"\W", "_", str(Path(adapter_dir).resolve()))[-80:]


def _library_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("scalpel-peft")
    except PackageNotFoundError:
        return "unknown"

