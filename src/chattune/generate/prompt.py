"""A conversation as the prompt token ids a model replies to, formatted exactly as training formatted it.

    prompt = ChatPrompt(tokenizer, system_prompt="be brief")
    ids = prompt.ids([{"role": "user", "content": "hi!"}])     # system turn + chat template + generation prompt
    prompt.decode(reply_ids)                                    # text, special tokens left out
    prompt.stop_ids                                             # ids that end a reply: end-of-turn, EOS

Both backends (hf.py, llamacpp.py) render prompts here, so they see the same tokens. The tokenizer is only read,
never changed (batches are left-padded by hand), so one tokenizer can serve training, eval and chat at once.
"""

from __future__ import annotations

import threading

from chattune.data.chat import end_of_turn_token
from chattune.data.conversation import Conversation, with_system


def stop_ids(tokenizer) -> list[int]:
    """The end-of-turn token the chat template closes replies with, and EOS (models trained elsewhere use either)."""
    return sorted({tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer)), tokenizer.eos_token_id})


class ChatPrompt:
    def __init__(self, tokenizer, system_prompt: str | None = None):
        self.tokenizer, self.system_prompt = tokenizer, system_prompt
        self.stop_ids = stop_ids(tokenizer)
        # A fast tokenizer raises "Already borrowed" when two threads use it at once: the server's event loop
        # encodes prompts while its decode worker decodes replies.
        self._lock = threading.Lock()

    def ids(self, messages: Conversation) -> list[int]:
        """The conversation, with the default system prompt when it has none, ready for the assistant's reply."""
        with self._lock:
            text = self.tokenizer.apply_chat_template(with_system(messages, self.system_prompt), tokenize=False,
                                                      add_generation_prompt=True)
            # the template writes every special token itself; add_special_tokens would add a second BOS
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, token_ids: list[int]) -> str:
        with self._lock:
            return self.tokenizer.decode(token_ids, skip_special_tokens=True)
