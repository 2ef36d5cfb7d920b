"""The curves read in words (evaluate/fit.py), on fixed curves whose verdict is plain to a person."""

import pytest

from chattune.evaluate.fit import read_fit


def curves(train: dict[int, float], evals: dict[int, float]) -> list[dict]:
    """metrics.jsonl rows as the Trainer logs them: train losses, eval losses, then the summary line."""
    rows = [{"step": step, "loss": loss} for step, loss in train.items()]
    rows += [{"step": step, "eval_loss": loss} for step, loss in evals.items()]
    rows.sort(key=lambda row: (row["step"], "eval_loss" in row))
    return rows + [{"step": max(train), "train_runtime": 10.0, "train_loss": 1.0}]


def test_eval_rising_while_train_falls_is_overfitting_and_names_the_best_step():
    fit = read_fit(curves({10: 3.0, 20: 2.6, 30: 2.2, 40: 1.8, 50: 1.4, 60: 1.0},
                          {20: 2.9, 40: 2.7, 50: 2.8, 60: 2.95}))
    assert fit["verdict"] == "overfitting"
    assert (fit["best_step"], fit["best_eval_loss"], fit["rising_evaluations"]) == (40, 2.7, 2)
    assert fit["train_change_after_best"] == pytest.approx((1.4 + 1.0) / 2 / ((3.0 + 2.6 + 2.2 + 1.8) / 4) - 1)
    assert fit["text"].startswith("eval loss rose for 2 evaluation(s) after step 40 (2.7000 -> 2.9500, +9.3%) "
                                  "while train loss fell")
    assert "best checkpoint (step 40) was kept" in fit["text"] and "weight decay" in fit["text"]


def test_both_still_falling_at_the_end_is_undertrained():
    fit = read_fit(curves({5: 4.0, 10: 3.8, 15: 3.6, 20: 3.4}, {10: 3.9, 20: 3.7}))
    assert fit["verdict"] == "undertrained" and fit["best_step"] == 20
    assert fit["eval_change_at_end"] == pytest.approx(3.7 / 3.9 - 1)
    assert fit["text"].startswith("train and eval loss were still falling at the end (eval 3.9000 -> 3.7000, -5.1%")
    assert "more steps" in fit["text"]


def test_a_levelled_off_curve_fits_and_noise_below_one_percent_is_flat():
    fit = read_fit(curves({10: 3.0, 20: 2.5, 30: 2.4, 40: 2.38}, {10: 2.9, 20: 2.6, 30: 2.595, 40: 2.6}))
    assert fit["verdict"] == "fits" and fit["best_step"] == 30  # +0.2% after the best is not a rise
    assert fit["text"].startswith("eval loss levelled off at 2.6000")


def test_eval_rising_while_train_does_not_fall_is_unstable():
    fit = read_fit(curves({10: 2.0, 20: 2.0, 30: 2.3, 40: 2.5}, {10: 2.5, 20: 2.4, 30: 2.8, 40: 3.0}))
    assert fit["verdict"] == "unstable" and "lower learning_rate" in fit["text"]


def test_one_evaluation_is_too_few_and_says_what_to_change():
    fit = read_fit(curves({10: 3.0, 20: 2.0}, {20: 2.5}))
    assert fit["verdict"] == "too few evaluations" and "eval_steps" in fit["text"]
    assert read_fit([])["verdict"] == "too few evaluations"
