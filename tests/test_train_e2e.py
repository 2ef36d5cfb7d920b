"""`chattune train` end to end on tiny models: loss goes down, the run folder reloads with plain transformers/peft
and generates, `--resume` continues from the last complete checkpoint."""

import json
import shutil

import pytest
import torch

from chattune.cli import main
from chattune.train.callbacks import COMPLETE_MARKER

# fp32: bf16 kernels only pay off at real model sizes; one test below covers the bf16 path end to end
FAST = ["--set", "batch_size=4", "--set", "eval_steps=5", "--set", "logging_steps=1", "--set", "learning_rate=0.01",
        "--set", "precision=fp32", "--set", "eval_replies=0"]


def run_train(tmp_path, model, data, *extra):
    run = tmp_path / "run"
    assert main(["train", "--data", data, "--model", model, "--output", str(run), *FAST, *extra]) == 0
    return run


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
def test_lora_run_learns_and_reloads_with_plain_peft(request, tmp_path, chat_jsonl, fixture):
    model_dir = request.getfixturevalue(fixture)
    run = run_train(tmp_path, model_dir, chat_jsonl, "--set", "max_steps=30")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["tuned"]["loss"] < metrics["base"]["loss"] - 0.5 and metrics["precision"] == "fp32"
    import yaml

    from chattune.evaluate.report import run_summary

    summary = dict(run_summary(yaml.safe_load((run / "config.yaml").read_text()), metrics, [],
                               json.loads((run / "data_report.json").read_text())))
    assert summary["precision"] == "fp32"  # the report's run summary says what the run trained in
    assert metrics["tuned"]["perplexity"] == pytest.approx(torch.tensor(metrics["tuned"]["loss"]).exp().item())
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_losses = [row["loss"] for row in logged if "loss" in row]
    assert train_losses[-1] < train_losses[0]
    assert any("eval_loss" in row for row in logged)
    assert list((run / "tensorboard").iterdir())
    for name in ("config.yaml", "data_report.json"):
        assert (run / name).is_file()

    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    model = AutoPeftModelForCausalLM.from_pretrained(run / "adapter")
    tokenizer = AutoTokenizer.from_pretrained(run / "adapter")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hello how are you 3"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    reply = tokenizer.decode(output[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert reply.strip().startswith("i am")  # the learned reply, not random tokens


def test_full_fine_tune_with_merge_writes_plain_model(tmp_path, chat_jsonl, tiny_llama):
    # precision=auto: bf16 on this machine class (AVX512-BF16), so the bf16 path runs end to end somewhere
    run = run_train(tmp_path, tiny_llama, chat_jsonl, "--set", "max_steps=6", "--set", "method=full",
                    "--set", "learning_rate=0.002", "--set", "precision=auto")
    assert not (run / "adapter").exists()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run / "model")
    assert sum(p.numel() for p in model.parameters()) > 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["tuned"]["loss"] < metrics["base"]["loss"]
    from chattune.precision import bf16_supported

    assert metrics["precision"] == ("bf16" if bf16_supported(torch.device("cpu")) else "fp32")  # what auto chose


def test_lora_merge_gives_same_logits_as_adapter(tmp_path, chat_jsonl, tiny_llama):
    run = run_train(tmp_path, tiny_llama, chat_jsonl, "--set", "max_steps=3", "--merge")
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[5, 6, 7, 8, 9]])
    adapter = AutoPeftModelForCausalLM.from_pretrained(run / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(run / "model").eval()
    with torch.no_grad():
        assert torch.allclose(adapter(ids).logits, merged(ids).logits, atol=1e-4)


def test_resume_continues_from_last_complete_checkpoint(tmp_path, chat_jsonl, tiny_llama):
    run = run_train(tmp_path, tiny_llama, chat_jsonl, "--set", "max_steps=10",
                    "--set", "save_total_limit=5", "--set", "early_stopping_patience=0")
    checkpoints = run / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-10", "checkpoint-5"]
    # Simulate a run interrupted at step 10 while its checkpoint was being written.
    shutil.rmtree(run / "adapter")
    (checkpoints / "checkpoint-10" / COMPLETE_MARKER).unlink()
    (run / "metrics.jsonl").write_text("")

    assert main(["train", "--output", str(run), "--resume", "--set", "max_steps=15"]) == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert min(steps) == 6 and max(steps) == 15  # picked up after step 5, not from scratch
    assert (checkpoints / "checkpoint-15" / COMPLETE_MARKER).is_file()
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


def test_existing_run_is_not_overwritten(tmp_path, chat_jsonl, tiny_llama, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("precious")
    assert main(["train", "--data", chat_jsonl, "--model", tiny_llama, "--output", str(run)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert (run / "keep.txt").read_text() == "precious"


def test_resume_without_checkpoint_is_an_input_error(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["train", "--output", str(tmp_path / "run"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_run_outputs_have_the_usual_permissions(tmp_path, chat_jsonl, tiny_llama):
    import os
    import stat

    run = run_train(tmp_path, tiny_llama, chat_jsonl, "--set", "max_steps=2")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((run / "adapter").stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((run / "metrics.json").stat().st_mode) == 0o666 & ~umask


def test_the_seed_makes_a_run_reproducible(tmp_path, chat_jsonl, tiny_llama):
    """The adapter initialisation, dropout and data order all come from `seed`: the same config trains to the same
    numbers, whatever the global RNG was doing before (here: drawn from in between)."""
    losses = []
    for name in ("first", "second"):
        torch.rand(7)  # moves the global RNG: an unseeded adapter would start elsewhere
        run = tmp_path / name
        assert main(["train", "--data", chat_jsonl, "--model", tiny_llama, "--output", str(run), *FAST,
                     "--set", "max_steps=4", "--set", "lora.dropout=0.1"]) == 0
        losses.append(json.loads((run / "metrics.json").read_text())["tuned"]["loss"])
    assert losses[0] == losses[1]


def test_report_to_none_writes_no_tensorboard_and_a_missing_tracker_is_one_line(tmp_path, chat_jsonl, tiny_llama,
                                                                               capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", chat_jsonl, "--model", tiny_llama, "--output", str(run), *FAST,
                 "--set", "max_steps=2", "--set", "report_to=none"]) == 0
    assert not (run / "tensorboard").exists()
    assert (run / "metrics.jsonl").read_text()  # our own log does not depend on report_to
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        assert main(["train", "--data", chat_jsonl, "--model", tiny_llama, "--output", str(tmp_path / "w"), *FAST,
                     "--set", "max_steps=2", "--set", "report_to=[tensorboard, wandb]"]) == 2
        assert "report_to=wandb: the wandb package is not installed; pip install wandb" in capsys.readouterr().err


def test_report_to_names_are_checked_when_the_config_loads():
    from chattune.config import load_config
    from chattune.errors import InputError

    assert load_config(None, ["report_to=mlflow"]).report_to == ["mlflow"]
    with pytest.raises(InputError, match="report_to"):
        load_config(None, ["report_to=[none, wandb]"])
    with pytest.raises(InputError, match="report_to"):
        load_config(None, ["report_to=comet"])
