"""`chattune export --push REPO_ID`: --dry-run lists what would be sent and opens no connection; without a token or a
network the error is one line with exit code 2."""

import re
import socket

import pytest
from generate_helpers import lora_run

from chattune.cli import main


@pytest.fixture
def connections(monkeypatch):
    """Every attempt to open a network connection, refused."""
    attempts = []

    def refuse(sock, address):
        attempts.append(address)
        raise OSError("network is off in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_llama):
    return lora_run(tmp_path_factory, tiny_llama)


def test_dry_run_lists_the_files_and_the_commit_and_opens_no_connection(tiny_run, tmp_path, connections, capsys):
    out = tmp_path / "hf"
    assert main(["export", str(tiny_run), "--format", "hf", "--out", str(out), "--push", "my-team/tiny-chat",
                 "--private", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    files = sorted(path.name for path in out.iterdir())
    assert {"README.md", "export.json", "model.safetensors", "config.json", "generation_config.json"} <= set(files)
    assert f"would push {len(files)} files" in printed
    assert "https://huggingface.co/my-team/tiny-chat (private" in printed
    for name in files:
        assert re.search(rf"^\s+[\d.]+ [KMG]?B  {re.escape(name)}$", printed, re.M), name
    assert "commit message: chattune export of run (hf)" in printed and "nothing was sent" in printed
    assert connections == []
    card = (out / "README.md").read_text()
    assert "# tiny-chat" in card and 'from_pretrained("my-team/tiny-chat")' in card  # named after the repo


def test_push_without_a_token_is_one_line_before_any_export(tiny_run, tmp_path, monkeypatch, connections, capsys):
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    out = tmp_path / "hf"
    assert main(["export", str(tiny_run), "--format", "hf", "--out", str(out), "--push", "my-team/tiny-chat"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no Hugging Face token; set HF_TOKEN" in err and len(err.splitlines()) == 1
    assert not out.exists() and connections == []


def test_push_without_a_network_is_one_line_and_keeps_the_export(tiny_run, tmp_path, monkeypatch, connections, capsys):
    monkeypatch.setattr("huggingface_hub.get_token", lambda: "hf_not_a_real_token")
    out = tmp_path / "hf"
    assert main(["export", str(tiny_run), "--format", "hf", "--out", str(out), "--push", "my-team/tiny-chat"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("chattune: error:")]
    assert len(errors) == 1  # after the export's progress lines, one line says what failed
    assert errors[0].startswith("chattune: error: --push my-team/tiny-chat: the Hub could not be reached")
    assert (out / "export.json").is_file()  # the verified export stays for the next try
