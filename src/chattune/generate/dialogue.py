"""`chattune generate RUN --dialogue TOPIC`: a conversation between two people, both played by one model.

    backend = load_hf_backend("runs/demo")
    dialogues = generate_dialogues(backend, "two friends planning a camping trip", turns=8, n=2,
                                   sampling=Sampling(seed=1))
    print(dialogues[0].transcript())      # Person1: ... / Person2: ... lines
    dialogues[0].messages()               # chattune chat data: Person1 is the user, Person2 the assistant

Every turn is an assistant reply: the conversation so far is shown to the model with the roles swapped so that the
next speaker is always the assistant (their own earlier turns are assistant turns, the other person's user turns),
and the topic goes into the system prompt. The first speaker opens by answering a greeting that is not part of
the transcript. A dialogue ends
after `turns` turns, or early at a turn that is empty or repeats an earlier turn of the dialogue: that turn is left
out and the reason kept in `Dialogue.stopped`. The `n` dialogues advance together, one batch per turn.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from chattune.data.conversation import Conversation
from chattune.data.readers.transcript_reader import speaker_of
from chattune.generate.hf import MAX_BATCH, HFBackend
from chattune.generate.sampling import Sampling

SPEAKERS = ("Person1", "Person2")  # DialogSum's names, which chattune's transcript reader reads back


@dataclass
class Dialogue:
    topic: str
    speakers: tuple[str, str]  # the first one opens
    turns: list[str] = field(default_factory=list)  # alternating speakers, the first speaker's first
    stopped: str | None = None  # "empty turn" or "repeated turn" when it ended before the requested turns

    def speaker(self, index: int) -> str:
        return self.speakers[index % 2]

    def transcript(self) -> str:
        """`Speaker: text` lines, the form chattune's transcript reader reads."""
        return "\n".join(f"{self.speaker(index)}: {text}" for index, text in enumerate(self.turns))

    def messages(self) -> Conversation:
        """As chattune chat data: the first speaker is the user, the second the assistant."""
        return [{"role": ("user", "assistant")[index % 2], "content": text} for index, text in enumerate(self.turns)]


def system_prompt(topic: str, me: str, other: str) -> str:
    # Tried on SmolLM2 (base and chit-chat tuned): asking to answer "in character" and "move the conversation
    # forward" gave longer dialogues before a repeated turn than asking only for "the next line".
    return (f"You are {me}, chatting with your friend {other} about {topic}. Answer {other}'s last message in "
            "character, in one or two short sentences, and move the conversation forward.")


def turn_prompt(dialogue: Dialogue) -> Conversation:
    """The conversation as the next speaker sees it: their turns as the assistant's, the other's as the user's."""
    index = len(dialogue.turns)
    me, other = dialogue.speaker(index), dialogue.speaker(index + 1)
    messages = [{"role": "system", "content": system_prompt(dialogue.topic, me, other)}]
    if index % 2 == 0:  # the opener has no line to answer: a greeting, not in the transcript, asks them to start
        messages.append({"role": "user", "content": f"Hi {me}! What do you want to talk about?"})
    for turn_index, text in enumerate(dialogue.turns):
        messages.append({"role": "assistant" if turn_index % 2 == index % 2 else "user", "content": text})
    return messages


def _normalized(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


def clean_turn(reply: str, speakers: tuple[str, str]) -> str:
    """One line of speech from a reply: the speaker's own `Name:` label dropped, cut where the model goes on with
    a `Name:` line of either speaker, the rest joined into one line (a transcript line per turn).

    >>> clean_turn("Person2: Sure!\\nI'd love to.\\nPerson1: Great.", ("Person1", "Person2"))
    "Sure! I'd love to."
    """
    names = {_normalized(name).replace(" ", "") for name in speakers}
    lines: list[str] = []
    for line in reply.splitlines():
        spoken = speaker_of(line.replace("*", ""))  # chat models often bold the name: **Person1:**
        if spoken and _normalized(spoken[0]).replace(" ", "") in names:
            if lines:
                break
            line = spoken[1]
        if line.strip():
            lines.append(line.strip())
    return " ".join(lines)


def generate_dialogues(backend: HFBackend, topic: str, *, turns: int = 8, n: int = 1,
                       speakers: tuple[str, str] = SPEAKERS, sampling: Sampling | None = None) -> list[Dialogue]:
    """`n` dialogues of up to `turns` turns each about `topic`."""
    assert turns >= 1 and n >= 1 and len(speakers) == 2 and speakers[0] != speakers[1]
    sampling = sampling or Sampling()
    dialogues = [Dialogue(topic, tuple(speakers)) for _ in range(n)]
    for _ in range(turns):
        live = [d for d in dialogues if d.stopped is None]
        for first in range(0, len(live), MAX_BATCH):
            batch = live[first : first + MAX_BATCH]
            replies = backend.replies([turn_prompt(d) for d in batch], sampling)
            for dialogue, reply in zip(batch, replies):
                _add_turn(dialogue, clean_turn(reply.text, dialogue.speakers))
    return dialogues


def _add_turn(dialogue: Dialogue, text: str) -> None:
    if not _normalized(text):  # nothing said, or only punctuation
        dialogue.stopped = "empty turn"
    elif _normalized(text) in {_normalized(turn) for turn in dialogue.turns}:
        dialogue.stopped = "repeated turn"
    else:
        dialogue.turns.append(text)
