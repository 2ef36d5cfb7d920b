"""RUN/report.html: one self-contained page (styles inline, figures as data URIs, no CDN) from the run's files.

    chattune report runs/demo        # re-render from RUN/eval.json without recomputing anything
    write_report(Path("runs/demo"))

Sections: run summary (model, data, hyperparameters, wall time, tokens/s), loss curves and what they say about over-
or underfitting (evaluate/fit.py), then for chat runs the
base-vs-tuned metric table with deltas and bootstrap intervals and held-out examples; for summarisation runs the
zero-shot-vs-tuned table and held-out sources with the reference, zero-shot and tuned summaries; for classification
runs accuracy/macro-F1 against the majority baseline, per-class precision/recall and the confusion matrix. An align
run's page has its own "alignment" sections instead: how it was aligned, the reward and KL curves, parent vs aligned
on held-out contexts (alignment.json) and the prompts whose toxicity fell most, with both models' replies.
"""

from __future__ import annotations

import json
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

from chattune.errors import InputError
from chattune.evaluate import plots
from chattune.evaluate.fit import read_fit
from chattune.files import atomic_write_text
from chattune.runs import Run

TEMPLATES = Path(__file__).parent / "templates"
EXAMPLES_SHOWN = 10


def write_report(run: Path) -> Path:
    folder = Run(Path(run))
    if folder.config_path.is_file() and folder.task == "align":
        return _write_alignment_report(folder)
    evaluation = _read_json(folder.eval_path, f"run `chattune eval {run}` first")
    config = folder.config.to_dict()  # defaults filled in for runs older than a field
    metrics = _read_json(folder.metrics_path, "did training finish?")
    log_rows = _read_jsonl(folder.metrics_log_path)
    data_report = _read_json(folder.data_report_path, "did training finish?")
    figures = {"loss": plots.loss_curves(log_rows, metrics["base"]["loss"] if "base" in metrics else None)}
    if evaluation["task"] == "classify":
        figures["accuracy"] = plots.eval_accuracy_curve(log_rows)
        figures["confusion"] = plots.confusion_matrix(evaluation["confusion_matrix"], evaluation["labels"])
    for row in evaluation.get("metrics", []):
        row["verdict"] = verdict(row)
    fit = metrics.get("fit") or read_fit(log_rows)  # runs trained before metrics.json had it
    page = _environment().get_template("report.html.j2").render(
        run=folder.path.name, config=config, evaluation=evaluation, figures=figures, fit=fit,
        summary=run_summary(config, metrics, log_rows, data_report), examples=evaluation["examples"][:EXAMPLES_SHOWN],
    )
    atomic_write_text(folder.report_path, page)
    return folder.report_path


def _write_alignment_report(folder: Run) -> Path:
    metrics = _read_json(folder.metrics_path, "did alignment finish?")
    log_rows = _read_jsonl(folder.metrics_log_path)
    # alignment.json is missing when eval_prompts is 0: the page then shows how it was aligned and the curves
    evaluation = json.loads(folder.alignment_path.read_text(encoding="utf-8")) if folder.alignment_path.is_file() \
        else {"task": "align", "metrics": [], "examples": []}
    for row in evaluation["metrics"]:
        row["verdict"] = verdict(row)
    figures = {"rewards": plots.reward_curves(log_rows), "kl": plots.kl_curve(log_rows)}
    config = folder.config.to_dict()
    page = _environment().get_template("report.html.j2").render(
        run=folder.path.name, config=config, evaluation=evaluation, figures=figures,
        summary=alignment_summary(config, metrics, _read_json(folder.data_report_path, "did alignment finish?")),
        examples=evaluation["examples"][:EXAMPLES_SHOWN])
    atomic_write_text(folder.report_path, page)
    return folder.report_path


def alignment_summary(config: dict, metrics: dict, data_report: dict) -> list[tuple[str, str]]:
    """(label, value) rows describing how an align run was trained."""
    method = config["algorithm"]
    rows = [("task", f"align ({method.upper()}, TRL) from the run {config['parent']}"),
            ("model", f"{config['model']} ({config['method']}"
                      + (f", the parent's LoRA adapter continued)" if config["method"] == "lora" else ")"))]
    if method == "dpo":
        rows.append(("preferences", f"{data_report.get('preferences', {}).get('pairs', '?')} pairs"
                                    + (f" from {config['preferences']}" if config["preferences"] else "")))
    else:
        rewards = ", ".join(f"{name} x {weight:g}" for name, weight in config["rewards"].items())
        kept = data_report.get("toxic_prone", {}).get("train")
        rows += [("rewards", f"{rewards} ({config['reward_aggregation'].replace('_', ' ')})"),
                 ("prompts", f"{data_report.get('prompts', '?')} contexts"
                             + (f", toxic-prone: {kept['kept']} of {kept['scored']} scored kept (a sampled reply's "
                                f"p(toxic) >= {kept['threshold']:g})" if kept else "")),
                 ("rollouts", f"k={config['num_generations']} completions per prompt of up to "
                              f"{config['max_new_tokens']} tokens, temperature {config['temperature']:g}")]
    rows += [("optimisation", f"lr {config['learning_rate']:g}, batch {config['batch_size']}, beta (KL weight) "
                              f"{config['beta']:g}, seed {config['seed']}"),
             ("steps", str(metrics["steps"])),
             ("wall time", f"{metrics['train_seconds']:.0f} s from loading to the saved model (any toxic-prone "
                           "filter included, the evaluation not)")]
    return rows


def run_summary(config: dict, metrics: dict, log_rows: list[dict], data_report: dict) -> list[tuple[str, str]]:
    """(label, value) rows describing how the run was trained."""
    unit = {"classify": "texts", "summarize": "pairs"}.get(config["task"], "conversations")
    final = next((row for row in reversed(log_rows) if "train_runtime" in row), None)
    rows = [
        ("task", config["task"]),
        ("model", f"{config['model']} ({config['method']}"
                  + (f", LoRA r={config['lora']['r']} alpha={config['lora']['alpha']})" if config["method"] == "lora"
                     else ")")),
        ("data", f"{config['data']}: {data_report[f'train_{unit}']} train / {data_report[f'eval_{unit}']} eval {unit}"),
        ("optimisation", f"lr {config['learning_rate']:g} ({config['lr_scheduler']}), batch {config['batch_size']}"
                         f" x {config['gradient_accumulation']}, max_length {config['max_length']}, seed {config['seed']}"),
        ("steps", f"{metrics['steps']}" + (f" ({final['epoch']:.2f} epochs)" if final else "")),
        ("wall time", f"{metrics['train_seconds']:.0f} s from reading the data to the saved model"),
    ]
    if "precision" in metrics:  # what `precision: auto` chose on the machine that trained
        rows.append(("precision", "bf16 autocast" if metrics["precision"] == "bf16" else "fp32"))
    if final:
        tokens = data_report["train_tokens"]["total"] * final["epoch"]  # every token of the epochs trained
        rows.append(("throughput", f"{tokens / final['train_runtime']:,.0f} tokens/s in the training loop "
                                   f"({final['train_runtime']:.0f} s)"))
    return rows


def verdict(row: dict) -> str:
    """'better' / 'worse' when the 95% interval of the change excludes 0, else 'within noise'."""
    if "ci" not in row:
        return ""
    low, high = row["ci"]
    if low <= 0 <= high:
        return "within noise"
    if not row["better"]:
        return "higher" if low > 0 else "lower"
    return "better" if (low > 0) == (row["better"] == "higher") else "worse"


def number(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    digits = 1 if abs(value) >= 100 else 2 if abs(value) >= 10 else 3 if abs(value) >= 0.01 or value == 0 else 4
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _environment() -> Environment:
    environment = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"]))
    environment.filters["number"] = number
    environment.filters["percent"] = lambda value: "–" if value is None else f"{value:+.1%}"
    return environment


def _read_json(path: Path, hint: str):
    if not path.is_file():
        raise InputError(f"{path}: missing; {hint}")
    return json.loads(path.read_text(encoding="utf-8"))


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def print_evaluation(evaluation: dict, console) -> None:
    """The eval.json headline numbers as a terminal table."""
    from rich.table import Table

    if evaluation["task"] == "classify":
        low, high = evaluation["accuracy_ci"]
        console.print(f"held-out {evaluation['data']['examples']} texts: accuracy {evaluation['accuracy']:.3f} "
                      f"[{low:.3f}, {high:.3f}] vs majority baseline {evaluation['baseline']['accuracy']:.3f}; "
                      f"macro-F1 {evaluation['macro_f1']:.3f} vs {evaluation['baseline']['macro_f1']:.3f}")
        return
    compared = "ci" in evaluation["metrics"][0]
    summaries = evaluation["task"] == "summarize"
    title = f"held-out {'summaries' if summaries else 'replies'}: {evaluation['data']['pairs']} " + \
        ("sources" if summaries else "conversations")
    if compared:
        title += f", {'zero-shot ' if summaries else ''}base vs tuned, paired bootstrap 95% intervals"
    table = Table(title=title)
    human = any("human" in row for row in evaluation["metrics"])  # what the people said, where it has the metric
    columns = ("metric", "base", "tuned", "change", "95% interval", "") if compared else ("metric", "tuned")
    for column in (*columns, *(("human",) if human else ())):
        table.add_column(column, justify="left" if column in ("metric", "") else "right", no_wrap=column != "metric")
    for row in evaluation["metrics"]:
        cells = ([row["label"], number(row["base"]), number(row["tuned"]), number(row["delta"], True),
                  f"[{number(row['ci'][0], True)}, {number(row['ci'][1], True)}]", verdict(row)] if compared
                 else [row["label"], number(row["tuned"])])
        table.add_row(*cells, *((number(row["human"]) if "human" in row else "",) if human else ()))
    console.print(table)


def print_before_after(metrics: dict, console) -> None:
    """metrics.json's likelihood on the held-out conversations, base vs tuned, as a terminal table."""
    from rich.table import Table

    table = Table(title=f"held-out conversations: base vs tuned ({metrics['tuned']['tokens']} reply tokens)")
    for column in ("metric", "base", "tuned", "change"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for key, label in (("loss", "eval loss"), ("perplexity", "perplexity"), ("token_accuracy", "token accuracy")):
        base, tuned = metrics["base"][key], metrics["tuned"][key]
        change = f"{tuned / base - 1:+.1%}" if base else f"{tuned - base:+.4f}"
        table.add_row(label, f"{base:.4f}", f"{tuned:.4f}", change)
    console.print(table)
