"""The trained tokens of a conversation are exactly its assistant replies plus their end-of-turn tokens."""

import pytest

from chattune.data.chat import IGNORE_INDEX, end_of_turn_token, tokenize_conversation
from chattune.data.collate import PadCollator
from chattune.models import load_tokenizer

CONVERSATION = [
    {"role": "system", "content": "you are kind"},
    {"role": "user", "content": "hello how are you"},
    {"role": "assistant", "content": "i am fine thanks"},
    {"role": "user", "content": "what is your favourite food"},
    {"role": "assistant", "content": "pizza and pasta"},
]


def trained_runs(tokenizer, example) -> list[str]:
    """Decode each maximal run of trained tokens."""
    runs, current = [], []
    for token, label in zip(example["input_ids"], example["labels"]):
        if label != IGNORE_INDEX:
            assert label == token  # labels are the input ids; the model shifts them itself
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


@pytest.mark.parametrize("fixture, end", [("tiny_llama", "<|im_end|>"), ("tiny_gpt2", "<|endoftext|>")])
def test_trained_tokens_are_replies_and_end_tokens(request, fixture, end):
    tokenizer = load_tokenizer(request.getfixturevalue(fixture))
    assert end_of_turn_token(tokenizer) == end
    example = tokenize_conversation(tokenizer, CONVERSATION, end, max_length=512)
    runs = [run.strip() for run in trained_runs(tokenizer, example)]
    assert runs == [f"i am fine thanks{end}", f"pizza and pasta{end}"]
    end_id = tokenizer.convert_tokens_to_ids(end)
    assert sum(label == end_id for label in example["labels"]) == 2


def test_fallback_template_prompt_is_prefix_of_reply(tiny_gpt2):
    tokenizer = load_tokenizer(tiny_gpt2)
    prompt = tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(CONVERSATION[:3], tokenize=False)
    assert prompt == "System: you are kind\nUser: hello how are you\nAssistant:"
    assert full == prompt + " i am fine thanks<|endoftext|>\n"


def test_loss_on_all_trains_every_token(tiny_llama):
    tokenizer = load_tokenizer(tiny_llama)
    example = tokenize_conversation(tokenizer, CONVERSATION, "<|im_end|>", max_length=512, loss_on="all")
    assert example["labels"] == example["input_ids"]


def test_cut_conversation_without_reply_is_skipped(tiny_llama):
    tokenizer = load_tokenizer(tiny_llama)
    assert tokenize_conversation(tokenizer, CONVERSATION, "<|im_end|>", max_length=8) is None


def test_padding_is_never_trained_even_when_pad_is_eos(tiny_gpt2):
    tokenizer = load_tokenizer(tiny_gpt2)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # GPT-2: no pad token of its own
    short = tokenize_conversation(tokenizer, CONVERSATION[1:3], "<|endoftext|>", max_length=512)
    long = tokenize_conversation(tokenizer, CONVERSATION, "<|endoftext|>", max_length=512)
    batch = PadCollator(tokenizer.pad_token_id)([short, long])
    width = len(short["input_ids"])
    assert batch["input_ids"][0, width:].eq(tokenizer.eos_token_id).all()
    assert batch["labels"][0, width:].eq(IGNORE_INDEX).all()
    assert batch["attention_mask"][0].sum() == width
    assert batch["labels"][0, :width].tolist() == short["labels"]
