"""OpenAI's audio routes on the speech services (docs/api.md, docs/voice.md):

- POST /v1/audio/transcriptions, /v1/audio/translations: multipart `file` (any container and
  codec FFmpeg reads), `model`, `language`, `prompt`, `temperature`, `response_format` (json,
  text, verbose_json, srt, vtt), `timestamp_granularities[]` (segment, word).
- POST /v1/audio/speech: JSON `model`, `input`, `voice`, `response_format` (mp3, opus, aac, flac,
  wav, pcm: those whose encoder is installed), `speed`, `stream_format` (audio, sse); the audio
  is streamed as it is synthesized.

OpenAI's model names (whisper-1, gpt-4o-mini-transcribe, tts-1, gpt-4o-mini-tts) are aliases
of the served speech models (speech.stt_aliases / tts_aliases). Errors are OpenAI-shaped JSON:
no or bad audio 400, too long 413, unknown model 404, no speech model served 404, queue
full 429 with Retry-After, and a field this server does not implement 400 naming it.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from pydantic import Field, ValidationError

from liteinfer.core.errors import LiteInferError, QueueFull
from liteinfer.engines.audio import MEDIA_TYPES, AudioTooLong, BadAudio
from liteinfer.engines.stt import subtitles
from liteinfer.scheduler.dynamic import BatcherClosed
from liteinfer.server import names
from liteinfer.server.fields import Checked, first_error
from liteinfer.server.openai import error_response, run_batched

router = APIRouter()

TRANSCRIPTION_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
_WHAT = {"stt": ("speech-to-text", "serve --voice, or --stt-model"),
         "tts": ("text-to-speech", "serve --voice, or --tts-model")}
# multipart fields: what each route reads, and what it accepts without effect
_STT_FIELDS = {"file", "model", "language", "prompt", "temperature", "response_format",
               "timestamp_granularities[]", "timestamp_granularities"}
_STT_NEUTRAL = {"stream": "false", "chunking_strategy": "auto"}
_STT_REFUSED = {"include[]": "logprobs are not returned", "include": "logprobs are not returned",
                "stream": "streamed transcription is not supported", "known_speaker_names[]": "no diarization",
                "chunking_strategy": "only auto"}


def find_speech(request: Request, kind: str, model: str | None):
    """(service, None), or (None, an error response): 404 none served or another name."""
    state = request.app.state
    svc = state.services.get(kind)
    if svc is None:
        what, how = _WHAT[kind]
        return None, error_response(404, f"this server has no {what} model ({how})", code="model_not_found")
    if model and not names.answers_to(svc, model, state.config):
        known = ", ".join(sorted(svc.aliases))
        return None, error_response(404, f"model {model!r} not found; {_WHAT[kind][0]} answers to: {known}",
                                    code="model_not_found")
    return svc, None


# ---- transcription and translation -------------------------------------------------------


async def _read_form(request: Request, fields: set[str]):
    """(audio bytes, filename, {field: str}) from the multipart body; LiteInferError names a bad or
    unsupported field."""
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise _Unsupported(f"content type {ctype or '(none)'!r}: send multipart/form-data with a `file` field")
    try:
        form = await request.form(max_files=2, max_fields=32)
    except Exception as e:  # starlette's MultiPartException / a malformed body
        raise LiteInferError(f"could not read the multipart body ({e})") from None
    values: dict[str, list[str]] = {}
    upload = None
    for key, value in form.multi_items():
        if hasattr(value, "read"):
            if key != "file" or upload is not None:
                raise LiteInferError(f"unexpected file field {key!r} (send one `file`)")
            upload = value
            continue
        if key not in fields:
            if _STT_NEUTRAL.get(key) == value:
                continue
            reason = _STT_REFUSED.get(key)
            raise LiteInferError(f"unsupported field: {key}{f' ({reason})' if reason else ''}")
        values.setdefault(key, []).append(value)
    if upload is None:
        raise LiteInferError("no audio: send the file as the multipart field `file`")
    data = await upload.read()
    return data, upload.filename, values


class _Unsupported(LiteInferError):
    pass


def _one(values: dict, key: str) -> str | None:
    v = values.get(key)
    if v and len(v) > 1:
        raise LiteInferError(f"{key}: given {len(v)} times")
    return v[0] if v else None


async def _transcribe(request: Request, task: str):
    fields = _STT_FIELDS - ({"language", "timestamp_granularities[]", "timestamp_granularities"}
                            if task == "translate" else set())
    try:
        data, _, values = await _read_form(request, fields)
        fmt = _one(values, "response_format") or "json"
        if fmt not in TRANSCRIPTION_FORMATS:
            raise LiteInferError(f"response_format {fmt!r}: expected one of {', '.join(TRANSCRIPTION_FORMATS)}")
        temp_s = _one(values, "temperature")
        try:
            temperature = float(temp_s) if temp_s is not None else 0.0
        except ValueError:
            raise LiteInferError(f"temperature {temp_s!r} is not a number") from None
        if not 0.0 <= temperature <= 1.0:
            raise LiteInferError("temperature must be between 0 and 1")
        grains = set(values.get("timestamp_granularities[]", []) + values.get("timestamp_granularities", []))
        if grains - {"segment", "word"}:
            raise LiteInferError(f"timestamp_granularities: {sorted(grains - {'segment', 'word'})}: expected "
                                 "segment and/or word")
        if grains and fmt != "verbose_json":
            raise LiteInferError("timestamp_granularities needs response_format verbose_json")
        language = (_one(values, "language") or "").strip().lower() or None
        prompt = _one(values, "prompt")
        model = _one(values, "model")
    except _Unsupported as e:
        return error_response(415, str(e), code="unsupported_media_type")
    except LiteInferError as e:
        return error_response(400, str(e), code="invalid_request")
    svc, err = find_speech(request, "stt", model)
    if err:
        return err
    opts = {"language": language, "prompt": prompt, "temperature": temperature, "task": task,
            "words": "word" in grains}
    try:  # decoded and checked before it takes a queue slot (FFmpeg's work: off the event loop)
        samples = await asyncio.to_thread(svc.prepare_audio, data, language)
    except AudioTooLong as e:
        return error_response(413, str(e), code="audio_too_long")
    except BadAudio as e:
        return error_response(400, str(e), code="invalid_audio")
    except LiteInferError as e:
        return error_response(400, str(e), code="invalid_request")
    result, err = await run_batched(svc.transcribe_async(samples, **opts),
                                    request.app.state.config.server.request_timeout_s)
    if err:
        return err
    return _transcription_response(result, fmt, task, "segment" in grains or not grains, "word" in grains)


def _usage(t) -> dict:
    return {"type": "duration", "seconds": max(1, round(t.duration))}


def _transcription_response(t, fmt: str, task: str, segments: bool, words: bool):
    if fmt == "text":
        return PlainTextResponse(t.text + "\n")
    if fmt in ("srt", "vtt"):
        return PlainTextResponse(subtitles(t.segments, fmt), media_type="text/vtt" if fmt == "vtt" else
                                 "application/x-subrip")
    if fmt == "json":
        return {"text": t.text, "usage": _usage(t)}
    body: dict = {"task": task, "language": t.language_name, "duration": t.duration, "text": t.text}
    if segments:
        body["segments"] = [vars(s) for s in t.segments]
    if words:
        body["words"] = [vars(w) for w in t.words]
    body["usage"] = _usage(t)
    return body


@router.post("/v1/audio/transcriptions")
async def transcriptions(request: Request):
    return await _transcribe(request, "transcribe")


@router.post("/v1/audio/translations")
async def translations(request: Request):
    """Into English. An English-only model (the default, tiny.en) returns the transcription:
    the audio must be English already."""
    return await _transcribe(request, "translate")


# ---- speech ------------------------------------------------------------------------------


class SpeechRequest(Checked):
    IGNORED = frozenset({"user"})
    REASONS = {"instructions": "this voice cannot take style instructions"}
    NEUTRAL = {"instructions": ""}
    model: str
    input: str
    voice: str | None = None
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] = "audio"


@router.post("/v1/audio/speech")
async def speech(request: Request):
    try:
        body = SpeechRequest.model_validate_json(await request.body())
    except ValidationError as e:
        return error_response(400, first_error(e), code="invalid_request")
    svc, err = find_speech(request, "tts", body.model)
    if err:
        return err
    try:
        chunks = svc.speak_stream(body.input, body.voice, body.speed, body.response_format)
    except QueueFull as e:
        retry = str(int(e.retry_after_s))
        return error_response(429, f"server busy: {e}; retry after {retry} s", "rate_limit_error", "queue_full",
                              {"Retry-After": retry})
    except BatcherClosed as e:
        return error_response(503, str(e), "server_error", "shutting_down")
    except LiteInferError as e:
        return error_response(400, str(e), code="invalid_request")
    # the first chunk before the status line: a synthesis that fails at once is still a JSON error
    try:
        first = await asyncio.wait_for(chunks.__anext__(), request.app.state.config.server.request_timeout_s)
    except StopAsyncIteration:
        first = b""
    except asyncio.TimeoutError:
        await chunks.aclose()
        return error_response(504, "no audio within the request timeout", "server_error", "timeout")
    except LiteInferError as e:
        await chunks.aclose()
        return error_response(400, str(e), code="invalid_request")
    if body.stream_format == "sse":
        return StreamingResponse(_sse(first, chunks), media_type="text/event-stream")
    if not first:
        return Response(b"", media_type=MEDIA_TYPES[body.response_format])
    return StreamingResponse(_audio(first, chunks), media_type=MEDIA_TYPES[body.response_format])


async def _audio(first: bytes, chunks):
    try:
        yield first
        async for chunk in chunks:
            yield chunk
    finally:
        await chunks.aclose()


async def _sse(first: bytes, chunks):
    """OpenAI's speech events: speech.audio.delta (base64 audio), then speech.audio.done."""
    def event(obj: dict) -> str:
        return f"data: {json.dumps(obj)}\n\n"

    try:
        if first:
            yield event({"type": "speech.audio.delta", "audio": base64.b64encode(first).decode()})
        async for chunk in chunks:
            yield event({"type": "speech.audio.delta", "audio": base64.b64encode(chunk).decode()})
        yield event({"type": "speech.audio.done"})
    finally:
        await chunks.aclose()
