"""The CLI as users run it: bad input is one line on stderr and exit code 2; chat and generate use the model."""

import json
import subprocess
import sys

import pytest

from chattune.cli import main
from chattune.generate.terminal import chat_loop


def chattune(*args):
    return subprocess.run([sys.executable, "-m", "chattune.cli", *args], capture_output=True, text=True)


def test_missing_file_is_one_line_and_exit_2(tmp_path):
    result = chattune("data", "convert", str(tmp_path / "nope.csv"), str(tmp_path / "out.jsonl"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "nope.csv" in result.stderr
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback(tmp_path):
    result = chattune("--debug", "data", "convert", str(tmp_path / "nope.csv"), str(tmp_path / "out.jsonl"))
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_wrong_columns_lists_columns_and_flags(tmp_path, capsys):
    path = tmp_path / "chats.csv"
    path.write_text("foo,bar\na,b\n", encoding="utf-8")
    assert main(["data", "convert", str(path), str(tmp_path / "out.jsonl")]) == 2
    error = capsys.readouterr().err
    assert "foo" in error and "bar" in error and "--prompt-column" in error


def test_convert_then_inspect_json(tmp_path, capsys, tiny_llama):
    path = tmp_path / "chats.csv"
    path.write_text("Question,Response\nhello how are you,i am fine\nwhat food,pizza\nhi,hey\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["data", "convert", str(path), str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0] == {"messages": [{"role": "user", "content": "hello how are you"},
                                    {"role": "assistant", "content": "i am fine"}]}
    capsys.readouterr()
    assert main(["data", "inspect", str(out), "--json", "--model", tiny_llama]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "messages-jsonl" and report["conversations"] == 3 and report["turns"] == 6
    assert report["dropped"] == {}
    trained = "".join(text for text, is_trained in report["example"] if is_trained)
    assert trained == "i am fine<|im_end|>"


def test_inspect_text_marks_trained_tokens(tmp_path, capsys, tiny_gpt2, chat_jsonl):
    assert main(["data", "inspect", chat_jsonl, "--model", tiny_gpt2]) == 0
    out = capsys.readouterr().out
    assert "messages-jsonl" in out and "conversations: 40 kept of 40 read" in out and "trained tokens" in out


@pytest.fixture
def trained_run(tmp_path, chat_jsonl, tiny_llama):
    run = tmp_path / "run"
    assert main(["train", "--data", chat_jsonl, "--model", tiny_llama, "--output", str(run), "--set", "max_steps=30",
                 "--set", "batch_size=4", "--set", "learning_rate=0.01", "--set", "precision=fp32",
                 "--set", "eval_replies=0"]) == 0
    return run


def test_generate_prompt_and_file(trained_run, tmp_path, capsys):
    capsys.readouterr()
    assert main(["generate", str(trained_run), "--prompt", "hello how are you 7", "--temperature", "0"]) == 0
    single = capsys.readouterr().out.strip()
    assert single.startswith("i am")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello how are you 7\nwhat is your favourite food\n")
    assert main(["generate", str(trained_run), "--input", str(prompts), "--temperature", "0", "--jsonl"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["prompt"] for row in rows] == ["hello how are you 7", "what is your favourite food"]
    assert rows[0]["reply"] == single  # batched (left-padded) generation equals the single one


def test_generate_needs_exactly_one_source(trained_run, capsys):
    assert main(["generate", str(trained_run)]) == 2
    assert "exactly one of --prompt" in capsys.readouterr().err


def test_chat_loop_keeps_history_and_handles_commands(trained_run):
    from rich.console import Console

    from chattune.generate.backend import load_backend
    from chattune.generate.sampling import Sampling

    backend = load_backend(str(trained_run), "hf")
    lines = iter(["hello how are you 1", "what is your favourite food", "/system be brief", "/reset",
                  "what is your favourite food", "/quit"])
    console = Console(record=True, width=200)
    seen_prompts = []
    original = backend.prompt_ids

    def recording_prompt_ids(messages):
        seen_prompts.append([m["content"] for m in messages])
        return original(messages)

    backend.prompt_ids = recording_prompt_ids
    chat_loop(backend, Sampling(temperature=0, max_new_tokens=8), console, read=lambda prompt: next(lines))
    text = console.export_text()
    assert "bot> i am fine" in text and "system prompt set" in text and "new conversation" in text
    first_reply = seen_prompts[1][1]
    assert seen_prompts == [
        ["hello how are you 1"],
        ["hello how are you 1", first_reply, "what is your favourite food"],  # history kept
        ["be brief", "what is your favourite food"],  # new conversation with the new system prompt
    ]


def test_result_tables_keep_whole_rows_when_piped(monkeypatch):
    """Piped or logged, Rich would wrap the result tables at 80 columns and cut each metric's label over lines."""
    from chattune.cli import _stdout

    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr("sys.stdout.isatty", lambda: False)
    assert _stdout().width == 160
    monkeypatch.setenv("COLUMNS", "100")
    assert _stdout().width == 100
