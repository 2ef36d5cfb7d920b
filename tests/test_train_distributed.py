"""Several processes, one run, on CPU (gloo): `chattune train --nproc 2` against one process with the same global
batch, torchrun as two "nodes" on this machine, and the shipped FSDP2 config (LoRA and full fine-tuning). Each
launch starts Python twice (~1 min on 2 shared cores)."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from chattune.cli import main

# dropout off: each process draws its own dropout masks, so with dropout the two schedules differ by design
# int8_base=false: rounding to integers is not continuous, so a float difference of 1e-7 from another batch split
# can move an input by a whole int8 step; the int8 base is tested on its own (test_train_fused_lora.py)
SAME = ["--set", "eval_steps=2", "--set", "logging_steps=1", "--set", "learning_rate=0.01", "--set", "precision=fp32",
        "--set", "eval_replies=0", "--set", "max_steps=4", "--set", "max_length=64", "--set", "lora.dropout=0",
        "--set", "int8_base=false"]


FSDP_CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "distributed", "fsdp.yaml")


def _env():
    src = os.path.join(os.path.dirname(__file__), "..", "src")
    return {**os.environ, "PYTHONPATH": os.path.abspath(src), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _assert_same_training(one, many):
    single, distributed = (json.loads((run / "metrics.json").read_text()) for run in (one, many))
    assert distributed["world_size"] == 2 and distributed["global_batch_size"] == single["global_batch_size"] == 4
    assert distributed["tuned"]["loss"] == pytest.approx(single["tuned"]["loss"], abs=1e-5)
    weights = [load_file(run / "adapter" / "adapter_model.safetensors") for run in (one, many)]
    for name, tensor in weights[0].items():
        assert torch.allclose(tensor, weights[1][name], atol=1e-5), name
    # rank 0 alone logged: one TensorBoard file, each step's train loss once
    assert len(list((many / "tensorboard").iterdir())) == 1
    logged = [json.loads(line) for line in (many / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged if "loss" in row] == [1, 2, 3, 4]


@pytest.fixture
def single_process_run(tmp_path, chat_jsonl, tiny_llama):
    run = tmp_path / "one"
    assert main(["train", "--data", chat_jsonl, "--model", tiny_llama, "--output", str(run), *SAME,
                 "--set", "batch_size=4"]) == 0
    return run


def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path, chat_jsonl, tiny_llama,
                                                                 single_process_run):
    many = tmp_path / "ddp"
    command = [sys.executable, "-m", "chattune", "train", "--data", chat_jsonl, "--model", tiny_llama,
               "--output", str(many), *SAME, "--set", "batch_size=2", "--nproc", "2"]
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "global batch: 4" in done.stderr  # (Rich wraps the rest of the line at 80 columns)
    _assert_same_training(single_process_run, many)


def test_two_nodes_of_one_process_each_rendezvous_on_localhost(tmp_path, chat_jsonl, tiny_llama,
                                                               single_process_run):
    many = tmp_path / "nodes"
    port = str(_free_port())
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
         "--node_rank", str(rank), "--master_addr", "127.0.0.1", "--master_port", port,
         "-m", "chattune", "train", "--data", chat_jsonl, "--model", tiny_llama, "--output", str(many), *SAME,
         "--set", "batch_size=2"], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in (0, 1)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
    _assert_same_training(single_process_run, many)


def _launch_fsdp(run, chat_jsonl, tiny_llama, *extra):
    """The shipped configs/distributed/fsdp.yaml, unedited, on 2 CPU processes; checks that it really sharded."""
    command = [sys.executable, "-m", "chattune", "train", "--data", chat_jsonl, "--model", tiny_llama,
               "--output", str(run), *SAME, "--set", "batch_size=2", *extra,
               "--nproc", "2", "--accelerate-config", FSDP_CONFIG]
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # FSDP's sharded checkpoint, one file per rank (a plain DDP run would have written one optimizer.pt instead)
    shards = run / "checkpoints" / "checkpoint-4" / "pytorch_model_fsdp_0"
    assert sorted(path.name for path in shards.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert not (run / "checkpoints" / "checkpoint-4" / "optimizer.pt").exists()


def test_the_fsdp_config_shards_lora_on_cpu_and_trains_like_one_process(tmp_path, chat_jsonl, tiny_llama,
                                                                        single_process_run):
    from peft import AutoPeftModelForCausalLM

    many = tmp_path / "fsdp"
    _launch_fsdp(many, chat_jsonl, tiny_llama)
    _assert_same_training(single_process_run, many)
    # the adapter gathered from the shards loads with plain peft and has learnt (rank 0 scored it the same way)
    metrics = json.loads((many / "metrics.json").read_text())
    assert metrics["tuned"]["loss"] < metrics["base"]["loss"]
    loaded = AutoPeftModelForCausalLM.from_pretrained(many / "adapter")
    assert any(name.endswith("lora_B.default.weight") and parameter.abs().sum() > 0
               for name, parameter in loaded.named_parameters())  # lora_B starts at zero


def test_the_fsdp_config_shards_full_fine_tuning_on_cpu_like_one_process(tmp_path, chat_jsonl, tiny_llama):
    from transformers import AutoModelForCausalLM

    full = ["--set", "method=full", "--set", "learning_rate=0.001"]
    one, many = tmp_path / "one", tmp_path / "fsdp"
    assert main(["train", "--data", chat_jsonl, "--model", tiny_llama, "--output", str(one), *SAME, *full,
                 "--set", "batch_size=4"]) == 0
    _launch_fsdp(many, chat_jsonl, tiny_llama, *full)
    single, distributed = (json.loads((run / "metrics.json").read_text()) for run in (one, many))
    assert distributed["world_size"] == 2
    assert distributed["tuned"]["loss"] == pytest.approx(single["tuned"]["loss"], abs=1e-5)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama).state_dict()
    trained, reference = (AutoModelForCausalLM.from_pretrained(run / "model").state_dict() for run in (many, one))
    assert not torch.equal(trained["model.layers.0.self_attn.q_proj.weight"],
                           base["model.layers.0.self_attn.q_proj.weight"])
    for name, tensor in reference.items():
        assert torch.allclose(tensor, trained[name], atol=1e-5), name


def test_distributed_launch_needs_an_explicit_run_folder(monkeypatch, capsys, chat_jsonl):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "--data", chat_jsonl]) == 2
    assert "give --output RUN" in capsys.readouterr().err


def test_a_deepspeed_config_without_deepspeed_is_one_line(tmp_path, capsys, chat_jsonl):
    if __import__("importlib").util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here")
    config = os.path.join(os.path.dirname(__file__), "..", "configs", "distributed", "deepspeed-zero2.yaml")
    assert main(["train", "--data", chat_jsonl, "--output", str(tmp_path / "run"), "--nproc", "2",
                 "--accelerate-config", config]) == 2
    assert "DeepSpeed is not installed; pip install 'chattune[deepspeed]'" in capsys.readouterr().err
