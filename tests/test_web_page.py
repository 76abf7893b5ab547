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


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                   "required": ["city"]}}}


def _open(server, browser):
    page = browser.new_page()
    page.goto(server.url + "/")
    page.wait_for_function("document.querySelectorAll('#model option').length > 0", timeout=30_000)
    page.fill("#temp", "0")
    return page


def _answers_done(page, n: int) -> None:
    page.wait_for_function(f"document.querySelectorAll(\".msg.assistant[data-state='done']\").length >= {n}",
                           timeout=120_000)


def test_page_shows_a_tool_call_and_sends_its_result(server, browser):
    """Tools from the page's Tools box with tool choice "required": the server constrains the
    reply to a call (the real model, a grammar); the page shows its name and JSON arguments
    (assembled from the streamed tool-call deltas), and the result typed under it goes back as
    a `tool` message answering that call."""
    import json

    import jsonschema

    page = _open(server, browser)
    bodies = []
    page.on("request", lambda r: bodies.append(json.loads(r.post_data))
            if r.method == "POST" and r.url.endswith("/v1/chat/completions") else None)
    page.click("#toolbox summary")
    page.fill("#tools", json.dumps([WEATHER]))
    page.select_option("#tool-choice", "required")
    page.fill("#input", "What is the weather in Paris?")
    page.click("#send")
    _answers_done(page, 1)
    assert page.inner_text(".msg.assistant .tool-call .tool-name") == "get_weather"
    args = json.loads(page.inner_text(".msg.assistant .tool-call .tool-args"))
    jsonschema.validate(args, WEATHER["function"]["parameters"])
    assert page.inner_text(".msg.assistant .content") == ""  # a call, not text
    assert bodies[0]["tools"] == [WEATHER] and bodies[0]["tool_choice"] == "required"

    page.select_option("#tool-choice", "none")
    page.fill(".tool-result", "sunny, 24 C")
    page.click(".tool-call button")
    _answers_done(page, 2)
    assert page.inner_text(".msg.tool") == "get_weather -> sunny, 24 C"
    sent = bodies[1]["messages"]
    call = sent[1]["tool_calls"][0]
    assert sent[1]["role"] == "assistant" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == args
    assert sent[2] == {"role": "tool", "tool_call_id": call["id"], "name": "get_weather", "content": "sunny, 24 C"}
    final = page.query_selector_all(".msg.assistant")[1]
    assert final.query_selector(".content").inner_text().strip()  # the answer after the result
    assert not page.query_selector_all(".error")


THINKING_TEMPLATE = """{% for m in messages %}<|im_start|>{{ m['role'] }}
{{ m['content'] }}<|im_end|>
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
<think>
{% endif %}"""


@pytest.fixture(scope="module")
def thinking_server(default_model_path, tmp_path_factory):
    """The default model behind a reasoning model's template: like DeepSeek-R1's and Qwen3's,
    its generation prompt opens <think>, so what the model writes is reasoning until </think>."""
    from conftest import ServerProcess

    path = tmp_path_factory.mktemp("tmpl") / "thinking.jinja"
    path.write_text(THINKING_TEMPLATE)
    # the test compares the greedy text of two requests: drafts change a step's batch arithmetic,
    # which can flip a near-tie of this small model (docs/api.md, prompt lookup)
    srv = ServerProcess("-m", str(default_model_path), "--ctx", "2048", "--chat-template-file", str(path),
                        "--no-speculative")
    yield srv
    srv.stop()


def test_page_shows_reasoning_apart_from_the_answer(thinking_server, browser):
    import httpx

    ask = "Why is the sky blue?"
    body = {"messages": [{"role": "user", "content": ask}], "temperature": 0}  # as the page asks
    msg = httpx.post(thinking_server.url + "/v1/chat/completions", json=body, timeout=120).json()["choices"][0]["message"]
    assert (msg.get("reasoning_content") or "").strip()  # the server split it off
    page = _open(thinking_server, browser)
    page.fill("#input", ask)
    page.click("#send")
    _answers_done(page, 1)
    # greedy: the page shows the same reasoning and the same answer, each in its place
    assert page.inner_text(".msg.assistant .reasoning .reasoning-text").strip() == msg["reasoning_content"].strip()
    assert page.inner_text(".msg.assistant .content").strip() == (msg["content"] or "").strip()
    assert page.inner_text(".msg.assistant .reasoning summary") == "Reasoning"
