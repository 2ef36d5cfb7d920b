"""Reply-vs-reference overlap and reply shape: BLEU and chrF (sacrebleu), ROUGE-1/2/L/Lsum (rouge-score), distinct-n,
loops.

    stats = bleu_stats(replies, references)      # one row of sufficient statistics per reply
    bleu_from_stats(stats)                       # == sacrebleu.corpus_bleu(replies, [references]).score

BLEU and chrF are corpus-level scores: they are computed from summed per-reply statistics, never averaged per
sentence, so that a bootstrap resample of replies gives exactly the corpus score of that resample.
"""

from __future__ import annotations

import re

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


def rouge_f1(replies: list[str], references: list[str], kinds: tuple[str, ...] = ROUGE_TYPES) -> dict[str, list[float]]:
    """F1 of ROUGE-1, ROUGE-2 and ROUGE-L (and ROUGE-Lsum, given in `kinds`) per reply, with stemming as the ROUGE
    papers do. ROUGE-Lsum is the summary-level LCS over sentences, which rouge-score reads as lines: both texts are
    split into sentences first (`sentence_lines`), as the summarisation papers report it."""
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(list(kinds), use_stemmer=True)
    if "rougeLsum" in kinds:
        replies, references = [sentence_lines(t) for t in replies], [sentence_lines(t) for t in references]
    scores = [scorer.score(reference, reply) for reply, reference in zip(replies, references)]
    return {kind: [score[kind].fmeasure for score in scores] for kind in kinds}


SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def sentence_lines(text: str) -> str:
    """One sentence per line: split after . ! ? and at line breaks (nltk's punkt would need a data download).

    >>> sentence_lines("A met B. They talk!\\nThen leave")
    'A met B.\\nThey talk!\\nThen leave'
    """
    return "\n".join(part.strip() for part in SENTENCE_END.split(text) if part.strip())


def words(text: str) -> list[str]:
    return text.lower().split()


def distinct_n(word_lists: list[list[str]], n: int) -> float:
    """Distinct n-grams over all n-grams of all replies: low when the model repeats itself across replies."""
    grams = [tuple(words[i : i + n]) for words in word_lists for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


LOOP_REPEATS = 3  # a line or span said this often in one reply is a loop; twice is still a plausible echo
LOOP_SPAN = 3  # words in the repeated span: "i'm sorry, but" x3 loops, while "of the" x3 can be normal prose
LOOP_WORD = re.compile(r"\w+(?:'\w+)*")


def loops(text: str) -> bool:
    """True when the reply repeats itself: one line, or one span of LOOP_SPAN consecutive words, occurs
    LOOP_REPEATS or more times.

    Lines are compared stripped and case-folded, blank lines ignored. Words are lowercased runs of letters, digits
    and inner apostrophes, so punctuation and line breaks do not hide a repeat ("sorry, but" == "sorry but");
    occurrences of a span may overlap ("ha ha ha ha ha" holds "ha ha ha" three times).

    >>> loops("I'm not sure\\nI'm not sure\\nI'm not sure"), loops("i'm sorry, but i'm sorry, but i'm sorry, but")
    (True, True)
    >>> loops("I like tea. Do you like tea? Tea is nice.")
    False
    """
    lines = [line.strip().casefold() for line in text.splitlines() if line.strip()]
    if any(lines.count(line) >= LOOP_REPEATS for line in set(lines)):
        return True
    tokens = LOOP_WORD.findall(text.lower())
    spans = [tuple(tokens[i : i + LOOP_SPAN]) for i in range(len(tokens) - LOOP_SPAN + 1)]
    return any(spans.count(span) >= LOOP_REPEATS for span in set(spans))
