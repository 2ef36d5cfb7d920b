"""The llama.cpp backend produces the same greedy tokens as the HF backend, and seeds each request on its own."""

import pytest
from generate_helpers import lora_run

from chattune.generate.backend import load_backend
from chattune.generate.hf import load_hf_backend
from chattune.generate.together import decode_together
from chattune.generate.sampling import Sampling
from chattune.models import DEFAULT_MODEL, load_tokenizer

PROMPTS = [[{"role": "user", "content": "hello how are you 3"}],
           [{"role": "user", "content": "what is your favourite food"}]]


def greedy_ids(backend, messages, tokens: int) -> list[int]:
    out: list[int] = []
    backend.generate(backend.prompt_ids(messages), Sampling(temperature=0, max_new_tokens=tokens),
                     lambda token: out.append(token) or True)
    return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_llama):
    return lora_run(tmp_path_factory, tiny_llama)


def test_llamacpp_backend_matches_hf_greedy_tokens(tiny_run):
    pytest.importorskip("llama_cpp", reason="the llama.cpp backend is an optional extra: pip install '.[llamacpp]'")
    hf = load_hf_backend(str(tiny_run))
    fast = load_backend(str(tiny_run), "llamacpp", quant="f16")
    assert (tiny_run / "model-f16.gguf").is_file()  # exported once, next to the run
    for messages in PROMPTS:
        assert fast.prompt_ids(messages) == hf.prompt_ids(messages)
        expected = greedy_ids(hf, messages, 12)
        assert greedy_ids(fast, messages, 12) == expected
        assert hf.decode(expected).startswith("i ")


@pytest.mark.smollm2
def test_llamacpp_matches_hf_on_smollm2_for_32_tokens():
    pytest.importorskip("llama_cpp", reason="the llama.cpp backend is an optional extra: pip install '.[llamacpp]'")
    hf = load_hf_backend(DEFAULT_MODEL)
    fast = load_backend(DEFAULT_MODEL, "llamacpp", quant="f16")
    messages = [{"role": "user", "content": "Give me three tips for staying focused while studying."}]
    expected = greedy_ids(hf, messages, 32)
    assert len(expected) == 32
    assert greedy_ids(fast, messages, 32) == expected


def test_llamacpp_batch_equals_solo_and_seeds_hold_in_a_crowd(tiny_run):
    pytest.importorskip("llama_cpp", reason="the llama.cpp backend is an optional extra: pip install '.[llamacpp]'")
    fast = load_backend(str(tiny_run), "llamacpp", quant="f16")
    prompts = [fast.prompt_ids(m) for m in PROMPTS] + [fast.prompt_ids([{"role": "user", "content": "a story"}])]
    samplings = [Sampling(temperature=0, max_new_tokens=12), Sampling(temperature=1.0, seed=5, max_new_tokens=12),
                 Sampling(temperature=0.8, top_p=0.9, seed=9, max_new_tokens=7)]
    solo = []
    for prompt, sampling in zip(prompts, samplings):
        solo.append([])
        fast.generate(prompt, sampling, lambda token: solo[-1].append(token) or True)
    together: list[list[int]] = [[] for _ in prompts]
    decode_together(fast, prompts, samplings, [lambda t, row=row: together[row].append(t) or True
                                               for row in range(len(prompts))])
    assert together == solo and len(together[2]) <= 7
    end = fast.stop_ids
    assert all(len(row) == 12 or row[-1] in end for row in together[:2])
    assert fast.decode(together[0]).startswith("i ")


def chat_turns(backend, batch, users: list[str], sampling: Sampling) -> tuple[list[list[int]], list[int], list]:
    """A chat through one batch, as the server's engine keeps it: each turn's prompt is the previous prompt, the
    reply and the next user message. Returns every turn's reply ids, how many prompt tokens each reused, and its
    prompt ids."""
    messages, replies, reused, prompts = [], [], [], []
    for text in users:
        messages.append({"role": "user", "content": text})
        prompts.append(backend.prompt_ids(messages))
        row, out = batch.add(prompts[-1], sampling), []
        reused.append(batch.reused(row))
        while not out or (out[-1] not in backend.stop_ids and len(out) < sampling.max_new_tokens):
            out += batch.step().values()
        batch.remove(row)
        replies.append(out)
        messages.append({"role": "assistant", "content": backend.decode(out)})
    return replies, reused, prompts


CHAT = ["hello how are you 3", "what is your favourite food", "and what else do you like"]


def test_prefix_reuse_reads_only_the_new_part_of_each_turn_and_changes_no_token(tiny_run):
    pytest.importorskip("llama_cpp", reason="the llama.cpp backend is an optional extra: pip install '.[llamacpp]'")
    from chattune.generate.llamacpp import LlamaCppBackend

    greedy = Sampling(temperature=0, max_new_tokens=12)
    plain = LlamaCppBackend.load(str(tiny_run), "f16", prefix_reuse=False)
    expected, none_reused, _ = chat_turns(plain, plain.new_batch(), CHAT, greedy)
    fast = LlamaCppBackend.load(str(tiny_run), "f16")
    replies, reused, prompts = chat_turns(fast, fast.new_batch(), CHAT, greedy)
    assert replies == expected and none_reused == [0, 0, 0]
    assert fast.decode(replies[0]).startswith("i ")
    # a later turn reads none of the previous prompt again, only the previous reply (exactly its stop token and the
    # newline after it when the reply's text tokenizes back to the ids generated) and the new user message
    for turn in (1, 2):
        assert reused[turn] >= len(prompts[turn - 1]) and len(prompts[turn]) - reused[turn] < len(prompts[turn]) / 2
    assert len(prompts[1]) - reused[1] == len(fast.prompt_ids([{"role": "user", "content": CHAT[1]}])) + 2


def test_terminal_chat_turns_reuse_the_previous_turn_and_an_interrupted_turn_leaves_no_row(tiny_run):
    """`generate` (terminal chat) keeps its batch between calls: turn 2 reads only its new part and decodes what a
    fresh backend decodes; a turn stopped by its caller (Ctrl-C in the chat) leaves no row behind."""
    pytest.importorskip("llama_cpp", reason="the llama.cpp backend is an optional extra: pip install '.[llamacpp]'")
    from chattune.generate.llamacpp import LlamaCppBackend

    greedy = Sampling(temperature=0, max_new_tokens=12)
    fast = LlamaCppBackend.load(str(tiny_run), "f16")
    plain = LlamaCppBackend.load(str(tiny_run), "f16", prefix_reuse=False)
    messages, prompt_reads = [], []
    for text in CHAT[:2]:
        messages.append({"role": "user", "content": text})
        prompt, reply, expected = fast.prompt_ids(messages), [], []
        cells_before = fast.kept_batch.cache.next_cell if fast.kept_batch else 0  # one cell per token read
        fast.generate(prompt, greedy, lambda token: reply.append(token) or True)
        plain.generate(prompt, greedy, lambda token: expected.append(token) or True)
        assert reply == expected
        prompt_reads.append(fast.kept_batch.cache.next_cell - cells_before - (len(reply) - 1))
        messages.append({"role": "assistant", "content": fast.decode(reply)})
    assert prompt_reads[0] == len(fast.prompt_ids(messages[:1])) and prompt_reads[1] < len(prompt) / 2

    def interrupted(token_id: int) -> bool:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fast.generate(fast.prompt_ids(messages + [{"role": "user", "content": CHAT[2]}]), greedy, interrupted)
    assert not fast.kept_batch.sequences


@pytest.mark.parametrize("parked", [30, 3])  # 30: the 256 cells run out first; 3: the sequence ids do
def test_prefix_reuse_evicts_parked_chats_when_their_cells_or_ids_are_needed(tiny_run, monkeypatch, parked):
    pytest.importorskip("llama_cpp", reason="the llama.cpp backend is an optional extra: pip install '.[llamacpp]'")
    from chattune.generate import llamacpp

    monkeypatch.setattr(llamacpp, "PARKED", parked)
    greedy = Sampling(temperature=0, max_new_tokens=64)  # replies end sooner, but each row reserves 64 cells
    chats = [[f"hello how are you {i}", "what is your favourite food"] for i in range(8)]
    plain = llamacpp.LlamaCppBackend.load(str(tiny_run), "f16", max_batch=2, kv_tokens=256, prefix_reuse=False)
    fast = llamacpp.LlamaCppBackend.load(str(tiny_run), "f16", max_batch=2, kv_tokens=256)
    assert fast.n_seq == 2 + parked and fast.context.n_ctx() == 256
    batch = fast.new_batch()
    for chat in chats:  # 8 chats of ~60 tokens each: more than 256 cells (or 5 ids) hold, so the oldest go
        replies, reused, _ = chat_turns(fast, batch, chat, greedy)
        assert replies == chat_turns(plain, plain.new_batch(), chat, greedy)[0] and reused[1] > 20
        assert batch.cache.used <= 256 and len(batch.cache.parked) <= min(parked + 1, 5)
    # the first turns again, in the same batch: the newest chat is still parked, the oldest was evicted and only
    # the start it shares with the others ("<|im_start|>user\nhello how are you ") is found
    again = [chat_turns(fast, batch, chat[:1], greedy)[1][0] for chat in reversed(chats)]
    assert again[0] == len(fast.prompt_ids([{"role": "user", "content": chats[-1][0]}])) - 1
    assert 0 < again[-1] < again[0]


def test_parked_chats_hold_at_most_parked_cells_and_the_newest_stays(tiny_run):
    pytest.importorskip("llama_cpp", reason="the llama.cpp backend is an optional extra: pip install '.[llamacpp]'")
    from chattune.generate import llamacpp

    greedy = Sampling(temperature=0, max_new_tokens=12)
    # two or three of these chats, in a cache of 1024 cells
    fast = llamacpp.LlamaCppBackend.load(str(tiny_run), "f16", max_batch=2, kv_tokens=1024, parked_cells=150)
    batch = fast.new_batch()
    for i in range(6):
        reused = chat_turns(fast, batch, [f"hello how are you {i}", "what is your favourite food"], greedy)[1]
        assert reused[1] > 20  # the chat's second turn still found its first turn parked
        assert 0 < batch.cache.used <= 150 and len(batch.cache.parked) < 4  # cells, not ids, decided
    # the newest chat goes on reading only its new part; the oldest was evicted long ago
    newest = chat_turns(fast, batch, ["hello how are you 5", "what is your favourite food", "and else?"], greedy)[1]
    oldest = chat_turns(fast, batch, ["hello how are you 0", "what is your favourite food"], greedy)[1]
    assert newest[0] > 15 and oldest[0] < newest[0]


def test_prefix_reuse_keeps_seeded_sampling_reproducible(tiny_run):
    pytest.importorskip("llama_cpp", reason="the llama.cpp backend is an optional extra: pip install '.[llamacpp]'")
    from chattune.generate.llamacpp import LlamaCppBackend

    seeded = Sampling(temperature=1.0, seed=7, max_new_tokens=10)
    plain = LlamaCppBackend.load(str(tiny_run), "f16", prefix_reuse=False)
    fast = LlamaCppBackend.load(str(tiny_run), "f16")
    replies, reused, _ = chat_turns(fast, fast.new_batch(), CHAT, seeded)
    assert replies == chat_turns(plain, plain.new_batch(), CHAT, seeded)[0] and reused[-1] > 0
    assert chat_turns(fast, fast.new_batch(), CHAT, seeded)[0] == replies  # and again, in a fresh batch


def test_identical_prompts_joining_together_read_the_prompt_once(tiny_run):
    pytest.importorskip("llama_cpp", reason="the llama.cpp backend is an optional extra: pip install '.[llamacpp]'")
    from chattune.generate.llamacpp import LlamaCppBackend

    samplings = [Sampling(temperature=0, max_new_tokens=12), Sampling(temperature=1.0, seed=3, max_new_tokens=12),
                 Sampling(temperature=0.8, top_p=0.9, seed=4, max_new_tokens=12)]  # OpenAI n=3, as the engine adds

    def replies(backend) -> tuple[list[list[int]], list[int], int]:
        batch, prompt = backend.new_batch(), backend.prompt_ids([{"role": "user", "content": CHAT[0]}])
        rows = {batch.add(prompt, sampling): [] for sampling in samplings}
        reused, tokens_read = {}, 0
        while len(reused) < len(rows):
            for row, token_id in batch.step().items():
                rows[row].append(token_id)
                if token_id in backend.stop_ids or len(rows[row]) == 12:
                    reused[row] = batch.reused(row)
                    batch.remove(row)
            tokens_read = max(tokens_read, batch.batch.batch.n_tokens)
        return list(rows.values()), [reused[row] for row in rows], tokens_read

    plain = LlamaCppBackend.load(str(tiny_run), "f16", prefix_reuse=False)
    fast = LlamaCppBackend.load(str(tiny_run), "f16")
    expected, none_reused, plain_read = replies(plain)
    together, reused, read = replies(fast)
    prompt_length = len(fast.prompt_ids([{"role": "user", "content": CHAT[0]}]))
    assert together == expected and none_reused == [0, 0, 0] and plain_read == 3 * prompt_length
    assert reused == [0, prompt_length - 1, prompt_length - 1] and read == prompt_length  # the widest step


def test_parked_cells_is_refused_for_the_hf_backend_which_keeps_no_finished_kv(tiny_run):
    from chattune.errors import InputError

    with pytest.raises(InputError, match="--parked-cells.*--backend llamacpp"):
        load_backend(str(tiny_run), "hf", parked_cells=0)


def test_a_joining_prompt_is_read_in_chunks_while_another_row_decodes_and_no_token_changes(tiny_run, monkeypatch):
    pytest.importorskip("llama_cpp", reason="the llama.cpp backend is an optional extra: pip install '.[llamacpp]'")
    from chattune.generate import llamacpp

    monkeypatch.setattr(llamacpp, "CHUNK_TOKENS", 8)
    greedy = Sampling(temperature=0, max_new_tokens=12)
    fast = llamacpp.LlamaCppBackend.load(str(tiny_run), "f16", prefix_reuse=False)
    first, joining = (fast.prompt_ids(m) for m in PROMPTS)
    solo = [greedy_ids(fast, m, 12) for m in PROMPTS]
    batch = fast.new_batch()
    rows, read = {batch.add(first, greedy): []}, []

    def step() -> None:
        for row, token_id in batch.step().items():
            rows[row].append(token_id)
        read.append(batch.batch.batch.n_tokens)

    step()
    assert read == [len(first)] and len(first) > 8  # alone, a prompt is read whole
    rows[batch.add(joining, greedy)] = []
    while len(rows[1]) < len(solo[1]):
        step()
    # the joining prompt took ceil(len / 7) steps of at most 8 tokens (7 of its own and the decoding row's one),
    # and the decoding row got a token in every one of them
    chunks = -(-len(joining) // 7)
    assert read[1:1 + chunks] == [8] * (chunks - 1) + [1 + len(joining) - 7 * (chunks - 1)]
    assert len(rows[0]) >= 1 + chunks or rows[0][-1] in fast.stop_ids
    assert [rows[0][:len(solo[0])], rows[1]] == solo
