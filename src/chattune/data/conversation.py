"""The one normalised data form: a conversation is a list of turns `{"role": ..., "content": ...}`.

    from chattune.data.conversation import Conversation, append_turn
    conversation: Conversation = []
    append_turn(conversation, "user", "Hi")
    append_turn(conversation, "user", "Anyone there?")   # same role: merged into the turn above
    # [{"role": "user", "content": "Hi\nAnyone there?"}]
"""

ROLES = ("system", "user", "assistant")

Conversation = list[dict[str, str]]


def append_turn(conversation: Conversation, role: str, content: str) -> None:
    """Add a turn, merging it into the last turn (joined with a newline) when the role is the same."""
    assert role in ROLES, f"role must be one of {ROLES}, got {role!r}"
    if conversation and conversation[-1]["role"] == role:
        conversation[-1]["content"] += "\n" + content
    else:
        conversation.append({"role": role, "content": content})
