"""`liteinfer transcribe FILE`, `liteinfer say TEXT -o out.wav` and `liteinfer voice`: the
voice assistant loop (docs/voice.md).

`voice` takes a WAV (or any audio file) as the microphone: it feeds it to Silero VAD 32 ms at a
time (in real time with --realtime, as a microphone would), and at each end of utterance
transcribes the turn, answers with the chat model and speaks the answer sentence by sentence
as the model writes it: a TTS thread synthesizes sentence one while the LLM is still writing
sentence two. The spoken reply goes to -o (a WAV), and a JSON line per turn says what was
heard, what was answered and when: end of speech -> end detected -> transcribed -> first
token -> first audio. `run_turns` is the same loop as a function (benchmarks/voice.py, tests).

Without --input it listens to the live microphone through `sounddevice` (PortAudio; the mic
extra, optional) and plays the answer on the default output device; where there is no package,
no PortAudio or no input device, it says so in one line (and --input FILE works anywhere).
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from liteinfer.core.config import DeviceConfig, load_config
from liteinfer.core.errors import LiteInferError
from liteinfer.engines.audio import FORMATS, STT_RATE, decode, wav_header
from liteinfer.engines.stt import subtitles
from liteinfer.engines.tts import SentenceSplitter
from liteinfer.engines.vad import FRAME, EndOfUtterance, SileroVAD

SYSTEM_PROMPT = ("You are a helpful voice assistant. Answer in one or two short, plain sentences "
                 "that read well aloud.")


def _speech_config(args) -> DeviceConfig:
    config = load_config(getattr(args, "config", None))
    sp = config.speech
    sp.stt_model = getattr(args, "stt_model", None) or sp.stt_model or "whisper-tiny.en"
    sp.tts_model = getattr(args, "tts_model", None) or sp.tts_model or "espeak-ng"
    if getattr(args, "threads", None):
        sp.stt_threads = args.threads
    return config


# ---- transcribe --------------------------------------------------------------------------


def _speech_service(config: DeviceConfig, kind: str):
    # on use: the services (scheduler, engines, pydantic models) load for a command that runs, not
    # for `liteinfer --help` (start-up time)
    from liteinfer.services import SpeechService

    return SpeechService.open(config, kind, config.speech.stt_model if kind == "stt" else config.speech.tts_model)


def _transcribe_main(args) -> int:
    config = _speech_config(args)
    path = Path(args.file)
    if not path.is_file():
        raise LiteInferError(f"{path}: no such file")
    stt = _speech_service(config, "stt")
    try:
        t = stt.transcribe(path.read_bytes(), language=args.language, prompt=args.prompt,
                           task="translate" if args.translate else "transcribe", words=args.words)
    finally:
        stt.close()
    if args.format == "text":
        print(t.text)
    elif args.format in ("srt", "vtt"):
        print(subtitles(t.segments, args.format))
    else:
        body = {"text": t.text, "language": t.language, "duration": t.duration, "seconds": round(t.seconds, 3),
                "segments": [asdict(s) for s in t.segments]}
        if args.words:
            body["words"] = [asdict(w) for w in t.words]
        print(json.dumps(body))
    return 0


# ---- say ---------------------------------------------------------------------------------


def _say_main(args) -> int:
    config = _speech_config(args)
    text = sys.stdin.read() if args.text == "-" else args.text
    out = Path(args.output)
    fmt = args.format or (out.suffix.lstrip(".").lower() if out.suffix else "wav")
    if fmt == "ogg":
        fmt = "opus"
    if fmt not in FORMATS:
        raise LiteInferError(f"{out}: format {fmt!r}; expected one of {', '.join(FORMATS)} (--format)")
    if args.rate:
        config.speech.sample_rate = args.rate
    tts = _speech_service(config, "tts")
    try:
        t0 = time.perf_counter()
        if fmt == "wav":  # a file: the real sizes in the header, not a stream's "unknown"
            pcm = b"".join(tts.speak(text, args.voice, args.speed, "pcm"))
            data = wav_header(tts.rate, len(pcm)) + pcm
        else:
            data = b"".join(tts.speak(text, args.voice, args.speed, fmt))
            pcm = None
        seconds = time.perf_counter() - t0
    finally:
        tts.close()
    out.write_bytes(data)
    if pcm is not None:
        audio_s = len(pcm) / 2 / tts.rate
        print(f"{out}: {audio_s:.2f} s of speech in {seconds:.2f} s (RTF {seconds / max(audio_s, 1e-9):.3f})",
              file=sys.stderr)
    return 0


# ---- voice: the assistant loop -----------------------------------------------------------


@dataclass
class Turn:
    transcript: str = ""
    reply: str = ""
    speech_end_s: float = 0.0  # in the input's time: where the user stopped speaking
    detected_s: float | None = None  # wall clock from that moment (real time) or from the input's end
    transcribed_s: float | None = None
    first_token_s: float | None = None
    first_audio_s: float | None = None  # end of speech -> the first synthesized audio of the reply
    reply_audio_s: float = 0.0
    stt_rtf: float = 0.0
    early_stt: bool = False  # transcribed from the pause on, while the VAD waited for the end
    sentences: list[str] = field(default_factory=list)


class Assistant:
    """The models of the loop, loaded once: VAD, STT, the chat model, TTS."""

    def __init__(self, config: DeviceConfig, model: str, max_tokens: int = 80, system: str = SYSTEM_PROMPT,
                 voice: str | None = None):
        # on use: the chat engine (llama.cpp) and the services load only for `voice` (start-up time)
        from liteinfer.cli.generate import open_engine
        from liteinfer.services import resolve_speech_model

        self.config = config
        self.vad = SileroVAD(resolve_speech_model(config.speech.vad_model))
        self.stt = _speech_service(config, "stt")
        self.tts = _speech_service(config, "tts")
        self.engine = open_engine(model)
        self.max_tokens, self.voice = max_tokens, voice
        self.early_stt = False  # True: start Whisper in the pause (listen; --early-stt); False: at the end
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []

    def close(self) -> None:
        self.stt.close()
        self.tts.close()
        self.engine.close()

    def answer(self, samples, turn: Turn, t_end: float, sink, early=None) -> None:
        """Transcribe `samples` (or take `early`'s result: the same samples' transcription, started
        in the pause), stream the chat reply, speak it sentence by sentence into `sink(pcm)`;
        times in `turn` are seconds after `t_end` (wall clock of the end of speech)."""
        # on use: the LLM's sampling types load with the engine (start-up time)
        from liteinfer.engines.generate import GenerationResult, stream
        from liteinfer.engines.llama import SamplingParams

        turn.early_stt = early is not None
        t = early.result() if early is not None else self.stt.batcher.run_sync((samples, {"language": "en"}))
        turn.transcribed_s = time.perf_counter() - t_end
        turn.transcript = t.text
        turn.stt_rtf = t.seconds / max(t.duration, 1e-9)
        if not t.text.strip():
            return
        self.messages.append({"role": "user", "content": t.text})
        sentences: queue.Queue = queue.Queue()
        speaker = threading.Thread(target=self._speak, args=(sentences, turn, t_end, sink), daemon=True)
        speaker.start()
        splitter = SentenceSplitter()
        result = GenerationResult()
        params = SamplingParams(max_tokens=self.max_tokens, temperature=0.0)
        try:
            for piece in stream(self.engine, self.engine.chat_tokens(self.messages), params, result):
                if turn.first_token_s is None:
                    turn.first_token_s = time.perf_counter() - t_end
                for s in splitter.feed(piece):
                    sentences.put(s)
            for s in splitter.flush():
                sentences.put(s)
        finally:
            sentences.put(None)
            speaker.join()
        turn.reply = result.text.strip()
        self.messages.append({"role": "assistant", "content": turn.reply})

    def _speak(self, sentences: queue.Queue, turn: Turn, t_end: float, sink) -> None:
        while True:
            s = sentences.get()
            if s is None:
                return
            turn.sentences.append(s)
            for pcm in self.tts.speak(s, self.voice, 1.0, "pcm"):
                if turn.first_audio_s is None:
                    turn.first_audio_s = time.perf_counter() - t_end
                turn.reply_audio_s += len(pcm) / 2 / self.tts.rate
                sink(pcm)


def run_turns(assistant: Assistant, samples, realtime: bool = False, sink=None) -> list[Turn]:
    """Feed 16 kHz samples to the VAD frame by frame (at the pace of a microphone when
    `realtime`); answer each utterance as its end is detected. A turn still open at the end of
    the input is answered too (its end: the input's end)."""
    t_start = time.perf_counter()

    def frames():
        for i in range(len(samples) // FRAME):
            if realtime:  # the frame "arrives" when a microphone would have recorded it
                wait = t_start + (i + 1) * FRAME / STT_RATE - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            yield samples[i * FRAME:(i + 1) * FRAME]

    return listen(assistant, frames(), t_start, realtime, sink)


def listen(assistant: Assistant, frames, t_start: float, realtime: bool = True, sink=None,
           on_turn=None) -> list[Turn]:
    """The loop over 32 ms frames (a file's or a live microphone's, which arrive in real time
    from `t_start`): VAD, end of utterance, answer. `on_turn(turn)` after each answer.

    The transcription starts early: once the speaker has paused for the speech pad (0.2 s), the
    utterance so far is queued for Whisper while the VAD waits out the rest of its 0.6 s of
    silence; if the speaker goes on, that transcription is dropped, if not it is the turn's (the
    same samples), so Whisper's time hides in the silence wait."""
    sink = sink or (lambda pcm: None)
    assistant.vad.reset()
    eou = EndOfUtterance()
    turns: list[Turn] = []
    heard: list = []  # the frames of the utterance under way (and a little before it)
    start_frame = None
    early = None  # (speech end frame, Future) of a transcription started in the pause
    i = -1
    for i, frame in enumerate(frames):
        heard.append(frame)
        (p,) = assistant.vad.probs(frame)
        event = eou.feed(p)
        if early is not None and event is None and eou.silence_frames == 0:  # the speaker went on
            early[1].cancel()  # still queued: dropped (one already running just finishes)
            early = None
        if event == "start":
            start_frame = eou.start_frame
        elif event == "end":
            e = early[1] if early is not None and early[0] == eou.end_frame else None
            turns.append(_answer_span(assistant, heard, i + 1, start_frame, eou.end_frame, t_start, realtime, sink, e))
            start_frame, early = None, None
            if on_turn:
                on_turn(turns[-1])
        elif assistant.early_stt and start_frame is not None and early is None and eou.silence_frames == PAD_FRAMES:
            end = eou.frames - eou.silence_frames
            samples = _span(heard, i + 1, start_frame, end)
            early = (end, assistant.stt.batcher.submit_future((samples, {"language": "en"})))
        if start_frame is None and len(heard) > 64:  # only the last ~2 s are kept between utterances
            del heard[:-32]
    if early is not None:
        early[1].cancel()
    if start_frame is not None:  # the input ended mid-utterance
        turns.append(_answer_span(assistant, heard, i + 1, start_frame, i + 1, t_start, realtime, sink))
        if on_turn:
            on_turn(turns[-1])
    return turns


PAD = int(0.2 * STT_RATE)  # a little context either side of an utterance, as the VAD's speech pad does
PAD_FRAMES = -(-PAD // FRAME)  # frames of silence after the speech that hold the pad


def _span(heard: list, n_frames: int, start_frame: int, end_frame: int):
    """Samples of input frames start_frame..end_frame and the pad either side; `heard` holds the
    input's last frames (up to frame `n_frames`)."""
    # on use: numpy only with audio (start-up time of the other commands)
    import numpy as np

    first = n_frames - len(heard)  # the input frame heard[0] is
    samples = np.concatenate(heard)
    a = max(0, (start_frame - first) * FRAME - PAD)
    b = min(len(samples), (end_frame - first) * FRAME + PAD)
    return samples[a:b]


def _answer_span(assistant: Assistant, heard: list, n_frames: int, start_frame: int, end_frame: int, t_start: float,
                 realtime: bool, sink, early=None) -> Turn:
    """Answer input frames start_frame..end_frame (`early`: their transcription, under way)."""
    samples = _span(heard, n_frames, start_frame, end_frame)
    heard.clear()
    turn = Turn(speech_end_s=round(end_frame * FRAME / STT_RATE, 3))
    now = time.perf_counter()
    # the wall-clock moment the user stopped talking: in real time it is in the past by the VAD's
    # silence wait; a file read at full speed has no such moment, so times count from detection
    t_end = t_start + turn.speech_end_s if realtime else now
    turn.detected_s = now - t_end
    assistant.answer(samples, turn, t_end, sink, early)
    return turn


MIC_EXTRA = "pip install 'liteinfer[mic]'"
NO_MIC = "(or give the audio as --input FILE; record one with: arecord -f S16_LE -r 16000 -c 1 in.wav)"


def _sounddevice():
    """sounddevice with a usable input device, else LiteInferError in one line."""
    try:
        # on use: the mic extra (optional package), and PortAudio with it
        import sounddevice as sd
    except ImportError:
        raise LiteInferError(f"no microphone: live input needs sounddevice: {MIC_EXTRA} {NO_MIC}") from None
    except OSError as e:  # the package is there, the PortAudio library is not
        raise LiteInferError(f"no microphone: sounddevice could not load PortAudio ({e}; apt-get install "
                             f"libportaudio2) {NO_MIC}") from None
    try:
        dev = sd.query_devices(kind="input")
    except Exception as e:  # PortAudioError, ValueError: no default input
        raise LiteInferError(f"no microphone: no audio input device ({str(e).splitlines()[0]}) {NO_MIC}") from None
    if not dev or dev.get("max_input_channels", 0) < 1:
        raise LiteInferError(f"no microphone: no audio input device {NO_MIC}")
    return sd, dev


class Microphone:
    """The default input device, 16 kHz mono float32, as an iterator of 32 ms frames. Frames
    recorded while the assistant speaks are dropped (`drain`), so it does not answer itself."""

    def __init__(self):
        self.sd, self.device = _sounddevice()
        self.frames: queue.Queue = queue.Queue()
        self.stream = self.sd.InputStream(samplerate=STT_RATE, channels=1, dtype="float32", blocksize=FRAME,
                                          callback=lambda data, n, t, status: self.frames.put(data[:, 0].copy()))

    def __enter__(self):
        self.stream.start()
        return self

    def __exit__(self, *exc):
        self.stream.stop()
        self.stream.close()

    def __iter__(self):
        while True:
            yield self.frames.get()

    def drain(self) -> None:
        while not self.frames.empty():
            self.frames.get_nowait()


class _Player:
    """Plays 16-bit mono PCM on the default output device as it arrives (None: no device)."""

    def __init__(self, sd, rate: int):
        try:
            self.stream = sd.RawOutputStream(samplerate=rate, channels=1, dtype="int16")
            self.stream.start()
        except Exception as e:  # no output device: the reply goes to -o only
            print(f"no audio output device ({str(e).splitlines()[0]}): use -o FILE to keep the replies",
                  file=sys.stderr)
            self.stream = None

    def __call__(self, pcm: bytes) -> None:
        if self.stream is not None:
            self.stream.write(pcm)

    def close(self) -> None:
        if self.stream is not None:
            self.stream.stop()
            self.stream.close()


def _print_turn(t: Turn) -> None:
    row = asdict(t)
    for k, v in row.items():
        if isinstance(v, float):
            row[k] = round(v, 3)
    print(json.dumps(row), flush=True)


def _live_main(args, config: DeviceConfig) -> int:
    mic = Microphone()  # fails in one line before any model loads
    print(f"listening on {mic.device['name']} (Ctrl-C ends)", file=sys.stderr, flush=True)
    assistant = Assistant(config, args.model, args.max_tokens, voice=args.voice)
    assistant.early_stt = args.early_stt
    player = _Player(mic.sd, assistant.tts.rate)
    pcm_out: list[bytes] = []

    def sink(pcm: bytes) -> None:
        pcm_out.append(pcm)
        player(pcm)

    try:
        with mic:
            listen(assistant, iter(mic), time.perf_counter(), True, sink, on_turn=lambda t: (_print_turn(t), mic.drain()))
    except KeyboardInterrupt:
        pass
    finally:
        player.close()
        assistant.close()
        if args.output:
            pcm = b"".join(pcm_out)
            Path(args.output).write_bytes(wav_header(assistant.tts.rate, len(pcm)) + pcm)
    return 0


def _voice_main(args) -> int:
    if args.input is None:
        return _live_main(args, _speech_config(args))
    path = Path(args.input)
    if not path.is_file():
        raise LiteInferError(f"{path}: no such file")
    config = _speech_config(args)
    samples = decode(path.read_bytes(), max_seconds=config.speech.max_audio_s)
    assistant = Assistant(config, args.model, args.max_tokens, voice=args.voice)
    assistant.early_stt = args.early_stt
    pcm_out: list[bytes] = []
    try:
        turns = run_turns(assistant, samples, args.realtime, pcm_out.append)
    finally:
        assistant.close()
    if args.output:
        pcm = b"".join(pcm_out)
        Path(args.output).write_bytes(wav_header(assistant.tts.rate, len(pcm)) + pcm)
    for t in turns:
        _print_turn(t)
    if not turns:
        print("no speech found in the input", file=sys.stderr)
        return 1
    return 0


# ---- registration ------------------------------------------------------------------------


def _speech_args(p: argparse.ArgumentParser, stt: bool = False, tts: bool = False) -> None:
    p.add_argument("--config", default=None, help="device_config.json (its speech section)")
    if stt:
        p.add_argument("--stt-model", default=None, help="speech-to-text model (default whisper-tiny.en)")
        p.add_argument("--threads", type=int, default=None, help="Whisper's threads (default: physical cores)")
    if tts:
        p.add_argument("--tts-model", default=None, help="espeak-ng (default), piper-joe or a piper .onnx")
        p.add_argument("--voice", default=None, help="OpenAI voice name (alloy, nova...) or an eSpeak NG voice")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("transcribe", help="speech to text: any audio file (the voice extra)")
    p.add_argument("file")
    _speech_args(p, stt=True)
    p.add_argument("--language", default=None, help="ISO-639-1 code (default: the model's, or detected)")
    p.add_argument("--prompt", default=None, help="words or style to expect")
    p.add_argument("--translate", action="store_true", help="into English")
    p.add_argument("--words", action="store_true", help="word timestamps (json)")
    p.add_argument("--format", choices=["text", "json", "srt", "vtt"], default="text")
    p.set_defaults(func=_transcribe_main)

    p = sub.add_parser("say", help="text to speech into a file (wav, mp3, opus, flac, aac, pcm)")
    p.add_argument("text", help="the text, or - for standard input")
    p.add_argument("-o", "--output", required=True, help="output file; the format follows its suffix")
    _speech_args(p, tts=True)
    p.add_argument("--speed", type=float, default=1.0, help="0.25 to 4.0")
    p.add_argument("--format", choices=list(FORMATS), default=None)
    p.add_argument("--rate", type=int, default=None, help="sample rate (default speech.sample_rate, 24000)")
    p.set_defaults(func=_say_main)

    p = sub.add_parser("voice", help="voice assistant: audio in, end of utterance, transcribe, answer, speak")
    p.add_argument("-i", "--input", default=None, help="an audio file instead of the live microphone")
    p.add_argument("-o", "--output", default=None, help="write the spoken replies here (WAV)")
    p.add_argument("-m", "--model", default="smollm2-135m", help="chat model (catalog name or .gguf)")
    p.add_argument("--max-tokens", type=int, default=80)
    p.add_argument("--realtime", action="store_true", help="feed the input at a microphone's pace")
    p.add_argument("--early-stt", action="store_true", help="start transcribing in the pause, before the end "
                   "of utterance (measured no faster on a busy 2-core box: docs/voice.md)")
    _speech_args(p, stt=True, tts=True)
    p.set_defaults(func=_voice_main)
