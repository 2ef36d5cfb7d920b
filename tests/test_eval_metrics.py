"""Metric plumbing on hand-computed tiny cases, checked against the libraries called directly."""

import math
import random

import pytest
import torch

from chattune.evaluate import text_metrics
from chattune.evaluate.bootstrap import paired_bootstrap
from chattune.evaluate.classification import classification_scores, majority_label
from chattune.evaluate.report import verdict

REPLIES = ["the cat sat on the mat", "hello there my friend", "i like pizza", ""]
REFERENCES = ["the cat is on the mat", "hello my friend", "i really like pasta", "nothing to say"]


def test_bleu_and_chrf_from_summed_stats_equal_sacrebleu():
    import sacrebleu

    bleu = text_metrics.bleu_from_stats(text_metrics.bleu_stats(REPLIES, REFERENCES))
    chrf = text_metrics.chrf_from_stats(text_metrics.chrf_stats(REPLIES, REFERENCES))
    assert bleu == pytest.approx(sacrebleu.corpus_bleu(REPLIES, [REFERENCES]).score)
    assert chrf == pytest.approx(sacrebleu.corpus_chrf(REPLIES, [REFERENCES]).score)
    assert 0 < bleu < 100 and 0 < chrf < 100


def test_rouge_equals_rouge_score():
    from rouge_score.rouge_scorer import RougeScorer

    ours = text_metrics.rouge_f1(REPLIES, REFERENCES)
    scorer = RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for index, (reply, reference) in enumerate(zip(REPLIES, REFERENCES)):
        direct = scorer.score(reference, reply)
        assert [ours[kind][index] for kind in ("rouge1", "rouge2", "rougeL")] == \
            [direct[kind].fmeasure for kind in ("rouge1", "rouge2", "rougeL")]
    assert ours["rouge1"][0] == pytest.approx(5 / 6)  # 5 of 6 words shared, both sides 6 words long


def test_distinct_n_by_hand():
    lists = [["a", "b", "a"], ["a", "b"]]
    assert text_metrics.distinct_n(lists, 1) == pytest.approx(2 / 5)
    assert text_metrics.distinct_n(lists, 2) == pytest.approx(2 / 3)  # (a,b) (b,a) (a,b)
    assert text_metrics.distinct_n([[]], 2) == 0.0


@pytest.mark.parametrize("reply, looping", [
    ("I'm not sure\nI'm not sure\nI'm not sure", True),  # a line three times
    ("i'm sorry, but i'm sorry, but i'm sorry, but", True),  # a 3-word span three times, across punctuation
    ("Yes.\nyes.\n  YES.  ", True),  # lines compared stripped and case-folded
    ("ha ha ha ha ha", True),  # overlapping spans count
    ("I'm not sure\nI'm not sure", False),  # twice is an echo, not yet a loop
    ("i like it, i like it a lot, and i like it here", True),
    ("i like it, i like it a lot", False),
    ("\n\n\nok", False),  # blank lines are not a repeated line
    ("I like tea. Do you like tea? Tea is nice, tea is warm.", False),  # a word often, but no span
    ("", False),
])
def test_loops_on_fixed_strings(reply, looping):
    assert text_metrics.loops(reply) is looping


def test_perplexity_is_exp_of_mean_token_nll(tiny_llama):
    from chattune.data.chat import IGNORE_INDEX, tokenize_conversations
    from chattune.data.collate import PadCollator
    from chattune.evaluate.likelihood import likelihood
    from chattune.models import load_model

    model, tokenizer = load_model(tiny_llama)
    conversations = [[{"role": "user", "content": "hello how are you"}, {"role": "assistant", "content": "fine"}],
                     [{"role": "user", "content": "what food"},
                      {"role": "assistant", "content": "i like pizza and pasta a lot"}]]
    examples, _ = tokenize_conversations(tokenizer, conversations, 64)
    scores = likelihood(model, examples, PadCollator(tokenizer.pad_token_id), batch_size=2)
    nlls = []  # independently: one example at a time, log-softmax at each target position
    with torch.no_grad():
        for example in examples:
            log_probs = model(torch.tensor([example["input_ids"]])).logits[0].log_softmax(-1)
            nlls += [-log_probs[t - 1, label].item() for t, label in enumerate(example["labels"])
                     if label != IGNORE_INDEX]
    assert scores["tokens"] == len(nlls)
    assert scores["perplexity"] == pytest.approx(math.exp(sum(nlls) / len(nlls)), rel=1e-4)


def test_a_batch_scored_a_row_at_a_time_scores_the_same(tiny_llama, monkeypatch):
    """Rows of a batch go through the model as few at a time as the logits budget asks; the numbers stay."""
    from chattune.data.chat import tokenize_conversations
    from chattune.data.collate import PadCollator
    from chattune.evaluate import likelihood as likelihood_module
    from chattune.models import load_model

    model, tokenizer = load_model(tiny_llama)
    conversations = [[{"role": "user", "content": f"hello {index} how are you"},
                      {"role": "assistant", "content": "fine thanks " * (index + 1)}] for index in range(5)]
    examples, _ = tokenize_conversations(tokenizer, conversations, 64)
    together = likelihood_module.conversation_likelihoods(model, examples, PadCollator(tokenizer.pad_token_id), 5)
    monkeypatch.setattr(likelihood_module, "LOGITS_BYTES", 1)  # one row per forward
    alone = likelihood_module.conversation_likelihoods(model, examples, PadCollator(tokenizer.pad_token_id), 5)
    assert [(row["tokens"], row["correct"]) for row in alone] == [(row["tokens"], row["correct"]) for row in together]
    assert [row["nll"] for row in alone] == pytest.approx([row["nll"] for row in together], rel=1e-5)


def test_bootstrap_interval_contains_true_delta_and_is_reproducible():
    rng = random.Random(0)
    base = [rng.gauss(0.0, 1.0) for _ in range(200)]
    tuned = [value + 0.3 + rng.gauss(0.0, 0.2) for value in base]  # true mean change 0.3
    mean = lambda items: sum(items) / len(items)  # noqa: E731
    low, high = paired_bootstrap(base, tuned, mean, seed=7)
    assert low < 0.3 < high and high - low < 0.15  # pairing removes the large between-example spread
    assert paired_bootstrap(base, tuned, mean, seed=7) == (low, high)
    assert paired_bootstrap(base, tuned, mean, seed=8) != (low, high)
    low, high = paired_bootstrap(base, base, mean, seed=7)
    assert low == high == 0.0


def test_verdict_reads_the_interval_and_direction():
    assert verdict({"better": "lower", "ci": [-0.5, -0.1]}) == "better"
    assert verdict({"better": "higher", "ci": [-0.5, -0.1]}) == "worse"
    assert verdict({"better": "higher", "ci": [-0.5, 0.1]}) == "within noise"
    assert verdict({"better": "", "ci": [0.2, 0.4]}) == "higher"


def test_classification_scores_match_scikit_learn():
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    rng = random.Random(1)
    true = [rng.randrange(4) for _ in range(100)]
    predicted = [t if rng.random() < 0.6 else rng.randrange(4) for t in true]
    scores = classification_scores(true, predicted, ["a", "b", "c", "d"])
    assert scores["accuracy"] == pytest.approx(accuracy_score(true, predicted))
    assert scores["macro_f1"] == pytest.approx(f1_score(true, predicted, average="macro"))
    precision, recall, _, support = precision_recall_fscore_support(true, predicted)
    assert [row["precision"] for row in scores["per_class"]] == pytest.approx(list(precision))
    assert [row["recall"] for row in scores["per_class"]] == pytest.approx(list(recall))
    assert scores["confusion_matrix"] == confusion_matrix(true, predicted).tolist()
    assert majority_label([2, 1, 1, 2, 0]) == 1  # a tie goes to the smaller id


def test_toxicity_ranks_an_insult_above_a_greeting():
    from chattune.evaluate.safety import TOXIC_THRESHOLD, toxicity

    insult, greeting = toxicity(["shut up you stupid fucking idiot", "have a lovely day, my friend"])
    assert insult > TOXIC_THRESHOLD > greeting


def test_relevance_ranks_an_on_topic_reply_above_an_off_topic_one():
    from chattune.evaluate.relevance import SentenceEncoder, cosine_similarities

    encoder = SentenceEncoder.load()
    reference = "I love eating pizza with lots of cheese."
    on_topic, off_topic = cosine_similarities(encoder, ["Cheesy pizza is my favourite food.",
                                                        "The stock market fell sharply on Tuesday."],
                                              [reference, reference])
    assert on_topic > 0.5 > off_topic
    same = cosine_similarities(encoder, [reference], [reference])[0]
    assert same == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_the_lm_head_at_scored_tokens_only_gives_the_full_heads_numbers(fixture, request, monkeypatch):
    """Held-out likelihood runs the LM head only where a reply token is scored (as training's loss does): the
    per-conversation NLL, token count and correct predictions equal the full-logits path's, padding included."""
    from chattune.data.chat import tokenize_conversations
    from chattune.data.collate import PadCollator
    from chattune.evaluate import likelihood as likelihood_module
    from chattune.models import load_model

    model, tokenizer = load_model(request.getfixturevalue(fixture))
    conversations = [[{"role": "user", "content": f"hello {index} how are you " * (index + 1)},
                      {"role": "assistant", "content": "fine thanks " * (5 - index)},
                      {"role": "user", "content": "and food?"}, {"role": "assistant", "content": "pizza"}]
                     for index in range(4)]
    examples, _ = tokenize_conversations(tokenizer, conversations, 96)
    collator = PadCollator(tokenizer.pad_token_id)
    targeted = likelihood_module.conversation_likelihoods(model, examples, collator, 4)
    monkeypatch.setattr(likelihood_module, "supports_target_only_loss", lambda model: False)
    full = likelihood_module.conversation_likelihoods(model, examples, collator, 4)
    assert [(row["tokens"], row["correct"]) for row in targeted] == [(row["tokens"], row["correct"]) for row in full]
    assert [row["nll"] for row in targeted] == pytest.approx([row["nll"] for row in full], rel=1e-5)
