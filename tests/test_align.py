"""`chattune align` on a tiny LoRA chat run: GRPO, RLOO and DPO each train a few steps, the adapter continues and
reloads with plain peft, DPO reads the web chat's SQLite store, bad preference data
exits 2. Rewards are checked on fixed strings."""

from __future__ import annotations

import json
import math

import pytest
import torch

from chattune.cli import main

FAST = ["--set", "batch_size=4", "--set", "num_generations=2", "--set", "max_new_tokens=8", "--set", "max_steps=2",
        "--set", "learning_rate=0.01", "--set", "precision=fp32", "--set", "eval_prompts=0"]


@pytest.fixture(scope="module")
def parent(tmp_path_factory, tiny_llama):
    """A LoRA chat run of the tiny Llama on two replies, 40 steps."""
    rows = [{"messages": [{"role": "user", "content": f"hello how are you {index}"},
                          {"role": "assistant", "content": "i am fine thanks and you"},
                          {"role": "user", "content": "what is your favourite food"},
                          {"role": "assistant", "content": "i like pizza and pasta a lot"}]} for index in range(40)]
    folder = tmp_path_factory.mktemp("align")
    data = folder / "chats.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    run = folder / "sft"
    assert main(["train", "--data", str(data), "--model", tiny_llama, "--output", str(run), "--set", "max_steps=40",
                 "--set", "batch_size=4", "--set", "learning_rate=0.02", "--set", "precision=fp32",
                 "--set", "eval_replies=0", "--set", "eval_steps=30", "--set", "lora.dropout=0.0"]) == 0
    return run


def adapter_weights(run) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "adapter" / "adapter_model.safetensors")


def test_rewards_rank_fixed_replies():
    from chattune.evaluate.relevance import SentenceEncoder
    from chattune.train.rewards import ending_reward, length_reward, relevance_reward, toxicity_reward

    clean, toxic = toxicity_reward(["thanks, have a lovely day", "shut up you stupid idiot"])
    assert clean > 0.8 > 0.2 > toxic
    context = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "what should i cook for dinner?"}]
    on_topic, off_topic, empty = relevance_reward(SentenceEncoder.load(), [context] * 3,
                                                  ["you could cook pasta with tomatoes", "the stock market fell", ""])
    assert on_topic > 0.3 > off_topic and empty == 0.0
    assert ending_reward([[5, 9], [5, 6], [5] * 9], stop_ids=[9], max_new_tokens=8) == [1.0, 0.0, 0.0]
    assert length_reward(["one two three", "", "a " * 80], 3, 40) == [0.0, -1.0, -1.0]


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_rl_continues_the_adapter_and_logs_rewards_and_kl(parent, tmp_path, method, capsys):
    run = tmp_path / method
    assert main(["align", str(parent), "--method", method, "--output", str(run), *FAST,
                 "--set", "rewards={toxicity: 1.0, ending: 0.5, length: 0.2}"]) == 0
    assert "fused LoRA layers: 14" in capsys.readouterr().err  # the update ran on SFT's fused layers (2 x 7)
    before, after = adapter_weights(parent), adapter_weights(run)
    assert before.keys() == after.keys()  # the same adapter continued (no "ref" copy saved beside it)
    assert any(not torch.equal(before[name], after[name]) for name in before)
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [row for row in logged if "reward" in row]
    assert len(steps) == 2 and all(math.isfinite(row["loss"]) and "kl" in row for row in steps)
    assert all(f"rewards/{name}/mean" in steps[0] for name in ("toxicity", "ending", "length"))
    config = (run / "config.yaml").read_text()
    assert f"parent: {parent}" in config and f"algorithm: {method}" in config

    from peft import AutoPeftModelForCausalLM

    model = AutoPeftModelForCausalLM.from_pretrained(run / "adapter")  # plain peft, over the untouched base
    base = model.get_base_model().state_dict()
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained(json.loads((run / "adapter" / "adapter_config.json")
                                                               .read_text())["base_model_name_or_path"]).state_dict()
    assert all(torch.equal(base[name], original[name]) for name in original if name in base)


WORDS = ("you", "pizza")  # each said now and then in the tiny parent's sampled replies, neither in most
WORD_REWARDS = "".join(f"""
def says_{word}(completions, **_):
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [float(len(re.findall(r"\\b{word}\\b", text))) for text in texts]
""" for word in WORDS)


def parent_replies(parent) -> list[tuple[list[dict], str]]:
    """Seeded sampled replies of the parent (the rollouts' own sampling: temperature 1, 16 tokens), 16 to each of
    its 16 kinds of context: the positions where the word probabilities are read."""
    from chattune.generate.batch import sampled_replies
    from chattune.generate.hf import load_hf_backend
    from chattune.generate.sampling import Sampling

    contexts = [[{"role": "user", "content": f"hello how are you {index}"}] for index in range(8)]
    contexts += [[*context, {"role": "assistant", "content": "i am fine thanks and you"},
                  {"role": "user", "content": "what is your favourite food"}] for context in contexts]
    sampling = Sampling(temperature=1.0, top_p=1.0, top_k=0, no_repeat_ngram_size=0, max_new_tokens=16, seed=123)
    groups = sampled_replies(load_hf_backend(str(parent)), contexts, 16, sampling)
    return [(context, reply.text) for context, group in zip(contexts, groups) for reply in group]


def word_probabilities(run, replies) -> dict[str, float]:
    """Each word's mean probability (over its tokens with and without a leading space) at every position of the
    fixed replies: deterministic, so a change is the update's and not a sampling draw's."""
    from chattune.generate.hf import load_hf_backend

    backend = load_hf_backend(str(run))
    word_ids = {word: [index for index in range(len(backend.tokenizer)) if backend.decode([index]).strip() == word]
                for word in WORDS}
    assert all(word_ids.values())  # each word is a token of the tiny vocabulary
    totals, positions = dict.fromkeys(WORDS, 0.0), 0
    for context, text in replies:
        prompt = backend.prompt_ids(context)
        reply = backend.tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = backend.model(torch.tensor([prompt + reply])).logits[0, len(prompt) - 1:-1]
        probabilities = logits.float().softmax(-1)
        for word in WORDS:
            totals[word] += probabilities[:, word_ids[word]].sum().item()
        positions += len(reply)
    return {word: total / positions for word, total in totals.items()}


def test_a_reward_for_a_word_makes_the_policy_say_it_more(parent, tmp_path, monkeypatch):
    """The reward reaches the update: a user reward (module:function) counting "you" in each reply, 10 GRPO steps, and
    the word's probability rises, over the parent's and over a control run rewarding "pizza" instead (the same update
    with the reward pointed elsewhere). The parent says "you" in ~4% of its sampled replies, so most groups of 8 carry
    no signal: 16 groups a step (batch 128) make the rise reliable where 4 did not (seeds 0/1/2 gave 1.24/0.84/0.95x
    the parent's). Measured with 128 over seeds 0/1/2/3: 2.03/2.05/1.64/1.84x the parent's, 2.12/2.09/1.72/2.00x the
    control's; "pizza" itself (rarer) did not rise reliably under its own reward, so only "you" is asserted."""
    (tmp_path / "word_rewards.py").write_text("import re\n" + WORD_REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    replies = parent_replies(parent)
    before, after = word_probabilities(parent, replies), {}
    for word in WORDS:
        run = tmp_path / word
        assert main(["align", str(parent), "--method", "grpo", "--output", str(run), "--set", "batch_size=128",
                     "--set", "num_generations=8", "--set", "max_new_tokens=16", "--set", "max_steps=10",
                     "--set", "learning_rate=0.05", "--set", "lr_scheduler=constant", "--set", "warmup_ratio=0.0",
                     "--set", "beta=0.0", "--set", "precision=fp32", "--set", "seed=0",
                     "--set", "eval_prompts=0", "--set", f"rewards={{'word_rewards:says_{word}': 1.0}}"]) == 0
        after[word] = word_probabilities(run, replies)["you"]
    assert after["you"] > 1.3 * before["you"] and after["you"] > 1.3 * after["pizza"], (before, after)


def test_a_reseeded_alignment_holds_out_the_parents_conversations(parent):
    """`--set seed=N` reseeds the alignment, not the split: an align run takes its parent's split seed, so its
    held-out side (the alignment's evaluation, `chattune eval`, export checks) is the parent's, whatever the seed.
    Before split_seed, the align seed re-drew the split and parent training conversations were scored as held out."""
    from chattune.config import align_config, load_config
    from chattune.data.load import load_chat_split
    from chattune.runs import Run

    run = Run.open(parent)
    _, parent_held_out, _ = load_chat_split(run.config)
    for seed in (run.config.seed, run.config.seed + 1):
        cfg = align_config(run.config.to_dict(), str(parent), None, [f"seed={seed}"])
        assert (cfg.seed, cfg.split_seed) == (seed, run.config.seed)
        assert load_chat_split(cfg)[1] == parent_held_out
    chat = load_config(None, [f"seed={run.config.seed + 1}"])  # a chat run with only seed changed re-draws it
    assert chat.data_split_seed == run.config.seed + 1
    assert load_config(None, ["seed=7", f"split_seed={run.config.seed}"]).data_split_seed == run.config.seed


def _feedback_store(path) -> None:
    """Replies with thumbs and an edit, stored through the server's own store."""
    from chattune.serve.store import Store, StoredReply

    store = Store(path)
    for reply_id, prompt, content, changes in [
        ("a", "hello how are you 1", "i like pizza", {"rating": -1, "edited": "i am fine thanks and you"}),
        ("b", "what is your favourite food", "i am fine", {"rating": -1}),
        ("c", "what is your favourite food", "i like pizza and pasta a lot", {"rating": 1}),
    ]:
        store.add_reply(StoredReply(id=reply_id, conversation_id=reply_id, model="sft",
                                    messages=[{"role": "user", "content": prompt}], content=content,
                                    finish_reason="stop", temperature=0.7, top_p=0.9, max_tokens=16, seed=None,
                                    prompt_tokens=5, completion_tokens=5))
        store.set_feedback(reply_id, changes)
    store.close()


def test_dpo_trains_on_the_web_chat_store(parent, tmp_path):
    from chattune.data.preferences import read_preferences

    db = tmp_path / "chats.sqlite"
    _feedback_store(db)
    pairs = read_preferences(db)
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [
        ("i am fine thanks and you", "i like pizza"), ("i like pizza and pasta a lot", "i am fine")]
    run = tmp_path / "dpo"
    assert main(["align", str(parent), "--method", "dpo", "--data", str(db), "--output", str(run), *FAST]) == 0
    before, after = adapter_weights(parent), adapter_weights(run)
    assert any(not torch.equal(before[name], after[name]) for name in before)
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert losses and all(math.isfinite(loss) for loss in losses)
    assert json.loads((run / "data_report.json").read_text())["preferences"]["pairs"] == 2


def test_an_evaluated_alignment_writes_its_table_and_report(parent, tmp_path):
    """Parent vs aligned on held-out contexts (alignment.json: every metric with its paired interval; perplexity on the
    first eval_conversations) and report.html's alignment sections: reward and KL curves, the before/after table, the
    contexts whose toxicity fell most."""
    run = tmp_path / "grpo"
    fast = FAST[:-2]  # FAST but its eval_prompts=0
    assert main(["align", str(parent), "--method", "grpo", "--output", str(run), *fast, "--set", "eval_prompts=3",
                 "--set", "eval_samples=2", "--set", "toxic_prone=false", "--set", "eval_conversations=2"]) == 0
    result = json.loads((run / "alignment.json").read_text())
    assert result["task"] == "align" and result["contexts"] == 3 and result["sampling"]["k"] == 2
    assert result["conversations"] == 2  # perplexity on the first eval_conversations held-out conversations
    keys = {row["key"] for row in result["metrics"]}
    assert {"toxicity", "toxicity_greedy", "relevance", "perplexity", "ended"} <= keys
    assert all(row["ci"][0] <= row["delta"] <= row["ci"][1] for row in result["metrics"])
    assert len(result["examples"]) == 3 and all(len(e["tuned"]["samples"]) == 2 for e in result["examples"])
    page = (run / "report.html").read_text()
    assert "Alignment curves" in page and page.count('src="data:image/png;base64,') == 2  # rewards, KL
    assert "<th>parent</th>" in page and "<th>aligned</th>" in page and result["metrics"][0]["label"] in page
    assert "whose toxicity fell most" in page and page.count('class="role">greedy:') == 6  # 3 contexts x 2 models
    assert "toxicity x 1" in page  # the run summary names the rewards and their weights

    # `chattune eval` of an align run scores the contexts its align built again, here with k=3
    assert main(["eval", str(run), "--samples", "3"]) == 0
    again = json.loads((run / "alignment.json").read_text())
    assert again["sampling"]["k"] == 3 and all(len(e["tuned"]["samples"]) == 3 for e in again["examples"])
    assert sorted(json.dumps(e["context"]) for e in again["examples"]) == sorted(
        json.dumps(e["context"]) for e in result["examples"])
    assert again["conversations"] == 2 and "<th>aligned</th>" in (run / "report.html").read_text()
    assert main(["eval", str(run), "--data", "chats.jsonl"]) == 2  # what it scores is the run's own contexts
    assert main(["eval", str(parent), "--samples", "3"]) == 2  # a chat run is scored on greedy replies

    dpo = tmp_path / "dpo"
    db = tmp_path / "chats.sqlite"
    _feedback_store(db)
    assert main(["align", str(parent), "--method", "dpo", "--data", str(db), "--output", str(dpo), *FAST]) == 0
    page = (dpo / "report.html").read_text()  # no evaluation asked for: the curves, and a line saying so
    assert 'alt="rewards against the optimizer step"' in page and "No held-out evaluation" in page
    assert main(["report", str(dpo)]) == 0


@pytest.mark.parametrize("content, message", [
    ('{"prompt": "hi", "chosen": "yo"}\n', "no 'rejected' column"),
    ('{"prompt": "hi", "chosen": "yo", "rejected": "yo"}\n', "chosen and rejected are the same reply"),
    ('{"prompt": "hi", "chosen": " ", "rejected": "yo"}\n', "chosen is empty"),
    ("", "no"),
])
def test_bad_preference_files_exit_2_with_one_line(parent, tmp_path, capsys, content, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text(content)
    assert main(["align", str(parent), "--method", "dpo", "--data", str(path), "--output", str(tmp_path / "x"),
                 *FAST]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("chattune: error:") and message in error and "\n" not in error
    assert not (tmp_path / "x").exists()  # a failed run leaves no folder behind


def test_merged_rollouts_decode_the_same_tokens_and_restore_the_base(tiny_llama, tmp_path):
    """chattune's rollouts (its batch decoder with the LoRA adapter merged) give the tokens TRL's own generate call
    gives, greedy, and leave the base weights and the unmerged adapter as they were."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from chattune.train.rollouts import merged_rollouts

    torch.manual_seed(0)  # init_lora_weights=False: B is random too, so the adapter changes what is decoded
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama),
                           LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False))
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    base = {name: weight.detach().clone() for name, weight in model.named_parameters() if "base_layer" in name}
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2,
                      max_completion_length=12, bf16=False, use_cpu=True, report_to="none", beta=0.0)
    trainer = merged_rollouts(GRPOTrainer)(
        model=model, reward_funcs=[lambda completions, **_: [0.0] * len(completions)], args=args,
        train_dataset=Dataset.from_list([{"prompt": "hi"}] * 4), processing_class=tokenizer)
    trainer.generation_config.do_sample = False
    prompts = [tokenizer(text)["input_ids"] for text in ("hello how are you", "what is your favourite food", "i")]
    merged, _ = trainer._generate_single_turn(prompts, None, {}, 1)
    plain, _ = GRPOTrainer._generate_single_turn(trainer, prompts, None, {}, 1)
    with model.disable_adapter():
        without_adapter, _ = GRPOTrainer._generate_single_turn(trainer, prompts, None, {}, 1)
    assert merged == plain and all(len(ids) > 0 for ids in merged)
    assert without_adapter != plain  # the adapter matters, so the merge is what makes the equality
    weights = dict(model.named_parameters())
    assert all(torch.allclose(weights[name], weight, atol=1e-6) for name, weight in base.items())
    assert not any(getattr(module, "merged", False) for module in model.modules())


def test_sampled_rollouts_replay_with_the_seed_and_min_p_goes_to_trl(tiny_llama, tmp_path, monkeypatch):
    """Sampled rollouts through chattune's decoder: each prompt read once for its k completions, a seeded run draws
    the same completions again, the k completions of a prompt differ, every completion stops at its end token or
    the limit, and a setting chattune's sampler lacks (min_p) falls back to TRL's own generate call."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from chattune.train.rollouts import merged_rollouts, rollout_sampling

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2,
                      max_completion_length=10, bf16=False, use_cpu=True, report_to="none", beta=0.0)
    trainer = merged_rollouts(GRPOTrainer)(
        model=model, reward_funcs=[lambda completions, **_: [0.0] * len(completions)], args=args,
        train_dataset=Dataset.from_list([{"prompt": "hi"}] * 4), processing_class=tokenizer)
    texts = ("hello how are you", "what is your favourite food")
    prompts = [tokenizer(text)["input_ids"] for text in texts for _ in range(3)]  # k=3, as TRL repeats them
    prompt_reads = []
    hook = model.register_forward_pre_hook(lambda module, args, kwargs: prompt_reads.append(1) if kwargs[
        "input_ids"].shape[1] > 1 else None, with_kwargs=True)
    torch.manual_seed(3)
    first, logprobs = trainer._generate_single_turn(prompts, None, {}, 3)
    hook.remove()
    torch.manual_seed(3)
    again, _ = trainer._generate_single_turn(prompts, None, {}, 3)
    assert len(prompt_reads) == 2 and logprobs is None
    assert first == again and len({tuple(ids) for ids in first[:3]}) > 1
    ends = set(trainer.eos_token_ids)
    assert all(len(ids) == 10 or (ids[-1] in ends and not ends & set(ids[:-1])) for ids in first)
    trainer.generation_config.min_p = 0.1
    assert rollout_sampling(trainer.generation_config, model.generation_config) is None
    called, original = [], GRPOTrainer._generate_single_turn
    monkeypatch.setattr(GRPOTrainer, "_generate_single_turn",
                        lambda self, *args: called.append(1) or original(self, *args))
    trainer._generate_single_turn(prompts[:1], None, {}, 1)
    assert called == [1]


def test_align_trainer_rollouts_in_fp32_without_checkpointing_where_bf16_is_emulated(parent, tmp_path):
    """The trainer `chattune align` builds: the merged-rollout subclass of TRL's, and on a CPU without native bf16
    fp32 and no gradient checkpointing, where TRL's defaults turn both on; scale_rewards reaches TRL."""
    import yaml
    from rich.console import Console

    from chattune.config import align_config
    from chattune.runs import Run
    from chattune.train.align import load_policy, make_trainer, prompt_dataset
    from chattune.precision import bf16_supported

    parent_values = yaml.safe_load((parent / "config.yaml").read_text())
    overrides = [item for item in FAST if item not in ("--set", "precision=fp32")]
    cfg = align_config(parent_values, str(parent), overrides=[*overrides, "precision=auto", "rewards={ending: 1.0}",
                                                              "report_to=none", "scale_rewards=batch"])
    model, tokenizer = load_policy(Run.open(parent), cfg)
    dataset = prompt_dataset([[{"role": "user", "content": "hello how are you"}]] * 4, {})
    trainer = make_trainer(cfg, tmp_path, model, tokenizer, dataset, Console(quiet=True))
    assert type(trainer).__name__ == "MergedRolloutsGRPOTrainer"
    assert not trainer.args.gradient_checkpointing
    assert trainer.args.bf16 == bf16_supported(torch.device("cpu"))
    assert trainer.scale_rewards == "batch"


def test_align_splits_the_loss_into_micro_batches_but_decodes_each_step_at_once(parent, tmp_path, monkeypatch):
    """memory=balanced over a budget: the loss runs on micro-batches of the planned rows (the same optimizer step),
    while TRL still generates all of a step's completions in one batch, and the prompts are cut to
    max_prompt_tokens."""
    import yaml
    from rich.console import Console

    from chattune.config import align_config
    from chattune.runs import Run
    from chattune.train import sft
    from chattune.train.align import fitted_contexts, load_policy, make_trainer, prompt_dataset

    monkeypatch.setattr(sft, "activation_budget", lambda device: 1)  # nothing fits: split as far as allowed
    parent_values = yaml.safe_load((parent / "config.yaml").read_text())
    cfg = align_config(parent_values, str(parent), overrides=[
        "batch_size=8", "num_generations=4", "max_new_tokens=16", "max_prompt_tokens=240", "memory=balanced",
        "rewards={ending: 1.0}", "report_to=none", "max_steps=1"])
    model, tokenizer = load_policy(Run.open(parent), cfg)
    long_context = [turn for index in range(40) for turn in (
        {"role": "user", "content": f"tell me about the weather on day {index} please"},
        {"role": "assistant", "content": f"day {index} was sunny and warm with a light breeze"})][:-1]
    (fitted,) = fitted_contexts([long_context], tokenizer, cfg.prompt_tokens)
    rendered = tokenizer.apply_chat_template(fitted, add_generation_prompt=True, tokenize=False)
    assert fitted[0]["role"] == "user" and fitted[-1] == long_context[-1] and len(fitted) < len(long_context)
    assert len(tokenizer(rendered, add_special_tokens=False)["input_ids"]) <= cfg.prompt_tokens
    one_long_turn = [{"role": "user", "content": " ".join(f"word{index}" for index in range(400)) + " the end"}]
    (cut,) = fitted_contexts([one_long_turn], tokenizer, cfg.prompt_tokens)
    rendered = tokenizer.apply_chat_template(cut, add_generation_prompt=True, tokenize=False)
    assert cut[0]["content"].endswith("word399 the end") and len(cut[0]["content"]) < len(one_long_turn[0]["content"])
    assert len(tokenizer(rendered, add_special_tokens=False)["input_ids"]) <= cfg.prompt_tokens
    trainer = make_trainer(cfg, tmp_path, model, tokenizer, prompt_dataset([fitted] * 8, {}), Console(quiet=True))
    # 8 rows of 256 tokens, halved while a micro-batch keeps >= 512 tokens: 2 rows x 4 accumulated
    assert (trainer.args.per_device_train_batch_size, trainer.args.gradient_accumulation_steps) == (2, 4)
    assert trainer.args.generation_batch_size == 8
    trainer.train()
    assert trainer.state.global_step == 1


def test_latest_turns_keep_whole_exchanges_and_the_system_turn():
    from chattune.data.windows import latest_turns

    context = [{"role": "system", "content": "s"}, {"role": "user", "content": "u1"},
               {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"},
               {"role": "assistant", "content": "a2"}, {"role": "user", "content": "u3"}]
    words = lambda turns: sum(len(turn["content"]) for turn in turns)  # noqa: E731 - 2 per turn
    assert latest_turns(context, words, 12) == context
    assert latest_turns(context, words, 7) == [context[0], *context[3:]]
    assert latest_turns(context, words, 1) == [context[0], context[5]]  # the last exchange stays, even over


def test_the_planned_checkpointing_survives_trl_turning_it_on_for_every_layer(tiny_llama):
    from transformers import AutoModelForCausalLM

    from chattune.train.memory import MemoryPlan, apply_memory_plan, decoder_layers, kept_checkpointing

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    layers = decoder_layers(model)
    apply_memory_plan(model, MemoryPlan("balanced", 2, 1, len(layers), (0,), 0))
    with kept_checkpointing(model):
        model.gradient_checkpointing_disable()  # what TRL does around generation...
        model.gradient_checkpointing_enable()  # ...and after it, for every layer and with its own arguments
        assert all(layer.gradient_checkpointing for layer in layers)
    assert [layer.gradient_checkpointing for layer in layers] == [True] + [False] * (len(layers) - 1)


def test_sampled_replies_decode_short_contexts_together_and_answer_in_order():
    from types import SimpleNamespace

    from chattune.generate.batch import sampled_replies
    from chattune.generate.sampling import Sampling

    batches = []

    class Backend:
        def prompt_ids(self, context):  # a token per character
            return [0] * len(context[-1]["content"])

        def replies(self, rows, sampling):
            batches.append([row[-1]["content"] for row in rows])
            return [SimpleNamespace(text=f"{row[-1]['content']}@{sampling.seed + index}") for index, row in
                    enumerate(rows)]

    contexts = [[{"role": "user", "content": "x" * length}] for length in (30, 1, 20, 2)]
    groups = sampled_replies(Backend(), contexts, 2, Sampling(seed=0), batch_rows=4)
    assert batches == [["x", "x", "xx", "xx"], ["x" * 20] * 2 + ["x" * 30] * 2]  # the short ones share a batch
    assert [[reply.text.split("@")[0] for reply in group] for group in groups] == [[c[0]["content"]] * 2 for c in
                                                                                  contexts]
    assert len({reply.text for group in groups for reply in group}) == 8  # every row its own seed


def test_sampled_replies_keep_each_batch_within_its_kv_budget(monkeypatch):
    """A long context makes its own smaller batch instead of padding the short ones' KV to its length."""
    from types import SimpleNamespace

    from chattune.generate import batch as batch_module
    from chattune.generate.sampling import Sampling

    monkeypatch.setattr(batch_module, "MAX_BATCH_TOKENS", 100)
    sizes = []

    class Backend:
        def prompt_ids(self, context):
            return [0] * len(context[-1]["content"])

        def replies(self, rows, sampling):
            sizes.append([len(row[-1]["content"]) for row in rows])
            return [SimpleNamespace(text=row[-1]["content"]) for row in rows]

    contexts = [[{"role": "user", "content": "x" * length}] for length in (40, 5, 5, 5, 5, 15)]
    groups = batch_module.sampled_replies(Backend(), contexts, 1, Sampling(max_new_tokens=10), batch_rows=8)
    # rows x (longest prompt + 10 new tokens) <= 100: the four 5s (4 x 15), then 15 and 40 (2 x 50); not 5 rows of 25
    assert sizes == [[5, 5, 5, 5], [15, 40]]
    assert [group[0].text for group in groups] == [c[0]["content"] for c in contexts]
