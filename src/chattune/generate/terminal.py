"""Interactive multi-turn chat in the terminal, streaming the reply as it is generated.

    chattune chat runs/demo [--backend llamacpp]

Commands: /reset starts a new conversation, /system TEXT sets the system prompt (and resets), /quit leaves.
`--system` and `/system` replace the run's system prompt; without either the backend applies the run's own.
"""

from __future__ import annotations

from rich.console import Console

from chattune.data.conversation import with_system
from chattune.generate.backend import DecodeBackend
from chattune.generate.sampling import Sampling
from chattune.generate.text import ReplyText

HELP = "commands: /reset  /system TEXT  /quit"


def stream_reply(backend: DecodeBackend, messages: list[dict], sampling: Sampling, console: Console) -> str:
    reply = ReplyText(backend.decode, stop=[])

    def show(token_id: int) -> bool:
        console.print(reply.add(token_id), end="", markup=False, highlight=False)
        return True

    backend.generate(backend.prompt_ids(messages), sampling, show)
    console.print(reply.finish(), markup=False, highlight=False)
    return reply.text


def chat_loop(backend: DecodeBackend, sampling: Sampling, console: Console, system_prompt: str | None = None,
              read=input) -> None:
    messages: list[dict] = []
    console.print(f"[dim]{HELP}[/dim]")
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
        if line == "/reset" or line.startswith("/system"):
            if line.startswith("/system"):
                system_prompt = line.removeprefix("/system").strip() or None
                console.print("[dim]system prompt set[/dim]")
            messages = []
            console.print("[dim]new conversation[/dim]")
            continue
        if line.startswith("/"):
            console.print(f"[dim]unknown command; {HELP}[/dim]")
            continue
        messages.append({"role": "user", "content": line})
        console.print("bot> ", end="")
        reply = stream_reply(backend, with_system(messages, system_prompt), sampling, console)
        messages.append({"role": "assistant", "content": reply})
