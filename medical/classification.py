"""Image-level classification of CT: MONAI DenseNet121 / ResNet on 2-D slices or 3-D volumes.

    model = NetworkSpec("densenet121", spatial_dims=3, out_channels=2).build()
    task = ClassificationTask(["absent", "present"])
    result = fit(model, task, train_loader, eval_loader, FitConfig(output_dir=..., metric="auc", greater_is_better=True))

Batches are dicts ``{"image": (B, C, *spatial) float, "label": (B,) int}``. Loss: cross-entropy.
Metrics (:func:`classification_metrics`): ``accuracy``; ``auc``, the area under the ROC curve
(Hanley & McNeil 1982) from the softmax probabilities; ``sensitivity`` = TP / (TP + FN) and
``specificity`` = TN / (TN + FP) of the arg-max predictions. With two classes the positive
class is the second (``class_names[1]``); with more, every class is scored one-vs-rest
(``auc/<class>``, ``sensitivity/<class>``, ``specificity/<class>``) and the headline figures
are their unweighted (macro) means. AUC is NaN (and left out of means) for a class that the
evaluation set holds no positive or no negative example of.

Image-level labels from a CSV (``case,label``): :func:`read_class_labels`, :func:`class_samples`.
Labelled data without annotators: :func:`presence_samples` derives the label from a
segmentation label map ("does this volume / this axial slice contain structure X"), and
:func:`write_presence_site` writes synthetic CT series whose single sphere is or is not
structure X, as seen by one of the synthetic scanners.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scalpel.core.config import raise_if_problems
from scalpel.core.errors import DataError


class ClassificationTask:
    """Cross-entropy training and AUC / sensitivity / specificity evaluation for :func:`~scalpel.core.fit.fit`."""

    name = "medical.classification"

    def __init__(self, class_names: Sequence[str]):
        problems = [] if len(class_names) >= 2 else [f"need at least two class names, got {list(class_names)}"]
        if len(set(class_names)) != len(class_names):
            problems.append(f"class names must be distinct, got {list(class_names)}")
        raise_if_problems("classification task", problems)
        self.class_names = list(class_names)

    def step(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        image, label = _image_label(batch, len(self.class_names))
        logits = model(image)
        if logits.dim() != 2 or logits.shape[1] != len(self.class_names):
            raise DataError(f"the network gives {tuple(logits.shape)} outputs for {len(self.class_names)} classes; "
                            "build it with out_channels = the number of classes")
        return {"loss": F.cross_entropy(logits, label), "logits": logits}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, Tensor]]) -> dict[str, float]:
        probabilities, labels = [], []
        model.eval()
        for batch in batches:
            image, label = _image_label(batch, len(self.class_names))
            probabilities.append(model(image).float().softmax(dim=1).cpu())
            labels.append(label.cpu())
        if not labels:
            raise DataError("no evaluation batches: give at least one labelled image to evaluate on")
        return classification_metrics(torch.cat(probabilities), torch.cat(labels), self.class_names)


def classification_metrics(probabilities: Tensor, labels: Tensor, class_names: Sequence[str]) -> dict[str, float]:
    """AUC, sensitivity, specificity (binary, or one-vs-rest per class with macro means) and accuracy.

    Args:
        probabilities: ``(N, C)`` class probabilities (rows sum to 1).
        labels: ``(N,)`` integer classes in ``[0, C)``.
    """
    from sklearn.metrics import roc_auc_score

    p = probabilities.detach().double().numpy()
    y = labels.detach().long().numpy()
    predicted = p.argmax(axis=1)
    metrics: dict[str, float] = {"accuracy": float((predicted == y).mean())}
    per_class: dict[str, list[float]] = {"auc": [], "sensitivity": [], "specificity": []}
    scored = range(1, 2) if len(class_names) == 2 else range(len(class_names))
    for c in scored:
        positive, called = y == c, predicted == c
        auc = float(roc_auc_score(positive, p[:, c])) if 0 < positive.sum() < len(y) else float("nan")
        sensitivity = float((called & positive).sum() / positive.sum()) if positive.any() else float("nan")
        specificity = float((~called & ~positive).sum() / (~positive).sum()) if (~positive).any() else float("nan")
        for key, value in (("auc", auc), ("sensitivity", sensitivity), ("specificity", specificity)):
            metrics[f"{key}/{class_names[c]}"] = value
            per_class[key].append(value)
    for key, values in per_class.items():
        finite = [v for v in values if not np.isnan(v)]
        metrics[key] = float(np.mean(finite)) if finite else float("nan")
    return metrics


# ------------------------------------------------------------------------------ data


def presence_samples(
    volumes: Iterable[tuple[str, Tensor, Tensor]],
    structure: int,
    *,
    spatial_dims: int,
    size: int,
) -> list[dict[str, Any]]:
    """Image-level samples from labelled volumes: is structure ``structure`` (a label value) there?

    Args:
        volumes: ``(case, image (1, X, Y, Z) float, label (1, X, Y, Z) int)``, already windowed.
        spatial_dims: 3: one sample per volume; 2: one per axial slice (``image[..., z]``).
        size: every sample is resized (trilinear/bilinear) to ``size`` per spatial axis.

    Returns:
        ``[{"image": (1, size, size[, size]), "label": 0 or 1, "case": str}, ...]``.
    """
    samples = []
    for case, image, label in volumes:
        image, label = torch.as_tensor(image).float(), torch.as_tensor(label)
        if image.shape[1:] != label.shape[1:]:
            raise DataError(f"{case}: image {tuple(image.shape)} and label {tuple(label.shape)} differ in size")
        pairs = [(image, label)] if spatial_dims == 3 else [(image[..., z], label[..., z]) for z in range(image.shape[-1])]
        for img, lab in pairs:
            mode = "trilinear" if img.dim() == 4 else "bilinear"
            resized = F.interpolate(img[None], size=(size,) * (img.dim() - 1), mode=mode, align_corners=False)[0]
            samples.append({"image": resized, "label": int(bool((lab == structure).any())), "case": case})
    return samples


def read_class_labels(site: str | os.PathLike, csv_path: str | os.PathLike) -> tuple[list[dict[str, str]], list[str], list[str]]:
    """Image-level labels: a CSV with columns ``case`` and ``label`` (one row per case folder
    ``site/dicom/<case>``). Returns the records ``{"image", "case", "class"}``, the class names
    (sorted) and why cases were skipped (a row without a series, a series without a row).

    Raises:
        DataError: unreadable CSV, missing columns, fewer than two classes, or no usable case.
    """
    import csv

    path, root = Path(csv_path), Path(site) / "dicom"
    if not path.is_file():
        raise DataError(f"labels CSV {path} does not exist; give a CSV with columns case,label")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"case", "label"} <= set(rows[0]):
        raise DataError(f"{path} needs a header with columns 'case' and 'label' (got {sorted(rows[0]) if rows else 'no rows'})")
    series = {p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()
    records, skipped = [], []
    for row in rows:
        case, label = row["case"].strip(), row["label"].strip()
        if case not in series:
            skipped.append(f"{case}: in {path.name} but no series folder {root}/{case}")
        elif not label:
            skipped.append(f"{case}: empty label in {path.name}")
        else:
            records.append({"image": str(root / case), "case": case, "class": label})
    labelled = {r["case"] for r in records}
    skipped += [f"{name}: no row in {path.name}" for name in sorted(series - labelled)]
    names = sorted({r["class"] for r in records})
    if len(names) < 2:
        raise DataError(f"{path}: need at least two classes among the usable cases, found {names or 'none'}; {'; '.join(skipped)}")
    return records, names, skipped


def class_samples(volumes: Iterable[tuple[str, Tensor, int]], *, size: int) -> list[dict[str, Any]]:
    """One sample per volume with its class index: ``(case, image (1, X, Y, Z), class)`` -> resized to ``size``^3."""
    return [{"image": F.interpolate(torch.as_tensor(image).float()[None], size=(size,) * 3, mode="trilinear",
                                    align_corners=False)[0], "label": int(label), "case": case}
            for case, image, label in volumes]


class ClassificationSamples(torch.utils.data.Dataset):
    """Samples from :func:`presence_samples`, with a random array transform on each image (training)."""

    def __init__(self, samples: Sequence[dict[str, Any]], transform: Any = None):
        self.samples, self.transform = list(samples), transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        image = sample["image"] if self.transform is None else torch.as_tensor(self.transform(sample["image"]))
        return {"image": image.float().contiguous(), "label": torch.tensor(sample["label"]), "case": sample["case"]}


def write_presence_site(
    folder: str | os.PathLike, scanner: str, *, cases: int = 8, shape: tuple[int, int, int] = (24, 24, 24), seed: int = 0
) -> list[str]:
    """Write ``cases`` one-sphere phantoms as ``scanner`` sees them, in the site layout of
    :mod:`scalpel.medical.synthetic` (``dicom/<case>/``, ``labels/<case>.nii.gz``).

    The sphere alternates between the two phantom structures (label 1 "dim sphere",
    2 "bright sphere") case by case, so "does it contain the bright sphere" is balanced.
    """
    from scalpel.medical.synthetic import SCANNERS, phantom, write_ct_series, write_nifti

    profile = SCANNERS[scanner]
    root = Path(folder)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for k in range(cases):
        case = f"{profile.name}c{k:03d}"
        wanted = 1 + k % 2
        for attempt in range(100):  # the phantom's structure comes from its random intensity
            true_hu, label = phantom(shape, seed=seed * 10_000 + k * 100 + attempt, num_objs=1)
            if label.max() == wanted:
                break
        affine = write_ct_series(root / "dicom" / case, profile.measure(true_hu, rng), profile, patient_id=f"SYN-{case}", patient_name=f"Synthetic^{case}")
        write_nifti(root / "labels" / f"{case}.nii.gz", label, affine)
        names.append(case)
    return names


def _image_label(batch: Any, num_classes: int) -> tuple[Tensor, Tensor]:
    if not isinstance(batch, dict) or "image" not in batch or "label" not in batch:
        raise DataError("classification batches must be dicts with 'image' (B, C, *spatial) and 'label' (B,)")
    image, label = torch.as_tensor(batch["image"]).float(), torch.as_tensor(batch["label"]).long().reshape(-1)
    if image.shape[0] != label.shape[0]:
        raise DataError(f"{image.shape[0]} images but {label.shape[0]} labels in a batch")
    if label.numel() and (label.min() < 0 or label.max() >= num_classes):
        raise DataError(f"labels must be class indices in [0, {num_classes}), got {sorted(set(label.tolist()))}")
    return image, label
