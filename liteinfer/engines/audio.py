"""Audio in and out: decoding any container to the mono 16 kHz float32 samples speech-to-text
takes, and encoding synthesized 16-bit PCM as WAV, raw PCM, MP3, Opus, AAC or FLAC as it
arrives (streaming).

    samples = decode(data)                         # bytes of any container -> float32 [n] at 16 kHz
    enc = encoder("mp3", rate=24000)               # StreamEncoder: push(pcm16) -> bytes, finish() -> bytes
    chunks = [enc.push(pcm) for pcm in pieces] + [enc.finish()]

FFmpeg's libraries do the work through PyAV (`av`, installed with the voice extra; faster-whisper
needs it too): demuxing, decoding and resampling (libswresample), and the MP3 / Opus / AAC /
FLAC encoders; no resampler or codec is written here. WAV and raw PCM need only the header.
Bad input is a `BadAudio` (HTTP 400): empty, not audio, no audio stream, longer than the limit.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator

from liteinfer.core.errors import LiteInferError

STT_RATE = 16000  # what Whisper and Silero VAD take
# OpenAI's speech formats; "pcm" is raw 16-bit little-endian mono at the stream's rate (24 kHz there)
FORMATS = ("wav", "pcm", "mp3", "opus", "aac", "flac")
MEDIA_TYPES = {"wav": "audio/wav", "pcm": "audio/pcm", "mp3": "audio/mpeg", "opus": "audio/ogg",
               "aac": "audio/aac", "flac": "audio/flac"}
# format -> (FFmpeg muxer, encoder, sample format, the encoder's rate or None for the stream's)
_AV_CODECS = {"mp3": ("mp3", "libmp3lame", "s16p", None), "opus": ("ogg", "libopus", "s16", 48000),
              "aac": ("adts", "aac", "fltp", None), "flac": ("flac", "flac", "s16", None)}
VOICE_EXTRA = "pip install 'liteinfer[voice]'"


class BadAudio(LiteInferError):
    """The upload is not usable audio (HTTP 400)."""


class AudioTooLong(BadAudio):
    """Longer than the configured limit (HTTP 413)."""


def _av():
    try:
        # on use: PyAV is in the voice extra (optional package), and loads FFmpeg's libraries (memory)
        import av
    except ImportError:
        raise LiteInferError(f"audio decoding needs PyAV: {VOICE_EXTRA}") from None
    return av


def decode(data: bytes, rate: int = STT_RATE, max_seconds: float | None = None):
    """Mono float32 samples in [-1, 1] at `rate`, from any container and codec FFmpeg reads.
    Raises BadAudio for empty or unreadable input, AudioTooLong past `max_seconds` (checked from
    the header when it says, and while decoding when it lies)."""
    # on use: numpy only with audio (memory: the LLM-only server never loads it)
    import numpy as np

    if not data:
        raise BadAudio("the audio file is empty")
    av = _av()
    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except (av.FFmpegError, ValueError, EOFError) as e:
        raise BadAudio(f"not a readable audio file ({_why(e)})") from None
    with container:
        streams = container.streams.audio
        if not streams:
            raise BadAudio("the file has no audio stream")
        stream = streams[0]
        if max_seconds is not None and stream.duration and stream.time_base:
            claimed = float(stream.duration * stream.time_base)
            if claimed > max_seconds + 1:
                raise AudioTooLong(f"audio is {claimed:.1f} s long; the limit is {max_seconds:g} s")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        limit = int((max_seconds + 1) * rate) if max_seconds is not None else None
        parts, n = [], 0
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    parts.append(out.to_ndarray().reshape(-1))
                    n += parts[-1].size
                if limit is not None and n > limit:
                    raise AudioTooLong(f"audio is longer than the limit of {max_seconds:g} s")
            for out in resampler.resample(None):
                parts.append(out.to_ndarray().reshape(-1))
        except (av.FFmpegError, ValueError, EOFError) as e:
            if not parts:
                raise BadAudio(f"not a readable audio file ({_why(e)})") from None
            # a truncated tail: keep what decoded (players do the same)
    samples = np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros(0, np.float32)
    if samples.size < rate // 100:  # under 10 ms
        raise BadAudio("the file holds no audio samples")
    return samples


def _why(e: Exception) -> str:
    msg = getattr(e, "strerror", None) or (str(e).splitlines() or [type(e).__name__])[0]
    return msg[:120]


def pcm16(samples) -> bytes:
    """float32 [-1, 1] -> 16-bit little-endian PCM bytes."""
    # on use: numpy with audio, as above (memory)
    import numpy as np

    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def wav_header(rate: int, n_bytes: int | None = None) -> bytes:
    """A 44-byte header for 16-bit mono PCM; sizes 0xFFFFFFFF when the length is not known yet
    (a stream: readers take the data to the end, as they do for OpenAI's streamed WAV)."""
    data = 0xFFFFFFFF if n_bytes is None else n_bytes
    riff = 0xFFFFFFFF if n_bytes is None else 36 + n_bytes
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
            + b"data" + struct.pack("<I", data))


# ---- streaming encoders -------------------------------------------------------------------


class StreamEncoder:
    """16-bit mono PCM at `rate` in, the format's bytes out as soon as the encoder has them."""

    media_type = "application/octet-stream"

    def push(self, pcm: bytes) -> bytes:
        raise NotImplementedError

    def finish(self) -> bytes:
        return b""


class _RawEncoder(StreamEncoder):
    def __init__(self, fmt: str, rate: int):
        self.media_type = MEDIA_TYPES[fmt]
        self._header = wav_header(rate) if fmt == "wav" else b""

    def push(self, pcm: bytes) -> bytes:
        head, self._header = self._header, b""
        return head + pcm

    def finish(self) -> bytes:
        return self.push(b"")  # an empty stream still gets its header


class _Sink(io.RawIOBase):
    """Where the muxer writes: bytes wait here until the encoder hands them out."""

    def __init__(self):
        self.buf = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.buf += b
        return len(b)

    def take(self) -> bytes:
        out, self.buf = bytes(self.buf), bytearray()
        return out


class _AVEncoder(StreamEncoder):
    def __init__(self, fmt: str, rate: int):
        av = _av()
        muxer, codec, sample_fmt, codec_rate = _AV_CODECS[fmt]
        self.media_type = MEDIA_TYPES[fmt]
        self._av, self._rate, self._pts = av, rate, 0
        self._sink = _Sink()
        self._out = av.open(self._sink, mode="w", format=muxer)
        self._stream = self._out.add_stream(codec, rate=codec_rate or rate, layout="mono")
        self._stream.format = sample_fmt
        self._resampler = av.AudioResampler(format=sample_fmt, layout="mono", rate=codec_rate or rate)

    def _encode(self, frame) -> bytes:
        for f in self._resampler.resample(frame):
            for packet in self._stream.encode(f):
                self._out.mux(packet)
        return self._sink.take()

    def push(self, pcm: bytes) -> bytes:
        # on use: numpy with audio, as above (memory)
        import numpy as np

        if not pcm:
            return b""
        samples = np.frombuffer(pcm, dtype="<i2").reshape(1, -1)
        frame = self._av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate, frame.pts = self._rate, self._pts
        self._pts += samples.shape[1]
        return self._encode(frame)

    def finish(self) -> bytes:
        out = self._encode(None)
        for packet in self._stream.encode(None):
            self._out.mux(packet)
        self._out.close()
        return out + self._sink.take()


def available_formats() -> list[str]:
    """The speech formats this install can write: wav and pcm always, the others when FFmpeg
    (through PyAV) has their encoder."""
    out = ["wav", "pcm"]
    try:
        av = _av()
    except LiteInferError:
        return out
    for fmt, (muxer, codec, _, _) in _AV_CODECS.items():
        try:
            av.codec.Codec(codec, "w")
        except Exception:
            continue
        if muxer in av.formats_available:
            out.append(fmt)
    return out


def encoder(fmt: str, rate: int) -> StreamEncoder:
    """A streaming encoder for one of FORMATS; LiteInferError naming the format when this
    install cannot write it."""
    if fmt in ("wav", "pcm"):
        return _RawEncoder(fmt, rate)
    if fmt not in _AV_CODECS:
        raise LiteInferError(f"response_format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if fmt not in available_formats():
        raise LiteInferError(f"response_format {fmt!r}: no {fmt} encoder is installed here "
                             f"(available: {', '.join(available_formats())})")
    return _AVEncoder(fmt, rate)


def resample_pcm16(chunks: Iterator[bytes], rate_in: int, rate_out: int) -> Iterator[bytes]:
    """16-bit mono PCM chunks from one rate to another as they come (FFmpeg's libswresample)."""
    if rate_in == rate_out:
        yield from chunks
        return
    # on use: numpy with audio, as above (memory)
    import numpy as np

    av = _av()
    rs = av.AudioResampler(format="s16", layout="mono", rate=rate_out)
    pts = 0
    for pcm in chunks:
        if not pcm:
            continue
        samples = np.frombuffer(pcm, dtype="<i2").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate, frame.pts = rate_in, pts
        pts += samples.shape[1]
        out = b"".join(f.to_ndarray().astype("<i2").tobytes() for f in rs.resample(frame))
        if out:
            yield out
    tail = b"".join(f.to_ndarray().astype("<i2").tobytes() for f in rs.resample(None))
    if tail:
        yield tail
