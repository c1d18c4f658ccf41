"""The scores fine-tuning reports: accuracy and macro-F1 for classification, exact-match entity
precision, recall and F1 for NER."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], num_labels: int) -> dict[str, float]:
    """{"accuracy", "macro_f1"} of predicted class ids against true ones.

    Macro-F1 averages per-class F1 over the classes that appear in y_true or y_pred (a class with neither support
    nor predictions is skipped; a class with zero precision and recall has F1 0). Empty input gives 0.0 for both.
    Raises ValueError when the lengths differ or an id is outside 0..num_labels-1."""
    true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    pred = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if true.shape != pred.shape:
        raise ValueError(f"y_true has {true.size} items but y_pred has {pred.size}")
    if true.size == 0:
        return {"accuracy": 0.0, "macro_f1": 0.0}
    for name, values in (("y_true", true), ("y_pred", pred)):
        if values.min() < 0 or values.max() >= num_labels:
            raise ValueError(f"{name} holds class ids outside 0..{num_labels - 1}")
    correct = true == pred
    tp = np.bincount(true[correct], minlength=num_labels)
    support = np.bincount(true, minlength=num_labels)
    predicted = np.bincount(pred, minlength=num_labels)
    present = (support + predicted) > 0
    # F1 = 2tp / (2tp + fp + fn) = 2tp / (support + predicted); 0 when tp is 0.
    f1 = 2 * tp[present] / (support[present] + predicted[present])
    return {"accuracy": float(correct.mean()), "macro_f1": float(f1.mean())}


def _entities(doc: Iterable[tuple[int, int, str]]) -> Counter:
    return Counter((int(start), int(end), str(label)) for start, end, label in doc)


def span_metrics(
    gold: Sequence[Iterable[tuple[int, int, str]]],
    predicted: Sequence[Iterable[tuple[int, int, str]]],
) -> dict[str, float]:
    """Entity-level precision, recall and F1 with exact match (start, end and label all equal), micro-averaged
    over all documents: {"precision", "recall", "f1", "gold_entities", "predicted_entities", "correct_entities"}
    (the counts are ints). Zero denominators give 0.0. ``gold`` and ``predicted`` hold one collection of
    (start, end, label) per document and must have the same length (ValueError otherwise)."""
    if len(gold) != len(predicted):
        raise ValueError(f"gold has {len(gold)} documents but predicted has {len(predicted)}")
    n_gold = n_pred = n_correct = 0
    for gold_doc, pred_doc in zip(gold, predicted):
        g, p = _entities(gold_doc), _entities(pred_doc)
        n_gold += sum(g.values())
        n_pred += sum(p.values())
        n_correct += sum((g & p).values())
    precision = n_correct / n_pred if n_pred else 0.0
    recall = n_correct / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "gold_entities": n_gold,
        "predicted_entities": n_pred,
        "correct_entities": n_correct,
    }
