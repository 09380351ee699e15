"""Classification metrics from a confusion matrix (rows = true class, columns = predicted)."""

from __future__ import annotations

import numpy as np


def confusion(y_true, y_pred, num_classes: int) -> np.ndarray:
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def war(cm: np.ndarray) -> float:
    """Weighted average recall = accuracy."""
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def uar(cm: np.ndarray) -> float:
    """Unweighted average recall: mean per-class recall over the classes present."""
    support = cm.sum(axis=1)
    present = support > 0
    if not present.any():
        return float("nan")
    return float((np.diag(cm)[present] / support[present]).mean())


def per_class(cm: np.ndarray) -> dict[str, list[float]]:
    """Per-class precision, recall and support (NaN where undefined)."""
    tp = np.diag(cm).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = tp / cm.sum(axis=0)
        recall = tp / cm.sum(axis=1)
    return {
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "support": cm.sum(axis=1).astype(int).tolist(),
    }
