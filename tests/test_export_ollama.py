"""`chattune export --format ollama`: the Modelfile's Go template renders the same prompt text as the run's Jinja chat
template (rendered here by a small Go-template renderer), and carries the stops, sampling and system prompt."""

import json
import re

import pytest
from generate_helpers import lora_run

from chattune.cli import main
from chattune.data.chat import render
from chattune.data.conversation import with_system
from chattune.errors import InputError
from chattune.export.ollama import modelfile, template_family
from chattune.generate.prompt import stop_ids
from chattune.generate.sampling import run_sampling
from chattune.models import load_tokenizer

THREE_TURNS = [{"role": "user", "content": "hello how are you"}, {"role": "assistant", "content": "i am fine thanks"},
               {"role": "user", "content": "what is your favourite food"}]
SMOLLM2_TEMPLATE = (  # SmolLM2-Instruct's own template: a default system prompt when the conversation has none
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3_TEMPLATE = (  # Meta-Llama-3-Instruct's template
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

# --- enough of Go's text/template for Ollama chat templates -------------------------------------------------------
ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def _lex(template: str) -> list[tuple[str, str]]:
    """Text and actions, with `{{-` / `-}}` trimming the white space beside them, as Go does."""
    items, position, trim_next = [], 0, False
    for match in ACTION.finditer(template):
        text = template[position : match.start()]
        text = text.lstrip() if trim_next else text
        items += [("text", text.rstrip() if match.group(1) else text), ("action", match.group(2))]
        trim_next, position = bool(match.group(3)), match.end()
    tail = template[position:]
    return items + [("text", tail.lstrip() if trim_next else tail)]


def _parse(items, index=0):
    """(nodes, next index, the `end`/`else ...` action that closed this block, or None at the end)."""
    nodes = []
    while index < len(items):
        kind, value = items[index]
        index += 1
        if kind == "text":
            nodes.append(("text", value))
        elif value == "end" or value.startswith("else"):
            return nodes, index, value
        elif value == "range .Messages":
            body, index, closer = _parse(items, index)
            assert closer == "end"
            nodes.append(("range", body))
        elif value.startswith("if "):
            branches, condition = [], value[3:]
            while True:
                body, index, closer = _parse(items, index)
                branches.append((condition, body))
                if closer == "end":
                    break
                condition = closer[len("else if "):] if closer.startswith("else if ") else "true"
            nodes.append(("if", branches))
        else:
            assert value in (".Role", ".Content"), value
            nodes.append(("field", value))
    return nodes, index, None


def _holds(condition: str, message: dict) -> bool:
    if condition == "true":
        return True
    match = re.fullmatch(r'eq \.Role "(\w+)"', condition)
    assert match, condition
    return message["role"] == match.group(1)


def _evaluate(nodes, messages: list[dict], message: dict | None = None) -> str:
    out = []
    for kind, value in nodes:
        if kind == "text":
            out.append(value)
        elif kind == "field":
            out.append(message[value[1:].lower()])
        elif kind == "range":
            out += [_evaluate(value, messages, each) for each in messages]
        else:
            out.append(next((_evaluate(body, messages, message) for condition, body in value
                             if _holds(condition, message)), ""))
    return "".join(out)


def go_render(template: str, messages: list[dict]) -> str:
    nodes, _, closer = _parse(_lex(template))
    assert closer is None
    return _evaluate(nodes, messages)


def test_the_go_renderer_follows_go_semantics():
    template = '{{- range .Messages }}\n  {{ if eq .Role "user" }}U{{ else if eq .Role "system" }}S{{ else }}A' \
               '{{ end }}={{ .Content }}|\n{{- end }}'
    assert go_render(template, THREE_TURNS[:2]) == "\n  U=hello how are you|\n  A=i am fine thanks|"


# --- the Modelfile ------------------------------------------------------------------------------------------------

def _parse_modelfile(text: str) -> dict:
    template = re.search(r'^TEMPLATE """(.*?)"""$', text, re.S | re.M).group(1)
    system = re.search(r'^SYSTEM """(.*?)"""$', text, re.S | re.M)
    parameters = [line.split(" ", 2)[1:] for line in text.splitlines() if line.startswith("PARAMETER ")]
    return {"from": re.search(r"^FROM (.+)$", text, re.M).group(1), "template": template,
            "system": system.group(1) if system else None, "parameters": parameters}


def _ollama_prompt(parsed: dict, messages: list[dict]) -> str:
    """What Ollama renders: the Modelfile's SYSTEM goes first in conversations that have no system message."""
    if parsed["system"] and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": parsed["system"]}, *messages]
    return go_render(parsed["template"], messages)


def _tokenizer(tiny_llama, tiny_gpt2, family: str):
    if family == "gpt2-fallback":
        return load_tokenizer(tiny_gpt2)
    tokenizer = load_tokenizer(tiny_llama)
    if family == "smollm2":
        tokenizer.chat_template = SMOLLM2_TEMPLATE
    elif family == "llama3":
        tokenizer.add_special_tokens({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                                      "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>"]})
        tokenizer.chat_template = LLAMA3_TEMPLATE
    return tokenizer


@pytest.mark.parametrize("family", ["chatml", "smollm2", "llama3", "gpt2-fallback"])
@pytest.mark.parametrize("run_system", [None, "be brief"])
def test_modelfile_template_renders_the_jinja_templates_text(tiny_llama, tiny_gpt2, family, run_system):
    tokenizer = _tokenizer(tiny_llama, tiny_gpt2, family)
    parsed = _parse_modelfile(modelfile("m.gguf", tokenizer, stop_ids(tokenizer), run_system, 4096))
    for messages in (THREE_TURNS, [{"role": "system", "content": "answer in French"}, *THREE_TURNS]):
        # chattune adds the run's system prompt to conversations without one, then applies the Jinja template
        expected = render(tokenizer, with_system(messages, run_system), add_generation_prompt=True)
        assert _ollama_prompt(parsed, messages) == expected


def test_template_families_and_the_default_system_prompt(tiny_llama, tiny_gpt2):
    assert template_family(_tokenizer(tiny_llama, tiny_gpt2, "chatml")) == ("chatml", None)
    assert template_family(_tokenizer(tiny_llama, tiny_gpt2, "smollm2")) == (
        "chatml", "You are a helpful AI assistant named SmolLM, trained by Hugging Face")
    assert template_family(_tokenizer(tiny_llama, tiny_gpt2, "llama3")) == ("llama3", None)
    assert template_family(_tokenizer(tiny_llama, tiny_gpt2, "gpt2-fallback")) == ("fallback", None)


def test_a_template_of_another_family_is_refused(tiny_llama):
    tokenizer = load_tokenizer(tiny_llama)
    tokenizer.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}<|im_end|>{% endfor %}"
    with pytest.raises(InputError, match="--format gguf and write a Modelfile by hand"):
        template_family(tokenizer)


def test_export_ollama_writes_the_gguf_and_a_modelfile_with_stops_and_sampling(tmp_path_factory, tiny_llama,
                                                                              tmp_path, capsys):
    pytest.importorskip("llama_cpp", reason="the GGUF check runs in llama.cpp: pip install '.[llamacpp]'")
    run, out = lora_run(tmp_path_factory, tiny_llama), tmp_path / "ollama"
    assert main(["export", str(run), "--format", "ollama", "--quant", "f16", "--out", str(out)]) == 0
    parsed = _parse_modelfile((out / "Modelfile").read_text())
    assert parsed["from"] == "./run-f16.gguf" and (out / "run-f16.gguf").is_file()
    default = run_sampling(run)  # the run's generation_config.json
    assert parsed["parameters"] == [["stop", '"<|im_end|>"'], ["temperature", str(default.temperature)],
                                    ["top_p", str(default.top_p)], ["top_k", str(default.top_k)], ["min_p", "0"],
                                    ["repeat_penalty", f"{default.repetition_penalty:g}"], ["repeat_last_n", "-1"],
                                    ["num_predict", str(default.max_new_tokens)], ["num_ctx", "512"]]
    tokenizer = load_tokenizer(str(run / "adapter"))
    assert _ollama_prompt(parsed, THREE_TURNS) == render(tokenizer, THREE_TURNS, add_generation_prompt=True)
    assert json.loads((out / "export.json").read_text())["verification"]["passed"]
    assert "ollama create run -f Modelfile" in capsys.readouterr().out
    assert "ollama create run -f Modelfile" in (out / "README.md").read_text()
