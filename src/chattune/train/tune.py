"""Hyperparameter search on Optuna: `chattune tune CONFIG --trials N`.

    chattune tune configs/demo.yaml --trials 8 --output runs/tune --timeout 60
    chattune train runs/tune/best.yaml --output runs/best

Trial 0 is CONFIG as it is (the baseline every other trial is compared with); then a TPE sampler proposes values
from the search space and a median pruner stops a trial whose eval loss, reported at each evaluation, is worse than
the median of the earlier trials at the same step. The objective is the held-out perplexity of the trial's best
checkpoint (metrics.json "tuned"). Each trial is a normal run folder, DIR/trials/trial-NNN. DIR holds:

    study.sqlite   the Optuna study; `--resume` adds trials to it (a trial killed mid-run is marked failed)
    trials.csv     one row per trial: number, state, perplexity, the sampled values
    best.yaml      CONFIG with the best trial's values (written atomically after every trial)
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
from dataclasses import dataclass
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


@dataclass
class TuneResult:
    folder: Path
    best_number: int
    best_perplexity: float
    baseline_perplexity: float | None


def tune(config: str, output: Path, *, trials: int, space_file: str | None = None, timeout_minutes: float | None = None,
         resume: bool = False, overrides: list[str] = (), console: Console | None = None) -> TuneResult:
    import optuna

    console = console or Console(stderr=True)
    base = load_config(config, list(overrides))
    if not isinstance(base, ChatConfig):
        raise InputError(f"{config}: tune searches task: chat configs; this one is task: {base.task}")
    space = read_space(Path(space_file)) if space_file else DEFAULT_SPACE
    study = _open_study(output, resume, base.seed)
    if not study.trials:
        study.enqueue_trial({}, user_attrs={"baseline": True})  # trial 0: the config as given
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(lambda trial: _objective(trial, config, list(overrides), space, output, console),
                   n_trials=trials, timeout=timeout_minutes * 60 if timeout_minutes else None,
                   catch=())
    return _write_results(study, config, list(overrides), output)


def read_space(path: Path) -> dict:
    """A search space file: key -> {float: [low, high], log?} | {int: [low, high], log?} | {choice: [...]}."""
    space = read_yaml(path)
    for key, spec in space.items():
        kinds = set(spec) - {"log"} if isinstance(spec, dict) else set()
        if len(kinds) != 1 or next(iter(kinds)) not in ("float", "int", "choice"):
            raise InputError(f"{path}: {key}: give one of {{float: [low, high]}}, {{int: [low, high]}} or "
                             "{choice: [values]} (and log: true for a log scale)")
    return space


def _open_study(output: Path, resume: bool, seed: int):
    import optuna

    storage = output / STUDY_FILE
    if storage.exists() and not resume:
        raise InputError(f"{output}: holds a study; pass --resume to add trials to it, or choose another --output")
    if resume and not storage.exists():
        raise InputError(f"{output}: no {STUDY_FILE} to resume; start a new study without --resume")
    output.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=output.name, storage=f"sqlite:///{storage}", load_if_exists=True, direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        # a trial needs two evaluations before it can be pruned; the first trials all run to the end
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)  # its process was killed
    return study


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


def _objective(trial, config: str, overrides: list[str], space: dict, output: Path, console: Console) -> float:
    from chattune.train.sft import train

    sampled = [] if trial.user_attrs.get("baseline") else _sample(trial, space)
    cfg = load_config(config, [*overrides, *sampled, "eval_replies=0"])  # trials compare on likelihood only
    trial.set_user_attr("overrides", sampled)
    run = output / "trials" / f"trial-{trial.number:03d}"
    console.print(f"[bold]trial {trial.number}[/bold] {' '.join(sampled) or '(the config as given)'}")
    held_out = train(cfg, run, overwrite=True, console=console, callbacks=[PruneOnEvalLoss(trial)],
                     run_name=f"{output.name}/trial-{trial.number:03d}")
    rows = held_out.likelihoods["tuned"]
    trial.set_user_attr("nll", [row["nll"] for row in rows])
    trial.set_user_attr("tokens", [row["tokens"] for row in rows])
    perplexity = math.exp(sum(row["nll"] for row in rows) / sum(row["tokens"] for row in rows))
    _write_results(trial.study, config, overrides, output)
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
