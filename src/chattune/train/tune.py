"""Hyperparameter search on Optuna: `chattune tune CONFIG --trials N`.

    chattune tune configs/demo.yaml --trials 8 --output runs/tune --timeout 60
    chattune tune configs/demo.yaml --trials 8 --output runs/tune --jobs 2   # 2 worker processes (train/tune_jobs.py)
    chattune train runs/tune/best.yaml --output runs/best

Trial 0 is CONFIG as it is (the baseline every other trial is compared with); then a TPE sampler proposes values
from the search space and a median pruner stops a trial whose eval loss, reported at each evaluation, is worse than
the median of the earlier trials at the same step. The objective is the held-out perplexity of the trial's best
checkpoint (metrics.json "tuned"). Each trial is a normal run folder, DIR/trials/trial-NNN. DIR holds:

    study.sqlite   the Optuna study; `--resume` adds trials to it (a trial killed mid-run is marked failed)
    trials.csv     one row per trial: number, state, perplexity, the sampled values
    best.yaml      CONFIG with the best trial's values (written atomically after every trial; with --jobs once, after
                   all workers have finished, like trials.csv and report.html)
    report.html    trials table, optimisation history, parameter importances, best vs trial 0 with a 95% interval

A space file maps config keys to distributions (the default below is the documented example):

    learning_rate: {float: [1.0e-5, 1.0e-3], log: true}
    lora.r: {choice: [4, 8, 16, 32]}
    lora.alpha_per_r: {choice: [1, 2, 4]}   # lora.alpha = lora.r x this
    lora.dropout: {float: [0.0, 0.2]}
    weight_decay: {float: [0.0, 0.1]}
    warmup_ratio: {float: [0.0, 0.2]}
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from rich.console import Console
from transformers import TrainerCallback

from chattune.config import ChatConfig, load_config, read_yaml, save_config
from chattune.errors import InputError
from chattune.files import atomic_write_text

DEFAULT_SPACE = {
    "learning_rate": {"float": [1e-5, 1e-3], "log": True},  # LoRA's useful range; 2e-4 is the usual default
    "lora.r": {"choice": [4, 8, 16, 32]},  # the adapter's capacity
    "lora.alpha_per_r": {"choice": [1, 2, 4]},  # the adapter's scale, alpha/r; 2 is the usual choice
    "lora.dropout": {"float": [0.0, 0.2]},
    "weight_decay": {"float": [0.0, 0.1]},
    "warmup_ratio": {"float": [0.0, 0.2]},
}
STUDY_FILE = "study.sqlite"
SQLITE_TIMEOUT_S = 60  # a write takes milliseconds; minutes of waiting means something is wrong


@dataclass
class TuneResult:
    folder: Path
    best_number: int
    best_perplexity: float
    baseline_perplexity: float | None
    stopped_workers: list[str] = field(default_factory=list)  # --jobs: workers that died (killed, crashed)


@dataclass
class Search:
    """What every trial of one `chattune tune` call needs (handed to each --jobs worker process)."""

    config: str
    overrides: list[str]
    space: dict
    output: Path
    timeout_minutes: float | None


def tune(config: str, output: Path, *, trials: int, space_file: str | None = None, timeout_minutes: float | None = None,
         resume: bool = False, overrides: list[str] = (), jobs: int = 1, console: Console | None = None) -> TuneResult:
    import optuna

    console = console or Console(stderr=True)
    base = load_config(config, list(overrides))
    if not isinstance(base, ChatConfig):
        raise InputError(f"{config}: tune searches task: chat configs; this one is task: {base.task}")
    if jobs < 1:
        raise InputError(f"--jobs {jobs}: give a number of processes of at least 1")
    space = read_space(Path(space_file)) if space_file else DEFAULT_SPACE
    search = Search(config, list(overrides), space, output, timeout_minutes)
    if jobs > 1:  # the cheap refusals first, then bad data fails before a study exists that would need --resume
        _check_study_file(output, resume)
        _prepare_data(base)
    study = _open_study(output, resume, base.seed, parallel=jobs > 1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if jobs == 1:
        run_trials(study, search, trials, console, write_each=True)
        return _write_results(study, config, list(overrides), output)
    from chattune.train.tune_jobs import run_workers

    waiting = (optuna.trial.TrialState.WAITING,)
    stopped, error = run_workers(work, search, trials, jobs, base.seed, console,
                                 queued=lambda: bool(study.get_trials(deepcopy=False, states=waiting)))
    _fail_orphans(study)  # a killed worker left its trial RUNNING; no worker runs now
    result = _write_results(study, config, list(overrides), output)
    if error is not None:
        raise InputError(error)
    result.stopped_workers = stopped
    return result


def _prepare_data(cfg: ChatConfig) -> None:
    """Tokenize the data (into chattune's data cache) once, before the workers start: otherwise every worker
    misses the cache at the same moment, tokenizes the same data and writes the same cache entry."""
    from chattune.data.prepare import prepare_chat_data
    from chattune.models import load_tokenizer

    prepare_chat_data(cfg, load_tokenizer(cfg.model))


def run_trials(study, search: Search, trials: int, console: Console, *, write_each: bool) -> None:
    study.optimize(lambda trial: _objective(trial, search, console, write_each), n_trials=trials,
                   timeout=search.timeout_minutes * 60 if search.timeout_minutes else None, catch=())


def work(search: Search, trials: int, seed: int, cores: list[int], errors) -> None:
    """One --jobs worker process: `trials` trials of the shared study on `cores`. Each worker seeds its own sampler
    (seed + worker index): with one seed every worker's TPE would propose the same first points. It writes no
    results; the parent does, once all workers are done."""
    import optuna

    from chattune.train.tune_jobs import input_error_to_parent, pin_to_cores

    pin_to_cores(cores)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with input_error_to_parent(errors):
        run_trials(connect_study(search.output, seed, parallel=True), search, trials, Console(stderr=True),
                   write_each=False)


def read_space(path: Path) -> dict:
    """A search space file: key -> {float: [low, high], log?} | {int: [low, high], log?} | {choice: [...]}."""
    space = read_yaml(path)
    for key, spec in space.items():
        kinds = set(spec) - {"log"} if isinstance(spec, dict) else set()
        if len(kinds) != 1 or next(iter(kinds)) not in ("float", "int", "choice"):
            raise InputError(f"{path}: {key}: give one of {{float: [low, high]}}, {{int: [low, high]}} or "
                             "{choice: [values]} (and log: true for a log scale)")
    return space


def _check_study_file(output: Path, resume: bool) -> None:
    storage = output / STUDY_FILE
    if storage.exists() and not resume:
        raise InputError(f"{output}: holds a study; pass --resume to add trials to it, or choose another --output")
    if resume and not storage.exists():
        raise InputError(f"{output}: no {STUDY_FILE} to resume; start a new study without --resume")


def _open_study(output: Path, resume: bool, seed: int, *, parallel: bool):
    _check_study_file(output, resume)
    output.mkdir(parents=True, exist_ok=True)
    study = connect_study(output, seed, parallel=parallel)
    _fail_orphans(study)  # opened before any trial of this call starts: every RUNNING trial's process is gone
    if not study.trials:
        study.enqueue_trial({}, user_attrs={"baseline": True})  # trial 0: the config as given
    return study


def connect_study(output: Path, seed: int, *, parallel: bool = False):
    """The study in DIR/study.sqlite, created on first use. SQLite locks the whole file for a write: with --jobs a
    worker waits up to SQLITE_TIMEOUT_S for another's write instead of failing with "database is locked".
    `parallel` makes TPE treat running trials as if they had the worst value seen (constant liar), so workers
    sampling at the same time do not propose the same point."""
    import optuna

    storage = optuna.storages.RDBStorage(f"sqlite:///{output / STUDY_FILE}",
                                         engine_kwargs={"connect_args": {"timeout": SQLITE_TIMEOUT_S}})
    return optuna.create_study(
        study_name=output.name, storage=storage, load_if_exists=True, direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=seed, constant_liar=parallel),
        # a trial needs two evaluations before it can be pruned; the first trials all run to the end
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))


def _fail_orphans(study) -> None:
    """Mark failed the trials left RUNNING by a process that was killed (only called when none runs)."""
    import optuna

    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


def _sample(trial, space: dict) -> list[str]:
    """The trial's values as --set overrides; lora.alpha_per_r becomes lora.alpha."""
    values = {}
    for key, spec in space.items():
        if "choice" in spec:
            values[key] = trial.suggest_categorical(key, spec["choice"])
        elif "int" in spec:
            values[key] = trial.suggest_int(key, *spec["int"], log=spec.get("log", False))
        else:
            values[key] = trial.suggest_float(key, *map(float, spec["float"]), log=spec.get("log", False))
    if "lora.alpha_per_r" in values:
        ratio = values.pop("lora.alpha_per_r")
        values["lora.alpha"] = max(1, round(ratio * values.get("lora.r", 16)))
    return [f"{key}={json_value(value)}" for key, value in values.items()]


def json_value(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


class PruneOnEvalLoss(TrainerCallback):
    """Report each evaluation's loss to the trial; stop a trial Optuna's pruner gives up on."""

    def __init__(self, trial):
        self.trial = trial

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        import optuna

        self.trial.report(metrics["eval_loss"], state.global_step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"eval loss {metrics['eval_loss']:.4f} at step {state.global_step}")


def _objective(trial, search: Search, console: Console, write_each: bool) -> float:
    import torch

    from chattune.train.sft import train

    sampled = [] if trial.user_attrs.get("baseline") else _sample(trial, search.space)
    cfg = load_config(search.config, [*search.overrides, *sampled, "eval_replies=0"])  # compare on likelihood only
    trial.set_user_attr("overrides", sampled)
    # which process ran the trial, on how many threads (with --jobs: each worker's share of the cores)
    trial.set_user_attr("process", {"pid": os.getpid(), "threads": torch.get_num_threads()})
    output = search.output
    run = output / "trials" / f"trial-{trial.number:03d}"
    console.print(f"[bold]trial {trial.number}[/bold] {' '.join(sampled) or '(the config as given)'}")
    held_out = train(cfg, run, overwrite=True, console=console, callbacks=[PruneOnEvalLoss(trial)],
                     run_name=f"{output.name}/trial-{trial.number:03d}")
    rows = held_out.likelihoods["tuned"]
    trial.set_user_attr("nll", [row["nll"] for row in rows])
    trial.set_user_attr("tokens", [row["tokens"] for row in rows])
    perplexity = math.exp(sum(row["nll"] for row in rows) / sum(row["tokens"] for row in rows))
    if write_each:  # with --jobs the parent writes once, after every worker has finished
        _write_results(trial.study, search.config, search.overrides, output)
    return perplexity


def _write_results(study, config: str, overrides: list[str], output: Path) -> TuneResult:
    import optuna

    from chattune.train.tune_report import write_tune_report

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    baseline = next((t for t in done if t.user_attrs.get("baseline")), None)
    atomic_write_text(output / "trials.csv", _trials_csv(study.trials))
    if not done:
        return TuneResult(output, -1, math.nan, None)
    best = min(done, key=lambda t: t.value)
    save_config(load_config(config, [*overrides, *best.user_attrs["overrides"]]), output / "best.yaml")
    write_tune_report(study, best, baseline, output / "report.html")
    return TuneResult(output, best.number, best.value, baseline.value if baseline else None)


def _trials_csv(trials) -> str:
    keys = sorted({key for trial in trials for key in trial.params})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["number", "state", "perplexity", *keys])
    for trial in trials:
        writer.writerow([trial.number, trial.state.name, "" if trial.value is None else f"{trial.value:.4f}",
                         *(trial.params.get(key, "") for key in keys)])
    return out.getvalue()
