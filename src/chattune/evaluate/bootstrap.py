"""Paired bootstrap confidence interval for the change of a metric between two systems scored on the same examples.

    low, high = paired_bootstrap(base_items, tuned_items, aggregate=statistics.fmean, seed=42)
    rows = metric_table(METRICS, {"base": {"items": ...}, "tuned": {"items": ...}}, seed=42)
    result.update(comparison(METRICS, scored, seed=42, unit="conversation"))  # eval.json "bootstrap" and "metrics"

Each resample draws n example indices with replacement and applies `aggregate` to the same indices of both
systems, so the interval reflects how much the change depends on which examples happened to be held out. A 95%
interval that excludes 0 means the change is unlikely to be noise (Koehn 2004; Efron & Tibshirani 1993).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 1000  # percentile-interval endpoints settle to ~0.1 of their spread by 1,000 resamples
CONFIDENCE = 0.95


def paired_bootstrap(base: Sequence, tuned: Sequence, aggregate: Callable[[list], float], *,
                     resamples: int = RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0) -> tuple[float, float]:
    """(low, high) percentile interval of aggregate(tuned) - aggregate(base) over paired resamples."""
    assert len(base) == len(tuned) > 0, "a paired bootstrap needs the same, non-empty set of examples for both"
    rng = np.random.default_rng(seed)
    deltas = np.empty(resamples)
    for index in range(resamples):
        picks = rng.integers(0, len(base), size=len(base))
        deltas[index] = aggregate([tuned[i] for i in picks]) - aggregate([base[i] for i in picks])
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(deltas, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class MetricSpec:
    key: str
    label: str
    better: str  # "higher", "lower", or "" where neither is better (reply length)
    aggregate: Callable[[list], float]  # per-example items -> the metric (a mean, or a corpus score)


def metric_table(specs: Sequence[MetricSpec], scored: dict, seed: int) -> list[dict]:
    """One row per metric: its value for each system in `scored` ({"base"?, "tuned"} -> {"items": {key: [...]}}),
    and with a base the change, relative change and paired bootstrap interval."""
    rows = []
    for spec in specs:
        row = {"key": spec.key, "label": spec.label, "better": spec.better}
        for name, system in scored.items():
            row[name] = spec.aggregate(system["items"][spec.key])
        if "base" in scored:
            base_items, tuned_items = scored["base"]["items"][spec.key], scored["tuned"]["items"][spec.key]
            row["delta"] = row["tuned"] - row["base"]
            row["relative"] = row["delta"] / abs(row["base"]) if row["base"] else None
            row["ci"] = list(paired_bootstrap(base_items, tuned_items, spec.aggregate, seed=seed))
        rows.append(row)
    return rows


def comparison(specs: Sequence[MetricSpec], scored: dict, seed: int, unit: str) -> dict:
    """The "bootstrap" (how the intervals were drawn, over which unit) and "metrics" entries that every
    before/after result file (eval.json, alignment.json) carries."""
    return {"bootstrap": {"resamples": RESAMPLES, "confidence": CONFIDENCE, "unit": unit},
            "metrics": metric_table(specs, scored, seed)}
