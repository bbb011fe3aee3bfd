"""Classification metrics on score matrices, all vectorised numpy.

Shapes: ``scores`` (N, K) logits or probabilities, ``labels`` (N,) ints in [0, K).

Ties: a sample's rank is the number of classes scoring strictly higher than its true class plus the
number scoring equally with a lower index, i.e. its position in a stable descending sort. So top-1
agrees with ``argmax`` (which picks the first maximum) and the confusion matrix.
"""

from __future__ import annotations

import numpy as np

from .errors import SkelactError


def predictions(scores: np.ndarray) -> np.ndarray:
    """(N, K) scores -> (N,) int64 predicted classes (first maximum on ties)."""
    return np.asarray(scores).argmax(axis=1).astype(np.int64)


def true_class_rank(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N, K) scores, (N,) labels -> (N,) int64 rank of the true class (0 = predicted)."""
    scores = np.asarray(scores)
    labels = np.asarray(labels, dtype=np.int64)
    true = scores[np.arange(len(labels)), labels][:, None]
    lower_index = np.arange(scores.shape[1])[None, :] < labels[:, None]
    return ((scores > true) | ((scores == true) & lower_index)).sum(axis=1).astype(np.int64)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Percentage of samples whose true class is among the k highest scores (k is capped at K)."""
    if len(labels) == 0:
        raise SkelactError("accuracy: no samples")
    return float(100.0 * np.mean(true_class_rank(scores, labels) < k))


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts; row = true class, column = predicted class."""
    labels = np.asarray(labels, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    flat = np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def per_class_accuracy(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Confusion matrix (K, K) -> (accuracy (K,) percent, NaN where a class has no samples; support (K,))."""
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(support > 0, 100.0 * np.diag(cm) / support, np.nan)
    return acc, support


def confused_pairs(cm: np.ndarray, top: int = 10) -> list[tuple[int, int, int, float]]:
    """The most frequent off-diagonal cells of a confusion matrix, as directed pairs.

    Returns up to ``top`` tuples ``(true, pred, count, rate)`` with ``count > 0``, where rate is the
    percentage of the true class's samples predicted as ``pred``. Pairs are directed: "A predicted as
    B" and "B predicted as A" are separate entries. Sorted by count, then rate, both descending, then by
    (true, pred) for a stable order.
    """
    k = cm.shape[0]
    support = cm.sum(axis=1)
    off = cm.copy()
    off[np.arange(k), np.arange(k)] = 0
    true, pred = np.nonzero(off)
    counts = off[true, pred]
    rates = 100.0 * counts / support[true]
    order = np.lexsort((pred, true, -rates, -counts))[:top]
    return [(int(true[i]), int(pred[i]), int(counts[i]), float(rates[i])) for i in order]
