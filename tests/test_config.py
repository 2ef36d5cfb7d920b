import pytest

from chattune.config import ChatConfig, ClassifyConfig, load_config
from chattune.errors import InputError


def test_defaults_need_no_file():
    cfg = load_config()
    assert cfg.model == "smollm2-135m-instruct" and cfg.method == "lora"
    assert cfg.learning_rate == 2e-4


def test_full_fine_tune_gets_a_smaller_default_learning_rate():
    assert load_config(overrides=["method=full"]).learning_rate == 2e-5


def test_overrides_reach_nested_keys_and_parse_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("max_steps: 5\nlora:\n  r: 4\n")
    cfg = load_config(path, ["max_steps=2", "lora.r=8", "lora.target_modules=[q_proj, v_proj]", "eval_data=null"])
    assert cfg.max_steps == 2 and cfg.lora.r == 8 and cfg.lora.alpha == 32
    assert cfg.lora.target_modules == ["q_proj", "v_proj"] and cfg.eval_data is None


@pytest.mark.parametrize("override, message", [
    (["max_step=2"], "unknown key max_step"),
    (["lora.rank=2"], "unknown key lora.rank"),
    (["method=qlora"], "method='qlora' is not allowed; use 'lora' or 'full'"),
    (["max_steps"], "expected KEY=VALUE"),
])
def test_bad_config_names_the_key(override, message):
    with pytest.raises(InputError, match=message):
        load_config(overrides=override)


def test_numbers_are_checked_and_yaml_exponents_read_as_floats():
    assert load_config(overrides=["learning_rate=3e-3"]).learning_rate == 0.003  # YAML 1.1 reads 3e-3 as a string
    with pytest.raises(InputError, match="max_steps='ten' is not allowed; use an integer"):
        load_config(overrides=["max_steps=ten"])
    with pytest.raises(InputError, match="lora.r=8.5 is not allowed; use an integer"):
        load_config(overrides=["lora.r=8.5"])


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("max_steps: 2\nlora: [\n")
    with pytest.raises(InputError, match=r"bad.yaml:\d+: not valid YAML"):
        load_config(path)


def test_each_task_has_its_own_typed_config_and_defaults():
    chat, classify = load_config(), load_config(overrides=["task=classify"])
    assert isinstance(chat, ChatConfig) and isinstance(classify, ClassifyConfig)
    assert (chat.data, chat.model) == ("chitchat", "smollm2-135m-instruct")
    assert (classify.data, classify.model) == ("chatterbot-topics", "all-minilm-l6-v2")
    assert not hasattr(classify, "system_prompt") and not hasattr(chat, "label_column")
    # an explicit value is never swapped for another task's default
    assert load_config(overrides=["task=classify", "data=chitchat"]).data == "chitchat"


def test_a_run_folder_written_by_an_earlier_version_still_loads(tmp_path):
    """Earlier versions wrote one config type for every task: the other task's keys are dropped from run folders."""
    (tmp_path / "config.yaml").write_text("task: chat\ndata: chitchat\ntext_column: null\nlabel_column: null\n"
                                          "max_steps: 3\n")
    from chattune.runs import Run

    assert Run.open(tmp_path).config.max_steps == 3
    with pytest.raises(InputError, match="unknown key label_column"):
        load_config(tmp_path / "config.yaml")  # a config a user writes stays strict


@pytest.mark.parametrize("override, message", [
    (["algorithm=rloo", "reward_aggregation=normalize_then_sum"], "reward_aggregation='normalize_then_sum' is not "
                                                                 "allowed; use one of sum_then_normalize"),
    (["reward_aggregation=mean"], "reward_aggregation='mean' is not allowed"),
    (["reward_aggregation=normalize_then_sum", "scale_rewards=batch"], "scale_rewards='batch' is not allowed"),
    (["algorithm=rloo", "scale_rewards=none"], "scale_rewards='none' is not allowed"),
    (["scale_rewards=global"], "scale_rewards='global' is not allowed"),
    (["eval_conversations=0"], "eval_conversations=0 is not allowed"),
    (["max_prompt_tokens=8"], "max_prompt_tokens=8 is not allowed; use an integer of at least 16"),
])
def test_align_keys_are_checked(override, message):
    with pytest.raises(InputError, match=message):
        load_config(overrides=["task=align", *override])


def test_align_prompts_default_to_what_max_length_leaves_for_the_reply():
    assert load_config(overrides=["task=align", "max_length=256", "max_new_tokens=24"]).prompt_tokens == 232
    assert load_config(overrides=["task=align", "max_prompt_tokens=128"]).prompt_tokens == 128
