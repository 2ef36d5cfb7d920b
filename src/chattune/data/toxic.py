"""Training conversations cut before their first toxic reply (`max_reply_toxicity:`), so a model tuned on real
human chat does not learn its insults.

    kept, report = cut_toxic_replies(train, max_toxicity=0.5)

A model learns the replies it is trained on: the demo's chitchat replies average p(toxic) 0.078 ("sucks",
"stupid", "crap"), against 0.014 for SmolLM2's own replies, and tuning on them raised its toxicity. Each
assistant reply is scored with the evaluation's classifier (`evaluate.safety`, alt-profanity-check); a conversation
keeps the turns before its first reply over the threshold (the context up to it would end on a user turn, which is
trimmed), and goes only if no reply is left. Only the training side is cut: the held-out conversations stay as
they are, so the evaluation still compares against real replies.
"""

from __future__ import annotations

from chattune.data.conversation import Conversation


def cut_toxic_replies(conversations: list[Conversation], max_toxicity: float) -> tuple[list[Conversation], dict]:
    """(conversations cut before their first reply with p(toxic) > max_toxicity, counts for the data report)."""
    from chattune.evaluate.safety import toxicity

    replies = [(i, j) for i, conversation in enumerate(conversations)
               for j, turn in enumerate(conversation) if turn["role"] == "assistant"]
    scores = toxicity([conversations[i][j]["content"] for i, j in replies])
    first_toxic: dict[int, int] = {}
    for (i, j), score in zip(replies, scores):
        if score > max_toxicity and i not in first_toxic:
            first_toxic[i] = j
    kept = []
    for i, conversation in enumerate(conversations):
        if i in first_toxic:
            conversation = conversation[: first_toxic[i]]
            while conversation and conversation[-1]["role"] != "assistant":
                conversation = conversation[:-1]
        if any(turn["role"] == "assistant" for turn in conversation):
            kept.append(conversation)
    report = {"max_reply_toxicity": max_toxicity, "replies_scored": len(replies),
              "replies_over": sum(score > max_toxicity for score in scores), "conversations_cut": len(first_toxic),
              "conversations_dropped": len(conversations) - len(kept)}
    return kept, report
