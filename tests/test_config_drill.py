"""Bad configs and output paths, as a drill found them: each is one line on stderr, exit code 2, before any model
or data loads, and leaves no run folder behind."""

from __future__ import annotations

import errno
import tempfile

import pytest

from chattune.cli import main


@pytest.fixture(autouse=True)
def no_model_loads(monkeypatch):
    """Any model or tokenizer load fails the test: every case below must be refused before one."""
    import transformers

    # Imported before patching, so no module binds the patched function by name and keeps it after this test.
    import chattune.evaluate.run  # noqa: F401
    import chattune.pipeline  # noqa: F401
    import chattune.train.sft  # noqa: F401

    def refuse(*args, **kwargs):
        raise AssertionError("a model or tokenizer was loaded before the config was refused")

    for name in ("AutoModelForCausalLM", "AutoModelForSequenceClassification", "AutoTokenizer"):
        monkeypatch.setattr(getattr(transformers, name), "from_pretrained", refuse)
    monkeypatch.setattr("chattune.data.load.load_conversations", refuse)


SET_CASES = [
    ("learning_rate=-1", "learning_rate=-1"),
    ("lr_scheduler=bogus", "lr_scheduler='bogus'"),
    ("seed=-1", "seed=-1"),
    ("logging_steps=0", "logging_steps=0"),
    ("eval_batch_size=0", "eval_batch_size=0"),
    ("epochs=inf", "epochs="),
    ("epochs=.inf", "epochs=inf"),
    ("lora.target_modules=nope", "lora.target_modules='nope'"),
    ("lora.target_modules=5", "lora.target_modules=5"),
    ("lora=5", "lora must be a mapping"),
    ("data=123", "data=123"),
    ("data=null", "data=null"),
    ("system_prompt=123", "system_prompt=123"),
    # accepted silently before: each trained with a value that makes no sense
    ("lora.alpha=-1", "lora.alpha=-1"),
    ("warmup_ratio=5", "warmup_ratio=5"),
    ("save_total_limit=-1", "save_total_limit=-1"),
    ("early_stopping_patience=-1", "early_stopping_patience=-1"),
    ("max_grad_norm=-1", "max_grad_norm=-1"),
    ("eval_limit=0", "eval_limit=0"),
    ("eval_limit=-1", "eval_limit=-1"),
    ("limit=-1", "limit=-1"),
    ("compile=maybe", "compile='maybe'"),
    ("weight_decay=-1", "weight_decay=-1"),
    ("max_steps=", "no value after '='"),
    ("task=summarise", "task='summarise'"),
    ("text_column=text", "unknown key text_column for task chat"),
]


def _refused(capsys, args: list[str], expected: str) -> str:
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0, f"more than one line: {error}"
    assert "Traceback" not in error and expected in error, error
    return error


@pytest.mark.parametrize("assignment, expected", SET_CASES, ids=[case[0] for case in SET_CASES])
def test_bad_value_is_refused_before_anything_loads(tmp_path, capsys, assignment, expected):
    run = tmp_path / "run"
    _refused(capsys, ["train", "--set", assignment, "--output", str(run)], expected)
    assert not run.exists()


YAML_CASES = [
    ("list", "- data: chitchat\n- max_steps: 2\n".encode(), "must be a mapping"),
    ("scalar", b"chitchat\n", "must be a mapping"),
    ("latin1", "system_prompt: caf\xe9\n".encode("latin-1"), "not UTF-8"),
    ("nul", b"max_steps: 2\x00\n", "NUL"),
    ("empty", b"", "config is empty"),
    ("duplicate", b"max_steps: 2\nseed: 1\nmax_steps: 3\n", ":3: key 'max_steps' appears twice"),
    ("invalid", b"max_steps: 2\nlora: [\n", "not valid YAML"),
]


@pytest.mark.parametrize("name, content, expected", YAML_CASES, ids=[case[0] for case in YAML_CASES])
def test_bad_yaml_file_is_refused(tmp_path, capsys, name, content, expected):
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(content)
    error = _refused(capsys, ["train", str(path), "--output", str(tmp_path / "run")], expected)
    assert str(path) in error
    assert not (tmp_path / "run").exists()


def test_model_folder_without_config_is_refused(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    _refused(capsys, ["train", "--model", str(tmp_path / "model"), "--output", str(tmp_path / "run")],
             "has no config.json")


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a folder")
    return path


@pytest.mark.parametrize("output, expected", [
    ("{file}", "exists and is not a folder"),
    ("/dev/null", "exists and is not a folder"),
    ("/proc/chattune-run", "cannot write in /proc"),
    ("/sys/chattune-run", "cannot write in /sys"),
    ("{file}/run", "is a file"),
], ids=["existing-file", "dev-null", "proc", "sys", "under-a-file"])
def test_output_that_cannot_be_a_run_folder(capsys, a_file, output, expected):
    _refused(capsys, ["train", "--output", output.format(file=a_file)], expected)


def test_output_on_a_read_only_mount(tmp_path, capsys, monkeypatch):
    """Root may write anywhere by permission bits, so a read-only mount is simulated where the probe writes."""

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    _refused(capsys, ["train", "--output", str(tmp_path / "run")], "Read-only file system")


def test_a_run_that_fails_at_startup_leaves_no_folder(tmp_path, capsys, monkeypatch):
    """The data error comes after the run folder was made: it is removed, so the same command says the same."""
    monkeypatch.undo()  # let the data load run (it fails on the missing file)
    args = ["train", "--data", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "run")]
    for _ in range(2):
        _refused(capsys, args, "missing.jsonl: no such file")
        assert not (tmp_path / "run").exists()
