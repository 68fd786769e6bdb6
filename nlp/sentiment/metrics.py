"""Classification metrics (scikit-learn) and the report section with a confusion-matrix plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def classification_metrics(y_true: list[int], y_pred: list[int], label_names: tuple[str, ...]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix
    (rows: true class, columns: predicted class, in ``label_names`` order)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    ids = list(range(len(label_names)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=ids, average="macro", zero_division=0)),
        "per_class": {
            name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, name in enumerate(label_names)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=ids).tolist(),
    }


def plot_confusion_matrix(matrix: list[list[int]], label_names: tuple[str, ...], path: Path, title: str = "") -> Path:
    """Write a PNG of the confusion matrix (counts, with row-normalised shading)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scalpel.core.files import atomic_write

    m = np.asarray(matrix, dtype=float)
    shade = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    k = len(label_names)
    fig, ax = plt.subplots(figsize=(1.2 * k + 2.5, 1.2 * k + 2))
    ax.imshow(shade, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), label_names, rotation=45, ha="right")
    ax.set_yticks(range(k), label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", color="white" if shade[i, j] > 0.5 else "black")
    ax.set_title(title or "confusion matrix (test)")
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return path


def report_section(metrics: dict[str, Any], label_names: tuple[str, ...], plot_name: str, split: str = "test") -> list[str]:
    """Markdown lines: headline metrics, per-class table, confusion matrix table and plot."""
    lines = [f"## {split.capitalize()} metrics", "",
             f"- accuracy: {metrics['accuracy']:.4f}", f"- macro-F1: {metrics['macro_f1']:.4f}", "",
             "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for name in label_names:
        c = metrics["per_class"][name]
        lines.append(f"| {name} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']} |")
    lines += ["", "Confusion matrix (rows: true, columns: predicted):", "",
              "| true \\ predicted | " + " | ".join(label_names) + " |", "|---" * (len(label_names) + 1) + "|"]
    for name, row in zip(label_names, metrics["confusion_matrix"]):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", f"![confusion matrix]({plot_name})", ""]
    return lines
