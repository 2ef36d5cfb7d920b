"""Reply-vs-reference overlap and reply shape: BLEU and chrF (sacrebleu), ROUGE-1/2/L (rouge-score), distinct-n.

    stats = bleu_stats(replies, references)      # one row of sufficient statistics per reply
    bleu_from_stats(stats)                       # == sacrebleu.corpus_bleu(replies, [references]).score

BLEU and chrF are corpus-level scores: they are computed from summed per-reply statistics, never averaged per
sentence, so that a bootstrap resample of replies gives exactly the corpus score of that resample.
"""

from __future__ import annotations

import numpy as np
from sacrebleu.metrics import BLEU, CHRF

_BLEU = BLEU()  # sacrebleu defaults: 13a tokenizer, exponential smoothing; the scores papers report
_CHRF = CHRF()  # character 6-grams, beta 2 (chrF2)
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


# sacrebleu's per-sentence statistics API is underscore-named but is what its own corpus_score uses;
# tests/test_eval_metrics.py checks that the summed-stats score equals corpus_score.
def bleu_stats(replies: list[str], references: list[str]) -> list[list[int]]:
    return [list(row) for row in _BLEU._extract_corpus_statistics(replies, [references])]


def bleu_from_stats(rows: list[list[int]]) -> float:
    return _BLEU._compute_score_from_stats(list(np.sum(rows, axis=0))).score


def chrf_stats(replies: list[str], references: list[str]) -> list[list[int]]:
    return [list(row) for row in _CHRF._extract_corpus_statistics(replies, [references])]


def chrf_from_stats(rows: list[list[int]]) -> float:
    return _CHRF._compute_score_from_stats(list(np.sum(rows, axis=0))).score


def rouge_f1(replies: list[str], references: list[str]) -> dict[str, list[float]]:
    """F1 of ROUGE-1, ROUGE-2 and ROUGE-L per reply (with stemming, as the ROUGE papers do)."""
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    scores = [scorer.score(reference, reply) for reply, reference in zip(replies, references)]
    return {kind: [score[kind].fmeasure for score in scores] for kind in ROUGE_TYPES}


def words(text: str) -> list[str]:
    return text.lower().split()


def distinct_n(word_lists: list[list[str]], n: int) -> float:
    """Distinct n-grams over all n-grams of all replies: low when the model repeats itself across replies."""
    grams = [tuple(words[i : i + n]) for words in word_lists for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
