"""Reply text from token ids: streamed pieces add up to the whole reply, and stop strings cut it."""

from chattune.generate.text import ReplyText


def test_reply_pieces_add_up_and_stop_strings_cut(tiny_llama):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    text = "  😀 héllo good morning\nUser: hi there"
    reply = ReplyText(lambda ids: tokenizer.decode(ids, skip_special_tokens=True), stop=["\nUser:"])
    pieces = [reply.add(token_id) for token_id in tokenizer(text, add_special_tokens=False)["input_ids"]]
    pieces.append(reply.finish())
    assert reply.stopped and "".join(pieces) == reply.text == "😀 héllo good morning"
    assert not any("\ufffd" in piece for piece in pieces)  # half an emoji is held back, never sent
    assert sum(bool(piece) for piece in pieces) > 3

    plain = ReplyText(lambda ids: tokenizer.decode(ids), stop=[])
    pieces = [plain.add(t) for t in tokenizer(" i am fine \n", add_special_tokens=False)["input_ids"]]
    assert "".join(pieces) + plain.finish() == plain.text == "i am fine" and not plain.stopped
