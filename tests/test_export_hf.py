"""`chattune export --format hf`: a folder plain transformers loads, with the run's greedy replies, chattune's sampling
in generation_config.json, and a model card whose metadata parses and whose numbers are the run's."""

import json

import pytest
import torch
import yaml
from generate_helpers import lora_run
from transformers import AutoModelForCausalLM, AutoTokenizer

from chattune.cli import main
from chattune.evaluate.report import number
from chattune.export.card import base_model
from chattune.export.hf import write_hf_folder
from chattune.generate.hf import load_hf_backend
from chattune.generate.sampling import Sampling

ROWS = [{"messages": [
    {"role": "user", "content": f"hello how are you {index}"},
    {"role": "assistant", "content": "i am fine thanks and you"},
    {"role": "user", "content": "what is your favourite food"},
    {"role": "assistant", "content": "i like pizza and pasta a lot"},
]} for index in range(40)]
MESSAGES = [{"role": "user", "content": "hello how are you 3"}]


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory, tiny_llama):
    """A tiny LoRA run whose training ended with the base-vs-tuned evaluation (eval.json)."""
    folder = tmp_path_factory.mktemp("export-hf")
    data = folder / "chats.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS), encoding="utf-8")
    run = folder / "run"
    assert main(["train", "--data", str(data), "--model", tiny_llama, "--output", str(run), "--set", "max_steps=30",
                 "--set", "batch_size=4", "--set", "learning_rate=0.01", "--set", "eval_replies=4",
                 "--set", "eval_max_new_tokens=8", "--set", "precision=fp32",
                 "--set", "system_prompt=be brief"]) == 0
    return run


@pytest.fixture(scope="module")
def exported(evaluated_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf-export") / "hf"
    assert main(["export", str(evaluated_run), "--format", "hf", "--out", str(out)]) == 0
    return out


def _greedy_with_generate(folder, messages, tokens: int) -> tuple[list[int], list[int]]:
    """(prompt ids, greedy reply ids) with nothing but transformers, as a user of the folder would do it."""
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**inputs, do_sample=False, max_new_tokens=tokens)
    prompt = inputs["input_ids"][0].tolist()
    return prompt, output[0, len(prompt):].tolist()


def _run_greedy(run, messages, tokens: int) -> tuple[list[int], list[int]]:
    backend = load_hf_backend(str(run))
    prompt, reply = backend.prompt_ids(messages), []
    backend.generate(prompt, Sampling(temperature=0, max_new_tokens=tokens), lambda token: reply.append(token) or True)
    return prompt, reply


def test_hf_export_loads_with_plain_transformers_and_replies_like_the_run(evaluated_run, exported):
    messages = [{"role": "system", "content": "be brief"}, *MESSAGES]  # the run's system prompt, as chat adds it
    prompt, reply = _greedy_with_generate(exported, messages, 12)
    assert (prompt, reply) == _run_greedy(evaluated_run, MESSAGES, 12)
    assert AutoTokenizer.from_pretrained(exported).decode(reply, skip_special_tokens=True).startswith("i ")
    weights = AutoModelForCausalLM.from_pretrained(exported).state_dict()
    assert not any("lora" in name for name in weights)  # merged: no peft needed
    check = json.loads((exported / "export.json").read_text())["verification"]
    assert check["target"] == "transformers" and check["passed"] and check["share"] == 1.0 and check["prompts"] == 3


def test_generation_config_carries_chattunes_sampling_and_stop_ids(evaluated_run, exported):
    config = json.loads((exported / "generation_config.json").read_text())
    default = Sampling()
    assert config["do_sample"] is True
    assert (config["temperature"], config["top_p"], config["top_k"]) == (default.temperature, default.top_p,
                                                                          default.top_k)
    assert (config["repetition_penalty"], config["no_repeat_ngram_size"]) == (default.repetition_penalty,
                                                                            default.no_repeat_ngram_size)
    assert config["eos_token_id"] == load_hf_backend(str(evaluated_run)).stop_ids


def test_model_card_metadata_parses_and_its_numbers_are_the_runs(evaluated_run, exported):
    _, front, body = (exported / "README.md").read_text().split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert {"chattune", "lora", "conversational"} <= set(meta["tags"])
    assert "base_model" not in meta and "license" not in meta  # a local folder: no Hub id, no card naming a licence
    evaluation = json.loads((evaluated_run / "eval.json").read_text())
    table = {line.split("|")[1].strip(): [cell.strip() for cell in line.strip().strip("|").split("|")]
             for line in body.splitlines() if line.startswith("| ")}
    for row in evaluation["metrics"]:
        cells = table[row["label"]]
        assert cells[1:4] == [number(row["base"]), number(row["tuned"]), number(row["delta"], True)], row["key"]
        assert cells[4] == f"[{number(row['ci'][0], True)}, {number(row['ci'][1], True)}]"
    report = json.loads((evaluated_run / "data_report.json").read_text())
    assert f"{report['train_conversations']:,} train / {report['eval_conversations']:,} held-out" in body
    assert "be brief" in body and "## Intended use and limits" in body and "## Export check" in body
    assert f'AutoModelForCausalLM.from_pretrained("{exported}")' in body  # where this export lies


def test_base_model_id_and_licence_are_read_without_the_network(tiny_llama):
    assert base_model("smollm2-135m-instruct") == ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")
    assert base_model(tiny_llama) == (None, None)
    assert base_model("someone/not-in-the-cache") == ("someone/not-in-the-cache", None)


def test_fallback_template_gpt2_run_exports_to_hf(tmp_path_factory, tiny_gpt2, tmp_path):
    run = lora_run(tmp_path_factory, tiny_gpt2)
    out = tmp_path / "hf"
    assert main(["export", str(run), "--format", "hf", "--out", str(out)]) == 0
    assert "Assistant:" in AutoTokenizer.from_pretrained(out).chat_template  # the fallback template travels along
    assert _greedy_with_generate(out, MESSAGES, 10) == _run_greedy(run, MESSAGES, 10)


def test_a_failed_check_exits_1_and_leaves_nothing(evaluated_run, tmp_path, monkeypatch, capsys):
    def write_broken(model, tokenizer, stop_ids, folder):  # an exporter bug: the weights on disk are not the run's
        write_hf_folder(model, tokenizer, stop_ids, folder)
        broken = AutoModelForCausalLM.from_pretrained(folder)
        with torch.no_grad():
            for parameter in broken.parameters():
                parameter.add_(torch.randn_like(parameter))
        broken.save_pretrained(folder)

    monkeypatch.setattr("chattune.export.run.write_hf_folder", write_broken)
    out = tmp_path / "hf"
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(evaluated_run), "--format", "hf", "--out", str(out)])
    assert exit_info.value.code == 1
    assert "export verification failed" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flags, message", [
    (["--format", "hf", "--quant", "q8_0"], "--quant applies to --format gguf"),
    (["--format", "gguf", "--dry-run"], "--dry-run goes with --push"),
    (["--format", "hf", "--push", "no-namespace"], "give the namespace"),
])
def test_bad_flags_are_one_line_and_exit_2(evaluated_run, flags, message, capsys):
    assert main(["export", str(evaluated_run), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_out_that_is_not_an_export_is_never_replaced(evaluated_run, capsys):
    before = sorted(path.name for path in evaluated_run.iterdir())
    assert main(["export", str(evaluated_run), "--format", "hf", "--out", str(evaluated_run)]) == 2
    assert "is not an earlier export" in capsys.readouterr().err
    assert sorted(path.name for path in evaluated_run.iterdir()) == before
