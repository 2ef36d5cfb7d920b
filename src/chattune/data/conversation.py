"""The one normalised data form: a conversation is a list of turns `{"role": ..., "content": ...}`.

    from chattune.data.conversation import Conversation, append_turn
    conversation: Conversation = []
    append_turn(conversation, "user", "Hi")
    append_turn(conversation, "user", "Anyone there?")   # same role: merged into the turn above
    # [{"role": "user", "content": "Hi Anyone there?"}]
"""

ROLES = ("system", "user", "assistant")
# How one speaker's consecutive messages become one turn (config `consecutive_messages`). Keeping them as separate
# turns is not offered: the chat templates, the loss masks and the held-out reply pairs all expect the roles to
# alternate, and a reply that ends after the first message would never see a turn of its own for the second one
# (`chat` and `serve` ask for one assistant turn per user turn), so the model would learn to end replies early.
MESSAGE_JOINERS = {"newline": "\n", "space": " "}
# The default of config, readers and CLI: the demo trained on newline-joined chitchat ended 69% of its held-out
# replies within 40 tokens, writing fragment after fragment; space-joined, 100% (README Data).
CONSECUTIVE_MESSAGES = "space"
DEFAULT_JOINER = MESSAGE_JOINERS[CONSECUTIVE_MESSAGES]  # what a library call that names no joiner gets

Conversation = list[dict[str, str]]


def append_turn(conversation: Conversation, role: str, content: str, joiner: str = DEFAULT_JOINER) -> None:
    """Add a turn, merging it into the last turn (joined with `joiner`, a MESSAGE_JOINERS value) when the role is
    the same."""
    assert role in ROLES, f"role must be one of {ROLES}, got {role!r}"
    if conversation and conversation[-1]["role"] == role:
        conversation[-1]["content"] += joiner + content
    else:
        conversation.append({"role": role, "content": content})


def with_system(conversation: Conversation, system_prompt: str | None) -> Conversation:
    """`conversation` with `system_prompt` as its first turn, unless it has a system turn already (which wins) or
    there is no prompt. The conversation given is never changed."""
    if system_prompt and (not conversation or conversation[0]["role"] != "system"):
        return [{"role": "system", "content": system_prompt}, *conversation]
    return conversation
