"""The offline default model: the packaged SmolLM2 GGUF, converted once to safetensors in the cache."""

import time

import pytest

from chattune.generate.hf import HFBackend
from chattune.generate.sampling import Sampling
from chattune.models import DEFAULT_MODEL, load_model, resolve_model


@pytest.mark.smollm2
def test_smollm2_alias_loads_from_cache_and_generates():
    folder = resolve_model(DEFAULT_MODEL)  # converts the GGUF on first use (~25 s), then reuses the cache
    assert (folder.endswith(DEFAULT_MODEL)) and resolve_model(DEFAULT_MODEL) == folder
    started = time.time()
    model, tokenizer = load_model(DEFAULT_MODEL)
    assert time.time() - started < 15  # cached safetensors, no dequantisation
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    backend = HFBackend(model, tokenizer)
    reply = backend.replies([[{"role": "user", "content": "What is the capital of France?"}]],
                            Sampling(temperature=0, max_new_tokens=16))[0].text
    assert "Paris" in reply


def test_unknown_model_is_an_input_error(tmp_path):
    from chattune.errors import InputError

    with pytest.raises(InputError, match="cannot load"):
        load_model(str(tmp_path / "no-such-model"))
