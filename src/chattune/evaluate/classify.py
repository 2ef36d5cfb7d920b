"""Score and use a classification run (`task: classify`): accuracy and macro-F1 against the majority-class
baseline, with bootstrap intervals, and label predictions for new texts.

    result = evaluate_classifier(Run.open("runs/topics"))    # writes RUN/eval.json and RUN/report.html
    predict("runs/topics", ["what is the stock market?"])     # [{"label": "money", "probabilities": {...}}]
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from rich.console import Console

from chattune.data.labelled import Row, load_labelled_split, read_labelled
from chattune.errors import InputError
from chattune.evaluate.bootstrap import paired_bootstrap
from chattune.evaluate.classification import classification_scores
from chattune.files import atomic_write_json
from chattune.runs import Run

PREDICT_BATCH = 64  # short texts: 64 per forward pass keeps a 22M-parameter encoder busy on 2 cores


def load_classifier_run(path: str | Path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = Run(Path(path))
    if not Run.is_run(path) or run.task != "classify" or not (run.model_dir / "config.json").is_file():
        raise InputError(f"{path}: no trained classifier (RUN/model); did `chattune train` with task: classify "
                         "finish?")
    return AutoModelForSequenceClassification.from_pretrained(run.model_dir).eval(), \
        AutoTokenizer.from_pretrained(run.model_dir)


@torch.no_grad()
def class_probabilities(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """(len(texts), labels) softmax probabilities, PREDICT_BATCH texts at a time."""
    chunks = []
    for first in range(0, len(texts), PREDICT_BATCH):
        batch = tokenizer(texts[first : first + PREDICT_BATCH], padding=True, truncation=True,
                          max_length=tokenizer.model_max_length, return_tensors="pt")
        chunks.append(model(**batch).logits.float().softmax(-1))
    return torch.cat(chunks)


def predict(run: str | Path, texts: list[str]) -> list[dict]:
    """[{"label": ..., "probabilities": {label: p, ...}}] per text, probabilities sorted high to low."""
    model, tokenizer = load_classifier_run(run)
    labels = model.config.id2label
    results = []
    for row in class_probabilities(model, tokenizer, texts).tolist():
        ranked = sorted(((labels[index], p) for index, p in enumerate(row)), key=lambda pair: -pair[1])
        results.append({"label": ranked[0][0], "probabilities": dict(ranked)})
    return results


def _rows(run: Run, data: str | None, split: str) -> list[Row]:
    cfg = run.config
    if split not in ("eval", "train"):
        raise InputError(f"--split {split!r}: use 'eval' (held-out texts) or 'train'")
    if data is not None:
        return read_labelled(data, cfg.text_column, cfg.label_column)[0]
    train_rows, eval_rows, _ = load_labelled_split(cfg)  # the same read and seeded split as training
    return eval_rows if split == "eval" else train_rows


def evaluate_classifier(run: Run, *, data: str | None = None, split: str = "eval", limit: int | None = None,
                        console: Console | None = None) -> dict:
    """Score the run's held-out texts (or `data`), write RUN/eval.json and RUN/report.html, return eval.json."""
    from chattune.evaluate.report import write_report

    started, cfg = time.time(), run.config
    model, tokenizer = load_classifier_run(run.path)
    labels = [model.config.id2label[index] for index in range(model.config.num_labels)]
    rows = _rows(run, data, split)[:limit]
    unknown = sorted({label for _, label in rows} - set(labels))
    if unknown:
        raise InputError(f"{data}: labels the model was not trained on: {', '.join(unknown)}; known: {', '.join(labels)}")
    probabilities = class_probabilities(model, tokenizer, [text for text, _ in rows])
    true, predicted = [labels.index(label) for _, label in rows], probabilities.argmax(-1).tolist()
    baseline_label = run.data_report()["majority_label"]
    baseline = classification_scores(true, [labels.index(baseline_label)] * len(true), labels)
    correct = [float(t == p) for t, p in zip(true, predicted)]
    baseline_correct = [float(t == labels.index(baseline_label)) for t in true]
    result = {
        "task": "classify", "run": str(run.path), "labels": labels,
        "data": {"source": data or cfg.data, "split": split, "examples": len(rows)},
        **classification_scores(true, predicted, labels),
        "accuracy_ci": list(paired_bootstrap([0.0] * len(correct), correct, statistics.fmean, seed=cfg.seed)),
        "baseline": {"label": baseline_label, "accuracy": baseline["accuracy"], "macro_f1": baseline["macro_f1"]},
        "gain_over_baseline_ci": list(paired_bootstrap(baseline_correct, correct, statistics.fmean, seed=cfg.seed)),
        "examples": [{"text": text, "label": label, "predicted": labels[guess],
                      "probability": probabilities[index, guess].item()}
                     for index, ((text, label), guess) in enumerate(zip(rows, predicted)) if labels[guess] != label],
        "seconds": round(time.time() - started, 1),
    }
    atomic_write_json(run.eval_path, result)
    write_report(run.path)
    (console or Console(stderr=True)).print(
        f"classification: accuracy {result['accuracy']:.3f} (baseline {baseline['accuracy']:.3f}), "
        f"macro-F1 {result['macro_f1']:.3f} on {len(rows)} {split} texts")
    return result
