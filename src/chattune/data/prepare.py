"""Training data for `task: chat`, ready for the Trainer: read, clean, split, tokenize and mask, cached on disk.

    prepared = prepare_chat_data(cfg, tokenizer)
    prepared.train_examples, prepared.eval_examples   # {"input_ids", "labels"} rows
    prepared.eval_set                                  # the held-out conversations, for scoring replies
    prepared.report["tokenized_cache"]                 # {"hit": true, "path": ...}

Like `datasets`' fingerprinted cache, the result is stored under a key that hashes everything it depends on: the
bytes of the data (and eval data) files, the config keys that change reading, splitting or tokenizing, the
tokenizer (its vocabulary, merges and chat template) and DATA_FORMAT_VERSION. A second `train` on the same file and
tokenizer reads the tokenized rows back (Arrow files) instead of reading and tokenizing again; any change makes a
new key. The cache lives in `$CHATTUNE_DATA_CACHE`, default `$CHATTUNE_CACHE/tokenized` (~/.cache/chattune/
tokenized); deleting that folder clears it. Entries are written to a temporary folder and renamed, so a crash
never leaves half an entry.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from dataclasses import dataclass
from pathlib import Path

from chattune.data.chat import token_stats, tokenize_conversations
from chattune.data.conversation import Conversation
from chattune.data.load import load_chat_split, reader_options
from chattune.data.readers.corpora import CORPORA
from chattune.data.readers.limits import READ_CHUNK, ReadLimits, checked_file
from chattune.data.tokenized_store import read_examples, write_examples
from chattune.errors import InputError
from chattune.files import atomic_directory, atomic_write_json

DATA_FORMAT_VERSION = 2  # bump when reading, cleaning or masking changes what the same input produces (2: conversation)
# Config keys whose value changes the prepared data; the rest (learning rate, steps, ...) share one entry.
DATA_KEYS = ("data", "eval_data", "eval_fraction", "limit", "eval_limit", "seed", "prompt_column",
             "response_column", "first_speaker", "consecutive_messages", "system_prompt", "max_reply_toxicity",
             "loss_on", "max_length",
             "long_conversations", "max_file_bytes", "max_record_bytes")


@dataclass
class PreparedChat:
    eval_set: list[Conversation]  # held-out conversations (system prompt added), for the evaluation after training
    train_examples: list[dict]
    eval_examples: list[dict]
    report: dict  # saved as the run's data_report.json


def cache_root() -> Path:
    default = Path(os.environ.get("CHATTUNE_CACHE", Path.home() / ".cache" / "chattune")) / "tokenized"
    return Path(os.environ.get("CHATTUNE_DATA_CACHE", default))


def _hash_source(digest, source: str | None, limits: ReadLimits) -> None:
    """Feed the bytes of a file (or every file of a folder) into `digest`; a corpus name feeds its package version."""
    digest.update(repr(source).encode())
    if source is None:
        return
    path = Path(source)
    if source in CORPORA and not path.exists():
        digest.update(importlib.metadata.version(CORPORA[source][1]).encode())
        return
    if not path.exists():
        return  # reading it will say so
    if not path.is_dir():
        checked_file(path, limits)  # never open a FIFO or a device, even to hash it
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else "").encode())
        with open(file, "rb") as handle:
            while chunk := handle.read(READ_CHUNK):
                digest.update(chunk)


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what decides token ids and masks: the backend tokenizer (vocabulary, merges, normalizer, added
    tokens) and the chat template."""
    digest = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode())
    digest.update(repr((tokenizer.chat_template, tokenizer.pad_token, tokenizer.eos_token)).encode())
    return digest.hexdigest()


def cache_key(cfg, tokenizer) -> str:
    digest = hashlib.sha256(f"chattune-data-v{DATA_FORMAT_VERSION}".encode())
    digest.update(json.dumps({key: getattr(cfg, key) for key in DATA_KEYS}, sort_keys=True).encode())
    digest.update(tokenizer_fingerprint(tokenizer).encode())
    for source in (cfg.data, cfg.eval_data):
        try:
            _hash_source(digest, source, reader_options(cfg)["limits"])
        except OSError as error:
            raise InputError(f"{source}: cannot read it ({error.strerror or error}); check the path") from None
    return digest.hexdigest()[:32]


def _with_progress(conversations: list[Conversation]):
    from tqdm import tqdm

    # a bar only past 2 s and only on a terminal: SmolLM2 tokenizes ~4,500 conversations a second on 2 cores
    return tqdm(conversations, desc="tokenizing", unit=" conversations", delay=2, disable=None, leave=False)


def tokenize_split(cfg, tokenizer, train_set, eval_set, report: dict) -> tuple[list[dict], list[dict]]:
    """Examples of both sides; `report` gains the counts of cut, split and dropped conversations and token stats."""
    train_examples, train_counts = tokenize_conversations(tokenizer, _with_progress(train_set), cfg.max_length,
                                                          cfg.loss_on, cfg.long_conversations)
    eval_examples, eval_counts = tokenize_conversations(tokenizer, eval_set, cfg.max_length, cfg.loss_on,
                                                        cfg.long_conversations)
    if not train_examples or not eval_examples:
        raise InputError(
            f"{cfg.data}: no conversation has a reply within max_length={cfg.max_length} tokens "
            f"({len(train_examples)} train, {len(eval_examples)} eval left); raise max_length"
        )
    report.update({
        "dropped_no_reply_within_max_length": {"train": train_counts["no_reply_within_max_length"],
                                               "eval": eval_counts["no_reply_within_max_length"]},
        "long_conversations": {"mode": cfg.long_conversations, "train": train_counts, "eval": eval_counts},
        "train_tokens": token_stats(train_examples),
    })
    return train_examples, eval_examples


def _read_entry(folder: Path) -> PreparedChat:
    with open(folder / "eval_conversations.jsonl", encoding="utf-8") as file:
        eval_set = [json.loads(line)["messages"] for line in file]
    report = json.loads((folder / "data_report.json").read_text(encoding="utf-8"))
    return PreparedChat(eval_set, read_examples(folder / "train.arrow"), read_examples(folder / "eval.arrow"), report)


def _write_entry(folder: Path, prepared: PreparedChat) -> None:
    with atomic_directory(folder) as tmp:
        write_examples(prepared.train_examples, tmp / "train.arrow")
        write_examples(prepared.eval_examples, tmp / "eval.arrow")
        lines = (json.dumps({"messages": c}, ensure_ascii=False) + "\n" for c in prepared.eval_set)
        (tmp / "eval_conversations.jsonl").write_text("".join(lines), encoding="utf-8")
        atomic_write_json(tmp / "data_report.json", prepared.report)


def prepare_chat_data(cfg, tokenizer) -> PreparedChat:
    """Read, clean, split, tokenize and mask `cfg.data` for `tokenizer`, or read the result back from the cache."""
    folder = cache_root() / cache_key(cfg, tokenizer)
    if (folder / "data_report.json").exists():
        prepared = _read_entry(folder)
        prepared.report["tokenized_cache"] = {"hit": True, "path": str(folder)}
        return prepared
    train_set, eval_set, report = load_chat_split(cfg)
    train_examples, eval_examples = tokenize_split(cfg, tokenizer, train_set, eval_set, report)
    prepared = PreparedChat(eval_set, train_examples, eval_examples, report)
    try:
        _write_entry(folder, prepared)
    except OSError as error:  # a full or read-only disk costs the next run its head start, not this run
        report["tokenized_cache"] = {"hit": False, "path": None, "error": str(error)}
        return prepared
    report["tokenized_cache"] = {"hit": False, "path": str(folder)}
    return prepared
