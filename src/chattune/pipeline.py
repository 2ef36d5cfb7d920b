"""The stages composed: what `chattune train` and `chattune eval` run for each task.

    result = train_and_evaluate(load_config("configs/demo.yaml"), Path("runs/demo"))
    result["evaluation"]["metrics"]       # eval.json: base vs tuned with intervals (None when eval_replies is 0)
    result = align_and_evaluate(align_config(...), Path("runs/detox"))   # alignment.json: parent vs aligned

Training (chattune.train) and evaluation (chattune.evaluate) never import each other; this module hands what
training measured (the held-out conversations and their base/tuned likelihoods) to the evaluation, so nothing is
read or scored twice.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from chattune.config import AlignConfig, ChatConfig, ClassifyConfig, SummarizeConfig, TaskConfig
from chattune.errors import InputError
from chattune.runs import Run
from chattune.train.memory import collect_and_trim


def train_and_evaluate(cfg: TaskConfig, run: Path, *, resume: bool = False, overwrite: bool = False,
                       merge: bool = False, console: Console | None = None) -> dict | None:
    """Train the config's task into `run`, then evaluate it; returns {"run", "task", "metrics", "evaluation"}
    (None on the ranks other than 0 of a distributed launch)."""
    console = console or Console(stderr=True)
    if isinstance(cfg, ClassifyConfig):
        if resume:
            raise InputError("--resume: classification runs restart from scratch (they take minutes); drop --resume")
        return _classify(cfg, run, overwrite, console)
    if isinstance(cfg, SummarizeConfig):
        return _summarize(cfg, run, resume, overwrite, merge, console)
    return _chat(cfg, run, resume, overwrite, merge, console)


def _chat(cfg: ChatConfig, run: Path, resume: bool, overwrite: bool, merge: bool, console: Console) -> dict | None:
    from chattune.evaluate.run import evaluate_run
    from chattune.train.sft import train

    held_out = train(cfg, run, resume=resume, overwrite=overwrite, merge=merge, console=console)
    collect_and_trim()  # the trained model goes before the evaluation loads the base and tuned ones
    if held_out is None:  # a rank other than 0 of a distributed launch: rank 0 evaluates and reports
        return None
    folder = Run.open(run)
    evaluation = None
    if cfg.eval_replies:  # base vs tuned replies with bootstrap intervals -> RUN/eval.json, RUN/report.html
        evaluation = evaluate_run(folder, limit=cfg.eval_replies, compare_base=True, held_out=held_out,
                                  console=console)
    return {"run": run, "task": cfg.task, "metrics": folder.metrics(), "evaluation": evaluation}


def _classify(cfg: ClassifyConfig, run: Path, overwrite: bool, console: Console) -> dict | None:
    from chattune.evaluate.classify import evaluate_classifier
    from chattune.train.classify import train_classifier

    if train_classifier(cfg, run, overwrite=overwrite, console=console) is None:
        return None  # a rank other than 0 of a distributed launch: rank 0 evaluates and reports
    folder = Run.open(run)
    return {"run": run, "task": cfg.task, "metrics": folder.metrics(),
            "evaluation": evaluate_classifier(folder, console=console)}


def _summarize(cfg: SummarizeConfig, run: Path, resume: bool, overwrite: bool, merge: bool,
               console: Console) -> dict:
    from chattune.evaluate.summarize import evaluate_summaries
    from chattune.train.summarize import train_summarizer

    held_out = train_summarizer(cfg, run, resume=resume, overwrite=overwrite, merge=merge, console=console)
    collect_and_trim()
    if held_out is None:  # a rank other than 0 of a distributed launch: rank 0 evaluates and reports
        return None
    folder = Run.open(run)
    evaluation = None
    if cfg.eval_summaries:  # zero-shot base vs tuned summaries with bootstrap intervals -> eval.json, report.html
        evaluation = evaluate_summaries(folder, limit=cfg.eval_summaries, compare_base=True, held_out=held_out,
                                        console=console)
    return {"run": run, "task": cfg.task, "metrics": folder.metrics(), "evaluation": evaluation}


def align_and_evaluate(cfg: AlignConfig, run: Path, *, overwrite: bool = False, console: Console | None = None) -> dict:
    """`chattune align`: align the parent run into `run`, then score parent vs aligned on the held-out contexts;
    returns {"run", "task", "metrics", "evaluation"} (evaluation None when eval_prompts is 0)."""
    from chattune.evaluate.align import evaluate_alignment
    from chattune.train.align import align

    console = console or Console(stderr=True)
    aligned = align(cfg, run, overwrite=overwrite, console=console)
    collect_and_trim()
    folder = Run.open(run)
    evaluation = None
    if cfg.eval_prompts:
        evaluation = evaluate_alignment(folder, aligned.eval_contexts, aligned.eval_conversations, console=console)
    from chattune.evaluate.report import write_report

    write_report(folder.path)  # the curves, and the parent vs aligned table when there was an evaluation
    return {"run": run, "task": cfg.task, "metrics": folder.metrics(), "evaluation": evaluation}


def evaluate(run: str | Path, *, data: str | None = None, split: str = "eval", limit: int | None = None,
             compare_base: bool = False, max_new_tokens: int | None = None, batch_size: int = 8,
             console: Console | None = None, loop_guards: dict | None = None, samples: int | None = None) -> dict:
    """`chattune eval RUN`: score any run folder with its task's evaluation; returns what eval.json holds (an align
    run: alignment.json, parent vs aligned). `loop_guards` overrides a chat run's repetition_penalty /
    no_repeat_ngram_size; `samples` an align run's sampled replies per context."""
    folder = Run.open(run)
    if folder.task == "align":
        from chattune.evaluate.align import reevaluate_alignment
        from chattune.evaluate.report import write_report

        result = reevaluate_alignment(folder, samples=samples, limit=limit, console=console)
        write_report(folder.path)
        return result
    if folder.task == "classify":
        from chattune.evaluate.classify import evaluate_classifier

        return evaluate_classifier(folder, data=data, split=split, limit=limit, console=console)
    if folder.task == "summarize":
        from chattune.evaluate.summarize import evaluate_summaries

        return evaluate_summaries(folder, data=data, split=split, limit=limit, compare_base=compare_base,
                                  max_new_tokens=max_new_tokens, batch_size=batch_size, console=console)
    from chattune.evaluate.run import evaluate_run

    return evaluate_run(folder, data=data, split=split, limit=limit, compare_base=compare_base,
                        max_new_tokens=max_new_tokens, batch_size=batch_size, console=console,
                        loop_guards=loop_guards)
