"""Figures for report.html as self-contained PNG data URIs (matplotlib, no display needed).

    html_src = loss_curves(read_jsonl(run / "metrics.jsonl"), base_loss=3.99)   # "data:image/png;base64,..."
"""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")  # files only: no GUI backend on servers and CI
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen before pyplot loads)
from matplotlib.ticker import MaxNLocator  # noqa: E402


def _data_uri(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def loss_curves(log_rows: list[dict], base_loss: float | None = None) -> str | None:
    """Train and eval loss against the optimizer step; the base model's eval loss as a dashed line."""
    train = [(row["step"], row["loss"]) for row in log_rows if "loss" in row]
    evaluation = [(row["step"], row["eval_loss"]) for row in log_rows if "eval_loss" in row]
    if not train and not evaluation:
        return None
    figure, axes = plt.subplots(figsize=(6.4, 3.4))
    if train:
        axes.plot(*zip(*train), label="train loss", color="#4c72b0")
    if evaluation:
        axes.plot(*zip(*evaluation), "o-", label="eval loss", color="#dd8452")
    if base_loss is not None:
        axes.axhline(base_loss, linestyle="--", color="#888888", label="base model eval loss")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss (nats)")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper right", fontsize=8)
    return _data_uri(figure)


def eval_accuracy_curve(log_rows: list[dict]) -> str | None:
    """Classification: eval accuracy and macro-F1 against the step."""
    points = [(row["step"], row["eval_accuracy"], row["eval_macro_f1"]) for row in log_rows if "eval_accuracy" in row]
    if not points:
        return None
    steps, accuracy, macro_f1 = zip(*points)
    figure, axes = plt.subplots(figsize=(6.4, 3.0))
    axes.plot(steps, accuracy, "o-", label="eval accuracy", color="#55a868")
    axes.plot(steps, macro_f1, "s--", label="eval macro-F1", color="#8172b3")
    axes.set_xlabel("optimizer step")
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.legend()
    return _data_uri(figure)


def confusion_matrix(matrix: list[list[int]], labels: list[str]) -> str:
    """Rows are true labels, columns predicted labels; counts written in the cells."""
    size = max(4.0, 0.42 * len(labels) + 2)
    figure, axes = plt.subplots(figsize=(size, size * 0.9))
    axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(len(labels)), labels, rotation=60, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    peak = max((max(row) for row in matrix), default=0)
    for row, counts in enumerate(matrix):
        for column, count in enumerate(counts):
            if count:
                axes.text(column, row, count, ha="center", va="center", fontsize=8,
                          color="white" if count > peak / 2 else "black")
    return _data_uri(figure)


def reward_curves(log_rows: list[dict]) -> str | None:
    """Alignment: GRPO/RLOO's total reward and each reward's mean against the step; DPO's reward margin (chosen -
    rejected) and reward accuracy (the share of pairs whose chosen reply scores higher)."""
    names = sorted({key.split("/")[1] for row in log_rows for key in row
                    if key.startswith("rewards/") and key.endswith("/mean")})
    series = {"total reward (weighted sum)": "reward",
              **{f"{name} reward (mean)": f"rewards/{name}/mean" for name in names}}
    if not any("reward" in row for row in log_rows):
        series = {"reward margin (chosen - rejected)": "rewards/margins", "reward accuracy": "rewards/accuracies"}
    return _step_lines(log_rows, series, "reward")


def kl_curve(log_rows: list[dict]) -> str | None:
    """Alignment: the KL of the policy to the reference (parent) model against the step; None where none was
    logged (beta 0: TRL then loads no reference model)."""
    return _step_lines(log_rows, {"KL(policy || parent)": "kl"}, "KL (nats per token)")


def _step_lines(log_rows: list[dict], series: dict[str, str], ylabel: str) -> str | None:
    """One line per (label -> metrics.jsonl key) logged at some step; None when none was."""
    lines = {label: [(row["step"], row[key]) for row in log_rows if key in row and "step" in row]
             for label, key in series.items()}
    lines = {label: points for label, points in lines.items() if points}
    if not lines:
        return None
    figure, axes = plt.subplots(figsize=(6.4, 3.2))
    for label, points in lines.items():
        axes.plot(*zip(*points), "o-" if len(points) <= 40 else "-", markersize=3, label=label)
    axes.set_xlabel("optimizer step")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return _data_uri(figure)
