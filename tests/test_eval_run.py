"""`chattune train` ends with an evaluation; `chattune eval` and `chattune report` work on the run folder it wrote."""

import dataclasses
import json
from html.parser import HTMLParser

import pytest

from chattune.cli import main

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
    assert main(["train", "--data", str(data), "--model", tiny_llama, "--output", str(run), "--set", "max_steps=30",
                 "--set", "batch_size=4", "--set", "learning_rate=0.01", "--set", "eval_max_new_tokens=12",
                 "--set", "precision=fp32"]) == 0  # fp32: the likelihoods below are compared to 1e-4
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
