"""`chattune train` ends with an evaluation; `chattune eval` and `chattune report` work on the run folder it wrote."""

import dataclasses
import json
from html.parser import HTMLParser

import pytest

from chattune.cli import main
from chattune.data.chat import IGNORE_INDEX, tokenize_conversations

ROWS = [{"messages": [
    {"role": "user", "content": f"hello how are you {index}"},
    {"role": "assistant", "content": "i am fine thanks and you"},
    {"role": "user", "content": "what is your favourite food"},
    {"role": "assistant", "content": "i like pizza and pasta a lot"},
]} for index in range(40)]


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory, tiny_llama):
    """A tiny run trained to fit the fixture; training ran the base-vs-tuned evaluation at its end."""
    folder = tmp_path_factory.mktemp("eval")
    data = folder / "chats.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS), encoding="utf-8")
    run = folder / "run"
    # fp32: the likelihoods below are compared to 1e-4; eval_steps 10: three evaluations, curves the fit can read
    assert main(["train", "--data", str(data), "--model", tiny_llama, "--output", str(run), "--set", "max_steps=30",
                 "--set", "batch_size=4", "--set", "learning_rate=0.01", "--set", "eval_max_new_tokens=12",
                 "--set", "precision=fp32", "--set", "eval_steps=10"]) == 0
    return run


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.cells, self.links = [], [], []
        self._in_cell = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag in ("link", "script") or (tag == "a" and "href" in attrs):
            self.links.append(attrs)
        self._in_cell = tag == "td"

    def handle_data(self, data):
        if self._in_cell and data.strip():
            self.cells.append(data.strip())


def test_training_writes_eval_with_base_tuned_and_intervals(evaluated_run):
    evaluation = json.loads((evaluated_run / "eval.json").read_text())
    metrics = {row["key"]: row for row in evaluation["metrics"]}
    assert evaluation["data"]["conversations"] == 8  # 20% of 40 held out, every one scored
    loss = metrics["loss"]
    assert loss["tuned"] < loss["base"] and loss["ci"][1] < 0 and loss["ci"][0] <= loss["delta"] <= loss["ci"][1]
    # the same held-out conversations and masks as training's own before/after scoring
    trained = json.loads((evaluated_run / "metrics.json").read_text())
    assert loss["base"] == pytest.approx(trained["base"]["loss"], rel=1e-4)
    assert loss["tuned"] == pytest.approx(trained["tuned"]["loss"], rel=1e-4)
    for key in ("bleu", "chrf", "rouge1", "rougeL", "relevance_reference", "toxicity", "ended", "loop_rate",
                "distinct_2"):
        assert {"base", "tuned", "delta", "ci"} <= set(metrics[key])
    # the tuned model learned the fixture's replies; the random base model did not
    assert metrics["rougeL"]["tuned"] > metrics["rougeL"]["base"]
    assert len(evaluation["examples"]) == 8 and evaluation["examples"][0]["tuned"]["reply"].startswith("i ")
    # what the people said, scored as the replies are, where the text alone gives the metric
    from chattune.evaluate.safety import toxicity

    references = [example["reference"] for example in evaluation["examples"]]
    assert metrics["toxicity"]["human"] == pytest.approx(sum(toxicity(references)) / len(references))
    assert metrics["reply_words"]["human"] == pytest.approx(sum(len(r.split()) for r in references) / len(references))
    assert "human" not in metrics["loss"] and "human" not in metrics["rougeL"]


def test_held_out_set_is_the_one_training_used(evaluated_run):
    from chattune.config import load_config
    from chattune.evaluate.run import eval_conversations
    from chattune.data import load_conversations, split_conversations

    cfg = load_config(evaluated_run / "config.yaml")
    train_set, eval_set = split_conversations(load_conversations(cfg.data)[0], cfg.eval_fraction, cfg.seed)
    assert eval_conversations(cfg, None, "eval") == eval_set and len(eval_set) == 8
    assert eval_conversations(cfg, None, "train") == train_set


def test_eval_replies_equal_chat_replies(evaluated_run):
    from chattune.generate.hf import load_hf_backend
    from chattune.generate.sampling import run_sampling

    evaluation = json.loads((evaluated_run / "eval.json").read_text())
    backend = load_hf_backend(str(evaluated_run))
    contexts = [example["context"] for example in evaluation["examples"][:3]]
    # `chattune chat --temperature 0`: the run's defaults, greedy
    sampling = dataclasses.replace(run_sampling(evaluated_run), temperature=0, max_new_tokens=12)
    assert (evaluation["sampling"]["repetition_penalty"], evaluation["sampling"]["no_repeat_ngram_size"]) == \
        (sampling.repetition_penalty, sampling.no_repeat_ngram_size)
    expected = [r.text for r in backend.replies(contexts, sampling)]
    assert [example["tuned"]["reply"] for example in evaluation["examples"][:3]] == expected


def test_report_is_self_contained_with_plots_tables_and_examples(evaluated_run):
    page = _Page()
    page.feed((evaluated_run / "report.html").read_text())
    assert len(page.images) == 1 and all(src.startswith("data:image/png;base64,") for src in page.images)
    assert page.links == []  # no stylesheet, script or link to fetch: opens offline
    for label in ("eval loss (reply tokens)", "BLEU", "ROUGE-L F1", "toxicity (mean probability)"):
        assert label in " ".join(page.cells)
    assert "better" in page.cells  # the loss improvement is outside the noise
    html = (evaluated_run / "report.html").read_text()
    assert "<th>human replies</th>" in html
    assert html.count('class="example"') == 8 and "reference (what was said)" in html


def test_report_rerenders_without_recomputing(evaluated_run, capsys):
    before = (evaluated_run / "eval.json").stat().st_mtime_ns
    (evaluated_run / "report.html").unlink()
    assert main(["report", str(evaluated_run)]) == 0
    assert (evaluated_run / "report.html").is_file()
    assert (evaluated_run / "eval.json").stat().st_mtime_ns == before


def test_eval_cli_tuned_only_with_limit(evaluated_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(evaluated_run, run)
    assert main(["eval", str(run), "--limit", "3", "--max-new-tokens", "6"]) == 0
    evaluation = json.loads((run / "eval.json").read_text())
    assert evaluation["data"]["pairs"] == 3 and "base" not in evaluation["metrics"][0]
    assert "BLEU" in capsys.readouterr().out
    assert "tuned model" in (run / "report.html").read_text()


def test_bad_eval_input_is_one_line_exit_2(evaluated_run, tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a chattune run folder" in capsys.readouterr().err
    no_replies = tmp_path / "questions.jsonl"
    no_replies.write_text('{"messages": [{"role": "user", "content": "hello?"}]}\n', encoding="utf-8")
    assert main(["eval", str(evaluated_run), "--data", str(no_replies)]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "assistant turn" in error
    assert main(["report", str(tmp_path)]) == 2
    assert "eval.json" in capsys.readouterr().err


def test_training_writes_the_fit_in_words_to_metrics_and_report(evaluated_run):
    from chattune.evaluate.fit import read_log_fit

    fit = json.loads((evaluated_run / "metrics.json").read_text())["fit"]
    assert fit == read_log_fit(evaluated_run / "metrics.jsonl")  # the curves as logged, read after training
    assert fit["verdict"] in ("overfitting", "undertrained", "fits", "unstable") and fit["evaluations"] >= 2
    html = (evaluated_run / "report.html").read_text()
    assert f"<b>{fit['verdict']}</b>" in html and fit["text"].split(" (")[0] in html


def test_the_run_carries_its_decoding_defaults_to_transformers_chat_eval_and_serve(evaluated_run, tmp_path):
    import shutil

    from serve_helpers import ScriptedBackend, http, thread_server
    from transformers import GenerationConfig

    from chattune.cli import _sampling, build_parser
    from chattune.generate.sampling import Sampling, run_sampling
    from chattune.runs import Run
    from chattune.serve.app import create_app
    from chattune.serve.engine import Engine
    from chattune.serve.store import Store

    default = Sampling()
    saved = GenerationConfig.from_pretrained(Run(evaluated_run).adapter_dir)  # as plain transformers reads it
    assert (saved.do_sample, saved.temperature, saved.top_p, saved.repetition_penalty, saved.no_repeat_ngram_size) \
        == (True, default.temperature, default.top_p, default.repetition_penalty, default.no_repeat_ngram_size)
    assert run_sampling(evaluated_run) == default
    # a run whose file says otherwise decodes that way in chat and serve; flags and request fields still win
    run = shutil.copytree(evaluated_run, tmp_path / "run")
    path = Run(run).generation_config_path
    path.write_text(json.dumps({**json.loads(path.read_text()), "temperature": 0.3, "repetition_penalty": 1.4,
                                "no_repeat_ngram_size": 6}))
    expected = dataclasses.replace(default, temperature=0.3, repetition_penalty=1.4, no_repeat_ngram_size=6)
    assert run_sampling(run) == expected
    assert _sampling(build_parser().parse_args(["chat", str(run)])) == expected
    assert _sampling(build_parser().parse_args(["generate", str(run), "--prompt", "hi", "--temperature", "0"])) \
        == dataclasses.replace(expected, temperature=0)
    assert main(["eval", str(run), "--limit", "2", "--no-repeat-ngram-size", "0"]) == 0
    sampling = json.loads((run / "eval.json").read_text())["sampling"]
    assert (sampling["temperature"], sampling["repetition_penalty"], sampling["no_repeat_ngram_size"]) == (0, 1.4, 0)
    engine, store = Engine(ScriptedBackend([72, 105])), Store(tmp_path / "feedback.sqlite")
    submitted, submit = [], engine.submit_choices
    engine.submit_choices = lambda messages, samplings, *rest, **options: submitted.append(samplings[0]) or submit(
        messages, samplings, *rest, **options)
    with thread_server(create_app(engine, store, "run", defaults=run_sampling(run))) as url:
        for extra in ({}, {"temperature": 0.9}):
            body = json.dumps({"messages": [{"role": "user", "content": "hi"}], **extra}).encode()
            status, _ = http("POST", f"{url}/v1/chat/completions", body, {"Content-Type": "application/json"})
            assert status == 200
    engine.close()
    store.close()
    assert submitted[0] == dataclasses.replace(expected, max_new_tokens=default.max_new_tokens)
    assert (submitted[1].temperature, submitted[1].no_repeat_ngram_size) == (0.9, 6)


def test_eval_scores_long_conversations_split_as_training_did(evaluated_run):
    # a split run's held-out side is scored window by window in training; `chattune eval` must do the same
    from chattune.config import load_config
    from chattune.evaluate.run import _likelihoods, _load_system, eval_conversations
    from chattune.runs import Run

    cfg = dataclasses.replace(load_config(evaluated_run / "config.yaml"), max_length=48, long_conversations="split")
    conversations = eval_conversations(cfg, None, "eval")
    backend = _load_system(Run.open(evaluated_run), cfg, "tuned")
    windows, counts = tokenize_conversations(backend.tokenizer, conversations, 48, cfg.loss_on, "split")
    assert counts["split_windows"] == len(windows) > len(conversations)
    rows = _likelihoods(backend, cfg, conversations)
    # one row per conversation, its windows summed: the bootstrap resamples conversations, not correlated windows
    assert [w["conversation"] for w in windows] == sorted(w["conversation"] for w in windows)
    assert len(rows) == len({w["conversation"] for w in windows}) == len(conversations) < len(windows)
    assert sum(row["tokens"] for row in rows) == sum(sum(t != IGNORE_INDEX for t in w["labels"]) for w in windows)
