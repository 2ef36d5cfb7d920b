"""The `chattune` command: one verb per job; each verb parses its flags and calls one library function.

Bad input raises InputError: printed as one line, exit code 2, no traceback unless --debug.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from chattune.errors import InputError

READER_FLAGS_HELP = "CSV/TSV column holding the {}; auto-detected (prompt/response, question/answer, ...) when omitted"


def _add_reader_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt-column", help=READER_FLAGS_HELP.format("user's message"))
    parser.add_argument("--response-column", help=READER_FLAGS_HELP.format("reply"))
    parser.add_argument("--first-speaker", choices=["user", "assistant"], default="user",
                        help="transcripts: role of each conversation's first speaker (default: user)")
    from chattune.data.conversation import CONSECUTIVE_MESSAGES, MESSAGE_JOINERS

    parser.add_argument("--consecutive-messages", choices=list(MESSAGE_JOINERS), default=CONSECUTIVE_MESSAGES,
                        help="join one speaker's consecutive messages into one turn with a space or a newline "
                        f"(default: {CONSECUTIVE_MESSAGES})")
    from chattune.data.readers.limits import MAX_FILE_BYTES, MAX_RECORD_BYTES

    parser.add_argument("--max-file-bytes", type=int, default=MAX_FILE_BYTES,
                        help=f"refuse bigger input files (default {MAX_FILE_BYTES:,})")
    parser.add_argument("--max-record-bytes", type=int, default=MAX_RECORD_BYTES,
                        help=f"refuse a longer JSON line, transcript line or CSV row (default {MAX_RECORD_BYTES:,})")


def _reader_options(args) -> dict:
    from chattune.data.readers.limits import ReadLimits

    return dict(prompt_column=args.prompt_column, response_column=args.response_column,
                first_speaker=args.first_speaker, consecutive_messages=args.consecutive_messages,
                limits=ReadLimits(max_file_bytes=args.max_file_bytes, max_record_bytes=args.max_record_bytes))


def _printable(text: str) -> str:
    """`text` with undecodable bytes of file names (surrogate escapes) shown as U+FFFD, so the output is UTF-8."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    from chattune.generate.sampling import Sampling

    # unset flags keep the run's generation_config.json (generate/sampling.py), else these defaults
    default = Sampling()  # the defaults live there, shared with the server and both backends
    parser.add_argument("--temperature", type=float,
                        help=f"0 for greedy decoding (default: the run's, else {default.temperature})")
    parser.add_argument("--top-p", type=float,
                        help=f"nucleus sampling threshold (default: the run's, else {default.top_p})")
    parser.add_argument("--top-k", type=int,
                        help="sample among the K likeliest tokens, 0 for all "
                        f"(default: the run's, else {default.top_k})")
    parser.add_argument("--repetition-penalty", type=float,
                        help="above 1, tokens already in the conversation or reply get less likely; 1 is off "
                        f"(default: the run's, else {default.repetition_penalty})")
    parser.add_argument("--no-repeat-ngram-size", type=int, metavar="N",
                        help="never repeat a span of N tokens of the conversation or reply; 0 is off "
                        f"(default: the run's, else {default.no_repeat_ngram_size})")
    parser.add_argument("--max-new-tokens", type=int,
                        help=f"longest reply in tokens (default: the run's, else {default.max_new_tokens})")
    parser.add_argument("--seed", type=int, help="fix the sampling for reproducible replies")


def _add_backend_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=["hf", "llamacpp"], default="hf",
                        help="decode with transformers (hf, default) or llama.cpp (llamacpp: several times faster on "
                        "a CPU; exports the run to GGUF once; needs llama-cpp-python)")
    parser.add_argument("--quant", choices=["q4_1", "q8_0", "f16"], default="q8_0",
                        help="GGUF weights for --backend llamacpp (default q8_0: as fast as q4_1 to decode here, "
                        "faster prompts, closer to the trained weights)")
    parser.add_argument("--prompt-precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="--backend hf: read prompts in bf16 or fp32 (default auto: bf16 where the CPU has native "
                        "bf16, AVX512-BF16 or AMX; a 200-token prompt ~1.5x faster there, replies may differ from "
                        "fp32 ones after a few tokens). Decoding stays fp32")


def _sampling(args):
    """The run's decoding defaults (generation_config.json), with the sampling flags given on top."""
    import dataclasses

    from chattune.generate.sampling import run_sampling

    flags = {name: getattr(args, name) for name in ("temperature", "top_p", "top_k", "repetition_penalty",
                                                    "no_repeat_ngram_size", "max_new_tokens", "seed")}
    return dataclasses.replace(run_sampling(args.run), **{k: v for k, v in flags.items() if v is not None})


def cmd_data_inspect(args) -> None:
    from chattune.data.inspect import inspect_data, print_inspection

    if args.sample < 1:
        raise InputError(f"--sample {args.sample}: give a positive number of conversations, or --full")
    result = inspect_data(args.path, args.model, args.max_length, sample_size=None if args.full else args.sample,
                          seed=args.seed, long_conversations=args.long_conversations, **_reader_options(args))
    if args.json:
        text = json.dumps({**result, "example": [list(piece) for piece in result["example"]]}, ensure_ascii=False)
        print(_printable(text))
    else:
        result = json.loads(_printable(json.dumps(result)))
        print_inspection(result, _stdout())


def cmd_data_convert(args) -> None:
    from chattune.data.load import load_conversations, write_jsonl

    conversations, report = load_conversations(args.path, **_reader_options(args))
    write_jsonl(conversations, Path(args.out))
    print(report.summary())
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"wrote {len(conversations)} conversations to {args.out}")


def _train_config(args):
    """The config to train with, validated before anything heavy loads (the run folder is checked by the task's
    prepare_run_folder, also before any data or model)."""
    import time

    from chattune.config import load_config
    from chattune.runs import Run
    from chattune.train.distributed import launched_distributed

    overrides = list(args.set)
    if args.data is not None:
        overrides.append(f"data={json.dumps(args.data)}")
    if args.model is not None:
        overrides.append(f"model={json.dumps(args.model)}")
    if args.output is None and launched_distributed():
        raise InputError("under torchrun or accelerate launch, give --output RUN: every process writes that one folder")
    run = Path(args.output or f"runs/{time.strftime('%Y%m%d-%H%M%S')}")
    if args.resume:  # a resumed run keeps the config it started with
        if not Run.is_run(run):
            raise InputError(f"{run}: not a chattune run folder (no config.yaml), nothing to resume; give --output RUN")
        return load_config(Run(run).config_path, overrides, from_run=True), run
    return load_config(args.config, overrides), run


def cmd_train(args) -> None:
    from rich.console import Console

    from chattune.evaluate.report import print_before_after, print_evaluation
    from chattune.pipeline import train_and_evaluate

    cfg, run = _train_config(args)
    if args.nproc > 1 or args.accelerate_config:
        from chattune.train.launch import relaunch

        raise SystemExit(relaunch(args.argv, args.nproc, args.accelerate_config, run))
    result = train_and_evaluate(cfg, run, resume=args.resume, overwrite=args.overwrite, merge=args.merge,
                                console=Console(stderr=True))
    if result is None:  # a rank other than 0 of a distributed launch: rank 0 reports
        return
    if result["evaluation"] is not None:
        print_evaluation(result["evaluation"], _stdout())
    elif result["task"] == "summarize":  # eval_summaries: 0 skipped the evaluation
        print(f"held-out eval loss (summary tokens): {result['metrics']['best_eval_loss']:.4f}")
    else:  # eval_replies: 0 skipped the evaluation; training's own base/tuned likelihood is what there is
        print_before_after(result["metrics"], _stdout())
    if "fit" in result["metrics"]:  # the loss curves in words (evaluate/fit.py)
        print(f"fit: {result['metrics']['fit']['text']}")
    if result["task"] == "classify":
        print(f"run folder: {run}\n  report:  {run / 'report.html'}\n  predict: chattune predict {run} --text 'hi!'")
    elif result["task"] == "summarize":
        print(f"run folder: {run}\n  report:    {run / 'report.html'}\n  summarize: chattune summarize {run} "
              "--input dialogues.txt")
    else:
        print(f"run folder: {run}\n  chat:     chattune chat {run}\n  generate: chattune generate {run} --prompt 'hi!'")


def cmd_tune(args) -> None:
    from rich.console import Console

    from chattune.train.tune import tune

    result = tune(args.config, Path(args.output), trials=args.trials, space_file=args.space,
                  timeout_minutes=args.timeout, resume=args.resume, overrides=args.set, jobs=args.jobs,
                  console=Console(stderr=True))
    if result.best_number < 0:
        print(f"no trial finished; see {result.folder / 'trials.csv'}")
    else:
        baseline = (f" (trial 0, the config as given: {result.baseline_perplexity:.3f})"
                    if result.baseline_perplexity else "")
        print(f"best trial {result.best_number}: held-out perplexity {result.best_perplexity:.3f}{baseline}\n"
              f"  report: {result.folder / 'report.html'}\n  train:  chattune train {result.folder / 'best.yaml'}")
    if result.stopped_workers:  # the results of the trials that finished are written; the caller must still know
        for line in result.stopped_workers:
            print(f"chattune: tune worker {line}; a trial it was running is marked failed", file=sys.stderr)
        raise SystemExit(1)


def _align_config(args):
    """The align run's config: the parent run's data, model and split, then CONFIG, then the flags and --set."""
    from chattune.config import align_config
    from chattune.runs import Run

    parent = Run.open(args.run)
    overrides = list(args.set)
    flags = {"algorithm": args.method, "prompts": args.prompts, "preferences": args.data}
    overrides += [f"{key}={json.dumps(value)}" for key, value in flags.items() if value is not None]
    if args.toxic_prone:
        overrides.append("toxic_prone=true")
    cfg = align_config(parent.config.to_dict(), str(parent.path), args.config, overrides)
    return cfg, Path(args.output or f"{parent.path}-{cfg.algorithm}")


def cmd_align(args) -> None:
    from rich.console import Console

    from chattune.evaluate.align import print_alignment
    from chattune.pipeline import align_and_evaluate

    cfg, run = _align_config(args)
    result = align_and_evaluate(cfg, run, overwrite=args.overwrite, console=Console(stderr=True))
    if result["evaluation"] is not None:
        print_alignment(result["evaluation"], _stdout())
    print(f"run folder: {run}\n  chat:     chattune chat {run}\n  compare:  {run / 'alignment.json'}\n"
          f"  report:   {run / 'report.html'}")


def cmd_chat(args) -> None:
    from rich.console import Console

    from chattune.generate.backend import load_backend
    from chattune.generate.terminal import chat_loop

    sampling = _sampling(args)
    backend = load_backend(args.run, args.backend, args.quant, prompt_precision=args.prompt_precision)
    chat_loop(backend, sampling, Console(highlight=False), system_prompt=args.system)


def cmd_export(args) -> None:
    from chattune.export.run import VerificationFailed, export_run

    try:
        result = export_run(args.run, args.format, out=args.out, quant=args.quant, push=args.push,
                            private=args.private, dry_run=args.dry_run)
    except VerificationFailed as failure:  # not bad input: the export says something else than the run
        print("\n".join(failure.lines), file=sys.stderr)
        print(f"chattune: error: {failure}", file=sys.stderr)
        raise SystemExit(1) from None
    print("\n".join(result.lines))


def cmd_export_gguf(args) -> None:
    from chattune.export.gguf import export_model

    print("chattune: export-gguf is deprecated and goes in the next release; use `chattune export RUN --format gguf` "
          "(it also checks the export against the run)", file=sys.stderr)
    print(f"wrote {export_model(args.run, Path(args.out), args.quant)}")


def cmd_generate(args) -> None:
    from chattune.generate.batch import read_prompts, reply_to_prompts

    if sum(flag is not None for flag in (args.prompt, args.input, args.dialogue)) != 1:
        raise InputError("generate: give exactly one of --prompt TEXT, --input PROMPTS.txt or --dialogue TOPIC")
    if args.dialogue is not None:
        return _generate_dialogues(args)
    prompts = [args.prompt] if args.prompt is not None else read_prompts(args.input)
    for prompt, reply in reply_to_prompts(args.run, prompts, _sampling(args), args.batch_size):
        print(json.dumps({"prompt": prompt, "reply": reply}, ensure_ascii=False) if args.jsonl else reply)


def _generate_dialogues(args) -> None:
    from chattune.generate.dialogue import generate_dialogues
    from chattune.generate.hf import load_hf_backend

    speakers = tuple(name.strip() for name in args.speakers.split(","))
    if len(speakers) != 2 or not all(speakers) or speakers[0] == speakers[1]:
        raise InputError(f"--speakers {args.speakers!r}: give two different names, e.g. --speakers Person1,Person2")
    if args.turns < 1 or args.n < 1:
        raise InputError("generate: --turns and --n must be at least 1")
    dialogues = generate_dialogues(load_hf_backend(args.run, packed=True), args.dialogue, turns=args.turns, n=args.n,
                                   speakers=speakers, sampling=_sampling(args))
    for dialogue in dialogues:
        if args.jsonl:  # chattune chat data: `chattune train --data dialogues.jsonl`
            print(json.dumps({"messages": dialogue.messages(), "topic": dialogue.topic}, ensure_ascii=False))
        else:
            print(dialogue.transcript() + "\n")
    early = [dialogue.stopped for dialogue in dialogues if dialogue.stopped]
    reasons = ", ".join(f"{early.count(reason)} at {reason}" for reason in sorted(set(early)))
    ending = f"stopped early: {reasons}" if early else f"all reached --turns {args.turns}"
    print(f"{len(dialogues)} dialogue(s), {sum(len(d.turns) for d in dialogues)} turns; {ending}", file=sys.stderr)


def cmd_summarize(args) -> None:
    from chattune.data.pairs import Pair, read_sources
    from chattune.generate.summarize import load_summarizer

    if (args.text is None) == (args.input is None):
        raise InputError("summarize: give exactly one of --text TEXT or --input FILE (.txt, .jsonl, .csv, ...)")
    pairs = [Pair(args.text, "")] if args.text is not None else read_sources(args.input, args.source_column)
    summaries = load_summarizer(args.run).summaries(pairs, max_new_tokens=args.max_new_tokens,
                                                    num_beams=args.num_beams, batch_size=args.batch_size)
    for pair, summary in zip(pairs, summaries):
        print(json.dumps({"source": pair.source, "summary": summary.text, "ended": summary.ended},
                         ensure_ascii=False) if args.jsonl else summary.text)


def _stdout():
    """The console for result tables. Piped or logged (`make detox | tee log`), Rich would wrap them at 80 columns
    and cut each metric's label over three lines; 160 keeps a row whole (COLUMNS, when set, still decides)."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160)


def cmd_eval(args) -> None:
    from rich.console import Console

    from chattune.evaluate.align import print_alignment
    from chattune.evaluate.report import print_evaluation
    from chattune.pipeline import evaluate
    from chattune.runs import Run

    _check_eval_flags(args, Run.open(args.run).task)
    guards = {"repetition_penalty": args.repetition_penalty, "no_repeat_ngram_size": args.no_repeat_ngram_size}
    result = evaluate(args.run, data=args.data, split=args.split, limit=args.limit,
                      compare_base=args.compare_base, max_new_tokens=args.max_new_tokens,
                      batch_size=args.batch_size, console=Console(stderr=True),
                      loop_guards={key: value for key, value in guards.items() if value is not None},
                      samples=args.samples)
    if result["task"] == "align":
        print_alignment(result, _stdout())
        print(f"wrote {Path(args.run) / 'alignment.json'} and {Path(args.run) / 'report.html'}")
        return
    print_evaluation(result, _stdout())
    print(f"wrote {Path(args.run) / 'eval.json'} and {Path(args.run) / 'report.html'}")


def _check_eval_flags(args, task: str) -> None:
    """An align run is scored on the contexts its own align built (parent vs aligned); a flag that would change
    what is scored otherwise, or --samples on a run that samples no k, is refused rather than ignored."""
    if task == "align":
        given = [flag for flag, value in (("--data", args.data), ("--split", args.split != "eval" or None),
                                          ("--max-new-tokens", args.max_new_tokens),
                                          ("--repetition-penalty", args.repetition_penalty),
                                          ("--no-repeat-ngram-size", args.no_repeat_ngram_size)) if value is not None]
        if given:
            raise InputError(f"eval {args.run}: {', '.join(given)} not used for an align run (it scores parent vs "
                             "aligned on its own held-out contexts; --samples K and --limit N change how many)")
    elif args.samples is not None:
        raise InputError(f"eval {args.run}: --samples is for align runs (k sampled replies per context); a {task} run "
                         "is scored on greedy replies")


def cmd_report(args) -> None:
    from chattune.evaluate.report import write_report

    print(f"wrote {write_report(Path(args.run))}")


def cmd_predict(args) -> None:
    from chattune.evaluate.classify import predict

    if not args.text:
        raise InputError("predict: give at least one --text TEXT")
    for text, result in zip(args.text, predict(args.run, args.text)):
        if args.json:
            print(json.dumps({"text": text, **result}, ensure_ascii=False))
        else:
            top = ", ".join(f"{label} {p:.2f}" for label, p in list(result["probabilities"].items())[:3])
            print(f"{result['label']}\t({top})\t{text}")


def _per_minute(text: str) -> int:
    """--rate-limit 60 or 60/min."""
    count = text.removesuffix("/min")
    if not count.isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give requests per minute, e.g. 60/min")
    return int(count)


def cmd_serve(args) -> None:
    from chattune.serve.app import serve

    from chattune.serve.settings import ServeSettings

    settings = ServeSettings(api_key=args.api_key, allow_hosts=tuple(args.allow_host), cors_origin=args.cors_origin,
                             rate_limit=args.rate_limit, max_waiting=args.max_waiting,
                             read_timeout=args.read_timeout, access_log=not args.no_access_log)
    serve(args.run, host=args.host, port=args.port, db=args.db, backend=args.backend, quant=args.quant,
          settings=settings, insecure=args.insecure, max_batch=args.max_batch, kv_tokens=args.kv_tokens,
          threads=args.threads, parked_cells=args.parked_cells, prompt_precision=args.prompt_precision)


def cmd_feedback_stats(args) -> None:
    from chattune.serve.feedback import feedback_stats

    stats = feedback_stats(args.db)
    if args.json:
        print(json.dumps(stats))
        return
    for key, value in stats.items():
        if isinstance(value, dict):  # counts per finish reason, per model
            value = ", ".join(f"{name}: {count}" for name, count in value.items()) or "-"
        print(f"{key.replace('_', ' '):>15}  {value}")


def cmd_feedback_export(args) -> None:
    from chattune.serve.feedback import export_feedback

    rows = export_feedback(args.db, args.format, args.out)
    use = f"chattune train --data {args.out}" if args.format == "sft" else "a DPO trainer (TRL's preference format)"
    print(f"wrote {rows} {args.format} rows to {args.out}; use with: {use}")


def _add_data_parser(verbs) -> None:
    from chattune.data.inspect import SAMPLE_SEED, SAMPLE_SIZE
    from chattune.models import DEFAULT_MODEL

    data = verbs.add_parser("data", help="inspect or convert conversation data").add_subparsers(dest="action",
                                                                                                  required=True)
    inspect = data.add_parser("inspect", help="read, clean and tokenize a dataset; print what a model would see")
    inspect.add_argument("path", help="file, folder, or corpus name (chitchat, chatterbot)")
    inspect.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    inspect.add_argument("--model", default=DEFAULT_MODEL, help=f"tokenizer/chat template to use ({DEFAULT_MODEL})")
    inspect.add_argument("--max-length", type=int, default=512, help="tokens per conversation (default 512)")
    inspect.add_argument("--sample", type=int, default=SAMPLE_SIZE, metavar="N",
                         help=f"token statistics from a seeded random sample of N conversations (default "
                         f"{SAMPLE_SIZE}); counts are always over every conversation")
    inspect.add_argument("--full", action="store_true", help="token statistics over every conversation")
    inspect.add_argument("--seed", type=int, default=SAMPLE_SEED, help=f"seed of the sample (default {SAMPLE_SEED})")
    inspect.add_argument("--long-conversations", choices=["cut", "split"], default="cut",
                         help="over max-length: cut (default) or split into windows of whole turns")
    _add_reader_flags(inspect)
    inspect.set_defaults(func=cmd_data_inspect)
    convert = data.add_parser("convert", help="write cleaned conversations as OpenAI-messages JSONL")
    convert.add_argument("path", help="file, folder, or corpus name")
    convert.add_argument("out", help="output .jsonl")
    _add_reader_flags(convert)
    convert.set_defaults(func=cmd_data_convert)


def _add_train_parser(verbs) -> None:
    from chattune.models import DEFAULT_MODEL

    train = verbs.add_parser("train", help="fine-tune a model: chat (LoRA or full) or classify (see task)")
    train.add_argument("config", nargs="?", help="YAML config (configs/example.yaml lists every key of task: chat, "
                       "configs/classify.yaml of task: classify); every key has a default")
    train.add_argument("--data", help="file, folder, or corpus name (overrides the config's data)")
    train.add_argument("--model", help=f"HF id, local folder, or {DEFAULT_MODEL} (overrides the config's model)")
    train.add_argument("--output", help="run folder (default runs/YYYYmmdd-HHMMSS)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set max_steps=2 --set lora.r=8 (repeatable)")
    train.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    train.add_argument("--merge", action="store_true", help="also save LoRA merged into the base weights (RUN/model)")
    train.add_argument("--nproc", type=int, default=1, help="train in N processes on this machine (DDP through "
                       "torchrun: gloo on CPU, NCCL on GPUs); the global batch is batch_size x accumulation x N")
    train.add_argument("--accelerate-config", metavar="FILE", help="start the processes with `accelerate launch "
                       "--config_file FILE` instead: FSDP or DeepSpeed ZeRO (configs/distributed/)")
    train.set_defaults(func=cmd_train)


def _add_tune_parser(verbs) -> None:
    tune = verbs.add_parser("tune", help="search hyperparameters with Optuna (task: chat): each trial a short run, "
                            "objective held-out perplexity; writes DIR/best.yaml and DIR/report.html")
    tune.add_argument("config", help="YAML config to start from (trial 0 trains it as given)")
    tune.add_argument("--trials", type=int, default=8, help="trials to run in this call (default 8)")
    tune.add_argument("--space", metavar="FILE", help="YAML search space: key -> {float: [low, high], log: true} | "
                      "{int: [low, high]} | {choice: [...]} (default: learning rate, LoRA r, alpha/r, dropout, "
                      "weight decay, warm-up ratio; README Tune)")
    tune.add_argument("--output", default="runs/tune", help="study folder (default runs/tune)")
    tune.add_argument("--timeout", type=float, metavar="MIN", help="start no new trial after MIN minutes")
    tune.add_argument("--jobs", type=int, default=1, metavar="N", help="run trials in N processes sharing the study "
                      "(each pinned to cores // N cores, with as many torch threads; default 1)")
    tune.add_argument("--resume", action="store_true", help="add trials to the study in --output")
    tune.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config key for every trial (repeatable)")
    tune.set_defaults(func=cmd_tune)


def _add_align_parser(verbs) -> None:
    align = verbs.add_parser("align", help="continue a chat run with GRPO/RLOO on rewards (toxicity, relevance, ...) "
                             "or DPO on preference pairs (a file, or the web chat's feedback store)")
    align.add_argument("run", help="the chat run to continue (its LoRA adapter or full weights, data split, model)")
    align.add_argument("config", nargs="?", help="YAML config of task: align (configs/detox.yaml lists every key); "
                       "the parent run gives data, model and split")
    align.add_argument("--method", choices=["grpo", "rloo", "dpo"], help="the algorithm (default: the config's, grpo)")
    align.add_argument("--data", help="dpo: preference pairs, a JSONL/CSV of prompt/chosen/rejected (e.g. `chattune "
                       "feedback export --format dpo`) or the SQLite file of `chattune serve --db`")
    align.add_argument("--prompts", help="grpo/rloo: chat data whose contexts are the prompts (default: the parent "
                       "run's training split)")
    align.add_argument("--toxic-prone", action="store_true", help="grpo/rloo: keep only contexts where the parent's "
                       "sampled replies reach toxic_prone_threshold, for training and for the held-out evaluation")
    align.add_argument("--output", help="run folder (default RUN-METHOD, e.g. runs/demo-grpo)")
    align.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set max_steps=20 --set 'rewards={toxicity: 1, length: 0.2}' "
                       "(repeatable)")
    align.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    align.set_defaults(func=cmd_align)


def _add_generation_parsers(verbs) -> None:
    chat = verbs.add_parser("chat", help="interactive terminal chat with a run or model (streams tokens)")
    chat.add_argument("run", help="run folder, or a model name/folder")
    chat.add_argument("--system", help="system prompt (default: the run's)")
    _add_sampling_flags(chat)
    _add_backend_flags(chat)
    chat.set_defaults(func=cmd_chat)

    generate = verbs.add_parser("generate", help="generate replies to one prompt or a file of prompts")
    generate.add_argument("run", help="run folder, or a model name/folder")
    generate.add_argument("--prompt", help="one user message")
    generate.add_argument("--input", help="text file with one prompt per line")
    generate.add_argument("--batch-size", type=int, default=8, help="prompts generated together (default 8)")
    generate.add_argument("--jsonl", action="store_true", help="print {prompt, reply} JSON lines; with --dialogue, "
                          "chat data ({messages} per dialogue) for `chattune train`")
    generate.add_argument("--dialogue", metavar="TOPIC", help="a conversation between two people about TOPIC, the "
                          "model playing both (Person1: ... / Person2: ... lines)")
    generate.add_argument("--turns", type=int, default=8, help="--dialogue: turns per dialogue (default 8); it "
                          "stops earlier at an empty or repeated turn")
    generate.add_argument("--speakers", default="Person1,Person2", help="--dialogue: the two names, first speaker "
                          "first (default Person1,Person2)")
    generate.add_argument("--n", type=int, default=1, help="--dialogue: dialogues to generate (default 1)")
    _add_sampling_flags(generate)
    generate.set_defaults(func=cmd_generate)

    summarize = verbs.add_parser("summarize", help="summarise texts or dialogues with a summarize run (or any model)")
    summarize.add_argument("run", help="run folder (task: summarize), or a seq2seq/causal model name or folder")
    summarize.add_argument("--text", help="one text or dialogue to summarise")
    summarize.add_argument("--input", help=".txt (sources separated by blank lines) or CSV/TSV/JSONL/JSON/parquet")
    summarize.add_argument("--source-column", help="column holding the source in --input; auto-detected (dialogue, "
                           "document, text, source, article) when omitted")
    summarize.add_argument("--max-new-tokens", type=int, help="longest summary in tokens (default: the run's, 64)")
    summarize.add_argument("--num-beams", type=int, help="beam search width, 1 for greedy (default: the run's, 1)")
    summarize.add_argument("--batch-size", type=int, default=8, help="sources summarised together (default 8)")
    summarize.add_argument("--jsonl", action="store_true", help="print {source, summary, ended} JSON lines")
    summarize.set_defaults(func=cmd_summarize)


def _add_export_parsers(verbs) -> None:
    export = verbs.add_parser("export", help="write a run as a merged HF folder, GGUF or Ollama model, checked "
                              "against the run, with a model card; optionally push it to the Hugging Face Hub")
    export.add_argument("run", help="run folder written by `chattune train` (task: chat)")
    export.add_argument("--format", choices=["hf", "gguf", "ollama"], required=True,
                        help="hf: merged safetensors + tokenizer + generation_config.json; gguf: one file for "
                        "llama.cpp; ollama: the GGUF plus a Modelfile")
    export.add_argument("--out", help="folder to write (default RUN/export/FORMAT[-QUANT]); replaced if it holds an "
                        "earlier export")
    export.add_argument("--quant", choices=["f16", "q8_0", "q4_k_m", "q4_1"],
                        help="GGUF weights for gguf/ollama (default q8_0; q4_k_m needs llama-cpp-python)")
    export.add_argument("--push", metavar="REPO_ID", help="upload the export to the Hugging Face Hub, e.g. "
                        "my-team/support-bot (token: HF_TOKEN or `hf auth login`)")
    export.add_argument("--private", action="store_true", help="with --push: create the repo private")
    export.add_argument("--dry-run", action="store_true", help="with --push: list the files and the commit, send "
                        "nothing")
    export.set_defaults(func=cmd_export)

    alias = verbs.add_parser("export-gguf", help="deprecated: use `chattune export RUN --format gguf`")
    alias.add_argument("run", help="run folder, or a model name/folder (Llama architecture or GPT-2)")
    alias.add_argument("out", help="output .gguf")
    alias.add_argument("--quant", choices=["q8_0", "q4_1", "f16", "q4_k_m"], default="q8_0",
                       help="weight type (default q8_0)")
    alias.set_defaults(func=cmd_export_gguf)


def _add_evaluation_parsers(verbs) -> None:
    evaluate = verbs.add_parser("eval", help="score a run on held-out data (base vs tuned; an align run: parent vs "
                                "aligned); writes eval.json (alignment.json), report.html")
    evaluate.add_argument("run", help="run folder written by `chattune train` or `chattune align`")
    evaluate.add_argument("--data", help="file or corpus to score instead of the run's own held-out split")
    evaluate.add_argument("--split", choices=["eval", "train"], default="eval",
                          help="which side of the run's split to score (default: eval, never trained on)")
    evaluate.add_argument("--limit", type=int, help="score only the first N conversations (a quicker sample)")
    evaluate.add_argument("--compare-base", action="store_true",
                          help="also score the base model, with deltas and paired bootstrap 95%% intervals")
    evaluate.add_argument("--max-new-tokens", type=int, help="longest generated reply (default: the run's "
                          "eval_max_new_tokens, 64)")
    evaluate.add_argument("--batch-size", type=int, default=32,
                          help="replies generated together, shortest contexts first (default 32)")
    evaluate.add_argument("--repetition-penalty", type=float, help="chat runs: override the run's repetition penalty "
                          "(generation_config.json; 1 is off)")
    evaluate.add_argument("--no-repeat-ngram-size", type=int, metavar="N", help="chat runs: override the run's "
                          "no-repeat n-gram size (generation_config.json; 0 is off)")
    evaluate.add_argument("--samples", type=int, metavar="K", help="align runs: sampled replies per held-out context "
                          "(default: the run's eval_samples); the contexts are the ones its align scored")
    evaluate.set_defaults(func=cmd_eval)

    report = verbs.add_parser("report", help="re-render RUN/report.html from RUN/eval.json, or an align "
                                "run's from its alignment.json and metrics.jsonl (no recomputing)")
    report.add_argument("run", help="run folder with eval.json (an align run: alignment.json)")
    report.set_defaults(func=cmd_report)

    predict = verbs.add_parser("predict", help="classify texts with a classification run (task: classify)")
    predict.add_argument("run", help="run folder of a classification run")
    predict.add_argument("--text", action="append", default=[], help="text to classify (repeatable)")
    predict.add_argument("--json", action="store_true", help="print {text, label, probabilities} JSON lines")
    predict.set_defaults(func=cmd_predict)


def _add_serve_parsers(verbs) -> None:
    serve = verbs.add_parser("serve", help="OpenAI-compatible API + streaming web chat + feedback store")
    serve.add_argument("run", help="run folder, or a model name/folder")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 and /api (or $CHATTUNE_API_KEY)")
    serve.add_argument("--db", default="feedback.sqlite", help="SQLite file for conversations and feedback "
                       "(default feedback.sqlite)")
    serve.add_argument("--insecure", action="store_true",
                       help="allow a non-loopback --host without an API key (anyone who reaches the port can chat)")
    serve.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                       help="accept this Host header besides localhost/127.0.0.1 (repeatable; guards DNS rebinding)")
    serve.add_argument("--cors-origin", metavar="ORIGIN", help="let pages from this origin call the API (default: none)")
    serve.add_argument("--rate-limit", type=_per_minute, metavar="N/min",
                       help="at most N requests a minute per API key (per client address without one); 429 above")
    serve.add_argument("--max-batch", type=int, help="requests decoded together (default 8)")
    serve.add_argument("--kv-tokens", type=int,
                       help="KV cache budget in tokens for all requests decoding together (default 8192 hf, "
                       "16384 llamacpp); requests wait while it is full")
    serve.add_argument("--parked-cells", type=int, metavar="N",
                       help="llamacpp: KV cells finished replies may keep for a conversation's next turn (default "
                       "4096; every kept cell slows each step a little: 0 for traffic of one-off prompts)")
    serve.add_argument("--max-waiting", type=int, default=32,
                       help="requests that may wait for a free row; more get 503 with Retry-After (default 32)")
    serve.add_argument("--threads", type=int, default=1,
                       help="decode threads (torch or llama.cpp; default 1: on a shared 2-core machine two threads "
                       "made decode steps 7x slower)")
    serve.add_argument("--read-timeout", type=float, default=10.0,
                       help="seconds a client may take to send its headers or the next part of its body (default 10)")
    serve.add_argument("--no-access-log", action="store_true",
                       help="do not print a JSON line per request (they never hold message content)")
    _add_backend_flags(serve)
    serve.set_defaults(func=cmd_serve)

    feedback = verbs.add_parser("feedback", help="feedback collected by `chattune serve`: stats, training data")
    feedback_actions = feedback.add_subparsers(dest="action", required=True)
    stats = feedback_actions.add_parser("stats", help="count conversations, replies, ratings, edits, exportable rows")
    stats.add_argument("--db", default="feedback.sqlite",
                       help="SQLite file written by `chattune serve` (default feedback.sqlite)")
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    stats.set_defaults(func=cmd_feedback_stats)
    export = feedback_actions.add_parser("export", help="write rated/edited replies as training JSONL")
    export.add_argument("out", help="output .jsonl")
    export.add_argument("--format", choices=["sft", "dpo"], required=True,
                        help="sft: {messages} rows for `chattune train`; dpo: {prompt, chosen, rejected} pairs")
    export.add_argument("--db", default="feedback.sqlite",
                        help="SQLite file written by `chattune serve` (default feedback.sqlite)")
    export.set_defaults(func=cmd_feedback_export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chattune", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and library warnings")
    verbs = parser.add_subparsers(dest="verb", required=True)
    for add_parsers in (_add_data_parser, _add_train_parser, _add_tune_parser, _add_align_parser,
                        _add_generation_parsers, _add_export_parsers, _add_evaluation_parsers, _add_serve_parsers):
        add_parsers(verbs)
    return parser


# Third-party warnings that chattune's own use triggers and that say nothing to a chattune user, matched by message
# so that any other warning (a real deprecation of something the user passed) still shows.
NOISY_WARNINGS = (
    ".*pin_memory.*",  # torch: pin_memory set but no accelerator (chattune sets it only on CUDA; the DataLoader asks)
    ".*fan_in_fan_out is set to False.*",  # peft on GPT-2's Conv1D layers: it sets the flag right itself
    ".*is_gradient_checkpointing.* is deprecated.*",  # transformers 5 calling its own renamed property, per step
    # transformers 5 renamed these to activation_checkpointing_*; TRL calls the old names around every GRPO rollout
    ".*`gradient_checkpointing(_enable|_disable)?` is deprecated.*",  # and align passes GRPOConfig the old name
)


def _quiet_libraries() -> None:
    """Library progress bars and advisory notices bury chattune's own output; --debug shows them."""
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # chattune shows its own on long reads
    for message in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    from transformers.utils import logging

    logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # `train --nproc` starts the same command again under torchrun
    if not args.debug:
        _quiet_libraries()
    try:
        args.func(args)
    except InputError as error:
        if args.debug:
            raise
        if os.environ.get("RANK", "0") == "0":  # every rank of a distributed launch fails alike; one says so
            print(f"chattune: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
