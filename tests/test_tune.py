"""`chattune tune` on a tiny Llama: the study lives in SQLite, best.yaml trains, --resume adds trials to the same
study, a hopeless trial is pruned, and a trial killed mid-run is marked failed on --resume."""

import json
from pathlib import Path

import optuna
import yaml

from chattune.cli import main
from chattune.config import load_config


def _study(folder):
    return optuna.load_study(study_name=folder.name, storage=f"sqlite:///{folder / 'study.sqlite'}")


def test_tune_records_trials_prunes_and_resumes(tmp_path, chat_jsonl, tiny_llama, capsys):
    config = tmp_path / "base.yaml"
    config.write_text(yaml.safe_dump({
        "data": chat_jsonl, "model": tiny_llama, "batch_size": 4, "eval_steps": 2, "max_steps": 4,
        "logging_steps": 1, "learning_rate": 0.01, "precision": "fp32", "max_length": 64,
        "early_stopping_patience": 0}))
    # a learning rate that cannot learn: trial 1 finishes (the pruner waits for 2 trials), trial 2 is pruned
    space = tmp_path / "space.yaml"
    space.write_text("learning_rate: {choice: [1.0e-9]}\n")
    study_dir = tmp_path / "study"
    assert main(["tune", str(config), "--trials", "3", "--space", str(space), "--output", str(study_dir)]) == 0
    out = capsys.readouterr().out
    assert "best trial 0" in out  # the config as given beats a learning rate of 1e-9

    states = [t.state for t in _study(study_dir).trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.COMPLETE,
                      optuna.trial.TrialState.PRUNED]
    assert (study_dir / "trials" / "trial-001" / "metrics.json").is_file()
    assert "PRUNED" in (study_dir / "trials.csv").read_text()
    assert "Optimisation history" in (study_dir / "report.html").read_text()

    best = load_config(study_dir / "best.yaml")
    assert best.learning_rate == 0.01 and best.eval_replies == 64  # the config as given, not the trials' settings
    run = tmp_path / "best-run"
    assert main(["train", str(study_dir / "best.yaml"), "--output", str(run), "--set", "max_steps=2",
                 "--set", "eval_replies=0"]) == 0
    assert json.loads((run / "metrics.json").read_text())["steps"] == 2

    # a trial whose process was killed stays RUNNING in the database; --resume marks it failed, then adds trials
    study = _study(study_dir)
    study.ask()
    assert main(["tune", str(config), "--trials", "1", "--space", str(space), "--output", str(study_dir),
                 "--resume"]) == 0
    states = [t.state for t in _study(study_dir).trials]
    assert states[3] == optuna.trial.TrialState.FAIL and len(states) == 5


def test_tune_refuses_an_existing_study_without_resume(tmp_path, capsys):
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "study.sqlite").write_bytes(b"")
    demo = Path(__file__).parent.parent / "configs" / "demo.yaml"
    assert main(["tune", str(demo), "--output", str(tmp_path / "study")]) == 2
    assert "pass --resume" in capsys.readouterr().err
