"""DeviceConfig: every knob of the engine, scheduler, server and power policy in one file.

`hw_profiler.py` / `liteinfer profile` writes it (planner defaults for this machine),
`app.py --config` / `liteinfer serve --config` reads it. Validated by pydantic on load;
an invalid or stale file gives one line naming the field.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from liteinfer.core.errors import LiteInferError
from liteinfer.core.files import atomic_write_text
from liteinfer.core.plugins import validate_sections

SCHEMA_VERSION = 1
KVType = Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EngineSettings(_Section):
    """llama.cpp context and model-loading parameters."""

    n_threads: int | None = Field(None, ge=1, description="decode threads; None = physical cores")
    n_threads_batch: int | None = Field(None, ge=1, description="prompt threads; None = n_threads")
    n_ctx: int = Field(4096, ge=64, description="KV cells shared by all sequences (unified cache)")
    n_batch: int = Field(512, ge=1, description="max tokens in one decode call")
    # 256 = the default prefill chunk; llama.cpp reserves its compute buffer for a full micro-batch
    # (measured: server peak RSS -5 MB against 512, same tok/s at 16 clients)
    n_ubatch: int = Field(256, ge=1, description="physical micro-batch size")
    n_seq_max: int = Field(32, ge=1, le=256, description="max sequences held in the KV cache")
    # q8_0 K/V halves the KV cache against f16 (RSS target on small boards); needs flash attention
    type_k: KVType = "q8_0"
    type_v: KVType = "q8_0"
    flash_attn: bool | None = Field(None, description="None = llama.cpp decides")
    use_mmap: bool = True
    use_mlock: bool = False
    use_extra_bufts: bool | None = Field(
        None, description="weight repacking buffers; None = off on CPUs with AMX (crash), on elsewhere"
    )
    chat_template_file: str | None = Field(
        None, description="Jinja chat template (or a tokenizer_config.json holding one) used instead of the GGUF's"
    )
    split_q4_1: bool | None = Field(
        None, description="run Q4_1 weights as Q4_0 plus their exact offset term (llama.cpp's batched Q4_0 "
        "kernels); None = on in the server, off for single-stream commands"
    )


class SchedulerSettings(_Section):
    """Continuous batching for LLM sequences, and the adaptive controller's targets."""

    max_batch: int = Field(32, ge=1, le=256, description="max sequences decoded together")
    prefill_chunk: int = Field(256, ge=16, description="max prompt tokens entering one step")
    adaptive: bool = True
    target_ttft_ms: float = Field(1500.0, gt=0)
    target_itl_ms: float = Field(200.0, gt=0, description="target inter-token latency")
    prefix_cache: bool = True
    speculative: bool = Field(True, description="prompt-lookup speculation: draft tokens copied from the "
                              "sequence's own prompt and output, verified in the batched step (per request: "
                              "`speculative` field); it pauses itself where it does not pay")
    speculative_max_draft: int = Field(8, ge=1, le=64, description="most draft tokens per sequence and step")
    speculative_max_batch: int = Field(8, ge=1, description="no drafts when more sequences decode together")
    speech_first: bool = Field(True, description="while a transcription or synthesis runs, LLM steps use "
                               "the cores it leaves, pausing when it holds them all (docs/voice.md)")
    speech_max_pause_s: float = Field(3.0, ge=0, description="longest pause of LLM steps per speech job; "
                                      "then one thread beside it")


class OneShotSettings(_Section):
    """Dynamic request batching for embeddings and classifiers (ONNX Runtime)."""

    max_batch: int = Field(32, ge=1, le=1024)
    max_delay_ms: float = Field(5.0, ge=0)
    adaptive: bool = True
    target_p95_ms: float = Field(200.0, gt=0)
    intra_op_threads: int | None = Field(None, ge=1)
    # 2048: one embeddings request of limits.max_embedding_inputs (OpenAI's 2048) must fit
    max_queue: int = Field(2048, ge=1, description="inputs waiting (all requests) before 429")


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_queue: int = Field(64, ge=1, description="waiting requests before 429")
    request_timeout_s: float = Field(300.0, gt=0)
    default_max_tokens: int = Field(256, ge=1)
    api_keys: list[str] = Field(default_factory=list)
    cors_origins: list[str] = Field(default_factory=list)
    # more names the LLM answers to (/v1/models and /api/tags list them), for clients that
    # hard-code a model name such as "gpt-4o-mini" or "llama3.2"
    aliases: list[str] = Field(default_factory=list)
    drain_s: float = Field(10.0, ge=0, description="on SIGTERM/SIGINT: how long open requests may finish "
                           "before they are ended with finish_reason \"abort\"")
    protect_docs: bool | None = Field(None, description="/metrics, /docs, /redoc, /openapi.json need the API "
                                      "key; None = yes when keys are set (/health and / stay open)")

    @field_validator("aliases")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        for name in v:
            if not name.strip() or name != name.strip():
                raise ValueError(f"alias {name!r} is empty or has surrounding spaces")
        return v


class LimitsSettings(_Section):
    """What one request may ask of the server; past a limit it gets a 4xx JSON error before the
    work (413 for sizes, 400 for counts, 408 for a client too slow to send its request)."""

    max_body_bytes: int = Field(8 << 20, ge=1024, description="request body, JSON routes (413 past it)")
    max_upload_bytes: int = Field(32 << 20, ge=1024, description="request body of /v1/classify (images)")
    max_header_bytes: int = Field(64 << 10, ge=4096, description="request line + headers (431 past it)")
    header_timeout_s: float = Field(10.0, gt=0, description="from connect (or the last response) to the "
                                    "end of the request headers")
    body_timeout_s: float = Field(30.0, gt=0, description="from the headers to the end of the body")
    max_prompt_chars: int = Field(1_000_000, ge=1, description="prompt text (all messages) before tokenizing")
    max_stop_strings: int = Field(16, ge=0, description="entries in `stop`")
    max_stop_chars: int = Field(256, ge=1, description="length of one stop string")
    max_embedding_inputs: int = Field(2048, ge=1, description="strings in one embeddings request")


class SpeechSettings(_Section):
    """Speech-to-text, text-to-speech and voice activity (the voice extra; docs/voice.md). A
    model left None is not loaded: `serve --voice` turns on the defaults."""

    stt_model: str | None = Field(None, description="catalog name or CTranslate2 Whisper folder "
                                  "(`whisper-tiny.en`); None = no /v1/audio/transcriptions")
    tts_model: str | None = Field(None, description="`espeak-ng`, `piper-joe` or a piper voice .onnx; "
                                  "None = no /v1/audio/speech")
    vad_model: str = Field("silero-vad", description="voice activity model (`liteinfer voice`)")
    stt_threads: int | None = Field(None, ge=1, description="Whisper's threads; None = usable physical cores")
    stt_compute_type: Literal["int8", "int8_float32", "float32"] = "int8"
    stt_beam_size: int = Field(5, ge=1, le=10, description="beam search width (1 = greedy, faster)")
    stt_vad_filter: bool = Field(True, description="skip silence before Whisper sees it (Silero VAD)")
    stt_short_window: bool = Field(False, description="encode only a clip's own length (+ margin), not "
                                   "Whisper's 30 s window, for clips up to 30 s (docs/voice.md)")
    stt_window_margin_s: float = Field(4.0, ge=0, le=30, description="silence after the audio in the short window")
    stt_aliases: list[str] = Field(default_factory=lambda: ["whisper-1", "gpt-4o-mini-transcribe",
                                                            "gpt-4o-transcribe"])
    tts_aliases: list[str] = Field(default_factory=lambda: ["tts-1", "tts-1-hd", "gpt-4o-mini-tts"])
    default_voice: str = "alloy"
    sample_rate: int = Field(24000, ge=8000, le=48000, description="speech output rate (OpenAI's pcm is 24 kHz)")
    max_audio_s: float = Field(600.0, gt=0, description="longest upload transcribed (413 past it)")
    max_speech_chars: int = Field(4096, ge=1, description="`input` of /v1/audio/speech (OpenAI's limit)")
    max_queue: int = Field(16, ge=1, description="transcriptions waiting, and syntheses running, before 429")


class PowerSettings(_Section):
    """The CPU power policy `serve` applies at start and puts back at exit (docs/tuning.md §10)."""

    profile: Literal["unchanged", "performance", "balanced", "powersave", "dynamic"] = "unchanged"
    dynamic_idle_s: float = Field(10.0, gt=0, description="dynamic: seconds of quiet before the clock "
                                  "drops back (long enough that a chat's think time keeps it up)")


class DeviceConfig(_Section):
    schema_version: int = SCHEMA_VERSION
    model: str = "smollm2-135m"
    embedding_model: str | None = None
    classifier_model: str | None = None
    engine: EngineSettings = Field(default_factory=EngineSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    oneshot: OneShotSettings = Field(default_factory=OneShotSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    speech: SpeechSettings = Field(default_factory=SpeechSettings)
    power: PowerSettings = Field(default_factory=PowerSettings)
    # What the profiler saw and which library entry matched: informational, free-form.
    device: dict[str, Any] = Field(default_factory=dict)
    # Plugins' sections ({"encrypt": {...}}), each validated by the model its plugin registers
    # (core/plugins.py); a section whose plugin is not installed is kept as it is.
    plugins: dict[str, dict[str, Any]] = Field(default_factory=dict)


def _field_path(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(root)"


def load_config(path: str | os.PathLike | None, must_exist: bool = False) -> DeviceConfig:
    """Read and validate a device_config.json; None gives the defaults, and so does a missing
    file unless `must_exist` (a server given --config must not serve on defaults in silence:
    the file may have held its API keys)."""
    if path is None:
        return DeviceConfig()
    p = Path(path)
    if not p.exists():
        if must_exist:
            raise LiteInferError(f"config file {p} not found: write one with `python hw_profiler.py -o {p}`, "
                                 "or leave out --config to serve on the defaults")
        return DeviceConfig()
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LiteInferError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise LiteInferError(f"{p}: expected a JSON object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise LiteInferError(
            f"{p}: field schema_version is {version!r}, this liteinfer reads {SCHEMA_VERSION}: "
            "re-run `python hw_profiler.py` to write a current file"
        )
    try:
        config = DeviceConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        raise LiteInferError(f"{p}: field {_field_path(err['loc'])}: {err['msg']}") from None
    validate_sections(config.plugins, str(p))
    return config


def save_config(config: DeviceConfig, path: str | os.PathLike) -> None:
    atomic_write_text(path, config.model_dump_json(indent=2) + "\n")
