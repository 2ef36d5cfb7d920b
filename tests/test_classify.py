"""Intent/topic classification end to end on a tiny BERT built in the test, and the real chatterbot-topics data."""

import json

import pytest

from chattune.cli import main

TOPICS = {
    "food": ["pizza", "pasta", "cheese", "bread", "soup", "salad"],
    "pets": ["dog", "cat", "puppy", "kitten", "parrot", "hamster"],
    "weather": ["rain", "sun", "snow", "wind", "storm", "cloud"],
}
FILLERS = ["i like", "tell me about", "what about the", "do you know any", "my favourite is the", "talk about"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """Folder of a randomly initialised 2-layer BERT with a word-level tokenizer over the fixture's words."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    words = sorted({w for filler in FILLERS for w in filler.split()} | {w for ws in TOPICS.values() for w in ws})
    vocab = {token: index for index, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                           special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                        cls_token="[CLS]", sep_token="[SEP]", model_max_length=64)
    # BERT's initializer_range 0.02 is sized for 768-wide layers: at width 32 so little of the words reaches [CLS]
    # that one topic often stays merged with another (0.75 accuracy for 3 of 5 seeds in a scan of this fixture,
    # 6 epochs at 2e-3); 0.1 (~1/sqrt(width)) learned all three topics for each of the 5 seeds
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, initializer_range=0.1,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # stable on 100 rows
    folder = tmp_path_factory.mktemp("tiny-bert")
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def topics_csv(tmp_path_factory):
    """A separable fixture with an imbalanced label set: the majority baseline is 50%."""
    rows = ["Utterance,Intent"]
    for label, words in TOPICS.items():
        rows += [f"{first} {second},{label}" for first in words for second in words]
    rows += [f"{filler} {word},food" for filler in FILLERS for word in TOPICS["food"]]
    path = tmp_path_factory.mktemp("topics") / "topics.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory, tiny_bert, topics_csv):
    run = tmp_path_factory.mktemp("classify") / "run"
    assert main(["train", "--data", str(topics_csv), "--model", tiny_bert, "--output", str(run),
                 "--set", "task=classify", "--set", "method=full", "--set", "learning_rate=0.002",
                 "--set", "epochs=6", "--set", "batch_size=8", "--set", "eval_steps=10",
                 "--set", "logging_steps=5"]) == 0  # classifiers train in fp32: precision is a chat key
    return run


def test_classifier_beats_majority_baseline(classifier_run):
    evaluation = json.loads((classifier_run / "eval.json").read_text())
    assert evaluation["labels"] == ["food", "pets", "weather"]
    assert evaluation["baseline"]["label"] == "food" and evaluation["baseline"]["accuracy"] == pytest.approx(0.5)
    assert evaluation["accuracy"] >= 0.9 and evaluation["gain_over_baseline_ci"][0] > 0
    assert evaluation["macro_f1"] > evaluation["baseline"]["macro_f1"]
    assert sum(map(sum, evaluation["confusion_matrix"])) == evaluation["data"]["examples"] == 28
    html = (classifier_run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3  # loss curve, accuracy curve, confusion matrix
    assert "majority-class baseline" in html and "<td>weather</td>" in html


def test_predict_prints_label_and_probabilities(classifier_run, capsys):
    capsys.readouterr()
    assert main(["predict", str(classifier_run), "--text", "kitten puppy", "--text", "snow", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["label"] for row in rows] == ["pets", "weather"]
    assert sum(rows[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def test_eval_cli_rescores_a_classification_run(classifier_run, topics_csv, capsys):
    assert main(["eval", str(classifier_run), "--data", str(topics_csv), "--limit", "20"]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert json.loads((classifier_run / "eval.json").read_text())["data"]["examples"] == 20


def test_missing_labels_are_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "texts.csv"
    path.write_text("text,notes\nhello,x\nbye,y\n", encoding="utf-8")
    assert main(["train", "--data", str(path), "--output", str(tmp_path / "run"), "--set", "task=classify"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "labels missing" in error and "label_column" in error


def test_predict_on_a_chat_run_is_a_clear_error(tmp_path, capsys):
    assert main(["predict", str(tmp_path), "--text", "hi"]) == 2
    assert "no trained classifier" in capsys.readouterr().err


def test_chatterbot_topics_loads_with_the_category_labels():
    from chattune.data.labelled import read_labelled
    from chattune.data.split import split_by_label

    rows, report = read_labelled("chatterbot-topics")
    assert report.format == "chatterbot-topics" and report.conversations == len(rows)
    labels = sorted({label for _, label in rows})
    assert labels == ["ai", "botprofile", "coding", "computers", "conversations", "emotion", "food", "greetings",
                      "history", "literature", "money", "movies", "politics", "psychology", "science", "sports",
                      "tech_support", "trivia"]
    assert ("What is AI?", "ai") in rows and len({text for text, _ in rows}) == len(rows) > 700
    train, evaluation = split_by_label(rows, 0.2, seed=42)
    assert {label for _, label in evaluation} == set(labels) == {label for _, label in train}
    assert not {text for text, _ in train} & {text for text, _ in evaluation}
    assert split_by_label(rows, 0.2, seed=42) == (train, evaluation)


def _short_lora_run(run, topics_csv, tiny_bert, seed: int) -> list[float]:
    """A few LoRA steps with dropout on: the head, the adapter, the data order and the dropout masks are random."""
    assert main(["train", "--data", str(topics_csv), "--model", tiny_bert, "--output", str(run),
                 "--set", "task=classify", "--set", "lora.dropout=0.1", "--set", f"seed={seed}",
                 "--set", "learning_rate=0.01", "--set", "max_steps=6", "--set", "eval_steps=3",
                 "--set", "logging_steps=1", "--set", "early_stopping_patience=0"]) == 0
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [row["eval_loss"] for row in logged if "eval_loss" in row] + [row["loss"] for row in logged if "loss" in row]


def test_the_same_seed_gives_identical_metrics(tmp_path, topics_csv, tiny_bert):
    first, again, other = (_short_lora_run(tmp_path / name, topics_csv, tiny_bert, seed)
                           for name, seed in (("a", 7), ("b", 7), ("c", 8)))
    assert len(first) == 2 + 6 and first == again  # exactly: CPU fp32 on one machine
    assert json.loads((tmp_path / "a" / "eval.json").read_text())["accuracy"] == \
        json.loads((tmp_path / "b" / "eval.json").read_text())["accuracy"]
    assert other != first  # another seed: another split, head, adapter and order


def test_two_processes_write_the_run_folder_once(tmp_path, topics_csv, tiny_bert):
    """`--nproc 2` (gloo): rank 0 alone writes the run folder, logs and the evaluation; the other rank trains."""
    import os
    import subprocess
    import sys

    run = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": os.path.join(os.path.dirname(__file__), "..", "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "chattune", "train", "--data", str(topics_csv), "--model", tiny_bert,
         "--output", str(run), "--set", "task=classify", "--set", "method=full", "--set", "learning_rate=0.002",
         "--set", "max_steps=4", "--set", "eval_steps=2", "--set", "logging_steps=1", "--set", "batch_size=4",
         "--nproc", "2"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["global_batch_size"] == 8 and metrics["steps"] == 4
    assert done.stderr.count("data: 116 train") == 1 and done.stderr.count("classification: accuracy") == 1
    assert done.stdout.count("run folder:") == 1
    assert len(list((run / "tensorboard").iterdir())) == 1
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged if "loss" in row] == [1, 2, 3, 4]
    assert [row["step"] for row in logged if "eval_loss" in row] == [2, 4]
    assert json.loads((run / "eval.json").read_text())["data"]["examples"] == 28
    assert (run / "model" / "config.json").is_file() and not (run / "checkpoints").exists()
    assert sorted(path.name for path in run.iterdir() if path.name.startswith(".")) == []  # no leftover temp files
