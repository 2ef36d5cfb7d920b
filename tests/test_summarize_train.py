"""`task: summarize` end to end on tiny T5, BART and Llama models built from a config: the loss goes down, the run
folder reloads with plain transformers/peft, `chattune summarize` generates what was learned, only the summary tokens
are trained, and the zero-shot vs tuned evaluation writes eval.json and report.html."""

import json

import pytest
import torch

from chattune.cli import main
from chattune.config import load_config
from chattune.data.chat import IGNORE_INDEX
from chattune.data.pairs import Pair

FOODS = ["pizza", "pasta", "soup", "bread", "cheese", "salad", "rice", "cake"]
SUMMARY_WORDS = "they both like"
FAST = ["--set", "batch_size=4", "--set", "eval_steps=5", "--set", "logging_steps=1", "--set", "precision=fp32",
        "--set", "eval_summaries=0", "--set", "max_length=192", "--set", "max_new_tokens=8"]


def _bpe_tokenizer(specials: list[str], template: str, **special_tokens):
    """A byte-level BPE over the fixture's words, with a seq2seq model's special tokens and post-processor."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = [f"#Person1#: do you like {food}\n#Person2#: yes i like {food} a lot. {SUMMARY_WORDS} {food}. "
              "summarize: " for food in FOODS] * 20
    backend.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    backend.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(token, backend.token_to_id(token)) for token in specials])
    return PreTrainedTokenizerFast(tokenizer_object=backend, **special_tokens)


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    tokenizer = _bpe_tokenizer(["<pad>", "</s>", "<unk>"], "$A </s>", pad_token="<pad>", eos_token="</s>",
                               unk_token="<unk>")
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      dropout_rate=0.0, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id)
    folder = tmp_path_factory.mktemp("tiny-t5")
    T5ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny_bart(tmp_path_factory):
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(0)
    tokenizer = _bpe_tokenizer(["<s>", "<pad>", "</s>", "<unk>"], "<s> $A </s>", bos_token="<s>",
                               pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    ids = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.eos_token_id,
               forced_eos_token_id=tokenizer.eos_token_id)
    config = BartConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        max_position_embeddings=128, dropout=0.0, attention_dropout=0.0, **ids)
    folder = tmp_path_factory.mktemp("tiny-bart")
    BartForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def dialogues_csv(tmp_path_factory):
    """DialogSum-shaped pairs whose summary copies one word of the dialogue: learnable in a few dozen steps."""
    rows = ["id,dialogue,summary"]
    for index in range(48):
        food = FOODS[index % len(FOODS)]
        rows.append(f'{index},"#Person1#: do you like {food} {index}\n#Person2#: yes i like {food} a lot",'
                    f"{SUMMARY_WORDS} {food}")
    path = tmp_path_factory.mktemp("dialogsum") / "dialogues.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return str(path)


def train(tmp_path, model, data, *extra) -> object:
    run = tmp_path / "run"
    assert main(["train", "--set", "task=summarize", "--data", data, "--model", model, "--output", str(run),
                 *FAST, *extra]) == 0
    return run


def train_losses(run) -> list[float]:
    return [row["loss"] for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in row]


def summarize(capsys, run, text: str) -> list[dict]:
    capsys.readouterr()
    assert main(["summarize", str(run), "--text", text, "--jsonl", "--max-new-tokens", "12"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize("fixture", ["tiny_t5", "tiny_bart", "tiny_llama"])
def test_three_steps_lower_the_loss_and_the_run_reloads(request, tmp_path, capsys, dialogues_csv, fixture, method):
    model_dir = request.getfixturevalue(fixture)
    run = train(tmp_path, model_dir, dialogues_csv, "--set", "max_steps=3", "--set", f"method={method}",
                "--set", f"learning_rate={0.01 if method == 'lora' else 0.003}")
    losses = train_losses(run)
    assert len(losses) == 3 and losses[-1] < losses[0]
    report = json.loads((run / "data_report.json").read_text())
    assert report["data"]["format"] == "csv" and report["train_pairs"] + report["eval_pairs"] == 48

    import peft
    import transformers

    seq2seq = fixture != "tiny_llama"
    folder = run / ("adapter" if method == "lora" else "model")
    if method == "lora":
        loader = peft.AutoPeftModelForSeq2SeqLM if seq2seq else peft.AutoPeftModelForCausalLM
    else:
        loader = transformers.AutoModelForSeq2SeqLM if seq2seq else transformers.AutoModelForCausalLM
    model = loader.from_pretrained(folder)
    assert model.config.is_encoder_decoder == seq2seq
    assert transformers.AutoTokenizer.from_pretrained(folder).eos_token_id is not None
    [row] = summarize(capsys, run, "#Person1#: do you like soup\n#Person2#: yes i like soup a lot")
    assert set(row) == {"source", "summary", "ended"} and row["source"].startswith("#Person1#: do you like soup")


# A randomly initialised model learns little through adapters on q/v alone (the attention default): full weights
# for the seq2seq models, LoRA on every linear layer for the causal one.
@pytest.mark.parametrize(("fixture", "options"), [
    ("tiny_t5", ["method=full", "learning_rate=0.003", "max_steps=60"]),
    ("tiny_bart", ["method=full", "learning_rate=0.003", "max_steps=60"]),
    ("tiny_llama", ["method=lora", "lora.target_modules=all-linear", "learning_rate=0.01", "max_steps=40"])])
def test_summarize_generates_the_learned_summary(request, tmp_path, capsys, dialogues_csv, fixture, options):
    flags = [flag for option in options + ["early_stopping_patience=0"] for flag in ("--set", option)]
    run = train(tmp_path, request.getfixturevalue(fixture), dialogues_csv, *flags)
    [row] = summarize(capsys, run, "#Person1#: do you like rice 99\n#Person2#: yes i like rice a lot")
    assert row["summary"].startswith(SUMMARY_WORDS)


def test_causal_labels_are_the_summary_and_its_end_token_only(tiny_llama):
    from chattune.models import load_model
    from chattune.train.summarize import encode

    model, tokenizer = load_model(tiny_llama)
    cfg = load_config(None, ["task=summarize", "max_length=128"])
    pair = Pair("#Person1#: do you like cake\n#Person2#: yes", f"{SUMMARY_WORDS} cake")
    report: dict = {}
    [example], [kept] = encode(cfg, model, tokenizer, [pair], report, "train")
    trained = [token for token in example["labels"] if token != IGNORE_INDEX]
    first = example["labels"].index(trained[0])
    assert example["labels"][:first] == [IGNORE_INDEX] * first  # the request and the dialogue are never trained
    assert example["labels"][first:first + len(trained)] == example["input_ids"][first:first + len(trained)]
    assert tokenizer.decode(trained) == f"{SUMMARY_WORDS} cake<|im_end|>"
    prompt = tokenizer.decode(example["input_ids"][:first])
    assert prompt.endswith("<|im_start|>assistant\n") and cfg.instruction in prompt and pair.source in prompt
    assert kept == pair and report["train_tokens"]["trained_total"] == len(trained)


def test_seq2seq_labels_are_the_summary_tokens_and_long_pairs_are_dropped(tiny_t5):
    from chattune.models import load_seq2seq_model
    from chattune.train.summarize import encode

    model, tokenizer = load_seq2seq_model(tiny_t5)
    cfg = load_config(None, ["task=summarize", "max_length=24"])
    short, long = Pair("#Person1#: do you like cake", f"{SUMMARY_WORDS} cake"), Pair("do you like cake " * 20, "x")
    report: dict = {}
    [example], kept = encode(cfg, model, tokenizer, [short, long], report, "eval")
    assert example["labels"] == tokenizer(text_target=f"{SUMMARY_WORDS} cake")["input_ids"]
    assert example["labels"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(example["input_ids"], skip_special_tokens=True) == "summarize: #Person1#: do you like cake"
    assert kept == [short] and report["dropped_too_long"] == {"eval": 1} and report["eval_pairs"] == 1


def test_zero_shot_vs_tuned_evaluation_and_report(tmp_path, capsys, dialogues_csv, tiny_t5):
    run = train(tmp_path, tiny_t5, dialogues_csv, "--set", "max_steps=40", "--set", "method=full",
                "--set", "learning_rate=0.003", "--set", "eval_summaries=6", "--set", "num_beams=2")
    evaluation = json.loads((run / "eval.json").read_text())
    assert evaluation["task"] == "summarize" and evaluation["data"]["pairs"] == 6
    assert evaluation["generation"] == {"max_new_tokens": 8, "num_beams": 2}
    rows = {row["key"]: row for row in evaluation["metrics"]}
    assert list(rows) == ["rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "chrf", "summary_words", "ended"]
    rouge_l = rows["rougeL"]
    assert rouge_l["tuned"] > rouge_l["base"] and rouge_l["ci"][0] <= rouge_l["delta"] <= rouge_l["ci"][1]
    assert all(SUMMARY_WORDS in example["tuned"]["summary"] for example in evaluation["examples"])
    assert rouge_l["ci"][0] > 0  # the learned phrase: better beyond noise even on 6 pairs
    html = (run / "report.html").read_text()
    assert "Zero-shot vs tuned on 6 held-out sources" in html and "ROUGE-Lsum" in html
    assert html.count('class="example"') == 6
    assert "zero-shot base vs tuned" in capsys.readouterr().out  # the terminal table after training

    assert main(["eval", str(run), "--limit", "2"]) == 0  # `chattune eval` picks the task's evaluation
    again = json.loads((run / "eval.json").read_text())
    assert again["data"]["pairs"] == 2 and "base" not in again["metrics"][0]


def test_resume_continues_a_seq2seq_run(tmp_path, dialogues_csv, tiny_t5):
    run = train(tmp_path, tiny_t5, dialogues_csv, "--set", "max_steps=4", "--set", "eval_steps=2",
                "--set", "save_total_limit=5", "--set", "early_stopping_patience=0")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert main(["train", "--output", str(run), "--resume", "--set", "max_steps=6"]) == 0
    assert json.loads((run / "metrics.json").read_text())["steps"] == 6
