"""Interactive multi-turn chat in the terminal, streaming the reply as it is generated.

    chattune chat runs/demo

Commands: /reset starts a new conversation, /system TEXT sets the system prompt (and resets), /quit leaves.
"""

from __future__ import annotations

from rich.console import Console

from chattune.inference import Chatbot, Sampling

HELP = "commands: /reset  /system TEXT  /quit"


def chat_loop(chatbot: Chatbot, sampling: Sampling, console: Console, read=input) -> None:
    messages: list[dict] = []
    console.print(f"[dim]chatting with {chatbot.model.name_or_path}; {HELP}[/dim]")
    while True:
        try:
            line = read("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return
        if line == "/reset":
            messages = []
            console.print("[dim]new conversation[/dim]")
            continue
        if line.startswith("/system"):
            chatbot.system_prompt = line.removeprefix("/system").strip() or None
            messages = []
            console.print("[dim]system prompt set; new conversation[/dim]")
            continue
        if line.startswith("/"):
            console.print(f"[dim]unknown command; {HELP}[/dim]")
            continue
        messages.append({"role": "user", "content": line})
        console.print("bot> ", end="")
        pieces = []
        for piece in chatbot.stream(messages, sampling):
            pieces.append(piece)
            console.print(piece, end="", markup=False, highlight=False)
        console.print()
        messages.append({"role": "assistant", "content": "".join(pieces).strip()})
