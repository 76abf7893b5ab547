"""Voice activity: Silero VAD (ONNX, MIT) frame by frame, and the end-of-utterance policy.

    vad = SileroVAD(path)                     # the .onnx faster-whisper ships (catalog: silero-vad)
    probs = vad.probs(samples)                # speech probability per 32 ms frame (16 kHz), state kept
    turn = EndOfUtterance()                   # pure: probabilities in, events out
    for p in probs: ev = turn.feed(p)         # None, "start" or "end"

The model runs on ONNX Runtime (a core dependency), one 512-sample frame plus 64 samples of
context at a time, carrying its LSTM state, so a microphone can be fed as it records. The
model file is the one faster-whisper (the voice extra) bundles for its own VAD filter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from liteinfer.core.errors import LiteInferError

FRAME = 512  # samples at 16 kHz: 32 ms
CONTEXT = 64
FRAME_S = FRAME / 16000


class SileroVAD:
    def __init__(self, path: str | Path):
        # on use: numpy and onnxruntime load with the first voice model (memory, start-up time)
        import numpy as np
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise LiteInferError(f"VAD model not found: {path}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1  # a 32 ms frame is ~0.1 ms of work
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        names = {i.name for i in self.session.get_inputs()}
        if names != {"input", "h", "c"}:
            raise LiteInferError(f"{path}: not the Silero VAD graph faster-whisper ships (inputs {sorted(names)})")
        self._np = np
        self.reset()

    def reset(self) -> None:
        np = self._np
        self._h = np.zeros((1, 1, 128), np.float32)
        self._c = np.zeros((1, 1, 128), np.float32)
        self._context = np.zeros(CONTEXT, np.float32)
        self._rest = np.zeros(0, np.float32)

    def probs(self, samples) -> list[float]:
        """Speech probability of each whole 32 ms frame in `samples` (float32, 16 kHz); a partial
        frame waits for the next call."""
        np = self._np
        buf = np.concatenate([self._rest, np.asarray(samples, np.float32).reshape(-1)])
        n = len(buf) // FRAME
        self._rest = buf[n * FRAME:]
        out = []
        for i in range(n):
            frame = buf[i * FRAME:(i + 1) * FRAME]
            x = np.concatenate([self._context, frame]).reshape(1, -1)
            p, self._h, self._c = self.session.run(None, {"input": x, "h": self._h, "c": self._c})
            self._context = frame[-CONTEXT:]
            out.append(float(np.asarray(p).reshape(-1)[0]))
        return out


@dataclass
class EndOfUtterance:
    """Silero's hysteresis: speech starts after `min_speech_s` above `threshold`, and the
    utterance ends after `min_silence_s` below `threshold - 0.15`. Feed one probability per
    frame; `feed` returns "start", "end" or None."""

    threshold: float = 0.5
    min_speech_s: float = 0.25
    min_silence_s: float = 0.6
    frame_s: float = FRAME_S

    def __post_init__(self):
        self.in_speech = False
        self._above = 0
        self._below = 0
        self.frames = 0
        self.start_frame: int | None = None
        self.end_frame: int | None = None

    def feed(self, prob: float) -> str | None:
        self.frames += 1
        if not self.in_speech:
            self._above = self._above + 1 if prob >= self.threshold else 0
            if self._above * self.frame_s >= self.min_speech_s:
                self.in_speech, self._below = True, 0
                self.start_frame = self.frames - self._above
                return "start"
            return None
        self._below = self._below + 1 if prob < self.threshold - 0.15 else 0
        if self._below * self.frame_s >= self.min_silence_s:
            self.in_speech, self._above = False, 0
            self.end_frame = self.frames - self._below
            return "end"
        return None

    @property
    def silence_frames(self) -> int:
        """Frames of silence so far at the end of the utterance under way (0 outside one)."""
        return self._below if self.in_speech else 0

    @property
    def speech_end_s(self) -> float | None:
        """Where the last utterance's speech stopped (before the trailing silence)."""
        return None if self.end_frame is None else self.end_frame * self.frame_s
