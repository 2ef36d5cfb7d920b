"""An Ollama model folder: the run's GGUF plus a Modelfile with its chat template, stop tokens, sampling and system
prompt.

    text = modelfile("demo-q8_0.gguf", tokenizer, stop_ids, system_prompt="be brief", context_tokens=4096)
    # then, in the folder: ollama create demo -f Modelfile && ollama run demo

Ollama does not run Jinja: a Modelfile's TEMPLATE is a Go template over `.Messages`. The run's Jinja template is
matched to one of three families by rendering a probe conversation with it and with the family's own Python
rendering (`RENDERINGS`); the family's Go template writes the same text (tests/test_export_ollama.py renders the Go
template and compares):
- chatml: SmolLM/SmolLM2 and the tiny test models: `<|im_start|>{role}\n{content}<|im_end|>\n`
- llama3: `<|begin_of_text|>`, then `<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>` per turn
- fallback: chattune's template for models without one (GPT-2): `User: ...\nAssistant: ...<eos>\n`
A template that adds a system prompt to conversations without one (SmolLM2: "You are a helpful AI assistant named
SmolLM...") gets it as SYSTEM, which Ollama puts first in exactly those conversations, as the Jinja template does.
"""

from __future__ import annotations

from collections.abc import Callable

from chattune.data.chat import render
from chattune.data.conversation import Conversation
from chattune.errors import InputError
from chattune.generate.sampling import Sampling

_MARK = "chattune-probe-system"
PROBE = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi! how are you?"},
         {"role": "assistant", "content": "fine, thanks. and you?"}, {"role": "user", "content": "what do you like?"}]


def _chatml(messages: Conversation, tokenizer) -> str:
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


def _llama3(messages: Conversation, tokenizer) -> str:
    turns = "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>" for m in messages)
    return tokenizer.bos_token + turns + "<|start_header_id|>assistant<|end_header_id|>\n\n"


def _fallback(messages: Conversation, tokenizer) -> str:
    turns = "".join(f"{m['role'].capitalize()}: {m['content']}{tokenizer.eos_token if m['role'] == 'assistant' else ''}"
                    "\n" for m in messages)
    return turns + "Assistant:"


# family -> the text its chat template renders for a conversation, with the prompt for the assistant's reply
RENDERINGS: dict[str, Callable[[Conversation, object], str]] = {"chatml": _chatml, "llama3": _llama3,
                                                                 "fallback": _fallback}


def go_template(family: str, tokenizer) -> str:
    """The family's template in Ollama's Go-template syntax (the same text as RENDERINGS[family])."""
    if family == "chatml":
        return ("{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
                "<|im_start|>assistant\n")
    if family == "llama3":
        return (tokenizer.bos_token + "{{ range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
                "{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n")
    return ('{{ range .Messages }}{{ if eq .Role "user" }}User{{ else if eq .Role "assistant" }}Assistant{{ else }}'
            'System{{ end }}: {{ .Content }}{{ if eq .Role "assistant" }}' + tokenizer.eos_token + "{{ end }}\n"
            "{{ end }}Assistant:")


def template_family(tokenizer) -> tuple[str, str | None]:
    """(family, the system prompt the template adds to conversations without one, or None)."""
    text = render(tokenizer, PROBE, add_generation_prompt=True)
    for family, rendering in RENDERINGS.items():
        if rendering(PROBE, tokenizer) == text:
            return family, _default_system(tokenizer, rendering)
    raise InputError("--format ollama: the run's chat template is none of those chattune translates for Ollama "
                     "(ChatML/SmolLM, Llama 3, chattune's fallback); use --format gguf and write a Modelfile by hand")


def _default_system(tokenizer, rendering) -> str | None:
    bare = PROBE[1:]
    text = render(tokenizer, bare, add_generation_prompt=True)
    if text == rendering(bare, tokenizer):
        return None
    before, _, after = rendering([{"role": "system", "content": _MARK}, *bare], tokenizer).partition(_MARK)
    default = text[len(before) : len(text) - len(after)]
    if not (text.startswith(before) and text.endswith(after)) or \
            rendering([{"role": "system", "content": default}, *bare], tokenizer) != text:
        raise InputError("--format ollama: the run's chat template changes conversations without a system turn in a "
                         "way a Modelfile cannot express; use --format gguf and write a Modelfile by hand")
    return default


def modelfile(gguf_name: str, tokenizer, stop_ids: list[int], system_prompt: str | None, context_tokens: int,
              sampling: Sampling | None = None) -> str:
    """The Modelfile text: FROM the GGUF beside it, TEMPLATE, SYSTEM, and PARAMETER lines for the stop tokens and
    the run's decoding defaults (`sampling`, else chattune's): its repetition penalty over the whole context as
    chattune applies it, and no min_p, which Ollama would otherwise add. Ollama has no no-repeat n-gram rule; a
    comment says so when the run uses one."""
    family, default_system = template_family(tokenizer)
    system = system_prompt or default_system  # the run's prompt replaces the template's default, as in training
    if system and '"""' in system:
        raise InputError('config: system_prompt contains """, which a Modelfile cannot quote; rephrase it')
    sampling = sampling or Sampling()
    lines = ["# Ollama model: ollama create NAME -f Modelfile && ollama run NAME", f"FROM ./{gguf_name}",
             f'TEMPLATE """{go_template(family, tokenizer)}"""']
    if system:
        lines.append(f'SYSTEM """{system}"""')
    lines += [f'PARAMETER stop "{token}"' for token in tokenizer.convert_ids_to_tokens(stop_ids)]
    lines += [f"PARAMETER temperature {sampling.temperature}", f"PARAMETER top_p {sampling.top_p}",
              f"PARAMETER top_k {sampling.top_k}", "PARAMETER min_p 0",
              f"PARAMETER repeat_penalty {sampling.repetition_penalty:g}", "PARAMETER repeat_last_n -1",
              f"PARAMETER num_predict {sampling.max_new_tokens}", f"PARAMETER num_ctx {context_tokens}"]
    if sampling.no_repeat_ngram_size:
        lines.append(f"# chattune also bans repeating any {sampling.no_repeat_ngram_size}-token span "
                     "(no_repeat_ngram_size), which Ollama cannot: replies here may repeat themselves more")
    return "\n".join(lines) + "\n"
