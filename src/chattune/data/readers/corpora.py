"""Built-in real corpora, read from their pip packages by name.

    conversations = read_corpus("chitchat", report)    # 7,168 two-person chats (pip install chitchat-dataset)
    conversations = read_corpus("chatterbot", report)  # ~2,000 short English Q/A (pip install chatterbot-corpus)
    records = read_aclsum("test", report)              # summarisation: 100 ACL papers x 3 aspects (pip install aclsum)

The package files are located with importlib, without importing the packages (chatterbot's pulls in heavy deps,
aclsum's imports `sienna`, which is not installed: its JSONL is read directly).
"""

import importlib.util
import json
from pathlib import Path

import yaml

from chattune.data.conversation import DEFAULT_JOINER, Conversation, append_turn
from chattune.data.readers.records import text_field
from chattune.data.report import DataReport
from chattune.errors import InputError

# corpus name -> (import name, pip name)
CORPORA = {
    "chitchat": ("chitchat_dataset", "chitchat-dataset"),
    "chatterbot": ("chatterbot_corpus", "chatterbot-corpus"),
}
TOPICS_CORPUS = "chatterbot-topics"  # labelled: chatterbot's questions, each labelled with its category file
# chatterbot categories with fewer distinct questions are dropped (health has 1, humor 2, gossip 6): a class needs
# a few examples on both sides of the split to be learnable and measurable.
MIN_TOPIC_QUESTIONS = 8
# ACLSum (Takeshita et al., 2024, MIT licence): 250 ACL papers (train 100, val 50, test 100), each with a
# human-written one-sentence summary of three aspects. Each aspect's request names it, worded after the paper's own
# definitions, so a model zero-shot knows which of the three is asked for.
SUMMARY_CORPUS = "aclsum"
ACLSUM_SPLITS = ("train", "val", "test")
ACLSUM_ASPECTS = {
    "challenge": "Summarize the challenge of this paper in one sentence: the problem or situation the authors face.",
    "approach": "Summarize the approach of this paper in one sentence: what the authors propose or do.",
    "outcome": "Summarize the outcome of this paper in one sentence: what the authors find or show.",
}


def _package_dir(name: str) -> Path:
    if name == SUMMARY_CORPUS:
        module, pip_name = "aclsum", "--no-deps aclsum"  # its `sienna` dependency is not needed
    else:
        module, pip_name = CORPORA["chatterbot" if name == TOPICS_CORPUS else name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"{name}: the {name} corpus needs its package; run: pip install {pip_name}")
    return Path(spec.submodule_search_locations[0])


def _chitchat(package: Path, joiner: str) -> list[Conversation]:
    """Each conversation's `messages` is a list of turns; a turn is a list of utterances `{text, sender, ...}`: one
    person's consecutive messages, joined with `joiner`."""
    conversations = []
    for chat in json.loads((package / "dataset.json").read_text(encoding="utf-8")).values():  # file order
        roles: dict[str, str] = {}  # sender id -> role; the first sender is the user
        conversation: Conversation = []
        for turn in chat["messages"]:
            sender = turn[0]["sender"]
            role = roles.setdefault(sender, "assistant" if roles else "user")
            append_turn(conversation, role, joiner.join(utterance["text"] for utterance in turn), joiner)
        conversations.append(conversation)
    return conversations


def _chatterbot(package: Path) -> list[Conversation]:
    """Each english/*.yml holds `conversations: [[utterance, ...], ...]`, alternating user/assistant from the user."""
    conversations = []
    for path in sorted((package / "data" / "english").glob("*.yml")):
        for index, utterances in enumerate(yaml.safe_load(path.read_text(encoding="utf-8"))["conversations"]):
            conversations.append([
                {"role": ("user", "assistant")[turn % 2], "content": text_field(utterance, f"{path}: {index}[{turn}]")}
                for turn, utterance in enumerate(utterances)
            ])
    return conversations


def read_corpus(name: str, report: DataReport, joiner: str = DEFAULT_JOINER) -> list[Conversation]:
    """The corpus's conversations in file order (deterministic); `name` is a key of CORPORA. `joiner` joins one
    person's consecutive chitchat messages (chatterbot's speakers alternate)."""
    report.format = name
    package = _package_dir(name)
    return _chitchat(package, joiner) if name == "chitchat" else _chatterbot(package)


def read_topic_questions(report: DataReport) -> list[tuple[str, str]]:
    """(question, topic) rows: the first utterance (the user's question) of each chatterbot-corpus English
    conversation, labelled with the name of its category file (ai, food, sports, ...)."""
    report.format = TOPICS_CORPUS
    rows = []
    for path in sorted((_package_dir(TOPICS_CORPUS) / "data" / "english").glob("*.yml")):
        conversations = yaml.safe_load(path.read_text(encoding="utf-8"))["conversations"]
        questions = {str(conversation[0]).strip(): None for conversation in conversations}
        if len({question.lower() for question in questions}) >= MIN_TOPIC_QUESTIONS:
            rows += [(question, path.stem) for question in questions]
    return rows


def read_aclsum(split: str, report: DataReport) -> list[dict[str, str]]:
    """{"instruction", "source", "summary"} records of one split, paper by paper, aspect by aspect: the source is
    the paper's abstract, one sentence per line (the corpus's own sentence split)."""
    assert split in ACLSUM_SPLITS, split
    report.format = f"{SUMMARY_CORPUS}-{split}"
    path = _package_dir(SUMMARY_CORPUS) / "dataset" / f"{split}.jsonl"
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        paper = json.loads(line)
        source = "\n".join(paper["sentences"]["abstract"])
        records += [{"instruction": instruction, "source": source, "summary": paper["summary"][aspect]}
                    for aspect, instruction in ACLSUM_ASPECTS.items()]
    return records
