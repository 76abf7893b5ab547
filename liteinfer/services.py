"""The services the server runs: the LLM (llama.cpp + continuous batching) and the one-shot
models (ONNX Runtime + dynamic batching), each behind the same small interface.

    llm = LLMService(config, "smollm2-135m", observer=metrics)   # observer: Metrics-like, optional
    llm.load()                                                   # blocking; errors land in .error
    emb = OneShotService.open("minilm.onnx", config.oneshot, kind="embedding")
    vectors, n_tokens = await emb.embed_async(["a text"])        # either service embeds
    services = load_services(config)                             # {"llm": ..., "embedding": ..., ...}

Every service has `kind` ("llm", "embedding", "classifier"), `name` (the id /v1/models lists),
`aliases` (the names a request may use), `created`, `ready`, `error`, `load()`, `close()` and
`stats()`. Inputs are validated and prepared (tokenized / decoded) before they are queued, so
bad input fails at once with a LiteInferError (HTTP 400) and never takes a queue slot.

Nothing here knows HTTP: the server passes its Prometheus metrics in as the LLM scheduler's
observer and reads the one-shot batchers itself. numpy and onnxruntime load with the first
one-shot model (engines/onnx.py imports them when it loads one): an LLM-only server never
imports them.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib.util
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from liteinfer.core.catalog import load_catalog, pull, resolve_llm
from liteinfer.core.config import DeviceConfig, OneShotSettings
from liteinfer.core.errors import LiteInferError
from liteinfer.core.plugins import engine_for, registry
from liteinfer.engines.audio import decode, encoder, resample_pcm16
from liteinfer.engines.llama import LlamaEngine
from liteinfer.engines.onnx import Prediction, load_model, softmax
from liteinfer.engines.stt import WhisperEngine
from liteinfer.engines.tts import EspeakTTS, PiperTTS
from liteinfer.hardware.cores import usable_cores
from liteinfer.scheduler.continuous import ContinuousScheduler, GenRequest
from liteinfer.scheduler.cpu_share import COMPUTE_SHARE
from liteinfer.scheduler.dynamic import DynamicBatcher
from liteinfer.scheduler.dynamic_policy import OneShotController

log = logging.getLogger("liteinfer.server")

# Built-in one-shot model names -> a function that returns the model's .onnx (converting it on
# first use). The converters are tooling, which the serving stack never imports: the `liteinfer`
# command registers them (cli/oneshot.py); without it, models are given as .onnx paths.
ONESHOT_SOURCES: dict[str, Callable[[], Path]] = {}


# ---------------------------------------------------------------- the LLM


class LLMService:
    """A GGUF model: engine + continuous-batching scheduler. `load()` is meant for a thread
    (the server answers /health "loading" meanwhile); its failure is kept in `error`."""

    kind = "llm"

    def __init__(self, config: DeviceConfig, model: str, observer=None):
        self.config, self.model, self.observer = config, model, observer
        self.name = model_name(model)
        self.aliases = {self.name, model}
        self.created = int(time.time())
        self.engine: LlamaEngine | None = None
        self.scheduler: ContinuousScheduler | None = None
        self.ready = False
        self.error: str | None = None
        # one embedding batch at a time, generation goes on beside it: the asyncio lock keeps
        # waiters off the thread pool, the thread lock holds even when a waiter timed out
        self._embed_lock = asyncio.Lock()
        self._embed_thread_lock = threading.Lock()

    def load(self) -> None:
        try:
            path = resolve_llm(self.model)
            self.aliases.add(path.stem)
            settings = self.config.engine
            if settings.split_q4_1 is None:  # batched serving is where the split pays (see q4_1_split)
                settings = settings.model_copy(update={"split_q4_1": True})
            plugin = engine_for(path)  # a plugin's file type (core/plugins.py): its loader builds the engine
            if plugin is None:
                self.engine = LlamaEngine(path, settings)
            elif plugin.load_llm is None:
                raise LiteInferError(f"{path}: {plugin.description} files hold no chat model")
            else:
                self.engine = plugin.load_llm(path, settings, self.config)
            self.scheduler = ContinuousScheduler(self.engine, self.config.scheduler, self.config.server.max_queue,
                                                 self.observer)
            self.scheduler.start()
            _release_free_heap()
            self.ready = True
            log.info("loaded %s: %d threads, %d KV cells (%s), up to %d sequences%s", path.name,
                     self.engine.n_threads, self.engine.n_ctx, self.config.engine.type_k,
                     self.config.scheduler.max_batch, ", Q4_1 run as Q4_0 + offsets" if self.engine.q4_1_split else "")
        except LiteInferError as e:
            self.error = str(e)
        except Exception as e:  # surfaced through /health, not a traceback
            self.error = f"{type(e).__name__}: {e}"

    # ---- generation: the routes tokenize and template, the scheduler runs the batch

    def tokenize(self, text: str) -> list[int]:
        return self.engine.tokenize(text)

    def apply_chat_template(self, messages: list[dict]) -> str:
        return self.engine.apply_chat_template(messages)

    @property
    def max_seq_len(self) -> int:
        return self.engine.max_seq_len

    def submit(self, request: GenRequest) -> None:
        """Queue a generation; raises QueueFull when the queue is full."""
        self.scheduler.submit(request)

    def cancel(self, request: GenRequest) -> None:
        self.scheduler.cancel(request)

    # ---- embeddings (pooled from the GGUF)

    async def embed_async(self, texts: list[str], dimensions: int | None = None) -> tuple[list, int]:
        """(L2-normalized vectors, prompt tokens); raises LiteInferError for bad input, and for
        a `dimensions` other than the model's width (the vectors are not cut in silence)."""
        if any(not t for t in texts):
            raise LiteInferError("input contains an empty string")
        async with self._embed_lock:
            vectors, n_tokens = await asyncio.to_thread(self._embed, texts)
        if dimensions is not None and dimensions != vectors.shape[1]:
            raise LiteInferError(f"dimensions={dimensions}: this model gives {vectors.shape[1]}")
        return list(vectors), n_tokens

    def _embed(self, texts: list[str]):
        """(vectors, prompt tokens): counting tokens is tokenizing every text again, up to
        limits.max_prompt_chars of them, so it runs here in the worker thread too."""
        with self._embed_thread_lock:
            vectors = self.engine.embed(texts)
        return vectors, sum(len(self.engine.tokenize(t)) for t in texts)

    # ---- lifecycle

    def stats(self) -> dict:
        s = self.scheduler
        return {"model": self.name, "kind": self.kind, "ready": self.ready,
                "queue_depth": s.queue_depth if s else 0, "active": len(s.running) if s else 0}

    def close(self) -> None:
        if self.scheduler:
            self.scheduler.stop()
        if self.engine:
            self.engine.close()


def model_name(model: str) -> str:
    """The id a model file is served as: its name without .gguf / .onnx or a plugin's suffix."""
    plugin = engine_for(model)
    if plugin is not None:
        model = Path(model).name[: -len(plugin.suffix)] or model
    return Path(model).stem if model.endswith((".gguf", ".onnx")) else model


def _release_free_heap() -> None:
    """Give the heap that model loading freed (GGUF parsing, repack and adapter buffers) back
    to the OS: glibc keeps it otherwise, and it counts in the service's RSS."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc


# ---------------------------------------------------------------- one-shot models


def resolve_oneshot(name: str) -> Path:
    """A liteinfer .onnx path for a file path or a built-in name (converted on first use)."""
    p = Path(name).expanduser()
    if p.is_file() and engine_for(p) is not None:  # a plugin's file type: its loader checks it
        return p
    if p.exists():
        if p.is_dir() or p.suffix != ".onnx":
            raise LiteInferError(f"{p}: expected a .onnx file (convert models with `liteinfer convert`)")
        return p
    if name in ONESHOT_SOURCES:
        return ONESHOT_SOURCES[name]()
    found = registry().resolve_model(name)  # plugins' catalog sources
    if found is not None:
        return resolve_oneshot(str(found)) if found != p else found
    if p.suffix == ".onnx" or "/" in name:
        raise LiteInferError(f"model file not found: {name}")
    known = f"known: {', '.join(ONESHOT_SOURCES)}; " if ONESHOT_SOURCES else ""
    raise LiteInferError(f"unknown one-shot model {name!r} ({known}or a path to a .onnx file)")


class OneShotService:
    """A loaded Embedder or ImageClassifier and the dynamic batcher that feeds it.

        svc = OneShotService.open("model.onnx", settings)     # a liteinfer .onnx, or a built-in name
        vecs = svc.embed(["a text", "another"])                # sync (CLI, benchmarks)
        preds = svc.classify([jpeg_bytes], top_k=5)            # ImageClassifier models
    """

    ready = True  # loaded when constructed
    error = None

    def __init__(self, model, settings: OneShotSettings | None = None, name: str | None = None, on_batch=None):
        self.model = model
        self.settings = settings or OneShotSettings()
        self.kind = model.kind
        self.name = name or model.meta.name or model.path.stem
        self.aliases = {self.name, model.meta.name, model.path.stem, model.path.name} - {None, ""}
        self.created = int(time.time())
        s = self.settings
        controller = OneShotController.from_settings(s) if s.adaptive else None
        if self.kind == "embedding":
            run, length = self._run_embed, len
        else:
            run, length = self._run_classify, None
        self.batcher = DynamicBatcher(run, max_batch=s.max_batch, max_delay_ms=s.max_delay_ms, max_queue=s.max_queue,
                                      length=length, controller=controller, on_batch=on_batch, name=self.name)

    @classmethod
    def open(cls, name: str, settings: OneShotSettings | None = None, kind: str | None = None,
             config: DeviceConfig | None = None, **kw) -> OneShotService:
        """`config`: the whole DeviceConfig, for a plugin's loader (its settings section)."""
        path = resolve_oneshot(name)
        plugin = engine_for(path)  # a plugin's file type (core/plugins.py): its loader opens the model
        if plugin is None:
            model = load_model(path, settings)
        elif plugin.load_oneshot is None:
            raise LiteInferError(f"{path}: {plugin.description} files hold no embedding or classifier model")
        else:
            model = plugin.load_oneshot(path, settings or OneShotSettings(), config or DeviceConfig())
        if kind is not None and model.kind != kind:
            model.close()
            want = "an embedding" if kind == "embedding" else "an image classifier"
            raise LiteInferError(f"{name}: a {model.kind} model, not {want} model")
        svc = cls(model, settings, name=model_name(name), **kw)
        svc.aliases.add(name)
        return svc

    def load(self) -> None:
        """Nothing to do: `open` loads (the interface's step, for the server's loader)."""

    # ---- batched calls (worker thread)

    def _run_embed(self, items: list[list[int]]) -> list:
        return list(self.model.run(items, max_batch=len(items)))

    def _run_classify(self, items: list) -> list:
        import numpy as np  # numpy here and below: the LLM-only server never loads it (memory)

        return list(softmax(self.model.logits(np.stack(items).astype(np.float32))))

    # ---- embeddings

    @property
    def dim(self) -> int | None:
        return getattr(self.model, "dim", None)

    def prepare_texts(self, texts: list[str]) -> list[list[int]]:
        self._need("embedding")
        if not texts:
            raise LiteInferError("input is empty")
        items = []
        for i, t in enumerate(texts):
            try:
                items.append(self.model.prepare(t))
            except LiteInferError as e:
                raise LiteInferError(f"input[{i}]: {e}" if len(texts) > 1 else str(e)) from None
        return items

    def embed(self, texts: list[str]):
        """[n, dim] float32, L2-normalized."""
        # on use: numpy, as above (memory)
        import numpy as np

        return np.stack(self.batcher.map(self.prepare_texts(texts)))

    async def embed_async(self, texts: list[str], dimensions: int | None = None) -> tuple[list, int]:
        """(L2-normalized vectors, prompt tokens) through the batcher; raises LiteInferError for
        bad input (before it takes a queue slot), QueueFull / BatcherClosed from the batcher."""
        self._need("embedding")
        limit = self.batcher.max_queue
        if len(texts) > limit:  # could never be queued: a client error, not "retry later"
            raise LiteInferError(f"{len(texts)} inputs; at most {limit} per request (server queue size)")
        if dimensions is not None and dimensions != self.dim:
            raise LiteInferError(f"dimensions={dimensions}: this model gives {self.dim}")
        # tokenizing is cheap per text; a long list goes off the event loop
        items = self.prepare_texts(texts) if len(texts) <= 32 else await asyncio.to_thread(self.prepare_texts, texts)
        vectors = await self.batcher.submit_many(items)
        return list(vectors), sum(len(x) for x in items)

    # ---- classification

    @property
    def n_labels(self) -> int:
        return len(self.model.labels)

    def prepare_images(self, images: list[Any]) -> list:
        self._need("classifier")
        if not images:
            raise LiteInferError("no input images")
        items = []
        for i, im in enumerate(images):
            try:
                items.append(self.model.prepare(im))
            except LiteInferError as e:
                raise LiteInferError(f"image[{i}]: {e}" if len(images) > 1 else str(e)) from None
        return items

    def top_k(self, probs, k: int) -> list:
        # on use: numpy, as above (memory)
        import numpy as np

        top = np.argsort(-probs)[: max(1, k)]
        return [Prediction(self.model.label(int(i)), int(i), float(probs[i])) for i in top]

    def classify(self, images: list[Any], top_k: int = 5) -> list[list]:
        return [self.top_k(p, top_k) for p in self.batcher.map(self.prepare_images(images))]

    async def classify_async(self, images: list[Any], top_k: int = 5) -> list[list]:
        # image decoding is not free: a worker thread decodes and queues the items itself, so
        # the event loop is woken once, by the results (not also between decoding and queueing)
        futures = await asyncio.to_thread(lambda: self.batcher.submit_many_futures(self.prepare_images(images)))
        return [self.top_k(p, top_k) for p in await self.batcher.results(futures)]

    # ---- lifecycle

    def _need(self, kind: str) -> None:
        if self.kind != kind:
            raise LiteInferError(f"{self.name} is a {self.kind} model, not {kind}")

    def stats(self) -> dict:
        return {"model": self.name, "kind": self.kind, **self.batcher.stats()}

    def close(self) -> None:
        self.batcher.close()
        self.model.close()


# ---------------------------------------------------------------- what a server runs


def load_services(config: DeviceConfig, model: str | None = None, observer=None, llm: bool = True) -> dict:
    """{kind: service} for a config: the LLM (not loaded yet: `load()` it, e.g. in a thread)
    unless `llm` is False, then the configured one-shot models (loaded now, so a bad path
    fails before the server binds its port)."""
    services: dict[str, Any] = {}
    if llm:
        services["llm"] = LLMService(config, model or config.model, observer)
    opened = []
    try:
        for kind, name in (("embedding", config.embedding_model), ("classifier", config.classifier_model)):
            if name:
                opened.append(OneShotService.open(name, config.oneshot, kind=kind, config=config))
                services[kind] = opened[-1]
        for kind, name in (("stt", config.speech.stt_model), ("tts", config.speech.tts_model)):
            if name:  # speech models (the voice extra): loaded now too
                opened.append(SpeechService.open(config, kind, name))
                services[kind] = opened[-1]
    except BaseException:
        for svc in opened:
            svc.close()
        raise
    return services


# ---------------------------------------------------------------- speech (the voice extra)

ESPEAK = "espeak-ng"


def resolve_speech_model(name: str) -> Path:
    """A speech model's path: a file or folder, or a catalog name (whisper-tiny.en, silero-vad,
    piper-joe) found in its installed package (the voice extra installs them) or pulled."""
    p = Path(name).expanduser()
    if p.exists():
        return p
    entry = load_catalog().get(name)
    if entry is None or entry.kind not in ("stt", "tts", "vad"):
        known = ", ".join(n for n, e in load_catalog().items() if e.kind in ("stt", "tts", "vad"))
        raise LiteInferError(f"unknown speech model {name!r} (known: {ESPEAK}, {known}; or a path)")
    spec = importlib.util.find_spec(entry.module) if entry.module else None
    if spec is not None and spec.submodule_search_locations:
        found = Path(list(spec.submodule_search_locations)[0]) / entry.file
        if found.exists():
            return found
    try:
        return pull(name)
    except LiteInferError as e:
        raise LiteInferError(f"speech model {name!r}: {e} (the voice extra ships it: "
                             f"pip install 'liteinfer[voice]')") from None


class SpeechService:
    """Speech-to-text (kind "stt": Whisper, one clip at a time through a bounded queue) or
    text-to-speech (kind "tts": eSpeak NG or piper, one synthesis at a time too, streamed out as it
    runs); past speech.max_queue waiting jobs, QueueFull (HTTP 429).

        stt = SpeechService.open(config, "stt", "whisper-tiny.en")
        t = await stt.transcribe_async(upload_bytes, language="en")   # engines/stt.Transcript
        tts = SpeechService.open(config, "tts", "espeak-ng")
        for chunk in tts.speak("Hello.", voice="alloy", fmt="wav"): ...

    Audio is decoded (PyAV) off the event loop and checked before it takes a queue slot, so
    bad audio fails at once (BadAudio, HTTP 400) and never waits behind good audio."""

    ready = True  # loaded when opened
    error = None

    def __init__(self, config: DeviceConfig, kind: str, name: str, engine, on_batch=None):
        self.config, self.settings, self.kind, self.engine = config, config.speech, kind, engine
        self.name = Path(name).stem if name.endswith(".onnx") else name
        extra = self.settings.stt_aliases if kind == "stt" else self.settings.tts_aliases
        self.aliases = {self.name, name, *extra}
        self.created = int(time.time())
        # one job at a time, through a bounded queue (429 past speech.max_queue): Whisper's encoder
        # takes every core it is given; a synthesis streams its chunks out while it runs (eSpeak NG
        # writes a minute of speech in ~0.1 s, so a queued one waits little)
        run = self._run_stt if kind == "stt" else self._run_tts
        # cores a job holds: Whisper's threads; a synthesis is one thread (eSpeak NG, piper's ONNX session)
        self.threads = (getattr(engine, "threads", 1) or 1) if kind == "stt" else 1
        self.batcher = DynamicBatcher(run, max_batch=1, max_delay_ms=0, max_queue=self.settings.max_queue,
                                      on_batch=on_batch, name=self.name)

    @classmethod
    def open(cls, config: DeviceConfig, kind: str, name: str) -> SpeechService:
        s = config.speech
        if kind == "stt":
            engine = WhisperEngine(resolve_speech_model(name), threads=s.stt_threads or usable_cores(),
                                   compute_type=s.stt_compute_type, beam_size=s.stt_beam_size,
                                   vad_filter=s.stt_vad_filter, short_window=s.stt_short_window,
                                   window_margin_s=s.stt_window_margin_s)
        elif kind == "tts":
            engine = EspeakTTS() if name == ESPEAK else PiperTTS(resolve_speech_model(name))
            engine.resolve_voice(s.default_voice)  # a bad configured voice fails at start
        else:
            raise LiteInferError(f"speech kind {kind!r}: expected stt or tts")
        return cls(config, kind, name, engine)

    def load(self) -> None:
        """Nothing to do: `open` loads (the interface's step, for the server's loader)."""

    # ---- speech-to-text

    def _run_stt(self, items: list) -> list:
        samples, opts = items[0]
        with COMPUTE_SHARE.job(self.threads):  # the LLM steps around it (scheduler/cpu_share.py)
            return [self.engine.transcribe(samples, **opts)]

    def prepare_audio(self, data: bytes, language: str | None = None):
        """Decoded samples (float32, 16 kHz); raises BadAudio / AudioTooLong / LiteInferError."""
        self.engine.check_language(language)
        return decode(data, max_seconds=self.settings.max_audio_s)

    def transcribe(self, data: bytes, **opts):
        """Sync (CLI, benchmarks): bytes of any audio file -> Transcript."""
        samples = self.prepare_audio(data, opts.get("language"))
        return self.batcher.run_sync((samples, opts))

    async def transcribe_async(self, audio, **opts):
        """`audio`: bytes of a file (decoded off the event loop first) or prepare_audio's samples."""
        if isinstance(audio, (bytes, bytearray)):
            audio = await asyncio.to_thread(self.prepare_audio, bytes(audio), opts.get("language"))
        return await self.batcher.submit((audio, opts))

    # ---- text-to-speech

    @property
    def rate(self) -> int:
        return self.settings.sample_rate

    def check_speech(self, text: str, voice: str | None, fmt: str) -> None:
        if not text.strip():
            raise LiteInferError("input is empty")
        if len(text) > self.settings.max_speech_chars:
            raise LiteInferError(f"input is {len(text)} characters; at most {self.settings.max_speech_chars}")
        self.engine.resolve_voice(voice or self.settings.default_voice)
        encoder(fmt, self.rate)  # an unknown format, or one with no encoder here, names itself

    def speak(self, text: str, voice: str | None = None, speed: float = 1.0, fmt: str = "wav"):
        """Encoded audio chunks as they are synthesized, in this thread (CLI, the voice loop);
        closing the generator early ends the synthesis."""
        self.check_speech(text, voice, fmt)
        enc = encoder(fmt, self.rate)
        pcm = self.engine.synthesize(text, voice or self.settings.default_voice, speed)
        try:
            for chunk in resample_pcm16(pcm, self.engine.rate, self.rate):
                out = enc.push(chunk)
                if out:
                    yield out
            tail = enc.finish()
            if tail:
                yield tail
        finally:
            pcm.close()

    def _run_tts(self, items: list) -> list:
        job = items[0]
        chunks = self.speak(job.text, job.voice, job.speed, job.fmt)
        try:
            with COMPUTE_SHARE.job(self.threads):  # the LLM steps around it (scheduler/cpu_share.py)
                for chunk in chunks:
                    if job.cancelled.is_set():  # the client went away: stop synthesizing
                        break
                    job.sink(chunk)
        finally:
            chunks.close()
            job.sink(None)
        return [None]

    def speak_stream(self, text: str, voice: str | None = None, speed: float = 1.0, fmt: str = "wav"):
        """An async iterator of encoded chunks, synthesized on the queue's worker. Bad input
        (LiteInferError) and a full queue (QueueFull) raise here, before any audio is sent."""
        self.check_speech(text, voice, fmt)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        job = _SpeechJob(text, voice, speed, fmt, lambda c: loop.call_soon_threadsafe(queue.put_nowait, c))
        future = asyncio.wrap_future(self.batcher.submit_future(job))

        async def chunks():
            try:
                while True:
                    getter = asyncio.ensure_future(queue.get())
                    done, _ = await asyncio.wait({getter, future}, return_when=asyncio.FIRST_COMPLETED)
                    if getter not in done:  # the job ended without its final sink(None): it failed
                        getter.cancel()
                        if queue.empty():
                            future.result()  # raises the job's error
                            return
                        continue
                    chunk = getter.result()
                    if chunk is None:
                        await future  # the job's error, if it failed after its last chunk
                        return
                    yield chunk
            finally:
                job.cancelled.set()
                if not future.done():
                    future.cancel()  # still queued: dropped before it runs

        return chunks()

    # ---- lifecycle

    def stats(self) -> dict:
        return {"model": self.name, "kind": self.kind, **self.batcher.stats()}

    def close(self) -> None:
        self.batcher.close()
        self.engine.close()


class _SpeechJob:
    def __init__(self, text: str, voice: str | None, speed: float, fmt: str, sink):
        self.text, self.voice, self.speed, self.fmt, self.sink = text, voice, speed, fmt, sink
        self.cancelled = threading.Event()
