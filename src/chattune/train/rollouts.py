"""Rollouts for TRL's GRPOTrainer and RLOOTrainer, decoded the way chattune decodes replies: `merged_rollouts(cls)`
is the trainer class `chattune align` builds.

    trainer = merged_rollouts(GRPOTrainer)(model=..., reward_funcs=..., args=..., ...)

TRL's rollouts are one `model.generate` call per step over all k completions of all prompts. On a CPU three things in
that call cost more than the decoding itself, and chattune's batch decoder (`generate.hf.HFBatch`, the server's)
avoids each:
- the LoRA adapter runs unmerged: three matmuls, a dropout and an add per adapted layer per token. Here it is merged
  into the base weights while the rollouts decode (`merged_adapter`), as a plain model decodes;
- `generate` reads each prompt k times (TRL repeats it k times in the batch); HFBatch reads it once and shares its KV;
- `generate` grows its KV cache by concatenation every step and keeps decoding rows that already ended; HFBatch
  writes into buffers with room and drops a row at its end-of-turn token.
The completions are those TRL's own call gives (greedy, tests/test_align.py), drawn per row from generators seeded
from the global torch RNG, so a seeded training run samples the same rollouts again. The loss, the reference model and
the logging stay TRL's. Rollouts TRL makes some other way (vLLM, images, its continuous batching, sharded models) or
with settings HFBatch does not sample with (min_p) go to TRL's own call, still with the adapter merged.
"""

from __future__ import annotations

import copy
import dataclasses
from contextlib import contextmanager

import torch

from chattune.generate.sampling import Sampling
from chattune.train.memory import kept_checkpointing


@contextmanager
def merged_adapter(model):
    """The active LoRA adapter folded into the base weights for the duration (peft's merge_adapter), then taken out
    again (unmerge_adapter: the base weights come back within float rounding, ~1e-7 relative). A model without an
    unmerged adapter is left as it is."""
    merge = getattr(model, "merge_adapter", None)
    if merge is None or any(getattr(module, "merged", False) for module in model.modules()):
        yield model
        return
    merge()
    try:
        yield model
    finally:
        model.unmerge_adapter()


def rollout_sampling(generation_config, model_config=None) -> Sampling | None:
    """TRL's generation settings as chattune's Sampling (None where HFBatch would not sample the same way). What
    TRL leaves unset comes from the model's own generation config, then transformers' defaults, as in `generate`."""
    config = copy.deepcopy(generation_config)
    if model_config is not None:
        config.update(**model_config.to_dict(), defaults_only=True)
    if (config.min_p or config.suppress_tokens or config.bad_words_ids or (config.num_beams or 1) != 1
            or config.max_new_tokens is None):
        return None
    sampled = {"temperature": 1.0 if config.temperature is None else config.temperature,
               "top_p": config.top_p or 1.0, "top_k": 50 if config.top_k is None else config.top_k}
    return Sampling(**(sampled if config.do_sample else {"temperature": 0}),
                    repetition_penalty=config.repetition_penalty or 1.0,
                    no_repeat_ngram_size=config.no_repeat_ngram_size or 0, max_new_tokens=config.max_new_tokens)


class _RolloutModel:
    """The model behind `generate.together.decode_together`'s backend interface, stopping at TRL's end tokens."""

    def __init__(self, model, stop_ids: list[int]):
        self.model, self.stop_ids = model, stop_ids

    def new_batch(self):
        from chattune.generate.hf import HFBatch

        return HFBatch(self.model)


@torch.no_grad()
def batched_completions(model, prompt_ids: list[list[int]], sampling: Sampling, stop_ids: list[int]
                        ) -> list[list[int]]:
    """Each prompt's completion token ids, its end token included (as TRL's are), all decoded as one HFBatch. Row r
    samples with seed + r, the seed drawn from the global torch RNG."""
    from chattune.generate.together import tokens_together

    seed = int(torch.randint(0, 2**62, (1,)))
    training = model.training
    model.eval()  # no dropout while decoding (TRL's generate call leaves the model as it was, in training mode)
    try:
        return tokens_together(_RolloutModel(model, stop_ids), prompt_ids, dataclasses.replace(sampling, seed=seed))
    finally:
        model.train(training)


def merged_rollouts(trainer_class):
    """TRL's GRPOTrainer or RLOOTrainer whose rollouts decode with the adapter merged, through HFBatch (see the module
    docstring). Around them, the layers `memory` chose to checkpoint stay the only ones (kept_checkpointing)."""
    from trl import GRPOTrainer

    returns_logprobs = issubclass(trainer_class, GRPOTrainer)  # GRPO's returns (ids, logprobs), RLOO's ids only

    class MergedRollouts(trainer_class):
        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, *args, **kwargs):
            model = self.accelerator.unwrap_model(self.model)
            sampling = rollout_sampling(self.generation_config, getattr(model, "generation_config", None))
            with merged_adapter(model):
                if (sampling is None or images or multimodal_fields or self.use_vllm
                        or getattr(self, "use_transformers_continuous_batching", False)
                        or self.is_fsdp_enabled or self.is_deepspeed_enabled):
                    return super()._generate_single_turn(prompt_ids, images, multimodal_fields, *args, **kwargs)
                completions = batched_completions(model, prompt_ids, sampling, list(self.eos_token_ids))
            return (completions, None) if returns_logprobs else completions

        def _generate_and_score_completions(self, *args, **kwargs):
            # TRL turns checkpointing off for the rollouts and back on for every layer: keep memory's selection
            with kept_checkpointing(self.accelerator.unwrap_model(self.model)):
                return super()._generate_and_score_completions(*args, **kwargs)

    MergedRollouts.__name__ = MergedRollouts.__qualname__ = f"MergedRollouts{trainer_class.__name__}"
    return MergedRollouts
