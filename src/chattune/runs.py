"""The run-folder contract: what `chattune train` writes, and the only place every other verb reads it from.

    run = Run.open("runs/demo")         # InputError unless the folder is a chattune run
    run.config.system_prompt, run.task  # the resolved config the run trained with
    run.weights                         # RUN/model (full or merged weights) or RUN/adapter (a LoRA adapter)

A run folder describes itself, so `chat`, `eval`, `serve`, `export` and plain transformers need nothing else:

    RUN/config.yaml        the resolved config (task, base model, data, system prompt, every hyperparameter)
    RUN/adapter/           PEFT adapter + tokenizer with its chat template (LoRA chat runs)
    RUN/model/             full weights + tokenizer (full runs, `train --merge`, classifiers)
    RUN/adapter|model/generation_config.json   decoding defaults (loop guards, sampling, stop ids) for chat, generate,
                           serve, eval and plain `model.generate`; edit it to change them for the run
    RUN/data_report.json   what was read, cleaned and split
    RUN/metrics.json       base vs tuned likelihood on the held-out conversations, steps, best checkpoint
    RUN/metrics.jsonl      every training log line
    RUN/eval.json          `chattune eval` (every number and reply), rendered as RUN/report.html
    RUN/alignment.json     `chattune align`: the parent run vs the aligned one on held-out contexts (task: align)
    RUN/checkpoints/       Trainer checkpoints for --resume
    RUN/tensorboard/       loss curves for TensorBoard
    RUN/model-<quant>.gguf the run exported for llama.cpp (written on first use)

Folders written by earlier versions keep loading: their config may name keys of other tasks, which are dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from chattune.errors import InputError

CONFIG_FILE = "config.yaml"


@dataclass(frozen=True)
class Run:
    path: Path

    @staticmethod
    def is_run(path: str | Path) -> bool:
        """True when `path` is a folder `chattune train` wrote (it starts by writing its config)."""
        return (Path(path) / CONFIG_FILE).is_file()

    @classmethod
    def open(cls, path: str | Path) -> Run:
        if not cls.is_run(path):
            raise InputError(f"{path}: not a chattune run folder (no {CONFIG_FILE}); give the folder "
                             "`chattune train` wrote")
        return cls(Path(path))

    # --- what the run trained with ---
    @cached_property
    def config(self):
        from chattune.config import load_config

        return load_config(self.config_path, from_run=True)

    @property
    def task(self) -> str:
        return self.config.task

    # --- where things live ---
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def data_report_path(self) -> Path:
        return self.path / "data_report.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.json"

    @property
    def metrics_log_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def eval_path(self) -> Path:
        return self.path / "eval.json"

    @property
    def alignment_path(self) -> Path:
        return self.path / "alignment.json"

    @property
    def report_path(self) -> Path:
        return self.path / "report.html"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / "tensorboard"

    def gguf_path(self, quant: str) -> Path:
        return self.path / f"model-{quant}.gguf"

    # --- the trained model ---
    @property
    def has_weights(self) -> bool:
        return self.model_dir.is_dir() or self.adapter_dir.is_dir()

    @property
    def weights(self) -> Path:
        """Full weights when the run has them (full runs, merged LoRA), else the LoRA adapter over `config.model`."""
        if self.model_dir.is_dir():
            return self.model_dir
        if self.adapter_dir.is_dir():
            return self.adapter_dir
        raise InputError(f"{self.path}: run has no trained model yet (no adapter/ or model/ folder); "
                         "did training finish?")

    @property
    def is_adapter(self) -> bool:
        return self.weights == self.adapter_dir

    @property
    def generation_config_path(self) -> Path:
        """Beside the weights, where `from_pretrained` finds it (generate/sampling.py writes and reads it)."""
        return self.weights / "generation_config.json"

    @property
    def tokenizer_dir(self) -> Path:
        """The tokenizer (with the chat template training used) is saved beside the weights."""
        return self.weights

    # --- results ---
    def read_json(self, path: Path) -> dict:
        if not path.is_file():
            raise InputError(f"{path}: missing; run `chattune train` (or `chattune eval {self.path}`) first")
        return json.loads(path.read_text(encoding="utf-8"))

    def metrics(self) -> dict:
        return self.read_json(self.metrics_path)

    def evaluation(self) -> dict:
        return self.read_json(self.eval_path)

    def data_report(self) -> dict:
        return self.read_json(self.data_report_path)
