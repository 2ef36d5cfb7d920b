"""The fast tokenize-and-mask path (data/masks.py) computes what the plain one does: render prefix by prefix, tokenize
the whole text, cut at max_length. Long conversations cost what their first max_length tokens cost."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from chattune.data.chat import IGNORE_INDEX, tokenize_conversations
from chattune.data.masks import CHARS_PER_TOKEN, CUT_MARGIN, ChatTokenizer, reply_spans, tokenize_many
from chattune.data.template import assistant_spans, end_of_turn_token, render
from chattune.models import load_tokenizer

WORDS = "hello how are you doing today i am fine thanks what is your favourite food pizza pasta dog max".split()


def plain_example(tokenizer, messages, max_length, end_token=None):
    """The reference: spans from prefix renders, the whole text tokenized, then cut."""
    text, spans = assistant_spans(tokenizer, messages, end_token or end_of_turn_token(tokenizer))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids, offsets = encoded["input_ids"][:max_length], encoded["offset_mapping"][:max_length]
    labels = [token if any(start <= offset[0] < end for start, end in spans) else IGNORE_INDEX
              for token, offset in zip(input_ids, offsets)]
    return {"input_ids": input_ids, "labels": labels}


def conversation(turns: int, seed: int = 0, system: bool = False) -> list[dict]:
    messages = [{"role": "system", "content": "be kind and brief"}] if system else []
    for index in range(turns):
        words = [WORDS[(seed + index * 7 + k * 3) % len(WORDS)] for k in range(3 + (index + seed) % 9)]
        messages.append({"role": ("user", "assistant")[index % 2], "content": " ".join(words)})
    return messages


CASES = [
    conversation(2), conversation(6, seed=3, system=True), conversation(9, seed=5),
    # the reply's text also appears in the question before it: the search must not stop there
    [{"role": "user", "content": "say pizza please"}, {"role": "assistant", "content": "pizza"}],
    [{"role": "user", "content": "Assistant: hi"}, {"role": "assistant", "content": "hi"},
     {"role": "user", "content": "again"}, {"role": "assistant", "content": "hi"}],
]


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("max_length", [16, 40, 512])
def test_fast_path_equals_prefix_renders(request, fixture, max_length):
    tokenizer = load_tokenizer(request.getfixturevalue(fixture))
    chat = ChatTokenizer.for_model(tokenizer, max_length)
    assert chat.generation_prompt is not None  # the search is used, not the fallback
    examples, counts = tokenize_conversations(tokenizer, CASES, max_length)
    # each example names the conversation it came from (its index), dropped ones included in the count
    expected = [{**plain_example(tokenizer, messages, max_length), "conversation": index}
                for index, messages in enumerate(CASES)]
    kept = [example for example in expected if any(label != IGNORE_INDEX for label in example["labels"])]
    assert examples == kept
    assert counts["no_reply_within_max_length"] == len(expected) - len(kept)
    for messages in CASES:
        text = render(tokenizer, messages)
        assert reply_spans(text, messages, chat.generation_prompt, chat.end_token) == \
            assistant_spans(tokenizer, messages, chat.end_token)[1]


def test_template_that_rewrites_replies_falls_back_to_prefix_renders(tiny_llama):
    tokenizer = load_tokenizer(tiny_llama)
    # rewrites some replies only: the search passes the probe, then fails on those conversations alone
    tokenizer.chat_template = tokenizer.chat_template.replace("message['content']",
                                                              "message['content'] | replace('pizza', 'PIZZA')")
    assert ChatTokenizer.for_model(tokenizer, 64).generation_prompt is not None
    examples, _ = tokenize_conversations(tokenizer, CASES, 64)
    assert examples == [{**plain_example(tokenizer, messages, 64), "conversation": index}
                        for index, messages in enumerate(CASES)]
    assert "PIZZA" in tokenizer.decode(examples[3]["input_ids"])  # that one really was rewritten
    # rewrites every reply: the probe shows the search cannot work, so prefix renders are used throughout
    tokenizer.chat_template = tokenizer.chat_template.replace("message['content']", "message['content'] | upper")
    chat = ChatTokenizer.for_model(tokenizer, 64, end_token="<|im_end|>")
    assert chat.generation_prompt is None
    cases = [*CASES, conversation(300, system=True)]  # prefix renders of only the turns that fit, then cut
    examples, counts = tokenize_many(chat, cases)
    assert examples == [{**plain_example(tokenizer, messages, 64, "<|im_end|>"), "conversation": index}
                        for index, messages in enumerate(cases)]
    over = sum(len(tokenizer(render(tokenizer, messages))["input_ids"]) > 64 for messages in cases)
    assert counts["over_max_length"] == over >= 1


def test_ten_thousand_turns_cost_what_max_length_costs(tiny_llama):
    tokenizer = load_tokenizer(tiny_llama)
    long = conversation(10_000, system=True)
    started = time.perf_counter()
    examples, counts = tokenize_conversations(tokenizer, [long], max_length=512)
    seconds = time.perf_counter() - started
    assert seconds < 5, f"{seconds:.1f} s"
    cut_first = long[:200]  # ~2,400 tokens: well past max_length
    assert len(tokenizer(render(tokenizer, cut_first))["input_ids"]) > 512
    assert examples == [{**plain_example(tokenizer, cut_first, 512), "conversation": 0}]
    assert counts == {"no_reply_within_max_length": 0, "over_max_length": 1, "split_windows": 0}


def test_split_windows_of_whole_turns_train_every_reply(tiny_llama):
    tokenizer = load_tokenizer(tiny_llama)
    long = conversation(40, system=True)
    examples, counts = tokenize_conversations(tokenizer, [long], max_length=96, long_conversations="split")
    assert counts["over_max_length"] == 1 and counts["split_windows"] == len(examples) > 1
    trained_text = ""
    for example in examples:
        assert len(example["input_ids"]) <= 96
        text = tokenizer.decode(example["input_ids"])
        assert text.startswith("<|im_start|>system\nbe kind and brief<|im_end|>\n<|im_start|>user\n")
        trained_text += tokenizer.decode([t for t in example["labels"] if t != IGNORE_INDEX])
    replies = [turn["content"] + "<|im_end|>" for turn in long if turn["role"] == "assistant"]
    assert trained_text == "".join(replies)  # every reply trained once, whole, in order
    cut, _ = tokenize_conversations(tokenizer, [long], max_length=96)
    assert len(cut) == 1


def test_a_first_exchange_longer_than_max_length_is_a_window_of_its_own(tiny_llama):
    # chitchat has such conversations: the first exchange alone (a little over max_length) was measured exactly but
    # its doubled render was capped, which made the shared cost larger than the exchange and crashed the split.
    tokenizer = load_tokenizer(tiny_llama)
    long_reply = " ".join(WORDS[k % len(WORDS)] for k in range(150))
    messages = [{"role": "user", "content": "tell me everything"}, {"role": "assistant", "content": long_reply}]
    messages += conversation(12, seed=2)
    read = (96 + CUT_MARGIN) * CHARS_PER_TOKEN  # characters tokenized before a render is called longer than 96
    assert len(render(tokenizer, messages[:2])) <= read < len(render(tokenizer, messages[:2] * 2))
    examples, counts = tokenize_conversations(tokenizer, [messages], max_length=96, long_conversations="split")
    assert counts["split_windows"] == len(examples) > 2
    assert all(len(example["input_ids"]) <= 96 for example in examples)
    first = tokenizer.decode(examples[0]["input_ids"])
    assert "tell me everything" in first and messages[2]["content"] not in first  # the long exchange alone
    later = "".join(tokenizer.decode([t for t in example["labels"] if t != IGNORE_INDEX]) for example in examples[1:])
    assert later == "".join(turn["content"] + "<|im_end|>" for turn in messages[2:] if turn["role"] == "assistant")


def test_a_20_mb_reply_is_not_tokenized_whole(tiny_llama):
    script = f"""
import json, resource, sys, time
from chattune.data.chat import tokenize_conversations
from chattune.models import load_tokenizer
tokenizer = load_tokenizer({tiny_llama!r})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
reply = ("pizza and pasta " * 1_400_000)[:20_000_000]
started = time.perf_counter()
examples, _ = tokenize_conversations(tokenizer, [[{{"role": "user", "content": "food?"}},
                                                  {{"role": "assistant", "content": reply}}]], 512)
print(json.dumps({{"grew_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before,
                  "seconds": time.perf_counter() - started, "tokens": len(examples[0]["input_ids"])}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout)
    assert measured["tokens"] == 512
    # the reply itself (20 MB) is rendered once with the template; tokenizing it whole took GBs
    assert measured["grew_kb"] < 300_000, measured
    assert measured["seconds"] < 10, measured
