"""`chattune tune` on a tiny Llama: the study lives in SQLite, best.yaml trains, --resume adds trials to the same
study, a hopeless trial is pruned, and a trial killed mid-run is marked failed on --resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import yaml

from chattune.cli import main
from chattune.config import load_config


def _study(folder):
    return optuna.load_study(study_name=folder.name, storage=f"sqlite:///{folder / 'study.sqlite'}")


def _base_config(tmp_path, chat_jsonl, tiny_llama):
    config = tmp_path / "base.yaml"
    config.write_text(yaml.safe_dump({
        "data": chat_jsonl, "model": tiny_llama, "batch_size": 4, "eval_steps": 2, "max_steps": 4,
        "logging_steps": 1, "learning_rate": 0.01, "precision": "fp32", "max_length": 64,
        "early_stopping_patience": 0}))
    return config


def test_tune_records_trials_prunes_and_resumes(tmp_path, chat_jsonl, tiny_llama, capsys):
    config = _base_config(tmp_path, chat_jsonl, tiny_llama)
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


def test_parallel_jobs_share_one_study(tmp_path, chat_jsonl, tiny_llama, capsys):
    config = _base_config(tmp_path, chat_jsonl, tiny_llama)
    # the config's own value: every trial trains alike, so none is worse than the median and none is pruned
    space = tmp_path / "space.yaml"
    space.write_text("learning_rate: {choice: [0.01]}\n")
    study_dir = tmp_path / "parallel"
    assert main(["tune", str(config), "--trials", "3", "--jobs", "2", "--space", str(space),
                 "--output", str(study_dir)]) == 0
    assert "best trial" in capsys.readouterr().out

    trials = _study(study_dir).trials
    assert [t.number for t in trials] == [0, 1, 2] and trials[0].user_attrs["baseline"]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    processes = [t.user_attrs["process"] for t in trials]
    pids = {p["pid"] for p in processes}
    assert len(pids) == 2 and os.getpid() not in pids  # two worker processes ran them, not this one
    assert {p["threads"] for p in processes} == {max(1, len(os.sched_getaffinity(0)) // 2)}
    for t in trials:
        assert (study_dir / "trials" / f"trial-{t.number:03d}" / "metrics.json").is_file()
    # written once, after both workers: no trial is still RUNNING in it, and no temporary file is left
    table = (study_dir / "trials.csv").read_text()
    assert table.count("COMPLETE") == 3 and "RUNNING" not in table
    assert not [p.name for p in study_dir.iterdir() if p.name.endswith(".tmp")]
    assert load_config(study_dir / "best.yaml").learning_rate == 0.01
    assert "Optimisation history" in (study_dir / "report.html").read_text()


def test_a_killed_worker_leaves_its_trial_failed(tmp_path, chat_jsonl, tiny_llama):
    config = _base_config(tmp_path, chat_jsonl, tiny_llama)
    study_dir = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.path.join(os.path.dirname(__file__), "..", "src")}
    parent = subprocess.Popen(
        [sys.executable, "-m", "chattune", "tune", str(config), "--trials", "2", "--jobs", "2",
         "--output", str(study_dir), "--set", "max_steps=20"], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        victim = None
        for _ in range(1200):  # the first trial a worker has started (it records its process before training)
            time.sleep(0.1)
            # a trial's folder exists once the parent has made the study: opening it earlier would make this
            # process create Optuna's tables alongside the parent
            if not (study_dir / "trials").exists():
                continue
            running = _study(study_dir).get_trials(states=(optuna.trial.TrialState.RUNNING,))
            victim = next((t for t in running if "process" in t.user_attrs), None)
            if victim is not None:
                os.kill(victim.user_attrs["process"]["pid"], signal.SIGKILL)
                break
        out, err = parent.communicate(timeout=600)
    finally:
        parent.kill()
    assert victim is not None
    assert parent.returncode == 1 and "killed by signal 9" in err, err[-3000:]
    states = {t.number: t.state for t in _study(study_dir).trials}
    assert states[victim.number] == optuna.trial.TrialState.FAIL  # marked failed, not left RUNNING
    assert sorted(s.name for s in states.values()) == ["COMPLETE", "FAIL"]
    assert "best trial" in out and (study_dir / "best.yaml").is_file()
