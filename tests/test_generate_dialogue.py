"""`chattune generate RUN --dialogue TOPIC`: two people played by one model, the roles swapped each turn, early
stops counted, transcripts and chat data that chattune reads back."""

import json

import pytest
from generate_helpers import lora_run

from chattune.cli import main
from chattune.data.load import load_conversations
from chattune.generate.dialogue import Dialogue, generate_dialogues, turn_prompt
from chattune.generate.text import Reply


class ScriptedBackend:
    """Replies from a script, recording the conversations it was asked to continue."""

    def __init__(self, script: list[str]):
        self.script, self.prompts = list(script), []

    def replies(self, conversations, sampling):
        self.prompts += conversations
        return [Reply(self.script.pop(0), True) for _ in conversations]


def test_roles_are_swapped_so_the_next_speaker_is_the_assistant():
    dialogue = Dialogue("camping", ("Ann", "Bob"), ["a1", "b1", "a2"])
    bob = turn_prompt(dialogue)
    assert bob[0]["role"] == "system" and "You are Bob, chatting with your friend Ann" in bob[0]["content"]
    assert "camping" in bob[0]["content"]
    assert [(m["role"], m["content"]) for m in bob[1:]] == [("user", "a1"), ("assistant", "b1"), ("user", "a2")]
    dialogue.turns.append("b2")
    ann = turn_prompt(dialogue)
    assert "You are Ann" in ann[0]["content"] and ann[1]["role"] == "user"  # asked to open, then her own turns
    assert [(m["role"], m["content"]) for m in ann[2:]] == [("assistant", "a1"), ("user", "b1"), ("assistant", "a2"),
                                                            ("user", "b2")]


def test_turns_alternate_and_labels_or_continued_script_are_cut():
    backend = ScriptedBackend(["Person1: Shall we camp?", "**Person2:** Yes!\nPerson1: Great.", "Lake or forest?",
                               "Lake."])
    [dialogue] = generate_dialogues(backend, "camping", turns=4)
    assert dialogue.turns == ["Shall we camp?", "Yes!", "Lake or forest?", "Lake."] and dialogue.stopped is None
    assert dialogue.transcript().splitlines() == ["Person1: Shall we camp?", "Person2: Yes!",
                                                  "Person1: Lake or forest?", "Person2: Lake."]
    assert [len(prompt) for prompt in backend.prompts] == [2, 2, 4, 4]  # system (+ opener) + the turns so far


@pytest.mark.parametrize(("script", "reason"), [(["Hi.", "Hello!", "hi"], "repeated turn"),
                                                (["Hi.", "Hello!", "  ..."], "empty turn")])
def test_a_repeated_or_empty_turn_ends_the_dialogue_early(script, reason):
    [dialogue] = generate_dialogues(ScriptedBackend(script), "greetings", turns=6)
    assert dialogue.turns == ["Hi.", "Hello!"] and dialogue.stopped == reason


def test_dialogues_advance_together_and_stop_on_their_own():
    backend = ScriptedBackend(["A1", "B1", "A2", "B1", "A3"])  # one batch per turn: [first, second], then [first]
    first, second = generate_dialogues(backend, "t", turns=3, n=2)
    assert first.turns == ["A1", "A2", "A3"] and first.stopped is None
    assert second.turns == ["B1"] and second.stopped == "repeated turn"
    assert len(backend.prompts) == 5


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_llama):
    return lora_run(tmp_path_factory, tiny_llama)


def test_cli_dialogue_jsonl_trains_as_chat_data(trained_run, tmp_path, capsys):
    capsys.readouterr()
    assert main(["generate", str(trained_run), "--dialogue", "food", "--turns", "4", "--n", "2", "--seed", "1",
                 "--jsonl", "--max-new-tokens", "12"]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert len(rows) == 2 and all(row["topic"] == "food" for row in rows)
    for row in rows:
        roles = [message["role"] for message in row["messages"]]
        assert 1 <= len(roles) <= 4 and roles == ["user", "assistant", "user", "assistant"][:len(roles)]
    assert "2 dialogue(s)" in captured.err
    assert ("stopped early" in captured.err) == any(len(row["messages"]) < 4 for row in rows)
    answered = [row for row in rows if len(row["messages"]) >= 2]  # a lone opener has no reply to train on
    assert answered  # seed 1: the first dialogue has its 4 turns
    path = tmp_path / "dialogues.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in answered), encoding="utf-8")
    conversations, report = load_conversations(str(path))
    assert len(conversations) == len(answered) and report.format == "messages-jsonl"


def test_cli_dialogue_transcript_names_the_speakers(trained_run, capsys):
    capsys.readouterr()
    assert main(["generate", str(trained_run), "--dialogue", "pets", "--turns", "2", "--speakers", "Ann, Bob",
                 "--seed", "3", "--max-new-tokens", "12"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line]
    assert lines and lines[0].startswith("Ann: ") and all(line.startswith(("Ann: ", "Bob: ")) for line in lines)


@pytest.mark.parametrize("flags", [["--speakers", "Ann"], ["--speakers", "Ann,Ann"], ["--turns", "0"],
                                   ["--prompt", "hi"]])
def test_bad_dialogue_flags_are_one_line(trained_run, capsys, flags):
    assert main(["generate", str(trained_run), "--dialogue", "x", *flags]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


@pytest.mark.smollm2
def test_smollm2_writes_six_distinct_turns_by_both_speakers(capsys):
    assert main(["generate", "smollm2-135m-instruct", "--dialogue", "two friends planning a camping trip",
                 "--turns", "6", "--seed", "1", "--max-new-tokens", "48",
                 "--repetition-penalty", "1.2"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line]
    assert len(lines) == 6, lines
    assert [line.split(":")[0] for line in lines] == ["Person1", "Person2"] * 3
    texts = [line.split(": ", 1)[1] for line in lines]
    assert len(set(texts)) == 6 and all(texts)
