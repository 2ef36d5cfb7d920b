"""Fine-tune a transformer with a classification head on (text, label) rows: intent and topic routing.

    chattune train configs/classify.yaml --output runs/topics        # task: classify
    chattune predict runs/topics --text "what is the stock market?"

Reads top to bottom: read labelled rows (CSV/TSV/JSONL/JSON, or the built-in `chatterbot-topics`) -> stratified
seeded split -> encoder (default all-MiniLM-L6-v2, shipped offline; any HF encoder or causal LM id works) with a
new classification head -> transformers' Trainer with early stopping on eval accuracy, best checkpoint restored ->
RUN/model (plain `AutoModelForSequenceClassification.from_pretrained(RUN/model)`) -> eval.json and report.html
with accuracy, macro-F1, per-class precision/recall and the confusion matrix against the majority-class baseline.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import random
import shutil
import statistics
import time
from collections import Counter
from pathlib import Path

import torch
import yaml
from rich.console import Console

from chattune.config import TrainConfig, save_config
from chattune.data.readers.text import read_utf8_or_cp1252
from chattune.data.report import DataReport
from chattune.errors import InputError
from chattune.evaluate.bootstrap import paired_bootstrap
from chattune.evaluate.classification import classification_scores, majority_label
from chattune.files import atomic_directory, atomic_write_json
from chattune.train.callbacks import MetricsLog, RichProgress

# Column names recognised without text_column/label_column, first match wins, case-insensitive.
TEXT_COLUMNS = ("text", "sentence", "utterance", "question", "query", "prompt", "input")
LABEL_COLUMNS = ("label", "intent", "category", "topic", "class")
TOPICS_CORPUS = "chatterbot-topics"
# chatterbot categories with fewer distinct questions are dropped (health has 1, humor 2, gossip 6): a class needs
# a few examples on both sides of the split to be learnable and measurable.
MIN_TOPIC_QUESTIONS = 8
PREDICT_BATCH = 64  # short texts: 64 per forward pass keeps a 22M-parameter encoder busy on 2 cores

Row = tuple[str, str]  # (text, label)


# --- data ---------------------------------------------------------------------------------------------------------

def read_labelled(source: str, text_column: str | None = None, label_column: str | None = None) -> list[Row]:
    """(text, label) rows, duplicates of an earlier text dropped; InputError names the file, line and column."""
    if source == TOPICS_CORPUS and not Path(source).exists():
        rows = _chatterbot_topics()
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(f"{source}: no such file; give a CSV/TSV/JSONL/JSON with text and label columns, "
                             f"or the built-in corpus {TOPICS_CORPUS}")
        records = _records(path)
        if not records:
            raise InputError(f"{path}: no rows")
        text_key = _column(records[0][1], text_column, TEXT_COLUMNS, "text", path)
        label_key = _column(records[0][1], label_column, LABEL_COLUMNS, "label", path)
        rows = [(_field(record, text_key, where), _field(record, label_key, where)) for where, record in records]
    unique = {}
    for text, label in rows:
        unique.setdefault(text, label)
    return list(unique.items())


def _records(path: Path) -> list[tuple[str, dict]]:
    """(where, record) per row of a CSV/TSV (header names the columns), JSONL, or JSON list."""
    text = read_utf8_or_cp1252(path, DataReport(format="labelled", source=str(path)))
    if path.suffix.lower() in (".csv", ".tsv"):
        delimiter = "\t" if path.suffix.lower() == ".tsv" else max(",;\t", key=text.split("\n", 1)[0].count)
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
        return [(f"{path}:{reader.line_num}", row) for row in reader]
    try:
        if path.suffix.lower() == ".json":
            return [(f"{path}: record {index}", record) for index, record in enumerate(json.loads(text))]
        return [(f"{path}:{number}", json.loads(line)) for number, line in enumerate(text.splitlines(), 1)
                if line.strip()]
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not valid JSON ({error}); give one object per line (JSONL) or a list") from None


def _column(record: dict, wanted: str | None, candidates: tuple[str, ...], kind: str, path: Path) -> str:
    by_lower = {str(name).strip().lower(): name for name in record}
    for name in [wanted] if wanted else candidates:
        if name.strip().lower() in by_lower:
            return by_lower[name.strip().lower()]
    flag = f"--set {kind}_column=NAME"
    if wanted:
        raise InputError(f"{path}: no column {wanted!r} (columns: {', '.join(map(str, record))}); fix {flag}")
    raise InputError(f"{path}: {kind}s missing: no {'/'.join(candidates)} column among: "
                     f"{', '.join(map(str, record))}; name it with {flag}")


def _field(record: dict, key: str, where: str) -> str:
    value = record.get(key)
    if value is None or not str(value).strip():
        raise InputError(f"{where}: empty {key!r}; every row needs a text and a label")
    return str(value).strip()


def _chatterbot_topics() -> list[Row]:
    """The first utterance (the user's question) of each chatterbot-corpus English conversation, labelled with
    the name of its category file (ai, food, sports, ...)."""
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"{TOPICS_CORPUS}: needs its package; run: pip install chatterbot-corpus")
    rows = []
    for path in sorted(Path(spec.submodule_search_locations[0], "data", "english").glob("*.yml")):
        questions = {str(c[0]).strip(): None for c in yaml.safe_load(path.read_text("utf-8"))["conversations"]}
        if len({q.lower() for q in questions}) >= MIN_TOPIC_QUESTIONS:
            rows += [(question, path.stem) for question in questions]
    return rows


def stratified_split(rows: list[Row], eval_fraction: float, seed: int) -> tuple[list[Row], list[Row]]:
    """(train, eval) with each label split in the same proportion (at least one row per side where it has two)."""
    rng = random.Random(seed)
    train, evaluation = [], []
    for label in sorted({label for _, label in rows}):
        group = [row for row in rows if row[1] == label]
        rng.shuffle(group)
        held = min(max(round(len(group) * eval_fraction), 1), len(group) - 1)
        evaluation += group[:held]
        train += group[held:]
    rng.shuffle(train)
    return train, evaluation


def _load_split(cfg: TrainConfig) -> tuple[list[Row], list[Row]]:
    rows = read_labelled(cfg.data, cfg.text_column, cfg.label_column)[: cfg.limit]
    if cfg.eval_data is not None:
        return rows, read_labelled(cfg.eval_data, cfg.text_column, cfg.label_column)
    if len({label for _, label in rows}) < 2:
        raise InputError(f"{cfg.data}: found only one label; classification needs at least two")
    return stratified_split(rows, cfg.eval_fraction, cfg.seed)


# --- model --------------------------------------------------------------------------------------------------------

def _backbone(name: str) -> str:
    from chattune.evaluate.relevance import MINILM_ALIAS, minilm_folder
    from chattune.models import resolve_model

    return str(minilm_folder()) if name == MINILM_ALIAS else resolve_model(name)


def _load_classifier(name: str, labels: list[str]):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = _backbone(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:  # causal LMs: the classifier reads the last non-pad token, so pad must be set
        tokenizer.pad_token = tokenizer.eos_token
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={label: index for index, label in enumerate(labels)}, pad_token_id=tokenizer.pad_token_id)
    except (OSError, ValueError) as error:
        raise InputError(f"model {name}: cannot load as a classifier ({str(error).splitlines()[0]})") from None
    return model, tokenizer


def _encode(tokenizer, rows: list[Row], label_ids: dict[str, int], max_length: int) -> list[dict]:
    encoded = tokenizer([text for text, _ in rows], truncation=True, max_length=max_length)
    return [{"input_ids": ids, "attention_mask": mask, "labels": label_ids[label]}
            for ids, mask, (_, label) in zip(encoded["input_ids"], encoded["attention_mask"], rows)]


def _compute_metrics(prediction) -> dict[str, float]:
    logits, true = prediction
    scores = classification_scores(true.tolist(), logits.argmax(-1).tolist(), list(range(logits.shape[-1])))
    return {"accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"]}


def train_classifier(cfg: TrainConfig, run: Path, *, overwrite: bool = False, console: Console | None = None) -> Path:
    from transformers import DataCollatorWithPadding

    console = console or Console(stderr=True)
    started = time.time()
    _prepare_run_folder(run, overwrite)
    save_config(cfg, run / "config.yaml")
    train_rows, eval_rows = _load_split(cfg)
    labels = sorted({label for _, label in train_rows})
    unknown = sorted({label for _, label in eval_rows} - set(labels))
    if unknown:
        raise InputError(f"{cfg.eval_data or cfg.data}: eval labels never seen in training: {', '.join(unknown)}")
    label_ids = {label: index for index, label in enumerate(labels)}
    model, tokenizer = _load_classifier(cfg.model, labels)
    max_length = min(cfg.max_length, tokenizer.model_max_length)
    tokenizer.model_max_length = max_length  # saved with RUN/model: predict cuts texts exactly as training did
    train_set, eval_set = (_encode(tokenizer, rows, label_ids, max_length) for rows in (train_rows, eval_rows))
    counts = Counter(label for _, label in train_rows)
    report = {"train_texts": len(train_rows), "eval_texts": len(eval_rows), "labels": labels,
              "train_label_counts": dict(sorted(counts.items())), "majority_label": labels[majority_label(
                  [label_ids[label] for _, label in train_rows])],
              "train_tokens": {"total": sum(len(example["input_ids"]) for example in train_set)}}
    atomic_write_json(run / "data_report.json", report)
    console.print(f"data: {len(train_rows)} train / {len(eval_rows)} eval texts, {len(labels)} labels; "
                  f"majority label {report['majority_label']!r}")
    if cfg.method == "lora":
        model = _add_lora(model, cfg)
    trainer = _make_trainer(cfg, run, model, tokenizer, train_set, eval_set, DataCollatorWithPadding(tokenizer),
                            console)
    trainer.train()
    model = trainer.model.merge_and_unload() if cfg.method == "lora" else trainer.model  # best checkpoint
    with atomic_directory(run / "model") as folder:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    shutil.rmtree(run / "checkpoints", ignore_errors=True)  # RUN/model is the best one; no resume for classifiers
    atomic_write_json(run / "metrics.json", {"steps": trainer.state.global_step,
                                             "best_eval_accuracy": trainer.state.best_metric,
                                             "train_seconds": round(time.time() - started, 1)})
    evaluate_classifier(run, console=console)
    return run


def _prepare_run_folder(run: Path, overwrite: bool) -> None:
    if run.exists() and any(run.iterdir()):
        if not overwrite:
            raise InputError(f"{run}: run folder exists; pass --overwrite to replace it")
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)


def _add_lora(model, cfg: TrainConfig):
    from peft import LoraConfig, get_peft_model

    # SEQ_CLS: peft also trains (and saves) the new classification head in full
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.target_modules, task_type="SEQ_CLS")
    return get_peft_model(model, lora)


class ClassifyProgress(RichProgress):
    """The chat progress bar, with eval accuracy (what early stopping watches) in the per-evaluation line."""

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.console.print(
            f"step {state.global_step:>5}/{state.max_steps}  epoch {state.epoch:.2f}  eval loss "
            f"{metrics['eval_loss']:.4f}  accuracy {metrics['eval_accuracy']:.3f}  macro-F1 {metrics['eval_macro_f1']:.3f}"
        )


def _make_trainer(cfg, run, model, tokenizer, train_set, eval_set, collator, console):
    from transformers import EarlyStoppingCallback, PrinterCallback, Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(run / "checkpoints"), per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size, gradient_accumulation_steps=cfg.gradient_accumulation,
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps, eval_strategy="steps", eval_steps=cfg.eval_steps, save_strategy="steps",
        save_steps=cfg.eval_steps, save_total_limit=cfg.save_total_limit, load_best_model_at_end=True,
        metric_for_best_model="accuracy", greater_is_better=True,  # what the user cares about, not the loss
        logging_steps=cfg.logging_steps, report_to="none", disable_tqdm=True, seed=cfg.seed,
    )
    callbacks = [ClassifyProgress(console), MetricsLog(run / "metrics.jsonl")]
    if cfg.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    trainer = Trainer(model=model, args=args, data_collator=collator, train_dataset=train_set, eval_dataset=eval_set,
                      processing_class=tokenizer, compute_metrics=_compute_metrics, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)
    return trainer


# --- evaluate and predict -----------------------------------------------------------------------------------------

def load_classifier_run(run: Path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if not (run / "model" / "config.json").is_file():
        raise InputError(f"{run}: no trained classifier (RUN/model); did `chattune train` with task: classify finish?")
    return AutoModelForSequenceClassification.from_pretrained(run / "model").eval(), \
        AutoTokenizer.from_pretrained(run / "model")


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
    model, tokenizer = load_classifier_run(Path(run))
    labels = model.config.id2label
    results = []
    for row in class_probabilities(model, tokenizer, texts).tolist():
        ranked = sorted(((labels[index], p) for index, p in enumerate(row)), key=lambda pair: -pair[1])
        results.append({"label": ranked[0][0], "probabilities": dict(ranked)})
    return results


def evaluate_classifier(run: Path, *, data: str | None = None, split: str = "eval", limit: int | None = None,
                        console: Console | None = None) -> dict:
    """Score the run's held-out texts (or `data`), write RUN/eval.json and RUN/report.html, return eval.json."""
    from chattune.config import load_config
    from chattune.evaluate.report import write_report

    started = time.time()
    cfg = load_config(run / "config.yaml")
    if split not in ("eval", "train"):
        raise InputError(f"--split {split!r}: use 'eval' (held-out texts) or 'train'")
    model, tokenizer = load_classifier_run(run)
    labels = [model.config.id2label[index] for index in range(model.config.num_labels)]
    if data is not None:
        rows = read_labelled(data, cfg.text_column, cfg.label_column)
    else:
        train_rows, eval_rows = _load_split(cfg)
        rows = eval_rows if split == "eval" else train_rows
    rows = rows[:limit]
    unknown = sorted({label for _, label in rows} - set(labels))
    if unknown:
        raise InputError(f"{data}: labels the model was not trained on: {', '.join(unknown)}; known: {', '.join(labels)}")
    probabilities = class_probabilities(model, tokenizer, [text for text, _ in rows])
    true = [labels.index(label) for _, label in rows]
    predicted = probabilities.argmax(-1).tolist()
    scores = classification_scores(true, predicted, labels)
    baseline_label = json.loads((run / "data_report.json").read_text())["majority_label"]
    baseline = classification_scores(true, [labels.index(baseline_label)] * len(true), labels)
    correct = [float(t == p) for t, p in zip(true, predicted)]
    baseline_correct = [float(t == labels.index(baseline_label)) for t in true]
    result = {
        "task": "classify", "run": str(run), "labels": labels,
        "data": {"source": data or cfg.data, "split": split, "examples": len(rows)},
        **scores,
        "accuracy_ci": list(paired_bootstrap([0.0] * len(correct), correct, statistics.fmean, seed=cfg.seed)),
        "baseline": {"label": baseline_label, "accuracy": baseline["accuracy"], "macro_f1": baseline["macro_f1"]},
        "gain_over_baseline_ci": list(paired_bootstrap(baseline_correct, correct, statistics.fmean, seed=cfg.seed)),
        "examples": [{"text": text, "label": label, "predicted": labels[guess],
                      "probability": probabilities[index, guess].item()}
                     for index, ((text, label), guess) in enumerate(zip(rows, predicted)) if labels[guess] != label],
        "seconds": round(time.time() - started, 1),
    }
    atomic_write_json(run / "eval.json", result)
    write_report(run)
    (console or Console(stderr=True)).print(
        f"classification: accuracy {result['accuracy']:.3f} (baseline {baseline['accuracy']:.3f}), "
        f"macro-F1 {result['macro_f1']:.3f} on {len(rows)} {split} texts")
    return result
