"""Classification scores from true and predicted label ids, and the majority-class baseline to beat.

    scores = classification_scores(true=[0, 1, 1], predicted=[0, 1, 0], labels=["greet", "bye"])
    scores["accuracy"], scores["macro_f1"], scores["per_class"], scores["confusion_matrix"]

Macro-F1 averages F1 over classes, so a model that ignores a rare intent is penalised even when accuracy looks
high; a class with no prediction and no support counts as F1 0 (as scikit-learn's zero_division=0).
"""

from __future__ import annotations

from collections import Counter


def classification_scores(true: list[int], predicted: list[int], labels: list[str]) -> dict:
    matrix = [[0] * len(labels) for _ in labels]
    for actual, guess in zip(true, predicted, strict=True):
        matrix[actual][guess] += 1
    per_class = []
    for index, label in enumerate(labels):
        hits = matrix[index][index]
        predicted_count = sum(row[index] for row in matrix)
        support = sum(matrix[index])
        precision = hits / predicted_count if predicted_count else 0.0
        recall = hits / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class.append({"label": label, "precision": precision, "recall": recall, "f1": f1, "support": support})
    present = [row for row in per_class if row["support"]]  # classes absent from the eval set say nothing
    return {
        "accuracy": sum(matrix[i][i] for i in range(len(labels))) / max(len(true), 1),
        "macro_f1": sum(row["f1"] for row in present) / max(len(present), 1),
        "per_class": per_class,
        "confusion_matrix": matrix,
    }


def majority_label(train_labels: list[int]) -> int:
    """The most common training label (the smallest id on a tie, so the choice is reproducible)."""
    counts = Counter(train_labels)
    return min(counts, key=lambda label: (-counts[label], label))
