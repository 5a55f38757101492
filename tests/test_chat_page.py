"""The chat page of `icft serve`, in a real browser: Debian's chromium driven headless by Playwright against a real
server (API key set, retrieval on) on a free loopback port.

Skipped, with the reason, where /usr/bin/chromium or the playwright package is missing (`.ci/run` installs
chromium; playwright is a dev extra). No browser is downloaded: Playwright drives the system's chromium.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from _serve_server import Server, long_llama, request

CHROMIUM = Path("/usr/bin/chromium")
KEY = "page-key-456"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip

# Every change to the last answer's text, as lengths: an answer that streams grows in many steps.
RECORD_GROWTH = """() => {
  window.lengths = [];
  new MutationObserver(() => {
    const answers = document.querySelectorAll('.turn.assistant .text');
    if (answers.length) window.lengths.push(answers[answers.length - 1].textContent.length);
  }).observe(document.getElementById('log'), {childList: true, subtree: true, characterData: true});
}"""


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: `apt-get install -y chromium` (.ci/run does it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing: pip install -e '.[dev]'")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, bert_tokenizer, browser):  # the browser first: a skip skips before the server starts
    folder = tmp_path_factory.mktemp("chat-page")
    model = long_llama(folder / "model", bert_tokenizer)
    running = Server(model, folder, "--api-key", KEY, pace=0.005)  # a 1900-token answer runs >= 19 s: Stop finds it
    yield running
    running.stop()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1000, "height": 800})
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "401" not in m.text else None)
    yield page
    context.close()
    assert not errors, errors  # no script errors, no CSP violations


def answers(page):
    return page.locator(".turn.assistant")


def ask(page, question: str, max_tokens: int) -> dict:
    """Types a question and sends it with Enter; returns the JSON body the page sent."""
    page.get_by_label("Max answer tokens").fill(str(max_tokens))
    page.get_by_label("Your question").fill(question)
    with page.expect_request("**/v1/chat/completions") as sent:
        page.get_by_label("Your question").press("Enter")
    return json.loads(sent.value.post_data)


def idle(server, within: float = 2.0) -> bool:
    deadline = time.time() + within
    while time.time() < deadline:
        if request(f"{server.url}/health")[2]["running"] == 0:
            return True
        time.sleep(0.05)
    return False


def test_the_page_asks_for_the_key_and_lets_in_only_the_right_one(page, server):
    page.goto(server.url)
    key = page.get_by_label("API key")
    key.wait_for()
    assert not page.get_by_label("Your question").is_visible()
    key.fill("wrong-key")
    page.get_by_role("button", name="Connect").click()
    page.get_by_text("That key was not accepted.").wait_for()
    assert not page.get_by_label("Your question").is_visible()

    key.fill(KEY)
    page.get_by_role("button", name="Connect").click()
    page.get_by_label("Your question").wait_for()
    assert "tiny" in page.locator("#model").text_content()
    assert page.get_by_role("note").text_content().count("not a source of medical advice") == 1


def test_chat_streams_shows_facts_stops_and_starts_over(page, server):
    page.goto(server.url)
    page.get_by_label("API key").fill(KEY)
    page.get_by_role("button", name="Connect").click()
    page.get_by_label("Your question").wait_for()
    page.evaluate(RECORD_GROWTH)

    # 1. a question: the answer grows while it streams, then the retrieved facts and the run's name show
    question = "What is the capital of France?"
    sent = ask(page, question, 40)
    assert sent["stream"] is True and sent["messages"] == [{"role": "user", "content": question}]
    first = answers(page).nth(0)
    first.locator(".run").wait_for()
    growth = page.evaluate("window.lengths")
    assert len({n for n in growth if n > 0}) >= 5, growth  # many partial answers, not one at the end
    assert growth == sorted(growth)  # it only grew
    assert "Answered by tiny" in first.locator(".run").text_content()
    facts = first.locator(".facts li")
    assert facts.count() == 2
    top = facts.nth(0).text_content()
    assert "kb-france" in top and "Paris" in top and "score" in top
    answer = first.locator(".text").text_content()
    assert answer.strip()

    # 2. a long answer, stopped mid-way: it stops growing, the server stops generating, the page is ready again
    sent = ask(page, "Tell me everything about insulin.", 1900)
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]  # the conversation is kept
    assert sent["messages"][1]["content"] == answer
    second = answers(page).nth(1)
    page.wait_for_function("() => document.querySelectorAll('.turn.assistant .text')[1].textContent.length > 20")
    page.get_by_role("button", name="Stop").click()
    second.get_by_text("stopped").wait_for()
    shown = second.locator(".text").text_content()
    assert idle(server), "the server went on generating after Stop"
    time.sleep(0.5)
    assert second.locator(".text").text_content() == shown  # no more text after Stop
    assert page.get_by_role("button", name="Send").is_enabled()
    assert not page.get_by_role("button", name="Stop").is_enabled()

    # 3. a new conversation: the log is empty and the next question goes alone
    page.get_by_role("button", name="New conversation").click()
    assert answers(page).count() == 0
    sent = ask(page, "Which drug is acetylsalicylic acid?", 5)
    assert sent["messages"] == [{"role": "user", "content": "Which drug is acetylsalicylic acid?"}]
    answers(page).nth(0).locator(".run").wait_for()
    assert "kb-aspirin" in answers(page).nth(0).locator(".facts").text_content()


def test_the_page_says_when_no_fact_passed_the_floor(page, server):
    """The served model has no relevance floor, so the page is played a stream whose facts all fell below one, built
    from the server's own response models."""
    from icft.inference.generate import Completion
    from icft.inference.serve.responses import Reply, event

    reply = Reply(chat=True, model="tiny")
    done = Completion("Paris.", 12, 2, "stop", unmet_floor=0.35)
    stream = [reply.chunk("", role="assistant"), reply.chunk("Paris."), reply.chunk(None, "stop", done)]
    body = "".join(event(chunk) for chunk in stream) + "data: [DONE]\n\n"
    page.route("**/v1/chat/completions", lambda route: route.fulfill(status=200, body=body,
                                                                      content_type="text/event-stream"))  # fmt: skip
    page.goto(server.url)
    page.get_by_label("API key").fill(KEY)
    page.get_by_role("button", name="Connect").click()
    page.get_by_label("Your question").wait_for()
    ask(page, "Who won the 1950 World Cup?", 5)
    answer = answers(page).nth(0)
    answer.locator(".run").wait_for()
    assert answer.locator(".text").text_content() == "Paris."
    assert "No fact passed the floor 0.35" in answer.locator(".memory").text_content()
    assert answer.locator(".facts").count() == 0


def test_usable_at_a_phone_width(browser, server):
    context = browser.new_context(viewport={"width": 360, "height": 740}, device_scale_factor=2, is_mobile=True)
    page = context.new_page()
    page.goto(server.url)
    page.get_by_label("API key").fill(KEY)
    page.get_by_role("button", name="Connect").click()
    page.get_by_label("Your question").wait_for()
    ask(page, "What is the capital of France?", 30)
    answers(page).nth(0).locator(".facts").wait_for()
    assert page.evaluate("document.documentElement.scrollWidth") <= 360  # nothing wider than the screen
    for name in ("Send", "Stop", "New conversation"):
        box = page.get_by_role("button", name=name).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 360 and box["height"] >= 30, (name, box)
    if os.environ.get("ICFT_SCREENSHOT"):  # a picture of the page for the docs
        page.screenshot(path=os.environ["ICFT_SCREENSHOT"], full_page=True)
    context.close()
