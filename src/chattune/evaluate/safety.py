"""Toxicity of replies with the offline classifier from `alt-profanity-check` (a linear SVM on 200k labelled
comments; no download, ~1 ms per reply).

    probabilities = toxicity(["have a nice day", "shut up you idiot"])   # [0.02, 0.98]
    toxic_rate = mean(p > TOXIC_THRESHOLD for p in probabilities)
"""

from __future__ import annotations

TOXIC_THRESHOLD = 0.5  # the classifier's own decision boundary (profanity_check.predict uses 0.5)


def toxicity(texts: list[str]) -> list[float]:
    """Probability that each text is offensive."""
    if not texts:
        return []
    from profanity_check import predict_prob

    return [float(p) for p in predict_prob(texts)]
