"""Over- and underfitting in words: read the train and eval loss curves of RUN/metrics.jsonl and say what they show.

    fit = read_fit(log_rows)     # rows of RUN/metrics.jsonl, in order
    fit["verdict"]               # "overfitting", "undertrained", "fits", "unstable" or "too few evaluations"
    fit["text"]                  # "eval loss rose for 2 evaluations after step 40 while train loss fell: ..."

Training writes it to metrics.json ("fit") and prints it at the end; report.html shows it under the curves. Only
the curves are read, so the words and the numbers that led to them always agree with the plot.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

# A change of the loss under 1% of its value is read as flat, so a few thousandths of noise on a small held-out
# set neither make a run "undertrained" nor hide a levelled-off curve.
FLAT = 0.01


def read_log_fit(path: Path) -> dict:
    """`read_fit` of a RUN/metrics.jsonl (no file: no curves, too few evaluations)."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    return read_fit([json.loads(line) for line in lines if line.strip()])


def read_fit(log_rows: list[dict]) -> dict:
    """The verdict on the curves, with the numbers it rests on (see the module docstring)."""
    evals = [(row["step"], row["eval_loss"]) for row in log_rows if "eval_loss" in row]
    train = [(row["step"], row["loss"]) for row in log_rows if "loss" in row and "eval_loss" not in row]
    if len(evals) < 2 or len(train) < 2:
        return {"verdict": "too few evaluations", "evaluations": len(evals),
                "text": f"{len(evals)} evaluation(s) of the eval loss: too few to tell over- from underfitting; "
                        "evaluate more often (a lower eval_steps) to read the curves"}
    best_step, best_loss = min(evals, key=lambda point: point[1])
    after_best = [loss for step, loss in evals if step > best_step]
    numbers = {"evaluations": len(evals), "best_step": best_step, "best_eval_loss": best_loss,
               "last_step": evals[-1][0], "last_eval_loss": evals[-1][1]}
    if after_best and after_best[-1] > best_loss * (1 + FLAT):
        return {**numbers, **_rose(train, best_step, best_loss, after_best)}
    return {**numbers, **_ended(train, evals)}


def _train_change(train: list[tuple[int, float]], step: int) -> float:
    """Relative change of the mean train loss logged after `step` against the mean up to it."""
    before = [loss for at, loss in train if at <= step] or [train[0][1]]
    later = [loss for at, loss in train if at > step] or [train[-1][1]]
    return statistics.fmean(later) / statistics.fmean(before) - 1


def _rose(train: list[tuple[int, float]], best_step: int, best_loss: float, after_best: list[float]) -> dict:
    """Eval loss ended above its best: overfitting when train loss kept falling meanwhile, else unstable."""
    train_change = _train_change(train, best_step)
    rise = f"eval loss rose for {len(after_best)} evaluation(s) after step {best_step} ({best_loss:.4f} -> " \
           f"{after_best[-1]:.4f}, {after_best[-1] / best_loss - 1:+.1%})"
    numbers = {"rising_evaluations": len(after_best), "train_change_after_best": train_change}
    if train_change < -FLAT:
        return {**numbers, "verdict": "overfitting",
                "text": f"{rise} while train loss fell ({train_change:+.1%}): overfitting; the best checkpoint "
                        f"(step {best_step}) was kept; fewer epochs or steps, more weight decay or more data would "
                        "help"}
    return {**numbers, "verdict": "unstable",
            "text": f"{rise} and train loss did not fall ({train_change:+.1%}): training is unstable; the best "
                    f"checkpoint (step {best_step}) was kept; a lower learning_rate would help"}


def _ended(train: list[tuple[int, float]], evals: list[tuple[int, float]]) -> dict:
    """Eval loss ended at (or near) its best: still falling at the end means undertrained (whatever the noisier train
    loss did), else it fits."""
    (previous_step, previous), (last_step, last) = evals[-2], evals[-1]
    eval_change = last / previous - 1
    train_change = _train_change(train, previous_step)
    numbers = {"eval_change_at_end": eval_change, "train_change_at_end": train_change}
    if eval_change < -FLAT:
        falling = "train and eval loss were" if train_change < -FLAT else "eval loss was"
        return {**numbers, "verdict": "undertrained",
                "text": f"{falling} still falling at the end (eval {previous:.4f} -> {last:.4f}, {eval_change:+.1%} "
                        f"from step {previous_step} to {last_step}; train {train_change:+.1%}): undertrained; more "
                        "steps (max_steps or epochs) would help"}
    return {**numbers, "verdict": "fits",
            "text": f"eval loss levelled off at {last:.4f} ({eval_change:+.1%} over the last "
                    f"{last_step - previous_step} steps) without rising: fits well; more steps would change little"}
