"""`chattune data inspect`: what a dataset looks like once read, cleaned and tokenized for a model.

    chattune data inspect chats.csv --model gpt2
"""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from chattune.data.chat import marked_example, token_stats, tokenize_conversations
from chattune.data.load import load_conversations


def inspect_data(source: str, model: str, max_length: int, **reader_options) -> dict:
    from chattune.models import load_tokenizer

    conversations, report = load_conversations(source, **reader_options)
    tokenizer = load_tokenizer(model)
    examples, cut = tokenize_conversations(tokenizer, conversations, max_length=max_length)
    result = report.to_dict()
    result["model"] = model
    result["tokens"] = token_stats(examples) if examples else None
    result["no_reply_within_max_length"] = cut
    result["example"] = marked_example(tokenizer, examples[0]) if examples else []
    return result


def print_inspection(result: dict, console: Console) -> None:
    console.print(f"[bold]{result['source']}[/bold]  format: {result['format']}")
    console.print(f"conversations: {result['conversations']} kept of {result['conversations_read']} read, "
                  f"{result['turns']} turns")
    for title in ("dropped", "changed"):
        if result[title]:
            console.print(f"{title}: " + ", ".join(f"{why} {count}" for why, count in result[title].items()))
    for warning in result["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    stats = result["tokens"]
    if stats:
        console.print(f"tokens per conversation ({result['model']}): min {stats['min']}  mean {stats['mean']}  "
                      f"p50 {stats['p50']}  p95 {stats['p95']}  max {stats['max']}; "
                      f"trained tokens {stats['trained_total']} of {stats['total']}")
    if result["no_reply_within_max_length"]:
        console.print(f"{result['no_reply_within_max_length']} conversations have no reply within max_length")
    console.print("\nfirst conversation as the model sees it ([green]green[/green] = trained tokens):")
    example = Text()
    for piece, trained in result["example"]:
        example.append(piece, style="bold green" if trained else "dim")
    console.print(example)
