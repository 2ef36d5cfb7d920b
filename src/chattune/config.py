"""Training configuration: typed dataclasses, one YAML file, and `--set key=value` overrides.

    cfg = load_config("configs/demo.yaml", ["max_steps=2", "lora.r=8"])

Every field has a default, so an empty config trains the default model on the default corpus. The resolved
config is written into every run folder (`config.yaml`) so the run describes itself.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from chattune.errors import InputError


@dataclass
class LoraSettings:
    r: int = 16  # adapter rank; 16 is the common default that matches full fine-tuning on chat data at ~1% params
    alpha: int = 32  # scaling = alpha / r; 2x rank is the usual, stable choice
    dropout: float = 0.05  # light regularisation; small chat datasets overfit quickly
    target_modules: str | list[str] = "all-linear"  # adapt every linear layer: better than q/v only at equal cost

    def __post_init__(self) -> None:
        _check(self.r > 0, "lora.r", "must be a positive integer")
        _check(0.0 <= self.dropout < 1.0, "lora.dropout", "must be in [0, 1)")


@dataclass
class TrainConfig:
    # "chat" fine-tunes a causal LM on conversations; "classify" fine-tunes an encoder (or LM) with a classification
    # head on (text, label) rows, for intent/topic routing. One config type: both share data, split and optimiser.
    task: str = "chat"
    # --- data ---
    data: str = "chitchat"  # a file/folder (CSV, TSV, JSONL, JSON, ShareGPT, transcript .txt) or corpus name
    eval_data: str | None = None  # separate held-out data; None splits `data` by conversation
    eval_fraction: float = 0.2  # share of conversations held out when eval_data is None
    limit: int | None = None  # read only the first N conversations (a quick slice of a big corpus)
    eval_limit: int | None = None  # evaluate on at most N held-out conversations (keeps evals fast)
    prompt_column: str | None = None  # CSV/TSV column with the user's text (auto-detected when None)
    response_column: str | None = None  # CSV/TSV column with the reply (auto-detected when None)
    text_column: str | None = None  # classify: CSV/JSONL column with the text (auto-detected when None)
    label_column: str | None = None  # classify: CSV/JSONL column with the label (auto-detected when None)
    first_speaker: str = "user"  # transcripts: role of the first speaker of each conversation
    system_prompt: str | None = None  # added as the system turn of conversations that have none
    # --- model ---
    model: str = "smollm2-135m-instruct"  # HF id, local folder, or the built-in offline alias
    method: str = "lora"  # "lora" trains a small adapter; "full" trains every weight
    lora: LoraSettings = field(default_factory=LoraSettings)
    max_length: int = 512  # tokens per conversation; longer ones are cut at the end
    loss_on: str = "assistant"  # "assistant": learn the replies only; "all": every token
    # --- speed (train/fast.py; each trick computes the same loss as the plain path) ---
    packing: bool = True  # pack conversations into max_length rows without cross-attention: no compute on padding
    precision: str = "auto"  # "auto": bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32
    compile: bool = False  # torch.compile the decoder layers: ~1 min up front, then faster steps (see README Speed)
    # --- optimisation ---
    epochs: float = 1.0  # passes over the training data (ignored when max_steps > 0)
    max_steps: int = -1  # stop after this many optimizer steps; -1 means use epochs
    learning_rate: float | None = None  # None: 2e-4 for LoRA, 2e-5 for full fine-tuning (the usual stable values)
    lr_scheduler: str = "cosine"  # any transformers scheduler name: linear, cosine, constant, ...
    warmup_ratio: float = 0.05  # share of steps spent warming the learning rate up from 0
    batch_size: int = 8  # conversations per device step
    gradient_accumulation: int = 1  # steps accumulated before each optimizer update
    weight_decay: float = 0.0  # LoRA adapters rarely need it; set ~0.01 for full fine-tuning
    max_grad_norm: float = 1.0  # clip gradients at this norm
    seed: int = 42  # data split, initialisation of adapters, and sampling
    # --- evaluation and checkpoints ---
    eval_steps: int = 50  # evaluate (and checkpoint) every N steps
    early_stopping_patience: int = 3  # stop after N evaluations without a better eval loss; 0 disables
    save_total_limit: int = 2  # checkpoints kept on disk (the best one is always kept)
    logging_steps: int = 10  # log train loss every N steps
    eval_batch_size: int = 8  # conversations per evaluation batch
    # After training, base and tuned models reply to this many held-out conversations for BLEU/ROUGE/toxicity/
    # relevance with bootstrap intervals (RUN/eval.json, RUN/report.html); 0 skips it. 64 pairs take ~1 min for
    # SmolLM2-135M on 2 CPU cores and give intervals narrow enough to tell a real change from noise.
    eval_replies: int = 64
    eval_max_new_tokens: int = 64  # longest generated reply in the evaluation; most chat replies end well before

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):
            self.lora = _build(LoraSettings, self.lora, "lora.")
        _check(self.task in ("chat", "classify"), "task", "must be 'chat' or 'classify'")
        if self.task == "classify":  # the chat defaults make no classifier: swap in labelled data and an encoder
            self.data = "chatterbot-topics" if self.data == "chitchat" else self.data
            self.model = "all-minilm-l6-v2" if self.model == "smollm2-135m-instruct" else self.model
        _check(self.eval_replies >= 0, "eval_replies", "must be >= 0 (0 skips the evaluation after training)")
        _check(self.eval_max_new_tokens > 0, "eval_max_new_tokens", "must be positive")
        _check(self.method in ("lora", "full"), "method", "must be 'lora' or 'full'")
        _check(self.loss_on in ("assistant", "all"), "loss_on", "must be 'assistant' or 'all'")
        _check(self.precision in ("auto", "bf16", "fp32"), "precision", "must be 'auto', 'bf16' or 'fp32'")
        _check(self.first_speaker in ("user", "assistant"), "first_speaker", "must be 'user' or 'assistant'")
        _check(0.0 < self.eval_fraction < 1.0, "eval_fraction", "must be between 0 and 1")
        _check(self.max_length >= 16, "max_length", "must be at least 16 tokens")
        _check(self.batch_size > 0 and self.gradient_accumulation > 0, "batch_size", "must be positive")
        _check(self.max_steps > 0 or self.epochs > 0, "epochs", "must be > 0 when max_steps is not set")
        _check(self.eval_steps > 0, "eval_steps", "must be positive")
        if self.learning_rate is None:
            self.learning_rate = 2e-4 if self.method == "lora" else 2e-5

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise InputError(f"config: {key} {why}")


def _build(cls, values: dict[str, Any], prefix: str = ""):
    """Build a dataclass from a dict, naming unknown keys (typos must not be silently ignored)."""
    if not isinstance(values, dict):
        raise InputError(f"config: {prefix.rstrip('.') or 'top level'} must be a mapping, got {values!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"config: unknown key {prefix}{unknown[0]}; known keys: {', '.join(sorted(known))}")
    for spec in dataclasses.fields(cls):
        if spec.name in values:
            values[spec.name] = _number(spec, values[spec.name], prefix)
    try:
        return cls(**values)
    except TypeError as error:
        raise InputError(f"config: {error}") from None


def _number(spec: dataclasses.Field, value: Any, prefix: str) -> Any:
    """Check numeric fields; YAML 1.1 reads `3e-3` (no dot) as a string, so numeric strings become floats."""
    kind = str(spec.type)
    if value is None or not kind.startswith(("int", "float")):
        return value
    if kind.startswith("float") and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    wanted = (int,) if kind.startswith("int") else (int, float)
    if isinstance(value, bool) or not isinstance(value, wanted):
        raise InputError(f"config: {prefix}{spec.name} must be {kind.split(' ')[0]}, got {value!r}")
    return value


def apply_override(values: dict[str, Any], assignment: str) -> None:
    """Apply one `a.b=value` override in place; the value is parsed as YAML (so 8 is an int, null is None)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise InputError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set max_steps=2")
    *parents, leaf = key.strip().split(".")
    node = values
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise InputError(f"--set {assignment!r}: {part} is not a section")
    node[leaf] = yaml.safe_load(raw) if raw.strip() else None


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: config file not found")
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.MarkedYAMLError as error:
            raise InputError(f"{path}:{error.problem_mark.line + 1}: not valid YAML ({error.problem})") from None
    for assignment in overrides:
        apply_override(values, assignment)
    return _build(TrainConfig, values)


def save_config(cfg: TrainConfig, path: Path) -> None:
    from chattune.files import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
