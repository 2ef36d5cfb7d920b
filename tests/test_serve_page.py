"""The web chat page in Debian's Chromium (driven by Playwright): streaming, stop, feedback, and safe rendering."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
from serve_helpers import LEARNED, chat_run, one_torch_thread, thread_server

from chattune.cli import main
from chattune.generate.hf import HFBackend, load_hf_backend
from chattune.serve.engine import Engine

CHROMIUM = "/usr/bin/chromium"  # Debian's package (`make install` adds it); never a downloaded browser
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
MODEL_ID = "tiny-chat"
REPLY = '.message.assistant'


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
    with one_torch_thread(), thread_server(create_app(engine, store, MODEL_ID)) as url:
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


@pytest.fixture
def page(browser, site):
    page = browser.new_page(bypass_csp=True)  # Playwright's own waits evaluate strings; CSP: test_serve_guard
    page.set_default_timeout(20_000)
    page.goto(site[0])
    page.wait_for_function(f"document.querySelector('#model').textContent === {MODEL_ID!r}")
    page.click("#settings summary")
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
