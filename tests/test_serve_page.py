"""The web chat page in Debian's Chromium (driven by Playwright): streaming, stop, feedback, regenerate, copy, the
server's decoding defaults, and safe markdown rendering."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
from serve_helpers import LEARNED, chat_run, one_torch_thread, thread_server

from chattune.cli import main
from chattune.generate.hf import HFBackend, load_hf_backend
from chattune.generate.sampling import Sampling
from chattune.serve.engine import Engine

CHROMIUM = "/usr/bin/chromium"  # Debian's package (`make install` adds it); never a downloaded browser
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
MODEL_ID = "tiny-chat"
REPLY = '.message.assistant'
# the server's decoding defaults, unlike chattune's own (0.7, 128), so the page shows them only if it asks
# no loop guard: the stop test needs a reply that runs on (the tiny model ends early once it cannot repeat)
DEFAULTS = Sampling(temperature=0.3, max_new_tokens=77, no_repeat_ngram_size=0)


class UnhurriedBackend(HFBackend):
    """3 ms more per decode step: the 490-token story then takes ~2 s, time for a browser to press stop on a busy
    machine."""

    def new_batch(self):
        batch = super().new_batch()
        step = batch.step
        batch.step = lambda: time.sleep(0.003) or step()
        return batch


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_llama):
    from chattune.serve.app import create_app
    from chattune.serve.store import Store

    db = tmp_path_factory.mktemp("serve-page") / "feedback.sqlite"
    loaded = load_hf_backend(str(chat_run(tmp_path_factory, tiny_llama)))
    engine = Engine(UnhurriedBackend(loaded.model, loaded.tokenizer))
    store = Store(db)
    with one_torch_thread(), thread_server(create_app(engine, store, MODEL_ID, defaults=DEFAULTS)) as url:
        yield url, db
    engine.close()
    store.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), "the page tests need Debian's chromium: apt-get install chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_page(browser, url: str):
    # Playwright's own waits evaluate strings, so it bypasses the page's CSP (checked in test_serve_guard)
    page = browser.new_page(bypass_csp=True, permissions=["clipboard-read", "clipboard-write"])
    page.set_default_timeout(20_000)
    page.goto(url)
    page.wait_for_function(f"document.querySelector('#model').textContent === {MODEL_ID!r}")
    page.click("#settings summary")
    return page


@pytest.fixture
def page(browser, site):
    page = open_page(browser, site[0])
    page.fill("#temperature", "0")  # greedy: the replies are exactly what the model learned
    yield page
    page.close()


def rows(db: Path, sql: str) -> list[dict]:
    with sqlite3.connect(db) as connection:
        connection.row_factory = sqlite3.Row
        return [dict(row) for row in connection.execute(sql)]


def send(page, text: str) -> None:
    count = page.locator(REPLY).count()
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")
    page.locator(REPLY).nth(count).wait_for()


def test_streamed_reply_thumbs_down_edit_then_dpo_export(page, site, tmp_path):
    url, db = site
    page.evaluate("""() => {  // every text the reply shows while it streams
        window.seen = [];
        new MutationObserver(() => {
            const reply = document.querySelector('.message.assistant:last-of-type .content');
            if (reply && reply.textContent) window.seen.push(reply.textContent);
        }).observe(document.querySelector('#messages'), {subtree: true, childList: true, characterData: true});
    }""")
    send(page, "hello how are you")
    reply = page.locator(REPLY).last
    page.locator(f'{REPLY}[data-state="done"]').wait_for()
    original = LEARNED["hello how are you"]
    assert reply.locator(".content").text_content() == original
    seen = page.evaluate("[...new Set(window.seen)]")
    assert len(seen) > 3 and all(original.startswith(text) for text in seen)  # grew piece by piece

    reply.locator(".rate-down").click()
    page.locator(f'{REPLY}[data-rating="-1"] .rate-down[aria-pressed="true"]').wait_for()
    wanted = "i am great, thanks for asking!"
    reply.locator(".edit").click()
    reply.locator(".edit-box").fill(wanted)
    reply.locator(".save-edit").click()
    page.locator(f'{REPLY}[data-edited="true"]').wait_for()
    assert reply.locator(".content").text_content() == wanted
    assert reply.locator(".original").text_content() == original

    send(page, "what is your favourite food")  # the conversation goes on from the edited reply
    page.locator(f'{REPLY}[data-state="done"]').nth(1).wait_for()
    first, second = rows(db, "SELECT * FROM replies ORDER BY created")[-2:]
    assert (first["content"], first["model"], first["temperature"]) == (original, MODEL_ID, 0)
    assert json.loads(second["messages"]) == [{"role": "user", "content": "hello how are you"},
                                              {"role": "assistant", "content": wanted},
                                              {"role": "user", "content": "what is your favourite food"}]
    assert first["conversation_id"] == second["conversation_id"] != first["id"]
    feedback = rows(db, f"SELECT * FROM feedback WHERE reply_id = '{first['id']}'")
    assert [(f["rating"], f["edited"]) for f in feedback] == [(-1, wanted)]

    out = tmp_path / "pairs.jsonl"
    assert main(["feedback", "export", "--format", "dpo", str(out), "--db", str(db)]) == 0
    pairs = [json.loads(line) for line in out.read_text().splitlines()]
    assert {"prompt": [{"role": "user", "content": "hello how are you"}],
            "chosen": [{"role": "assistant", "content": wanted}],
            "rejected": [{"role": "assistant", "content": original}]} in pairs


def test_reply_with_html_is_shown_as_literal_text(page):
    payload = "<img src=x onerror=alert(1)> and <b>bold</b>"
    pieces = [payload[:9], payload[9:30], payload[30:]]
    events = [{"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": MODEL_ID,
               "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]} for piece in pieces]
    body = "".join(f"data: {json.dumps(event)}\n\n" for event in events) + "data: [DONE]\n\n"
    page.route("**/v1/chat/completions",
               lambda route: route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body))
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    send(page, "<img src=y onerror=alert(2)>")
    page.locator(f'{REPLY}[data-state="done"]').wait_for()
    assert page.locator(f"{REPLY} .content").text_content() == payload
    assert page.locator(".message.user .content").text_content() == "<img src=y onerror=alert(2)>"
    assert page.locator("#messages img, #messages b").count() == 0 and dialogs == []


def test_stop_button_stops_generation_and_new_chat_clears(page, site):
    url, db = site
    page.fill("#max-tokens", "1024")
    send(page, "tell me a story")
    page.wait_for_function("document.querySelector('.message.assistant .content').textContent.length > 0")
    page.click("#stop")
    page.locator(f'{REPLY}[data-state="stopped"]').wait_for()
    assert page.locator("#send").is_visible() and page.locator(f"{REPLY} .note").text_content() == "stopped"
    deadline = time.monotonic() + 20
    while not (cancelled := rows(db, "SELECT * FROM replies WHERE finish_reason = 'cancelled'")):
        assert time.monotonic() < deadline, "the stopped reply was never recorded"
        time.sleep(0.05)
    assert cancelled[-1]["completion_tokens"] < 400 and cancelled[-1]["max_tokens"] > 400

    page.click("#new-chat")
    assert page.locator(".message").count() == 0
    send(page, "hello how are you")
    page.locator(f'{REPLY}[data-state="done"]').wait_for()
    latest = rows(db, "SELECT conversation_id FROM replies ORDER BY created DESC LIMIT 2")
    assert latest[0]["conversation_id"] != latest[1]["conversation_id"]


def fake_stream(page, text: str) -> None:
    """The next reply the page asks for is `text`, streamed in three pieces (no model involved)."""
    thirds = [text[: len(text) // 3], text[len(text) // 3 : 2 * len(text) // 3], text[2 * len(text) // 3 :]]
    events = [{"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": MODEL_ID,
               "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]} for piece in thirds]
    body = "".join(f"data: {json.dumps(event)}\n\n" for event in events) + "data: [DONE]\n\n"
    page.route("**/v1/chat/completions",
               lambda route: route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body))


def test_markdown_renders_and_html_in_it_stays_text(page):
    reply = ("**bold** and `code` and *soft*\n\n- one <img src=x onerror=alert(1)>\n- two\n\n"
             "```\n<script>alert(2)</script>\n```\n[site](javascript:alert(3)) [docs](https://example.org/a)")
    fake_stream(page, reply)
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    send(page, "format something")
    page.locator(f'{REPLY}[data-state="done"]').wait_for()
    content = page.locator(f"{REPLY} .content")
    assert content.locator("strong").text_content() == "bold"
    assert content.locator("p > code").text_content() == "code" and content.locator("em").text_content() == "soft"
    assert content.locator("li").all_text_contents() == ["one <img src=x onerror=alert(1)>", "two"]
    assert content.locator("pre code").text_content() == "<script>alert(2)</script>"
    assert content.locator("a").count() == 1 and content.locator("a").get_attribute("href") == "https://example.org/a"
    assert "[site](javascript:alert(3))" in content.text_content()  # not a link: only http(s) addresses are
    assert page.locator("#messages img, #messages script").count() == 0 and dialogs == []


def test_copy_puts_the_replys_markdown_on_the_clipboard(page):
    reply = "**bold** reply\nsecond line"
    fake_stream(page, reply)
    send(page, "say something")
    page.locator(f'{REPLY}[data-state="done"]').wait_for()
    page.locator(f"{REPLY} .copy").click()
    page.locator(f"{REPLY} .copy", has_text="Copied").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == reply


def test_settings_start_from_the_servers_defaults_and_empty_fields_use_them(browser, site):
    url, db = site
    page = open_page(browser, url)
    assert page.input_value("#temperature") == "0.3" and page.input_value("#max-tokens") == "77"
    page.fill("#temperature", "")  # emptied: the request leaves it out, the server's default applies
    send(page, "hello how are you")
    page.locator(f'{REPLY}[data-state="done"]').wait_for()
    [row] = rows(db, "SELECT temperature, max_tokens FROM replies ORDER BY created DESC LIMIT 1")
    assert (row["temperature"], row["max_tokens"]) == (0.3, 77)
    page.close()


def test_regenerate_stores_a_sibling_and_thumbs_on_both_export_a_dpo_pair(page, site, tmp_path):
    url, db = site
    page.fill("#temperature", "1.5")  # sampled: the second reply differs from the first
    page.fill("#max-tokens", "8")
    send(page, "food")
    first = page.locator(REPLY).nth(0)
    page.locator(f'{REPLY}[data-state="done"]').wait_for()
    first.locator(".regenerate").click()
    second = page.locator(REPLY).nth(1)
    page.locator(f'{REPLY}[data-state="done"]').nth(1).wait_for()
    assert first.get_attribute("data-superseded") == "true" and first.locator(".regenerate").is_disabled()
    first.locator(".rate-up").click()
    page.locator(f'{REPLY}[data-rating="1"]').wait_for()
    second.locator(".rate-down").click()
    page.locator(f'{REPLY}[data-rating="-1"]').wait_for()

    later, earlier = rows(db, "SELECT messages, content, conversation_id FROM replies ORDER BY created DESC LIMIT 2")
    assert (earlier["messages"], earlier["conversation_id"]) == (later["messages"], later["conversation_id"])
    first_text, second_text = earlier["content"], later["content"]  # siblings: the same context, two replies
    assert first_text != second_text, "sampling at 1.5 gave the same 8 tokens twice"
    out = tmp_path / "pairs.jsonl"
    assert main(["feedback", "export", "--format", "dpo", str(out), "--db", str(db)]) == 0
    pairs = [json.loads(line) for line in out.read_text().splitlines()]
    assert {"prompt": [{"role": "user", "content": "food"}],
            "chosen": [{"role": "assistant", "content": first_text}],
            "rejected": [{"role": "assistant", "content": second_text}]} in pairs

    send(page, "hello")  # the conversation goes on from the regenerated reply
    page.locator(f'{REPLY}[data-state="done"]').nth(2).wait_for()
    [latest] = rows(db, "SELECT messages FROM replies ORDER BY created DESC LIMIT 1")
    assert json.loads(latest["messages"])[1] == {"role": "assistant", "content": second_text}
