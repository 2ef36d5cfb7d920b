"""Fine-tune a transformer with a classification head on (text, label) rows: `task: classify`, intent and topic
routing.

    chattune train configs/classify.yaml --output runs/topics
    chattune predict runs/topics --text "what is the stock market?"

Reads top to bottom: read labelled rows (chattune.data.labelled) with a stratified seeded split -> encoder (default
all-MiniLM-L6-v2, shipped offline; any HF encoder or causal LM works) with a new classification head ->
transformers' Trainer with early stopping on eval accuracy, best checkpoint restored -> RUN/model (plain
`AutoModelForSequenceClassification.from_pretrained(RUN/model)`). The evaluation that follows
(chattune.evaluate.classify) scores it against the majority-class baseline.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path

from rich.console import Console

from chattune.config import ClassifyConfig, save_config
from chattune.data.labelled import Row, load_labelled_split
from chattune.errors import InputError
from chattune.evaluate.classification import classification_scores, majority_label
from chattune.files import atomic_write_json
from chattune.runs import Run
from chattune.train.callbacks import RichProgress
from chattune.train.common import (add_lora, build_trainer, cleanup_on_failure, global_batch, prepare_run_folder,
                                   save_weights, seed_everything)
from chattune.train.distributed import is_main_process, process_state, trained_model


def train_classifier(cfg: ClassifyConfig, run: Path, *, overwrite: bool = False,
                     console: Console | None = None) -> Path | None:
    """Train into `run`; None on the ranks other than 0 of a distributed launch (rank 0 writes and evaluates)."""
    from transformers import DataCollatorWithPadding

    console = console or Console(stderr=True)
    started = time.time()
    prepare_run_folder(run, resume=False, overwrite=overwrite)
    folder = Run(run)
    main = is_main_process()  # only rank 0 of a distributed launch writes
    with cleanup_on_failure(run, fresh=True):
        if main:
            save_config(cfg, folder.config_path)
        seed_everything(cfg.seed)  # before the new head and the LoRA adapter draw their initial weights
        train_rows, eval_rows, report = load_labelled_split(cfg)  # every rank reads the same seeded split
        labels = _labels(cfg, train_rows, eval_rows)
        label_ids = {label: index for index, label in enumerate(labels)}
        model, tokenizer = _load_classifier(cfg.model, labels)
        max_length = min(cfg.max_length, tokenizer.model_max_length)
        tokenizer.model_max_length = max_length  # saved with RUN/model: predict cuts texts exactly as training did
        train_set, eval_set = (_encode(tokenizer, rows, label_ids, max_length) for rows in (train_rows, eval_rows))
        report.update(_label_report(labels, train_rows, train_set))
        if main:
            atomic_write_json(folder.data_report_path, report)
            console.print(f"data: {len(train_rows)} train / {len(eval_rows)} eval texts, {len(labels)} labels; "
                          f"majority label {report['majority_label']!r}")
        model.to(process_state().device)  # this rank's GPU under torchrun, else the one GPU or the CPU
        if cfg.method == "lora":
            model = add_lora(model, cfg, task_type="SEQ_CLS")
        trainer = build_trainer(cfg, run, model, tokenizer, train_set, eval_set, DataCollatorWithPadding(tokenizer),
                                ClassifyProgress(console), compute_metrics=_compute_metrics,
                                metric_for_best_model="accuracy", greater_is_better=True)  # what users care about
        trainer.train()
        # the best checkpoint, gathered to rank 0 under FSDP
        model = trained_model(trainer, lambda: _fresh_classifier(cfg, labels))
    if not main:
        return None
    model = model.merge_and_unload() if cfg.method == "lora" else model
    save_weights(model, tokenizer, folder.model_dir)
    shutil.rmtree(folder.checkpoints_dir, ignore_errors=True)  # RUN/model is the best one; classifiers never resume
    atomic_write_json(folder.metrics_path, {"steps": trainer.state.global_step,
                                            "best_eval_accuracy": trainer.state.best_metric,
                                            **global_batch(trainer),
                                            "train_seconds": round(time.time() - started, 1)})
    return run


def _fresh_classifier(cfg: ClassifyConfig, labels: list[str]):
    """An untrained classifier of the layout train_classifier trains (trained_model loads the gathered weights)."""
    model, _ = _load_classifier(cfg.model, labels)
    return add_lora(model, cfg, task_type="SEQ_CLS") if cfg.method == "lora" else model


def _labels(cfg: ClassifyConfig, train_rows: list[Row], eval_rows: list[Row]) -> list[str]:
    labels = sorted({label for _, label in train_rows})
    unknown = sorted({label for _, label in eval_rows} - set(labels))
    if unknown:
        raise InputError(f"{cfg.eval_data or cfg.data}: eval labels never seen in training: {', '.join(unknown)}")
    return labels


def _label_report(labels: list[str], train_rows: list[Row], train_set: list[dict]) -> dict:
    counts = Counter(label for _, label in train_rows)
    majority = labels[majority_label([labels.index(label) for _, label in train_rows])]
    return {"labels": labels, "train_label_counts": dict(sorted(counts.items())), "majority_label": majority,
            "train_tokens": {"total": sum(len(example["input_ids"]) for example in train_set)}}


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


class ClassifyProgress(RichProgress):
    """The chat progress bar, with eval accuracy (what early stopping watches) in the per-evaluation line."""

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.console.print(
            f"step {state.global_step:>5}/{state.max_steps}  epoch {state.epoch:.2f}  eval loss "
            f"{metrics['eval_loss']:.4f}  accuracy {metrics['eval_accuracy']:.3f}  macro-F1 {metrics['eval_macro_f1']:.3f}"
        )
