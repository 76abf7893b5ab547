"""The web chat page in a real headless Chromium (Debian's), against the real server."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium not installed (make test installs it: scripts/system_deps.sh)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                    "--disable-component-update", "--no-first-run"])
        yield b
        b.close()


def test_page_streams_an_answer(server, browser, tmp_path):
    page = browser.new_page()
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(server.url + "/")
    page.wait_for_function("document.querySelectorAll('#model option').length > 0", timeout=30_000)
    page.fill("#temp", "0")  # greedy: a known answer
    page.fill("#input", "What is 2+2?")
    # a short greedy answer can finish between two polls from here: the page itself records
    # whether the stop button was live while the answer streamed
    page.evaluate("""() => {
        window.stopLive = false;
        new MutationObserver(() => {
            if (document.querySelector(".msg.assistant[data-state='streaming']") && !document.querySelector("#stop").disabled)
                window.stopLive = true;
        }).observe(document.body, {subtree: true, childList: true, attributes: true, characterData: true});
    }""")
    page.click("#send")
    page.wait_for_selector(".msg.assistant[data-state='done']", timeout=120_000)
    assert page.evaluate("window.stopLive")  # stop button live while streaming
    assert not page.is_enabled("#stop")  # and off again once the answer is done
    answer = page.inner_text(".msg.assistant")
    assert "4" in answer
    assert "tokens" in answer  # the usage line from the final streamed chunk
    assert page.inner_text(".msg.user") == "What is 2+2?"
    page.screenshot(path=str(tmp_path / "chat.png"))
    # offline by design: nothing but our own server was fetched
    assert all(u.startswith(server.url) for u in requests), requests


def test_stop_button_cancels_the_stream(server, browser):
    page = browser.new_page()
    page.goto(server.url + "/")
    page.wait_for_function("document.querySelectorAll('#model option').length > 0", timeout=30_000)
    page.fill("#input", "Write a very long story about a dragon.")
    page.click("#send")
    page.wait_for_function("document.querySelector('.msg.assistant').textContent.length > 5", timeout=60_000)
    page.click("#stop")
    page.wait_for_selector(".msg.assistant[data-state='done']", timeout=30_000)
    assert page.is_enabled("#send")
