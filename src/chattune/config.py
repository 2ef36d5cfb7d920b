"""Training configuration: a typed dataclass per task over a shared base, one YAML file, `--set key=value` overrides.

    cfg = load_config("configs/demo.yaml", ["max_steps=2", "lora.r=8"])   # a ChatConfig (task: chat is the default)
    cfg = load_config("configs/classify.yaml")                            # a ClassifyConfig
    cfg = load_config("configs/summarize.yaml")                           # a SummarizeConfig

Every field has a default, so no config at all trains the default model on the default corpus. Every value is
checked here, at the edge, before any model or data loads: a wrong type, range or choice is one InputError that
names the key, the value and what is allowed. The resolved config is written into every run folder
(`config.yaml`) so the run describes itself.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from chattune.data.conversation import CONSECUTIVE_MESSAGES
from chattune.data.readers.limits import MAX_FILE_BYTES, MAX_RECORD_BYTES
from chattune.errors import InputError

# transformers' SchedulerType values (tests/test_config.py checks this list against transformers itself; naming
# them here keeps a typo from surfacing only after the model has loaded).
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
              "warmup_stable_decay", "greedy")
MAX_SEED = 2**32 - 1  # numpy's seed range, which transformers' set_seed also seeds
REPORTERS = ("tensorboard", "wandb", "mlflow", "trackio", "none")  # transformers integrations chattune documents


@dataclass
class LoraSettings:
    r: int = 16  # adapter rank; 16 is the common default that matches full fine-tuning on chat data at ~1% params
    alpha: int = 32  # scaling = alpha / r; 2x rank is the usual, stable choice
    dropout: float = 0.05  # light regularisation; small chat datasets overfit quickly
    # "all-linear" adapts every linear layer: better than q/v only at equal cost; "attention" adapts the attention
    # query and value projections under the names peft knows per architecture (q,v for T5; q_proj,v_proj for BART)
    target_modules: str | list[str] = "all-linear"

    def __post_init__(self) -> None:
        check_types(self, "lora.")
        _check(self.r > 0, "lora.r", self.r, "a positive integer")
        _check(self.alpha > 0, "lora.alpha", self.alpha, "a positive integer")
        _check(0.0 <= self.dropout < 1.0, "lora.dropout", self.dropout, "a number in [0, 1)")
        # peft reads any other string as a regular expression, so a typo would only fail after the model loads
        names = self.target_modules
        _check(names in ("all-linear", "attention") or (isinstance(names, list) and names
                                                         and all(n.strip() for n in names)),
               "lora.target_modules", names,
               "'all-linear', 'attention' or a list of module names, e.g. [q_proj, v_proj]")


@dataclass
class TrainConfig:
    """What every task shares: data, split, base model, optimiser, evaluation and checkpoint schedule."""

    # what to train: chat (a causal LM on conversations), classify (texts -> labels) or summarize (source -> summary)
    task: str = "chat"
    # --- data ---
    data: str = "chitchat"  # a file/folder (CSV, TSV, JSONL, JSON, ShareGPT, transcript .txt) or corpus name
    eval_data: str | None = None  # separate held-out data; None splits `data` (by conversation, or by label)
    eval_fraction: float = 0.2  # share held out when eval_data is None
    limit: int | None = None  # read only the first N records (a quick slice of a big corpus); None: all
    eval_limit: int | None = None  # evaluate on at most N held-out records (keeps evals fast); None: all
    # --- model ---
    model: str = "smollm2-135m-instruct"  # HF id, local folder, or a built-in offline alias
    method: str = "lora"  # "lora" trains a small adapter; "full" trains every weight
    lora: LoraSettings = field(default_factory=LoraSettings)
    max_length: int = 512  # tokens per example; longer ones are cut at the end
    # --- optimisation ---
    epochs: float = 1.0  # passes over the training data (ignored when max_steps > 0)
    max_steps: int = -1  # stop after this many optimizer steps; -1 means use epochs
    learning_rate: float | None = None  # None: 2e-4 for LoRA, 2e-5 for full fine-tuning (the usual stable values)
    lr_scheduler: str = "cosine"  # a transformers scheduler name: linear, cosine, constant, ...
    warmup_ratio: float = 0.05  # share of steps spent warming the learning rate up from 0
    batch_size: int = 8  # examples per device step
    gradient_accumulation: int = 1  # steps accumulated before each optimizer update
    weight_decay: float = 0.0  # LoRA adapters rarely need it; set ~0.01 for full fine-tuning
    max_grad_norm: float = 1.0  # clip gradients at this norm; 0 disables clipping
    seed: int = 42  # data split, initialisation of adapters, and sampling
    # the train/held-out split's own seed; null: seed. Set it to vary seed over runs on one held-out set (an align run
    # takes its parent's, so `--set seed=N` reseeds the alignment, not which conversations are held out)
    split_seed: int | None = None
    # --- evaluation and checkpoints ---
    eval_steps: int = 50  # evaluate (and checkpoint) every N steps
    early_stopping_patience: int = 3  # stop after N evaluations without a better eval metric; 0 disables
    save_total_limit: int = 2  # checkpoints kept on disk (the best one is always kept)
    logging_steps: int = 10  # log train loss every N steps
    eval_batch_size: int = 8  # examples per evaluation batch
    # --- experiment tracking ---
    # where training logs go: tensorboard (RUN/tensorboard), wandb, mlflow, trackio (transformers' integrations;
    # pip install the one you name), a list of them, or none
    report_to: str | list[str] = "tensorboard"

    def __post_init__(self) -> None:
        if not isinstance(self.lora, LoraSettings):
            self.lora = _build(LoraSettings, self.lora, "lora.")
        check_types(self)
        _check(self.task == TASK_OF.get(type(self)), "task", self.task, f"{TASK_OF.get(type(self))!r} for this config")
        _check(bool(self.data.strip()), "data", self.data, "a file, folder or corpus name")
        _check(self.eval_data is None or bool(self.eval_data.strip()), "eval_data", self.eval_data,
               "a file, folder or corpus name, or null")
        _check(0.0 < self.eval_fraction < 1.0, "eval_fraction", self.eval_fraction, "a number between 0 and 1")
        _check(self.limit is None or self.limit > 0, "limit", self.limit, "a positive integer, or null for all")
        _check(self.eval_limit is None or self.eval_limit > 0, "eval_limit", self.eval_limit,
               "a positive integer, or null for all")
        _check_model(self.model)
        _check(self.method in ("lora", "full"), "method", self.method, "'lora' or 'full'")
        _check(self.max_length >= 16, "max_length", self.max_length, "an integer of at least 16 tokens")
        self._check_optimisation()
        self._check_schedule()
        self._check_reporting()
        if self.learning_rate is None:
            self.learning_rate = 2e-4 if self.method == "lora" else 2e-5

    def _check_optimisation(self) -> None:
        _check(self.epochs > 0, "epochs", self.epochs, "a positive number")
        _check(self.max_steps == -1 or self.max_steps > 0, "max_steps", self.max_steps,
               "a positive integer, or -1 to train for `epochs`")
        _check(self.learning_rate is None or self.learning_rate > 0, "learning_rate", self.learning_rate,
               "a positive number, or null for the method's default")
        _check(self.lr_scheduler in SCHEDULERS, "lr_scheduler", self.lr_scheduler, f"one of {', '.join(SCHEDULERS)}")
        _check(0.0 <= self.warmup_ratio < 1.0, "warmup_ratio", self.warmup_ratio, "a share of the steps in [0, 1)")
        _check(self.batch_size > 0, "batch_size", self.batch_size, "a positive integer")
        _check(self.gradient_accumulation > 0, "gradient_accumulation", self.gradient_accumulation,
               "a positive integer")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a number >= 0")
        _check(self.max_grad_norm >= 0, "max_grad_norm", self.max_grad_norm, "a number >= 0 (0 disables clipping)")
        _check(0 <= self.seed <= MAX_SEED, "seed", self.seed, f"an integer in [0, {MAX_SEED}]")
        _check(self.split_seed is None or 0 <= self.split_seed <= MAX_SEED, "split_seed", self.split_seed,
               f"an integer in [0, {MAX_SEED}], or null for seed")

    def _check_schedule(self) -> None:
        _check(self.eval_steps > 0, "eval_steps", self.eval_steps, "a positive integer")
        _check(self.early_stopping_patience >= 0, "early_stopping_patience", self.early_stopping_patience,
               "an integer >= 0 (0 disables early stopping)")
        _check(self.save_total_limit >= 1, "save_total_limit", self.save_total_limit,
               "a positive integer (the best checkpoint is always kept)")
        _check(self.logging_steps > 0, "logging_steps", self.logging_steps, "a positive integer")
        _check(self.eval_batch_size > 0, "eval_batch_size", self.eval_batch_size, "a positive integer")

    def _check_reporting(self) -> None:
        names = [self.report_to] if isinstance(self.report_to, str) else self.report_to
        _check(bool(names) and all(name in REPORTERS for name in names) and ("none" not in names or len(names) == 1),
               "report_to", self.report_to, f"one of {', '.join(REPORTERS)}, or a list of them")
        self.report_to = names

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def data_split_seed(self) -> int:
        """The seed of the train/held-out split: split_seed, or seed."""
        return self.seed if self.split_seed is None else self.split_seed


@dataclass
class ChatConfig(TrainConfig):
    """task: chat — fine-tune a causal LM on conversations (train/sft.py)."""

    task: str = "chat"
    prompt_column: str | None = None  # CSV/TSV column with the user's text (auto-detected when None)
    response_column: str | None = None  # CSV/TSV column with the reply (auto-detected when None)
    first_speaker: str = "user"  # transcripts: role of the first speaker of each conversation
    # One speaker's consecutive messages (chitchat, transcripts, same-role records) become one turn, joined with a
    # "space" (one paragraph) or a "newline" (each message on its own line). Separate turns are not offered: the
    # template, masks and eval pairs need alternating roles (data/conversation.py says why, and why space is the
    # default).
    consecutive_messages: str = CONSECUTIVE_MESSAGES
    system_prompt: str | None = None  # added as the system turn of conversations that have none
    # Cut each training conversation before its first assistant reply with p(toxic) above this (alt-profanity-check,
    # the evaluation's classifier; data/toxic.py); null keeps every reply. The held-out side is never cut.
    max_reply_toxicity: float | None = None
    loss_on: str = "assistant"  # "assistant": learn the replies only; "all": every token
    # A conversation longer than max_length tokens: "cut" trains on its first max_length tokens; "split" trains on
    # windows of whole turns that each fit max_length, so late replies of long support threads are learnt too.
    long_conversations: str = "cut"
    # --- input limits (data/readers/limits.py): over them, reading stops with one line naming the file ---
    max_file_bytes: int = MAX_FILE_BYTES  # 8 GiB: years of support logs; a wrong path (a disk image) is refused
    max_record_bytes: int = MAX_RECORD_BYTES  # 1 MiB per JSON line, transcript line or CSV row
    # --- speed (train/fast.py; each trick computes the same loss as the plain path) ---
    packing: bool = True  # pack conversations into max_length rows without cross-attention: no compute on padding
    precision: str = "auto"  # "auto": bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32
    # LoRA on a CPU: training steps read the frozen base weights in int8 (7-bit weights with a scale per row, int8
    # inputs with a scale per token; train/fused_lora.py): fp32 steps 1.35x (AVX2) to 1.6x (VNNI) faster, bf16 ones
    # 1.1x (README Speed). "auto" turns it on for LoRA on a CPU when the first training batch's loss with it is
    # within 2% of the plain weights' (the line before training says); true insists; false never. Evaluation and
    # the saved run always use the plain weights.
    int8_base: bool | str = "auto"
    compile: bool = False  # torch.compile the decoder layers: ~1 min up front, then faster steps (see README Speed)
    # Activations of a training step (train/memory.py): "fast" keeps them all (~6.4 GB peak for a LoRA step of
    # 8 x 256 tokens on SmolLM2-135M); "balanced" splits batches into micro-batches of 512 tokens and checkpoints
    # just enough layers to hold them under 768 MB, and returns freed heap pages after each step (2.8 GB peak, ~15-20%
    # slower on 2 cores); "low" checkpoints every layer and returns freed tensors to the OS (slowest). balanced by
    # default: a laptop with 8 GB trains the demo without swapping, at 80-94% of fast's speed (README Memory); on a
    # GPU it holds activations to half its free memory
    memory: str = "balanced"
    # After training, base and tuned models reply to this many held-out conversations for BLEU/ROUGE/toxicity/
    # relevance with bootstrap intervals (RUN/eval.json, RUN/report.html); 0 skips it. 64 pairs take ~1 min for
    # SmolLM2-135M on 2 CPU cores and give intervals narrow enough to tell a real change from noise.
    eval_replies: int = 64
    eval_max_new_tokens: int = 64  # longest generated reply in the evaluation; most chat replies end well before

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("prompt_column", "response_column"):
            _check(getattr(self, key) is None or bool(getattr(self, key).strip()), key, getattr(self, key),
                   "a column name, or null to find it by name")
        _check(self.first_speaker in ("user", "assistant"), "first_speaker", self.first_speaker,
               "'user' or 'assistant'")
        _check(self.consecutive_messages in ("newline", "space"), "consecutive_messages", self.consecutive_messages,
               "'newline' or 'space'")
        _check(self.loss_on in ("assistant", "all"), "loss_on", self.loss_on, "'assistant' or 'all'")
        _check(self.max_reply_toxicity is None or 0.0 <= self.max_reply_toxicity < 1.0, "max_reply_toxicity",
               self.max_reply_toxicity, "a probability in [0, 1), or null to keep every reply")
        _check(self.long_conversations in ("cut", "split"), "long_conversations", self.long_conversations,
               "'cut' or 'split'")
        for key in ("max_file_bytes", "max_record_bytes"):
            _check(getattr(self, key) > 0, key, getattr(self, key), "a positive number of bytes")
        _check(self.precision in ("auto", "bf16", "fp32"), "precision", self.precision, "'auto', 'bf16' or 'fp32'")
        _check(self.memory in ("low", "balanced", "fast"), "memory", self.memory, "'low', 'balanced' or 'fast'")
        _check(self.int8_base in (True, False, "auto"), "int8_base", self.int8_base, "true, false or auto")
        _check(self.int8_base is not True or self.method == "lora", "int8_base", self.int8_base,
               "auto or false with method=full (only a frozen base is read in int8)")
        _check(self.eval_replies >= 0, "eval_replies", self.eval_replies,
               "an integer >= 0 (0 skips the evaluation after training)")
        _check(self.eval_max_new_tokens > 0, "eval_max_new_tokens", self.eval_max_new_tokens, "a positive integer")


@dataclass
class ClassifyConfig(TrainConfig):
    """task: classify — fine-tune an encoder (or LM) with a classification head on (text, label) rows."""

    task: str = "classify"
    data: str = "chatterbot-topics"  # a CSV/TSV/JSONL/JSON with text and label columns, or this built-in corpus
    model: str = "all-minilm-l6-v2"  # a 22M sentence encoder shipped offline; any HF encoder or causal LM works
    text_column: str | None = None  # column with the text (auto-detected: text, sentence, utterance, ...)
    label_column: str | None = None  # column with the label (auto-detected: label, intent, category, ...)

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("text_column", "label_column"):
            _check(getattr(self, key) is None or bool(getattr(self, key).strip()), key, getattr(self, key),
                   "a column name, or null to find it by name")


@dataclass
class SummarizeConfig(TrainConfig):
    """task: summarize — fine-tune a seq2seq model (T5, Flan-T5, BART) or a causal LM (through an instruction prompt,
    loss on the summary tokens only) on (source, summary) pairs (train/summarize.py)."""

    task: str = "summarize"
    data: str = "aclsum"  # a CSV/TSV/JSONL/JSON/parquet with source and summary columns, or this built-in corpus
    source_column: str | None = None  # column with the dialogue or document (auto-detected: dialogue, document, ...)
    summary_column: str | None = None  # column with the reference summary (auto-detected: summary, target, ...)
    # The request a causal LM is given before each source that has none of its own (aclsum pairs carry their
    # aspect's); seq2seq models read the source alone, after T5's `summarize: ` prefix.
    instruction: str = "Summarize the following text in one or two sentences."
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(target_modules="attention"))
    max_length: int = 512  # tokens of a source (plus its summary, for causal LMs); longer pairs are dropped
    precision: str = "auto"  # "auto": bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32
    # After training, the base model (zero-shot) and the tuned one summarise this many held-out sources for
    # ROUGE/BLEU/chrF with bootstrap intervals (RUN/eval.json, RUN/report.html); 0 skips it.
    eval_summaries: int = 64
    max_new_tokens: int = 64  # longest generated summary in tokens (DialogSum/SAMSum/aclsum summaries: 20-60)
    num_beams: int = 1  # 1: greedy; 4 is the usual beam search (about 4x the decoding time)

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):  # keys not given keep this task's defaults, not the chat ones
            self.lora = {"target_modules": "attention", **self.lora}
        super().__post_init__()
        for key in ("source_column", "summary_column"):
            _check(getattr(self, key) is None or bool(getattr(self, key).strip()), key, getattr(self, key),
                   "a column name, or null to find it by name")
        _check(bool(self.instruction.strip()), "instruction", self.instruction, "a non-empty request")
        _check(self.precision in ("auto", "bf16", "fp32"), "precision", self.precision, "'auto', 'bf16' or 'fp32'")
        _check(self.eval_summaries >= 0, "eval_summaries", self.eval_summaries,
               "an integer >= 0 (0 skips the evaluation after training)")
        _check(self.max_new_tokens > 0, "max_new_tokens", self.max_new_tokens, "a positive integer")
        _check(self.num_beams >= 1, "num_beams", self.num_beams, "a positive integer (1 is greedy)")


ALGORITHMS = ("grpo", "rloo", "dpo")
BUILTIN_REWARDS = ("toxicity", "relevance", "ending", "length")  # train/rewards.py; `module:function` adds one
REWARD_AGGREGATIONS = ("sum_then_normalize", "normalize_then_sum")  # TRL GRPOConfig.multi_objective_aggregation
REWARD_SCALINGS = ("group", "batch", "none")  # TRL GRPOConfig.scale_rewards


@dataclass
class AlignConfig(ChatConfig):
    """task: align — continue a chat run toward what users want: GRPO or RLOO on weighted reward functions, or DPO on
    preference pairs, all on TRL's trainers (train/align.py). `chattune align RUN` fills the data, model, LoRA,
    system prompt and split from the parent run (ALIGN_INHERITS), so the held-out conversations stay held out."""

    task: str = "align"
    parent: str | None = None  # the chat run this one continues (LoRA: its adapter; full: its weights); set by align
    algorithm: str = "grpo"  # grpo | rloo | dpo (`--method` of `chattune align`; `method` stays lora/full)
    # GRPO/RLOO: reward name -> weight; the total reward is the weighted sum. Built in: toxicity (1 - p(toxic)),
    # relevance (MiniLM cosine to the conversation so far), ending (ended with end-of-turn), length; or
    # "package.module:function" with TRL's reward signature. Detoxifying alone drifts to bland or empty replies, so
    # relevance keeps the replies on the conversation.
    rewards: dict[str, float] = field(default_factory=lambda: {"toxicity": 1.0, "relevance": 0.5})
    prompts: str | None = None  # GRPO/RLOO contexts from this chat data; null: the parent run's training split
    preferences: str | None = None  # DPO pairs: JSONL/CSV/JSON of prompt/chosen/rejected, or a `serve` SQLite store
    toxic_prone: bool = False  # keep only contexts where the parent's sampled replies reach toxic_prone_threshold
    toxic_prone_threshold: float = 0.1  # max p(toxic) over the samples; chit-chat replies average ~0.05
    toxic_prone_samples: int = 4  # replies sampled per context to judge it (seeded apart from the evaluation's)
    # score at most the first N training contexts with that filter (sampling them is the filter's cost); null: all
    toxic_prone_contexts: int | None = None
    train_prompts: int | None = None  # train on at most N contexts (after the toxic-prone filter); null: all
    num_generations: int = 4  # completions per prompt (k); GRPO/RLOO score each against the others of its prompt
    max_new_tokens: int = 32  # longest completion; chit-chat replies end within ~25 tokens, and decoding is the cost
    # sampling temperature of the completions (1.0: the policy's own distribution; a small model then samples a tail
    # that chat never says: configs/detox.yaml uses 0.7, as chat and the evaluation sample)
    temperature: float = 1.0
    # GRPO/RLOO: each context is cut to its latest whole exchanges that fit this many tokens. The loss runs forward
    # and backward over prompt and completion, so the prompt is most of a step's cost. null: max_length -
    # max_new_tokens (the parent trained on rows of max_length tokens)
    max_prompt_tokens: int | None = None
    # GRPO: how the rewards combine into one. sum_then_normalize (TRL's default) standardises the weighted sum within
    # each group of completions, where the reward that varies most drowns the others; normalize_then_sum (GDPO)
    # standardises each reward within the group first, so the weights say what matters. RLOO always sums.
    reward_aggregation: str = "sum_then_normalize"
    # GRPO, sum_then_normalize: what a completion's advantage over its group's mean is divided by. group (TRL's
    # default): the group's own std, so a group of near-equal replies has its tiny differences blown up to the same
    # size as a real gap; batch: one std over the step's batch, so groups with a real gap lead the update; none: raw
    scale_rewards: str = "group"
    # GRPO/RLOO: weight of the KL penalty to the parent model (0 drops the reference model and the KL); DPO: how far
    # the policy may move from the parent. null: 0.04 for GRPO/RLOO (the DeepSeekMath GRPO value), 0.1 for DPO
    # (the DPO paper's and TRL's)
    beta: float | None = None
    length_min_words: int = 3  # `length` reward: no penalty from this many words...
    length_max_words: int = 40  # ...up to this many; outside, a penalty that grows to -1 with the distance
    logging_steps: int = 1  # KL and rewards move a lot from step to step; log every one
    eval_prompts: int = 64  # held-out contexts replied to by the parent and the aligned model; 0 skips the evaluation
    eval_samples: int = 4  # sampled replies per held-out context (k), besides the greedy one
    # held-out conversations whose human replies are scored for perplexity, the first N (null: all): scoring them is
    # a forward pass per model, and the replies' metrics can then draw on more conversations than perplexity needs
    eval_conversations: int | None = None

    def __post_init__(self) -> None:
        if self.beta is None:
            self.beta = 0.1 if self.algorithm == "dpo" else 0.04
        if self.learning_rate is None:  # RL moves a trained policy: lower than SFT's 2e-4 / 2e-5
            self.learning_rate = 5e-5 if self.method == "lora" else 1e-6
        super().__post_init__()
        _check(self.parent is None or bool(self.parent.strip()), "parent", self.parent, "a run folder")
        _check(self.algorithm in ALGORITHMS, "algorithm", self.algorithm, f"one of {', '.join(ALGORITHMS)}")
        _check(bool(self.rewards) and all(name in BUILTIN_REWARDS or ":" in name for name in self.rewards), "rewards",
               self.rewards, f"a mapping of {', '.join(BUILTIN_REWARDS)} or module:function to weights")
        for key in ("prompts", "preferences"):
            _check(getattr(self, key) is None or bool(getattr(self, key).strip()), key, getattr(self, key),
                   "a file or corpus name, or null")
        _check(0.0 <= self.toxic_prone_threshold < 1.0, "toxic_prone_threshold", self.toxic_prone_threshold,
               "a probability in [0, 1)")
        _check(self.preferences is None or self.algorithm == "dpo", "preferences", self.preferences,
               "null unless algorithm is dpo (GRPO and RLOO reply to prompts: give those with `prompts`)")
        _check(self.toxic_prone_samples >= 1, "toxic_prone_samples", self.toxic_prone_samples, "a positive integer")
        for key in ("train_prompts", "toxic_prone_contexts"):
            _check(getattr(self, key) is None or getattr(self, key) > 0, key, getattr(self, key),
                   "a positive integer, or null for all")
        self._check_sampling()

    def _check_sampling(self) -> None:
        _check(self.num_generations >= 2, "num_generations", self.num_generations,
               "an integer of at least 2 (GRPO and RLOO compare completions of the same prompt)")
        if self.algorithm != "dpo":
            _check(self.batch_size % self.num_generations == 0, "batch_size", self.batch_size,
                   f"a multiple of num_generations={self.num_generations} (a batch holds whole groups of completions)")
        _check(self.max_new_tokens > 0, "max_new_tokens", self.max_new_tokens, "a positive integer")
        _check(self.temperature > 0, "temperature", self.temperature, "a positive number")
        _check(self.beta >= 0, "beta", self.beta, "a number >= 0")
        _check(self.max_prompt_tokens is None or self.max_prompt_tokens >= 16, "max_prompt_tokens",
               self.max_prompt_tokens, "an integer of at least 16 tokens, or null for max_length - max_new_tokens")
        _check(self.reward_aggregation in REWARD_AGGREGATIONS and
               (self.algorithm == "grpo" or self.reward_aggregation == "sum_then_normalize"), "reward_aggregation",
               self.reward_aggregation, f"one of {', '.join(REWARD_AGGREGATIONS)} (normalize_then_sum: grpo only)")
        _check(self.scale_rewards in REWARD_SCALINGS and (self.scale_rewards == "group" or (
            self.algorithm == "grpo" and self.reward_aggregation == "sum_then_normalize")), "scale_rewards",
            self.scale_rewards, f"one of {', '.join(REWARD_SCALINGS)} (batch and none: grpo with sum_then_normalize)")
        _check(0 < self.length_min_words <= self.length_max_words, "length_min_words", self.length_min_words,
               f"a positive integer no larger than length_max_words={self.length_max_words}")
        _check(self.eval_prompts >= 0, "eval_prompts", self.eval_prompts, "an integer >= 0 (0 skips the evaluation)")
        _check(self.eval_samples >= 1, "eval_samples", self.eval_samples, "a positive integer")
        _check(self.eval_conversations is None or self.eval_conversations > 0, "eval_conversations",
               self.eval_conversations, "a positive integer, or null for all")

    @property
    def prompt_tokens(self) -> int:
        """The longest prompt (context) in tokens: max_prompt_tokens, or what max_length leaves for the reply."""
        return self.max_prompt_tokens or max(16, self.max_length - self.max_new_tokens)


# What an align run takes from its parent chat run: the same data, split, model and prompt format, so the held-out
# conversations of the parent stay unseen and chat/serve/export read the aligned run as they read the parent.
ALIGN_INHERITS = ("data", "eval_data", "eval_fraction", "limit", "eval_limit", "model", "method", "lora", "max_length",
                  "prompt_column", "response_column", "first_speaker", "consecutive_messages", "system_prompt",
                  "max_reply_toxicity",
                  "loss_on", "precision", "seed", "split_seed",
                  "eval_max_new_tokens")


def align_config(parent_values: dict[str, Any], parent: str, path: str | Path | None = None,
                 overrides: list[str] = ()) -> AlignConfig:
    """The config of an align run: the parent run's ALIGN_INHERITS values, then the YAML file, then `--set`."""
    values = {key: parent_values[key] for key in ALIGN_INHERITS if key in parent_values}
    if values.get("split_seed") is None and "seed" in values:
        values["split_seed"] = values["seed"]  # the parent's held-out side, whatever seed the alignment runs with
    values.update(read_yaml(Path(path)) if path is not None else {})
    for assignment in overrides:
        apply_override(values, assignment)
    values.setdefault("task", "align")
    _check(values["task"] == "align", "task", values["task"], "'align' in an align config (or leave it out)")
    _check(values.get("method", "lora") == parent_values.get("method", "lora"), "method", values.get("method"),
           f"the parent run's {parent_values.get('method')!r}: an align run continues its weights")
    return _build(AlignConfig, {**values, "parent": parent})


CONFIGS = {"chat": ChatConfig, "classify": ClassifyConfig, "summarize": SummarizeConfig, "align": AlignConfig}
TASK_OF = {cls: task for task, cls in CONFIGS.items()}
TaskConfig = ChatConfig | ClassifyConfig | SummarizeConfig | AlignConfig


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise InputError(f"config: {key}={_show(value)} is not allowed; use {allowed}")


def _show(value: Any) -> str:
    return "null" if value is None else repr(value)


def _check_model(name: str) -> None:
    _check(bool(name.strip()), "model", name, "an HF id, a local folder, or a built-in alias")
    folder = Path(name)
    if folder.is_dir() and not any((folder / f).is_file() for f in ("config.json", "adapter_config.json")):
        raise InputError(f"config: model={name}: the folder has no config.json; give a folder saved with "
                         "save_pretrained, an HF id, or a built-in alias")


# --- types, from the annotations -----------------------------------------------------------------------------------

def check_types(obj, prefix: str = "") -> None:
    """Check (and gently coerce) every field against its annotation: bools are bools, numbers finite numbers."""
    for spec in dataclasses.fields(obj):
        kind = str(spec.type)
        if kind == "LoraSettings":
            continue
        setattr(obj, spec.name, _typed(prefix + spec.name, kind, getattr(obj, spec.name)))


_KIND_WORDS = {"str": "text", "int": "an integer", "float": "a number", "bool": "true or false",
               "str | list[str]": "'all-linear', 'attention' or a list of module names"}


def _typed(key: str, kind: str, value: Any) -> Any:
    allowed = set(kind.replace(" ", "").split("|"))
    if value is None:
        _check("None" in allowed, key, value, _KIND_WORDS.get(kind.split(" |")[0], "a value"))
        return None
    if allowed == {"bool", "str"}:  # a switch with a third setting, e.g. int8_base: true | false | auto
        _check(isinstance(value, (bool, str)), key, value, "true, false or a setting's name")
        return value
    if "bool" in allowed:
        _check(isinstance(value, bool), key, value, "true or false")
        return value
    if "float" in allowed:
        if isinstance(value, str):  # YAML 1.1 reads `3e-3` (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        _check(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value), key, value,
               "a finite number")
        return float(value)
    if "int" in allowed:
        _check(isinstance(value, int) and not isinstance(value, bool), key, value, "an integer")
        return value
    if "dict[str,float]" in allowed:
        _check(isinstance(value, dict) and all(isinstance(name, str) and isinstance(weight, (int, float))
                                               and not isinstance(weight, bool) and math.isfinite(weight)
                                               for name, weight in value.items()),
               key, value, "a mapping of names to numbers, e.g. {toxicity: 1.0, relevance: 0.5}")
        return {name: float(weight) for name, weight in value.items()}
    if "list[str]" in allowed and isinstance(value, list):
        _check(all(isinstance(item, str) for item in value), key, value, "a list of names")
        return value
    _check(isinstance(value, str), key, value, "text")
    return value


def _build(cls, values: Any, prefix: str = ""):
    """Build a dataclass from a mapping, naming unknown keys (typos must not be silently ignored)."""
    if not isinstance(values, dict):
        raise InputError(f"config: {prefix.rstrip('.') or 'the file'} must be a mapping of keys to values, "
                         f"got {_show(values)}")
    known = {spec.name for spec in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, values)) - known)
    if unknown:
        raise InputError(f"config: unknown key {prefix}{unknown[0]} for task {values.get('task', 'chat')}; "
                         f"known keys: {', '.join(sorted(known))}")
    return cls(**values)


# --- YAML and overrides --------------------------------------------------------------------------------------------

class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise InputError(f"{self.name}:{key_node.start_mark.line + 1}: key {key!r} appears twice; keep one")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> dict[str, Any]:
    """The mapping in a UTF-8 YAML file; InputError (with the line) for anything else."""
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not UTF-8 (byte {error.object[error.start]:#04x} at offset {error.start}); "
                         "save the config as UTF-8") from None
    if "\x00" in text:
        raise InputError(f"{path}:{text[: text.index(chr(0))].count(chr(10)) + 1}: contains a NUL byte; "
                         "is this a YAML text file?")
    loader = _StrictLoader(text)
    loader.name = str(path)
    try:
        values = loader.get_single_data()
    except yaml.MarkedYAMLError as error:
        raise InputError(f"{path}:{error.problem_mark.line + 1}: not valid YAML ({error.problem})") from None
    except yaml.YAMLError as error:
        raise InputError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    finally:
        loader.dispose()
    if values is None:
        raise InputError(f"{path}: the config is empty; give at least one key, or leave the config out for defaults")
    if not isinstance(values, dict):
        raise InputError(f"{path}: a config must be a mapping of keys to values (key: value lines), "
                         f"got a {type(values).__name__}")
    return values


def apply_override(values: dict[str, Any], assignment: str) -> None:
    """Apply one `a.b=value` override in place; the value is parsed as YAML (so 8 is an int, null is None)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise InputError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set max_steps=2")
    if not raw.strip():
        raise InputError(f"--set {assignment!r}: no value after '='; give one, or null to unset the key")
    *parents, leaf = key.strip().split(".")
    node = values
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise InputError(f"--set {assignment!r}: {part} is not a section")
    try:
        node[leaf] = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise InputError(f"--set {assignment!r}: the value is not valid YAML; quote it") from None


# Keys that configs written by earlier versions (one config type for every task) hold for other tasks.
_SHARED_LEGACY_KEYS = {f.name for cls in CONFIGS.values() for f in dataclasses.fields(cls)}


def load_config(path: str | Path | None = None, overrides: list[str] = (), *, from_run: bool = False) -> TaskConfig:
    """The task's config from a YAML file (or defaults) and `--set` overrides; `from_run` reads a run folder's
    config, where keys of other tasks (written by earlier versions) are dropped."""
    values = read_yaml(Path(path)) if path is not None else {}
    for assignment in overrides:
        apply_override(values, assignment)
    task = values.get("task", "chat")
    if task not in CONFIGS:
        raise InputError(f"config: task={_show(task)} is not allowed; use one of {', '.join(CONFIGS)}")
    cls = CONFIGS[task]
    if from_run:
        own = {spec.name for spec in dataclasses.fields(cls)}
        values = {key: value for key, value in values.items() if key in own or key not in _SHARED_LEGACY_KEYS}
    return _build(cls, values)


def save_config(cfg: TrainConfig, path: Path) -> None:
    from chattune.files import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True))
