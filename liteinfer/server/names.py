"""Which model a request names, for every protocol: the LLM answers to its own name and to the
configured aliases (`--alias`, server.aliases), an embedding model to its name; Ollama clients
add a `:latest` tag that names the same model.

    svc = find(services, config, "llama3.2:latest", kinds=("llm",))   # None: not served here
    listed(services, config)   # [(name, service)]: what /v1/models and /api/tags show
"""

from __future__ import annotations

from collections.abc import Iterable

from liteinfer.core.config import DeviceConfig

LISTED_KINDS = ("llm", "embedding")  # Ollama's listings: the classifier has no /api route
ALL_KINDS = ("llm", "embedding", "classifier", "stt", "tts")  # /v1/models: speech too (OpenAI lists whisper-1...)


def _bare(name: str) -> str:
    return name[: -len(":latest")] if name.endswith(":latest") else name


def listed(services: dict, config: DeviceConfig, kinds: Iterable[str] = LISTED_KINDS,
           ready_only: bool = True) -> list[tuple[str, object]]:
    """(name, service) for each model of `kinds` (ready ones) and each of the LLM's aliases (and a
    speech model's: whisper-1, tts-1...), the served name first."""
    out: list[tuple[str, object]] = []
    for kind in kinds:
        svc = services.get(kind)
        if svc is None or (ready_only and not svc.ready):
            continue
        out.append((svc.name, svc))
        if kind == "llm":
            out += [(a, svc) for a in config.server.aliases if a != svc.name]
        elif kind in ("stt", "tts"):
            extra = config.speech.stt_aliases if kind == "stt" else config.speech.tts_aliases
            out += [(a, svc) for a in extra if a != svc.name]
    return out


def names(services: dict, config: DeviceConfig, kinds: Iterable[str] = ALL_KINDS, ready_only: bool = True) -> list[str]:
    return [n for n, _ in listed(services, config, kinds, ready_only)]


def answers_to(svc, name: str, config: DeviceConfig) -> bool:
    known = set(getattr(svc, "aliases", ())) | {svc.name}
    if svc.kind == "llm":
        known |= set(config.server.aliases)
    return name in known or _bare(name) in known


def find(services: dict, config: DeviceConfig, name: str, kinds: Iterable[str]):
    """The service of one of `kinds` that answers to `name` (ready or not), else None."""
    for kind in kinds:
        svc = services.get(kind)
        if svc is not None and answers_to(svc, name, config):
            return svc
    return None


def not_found_message(name: str, services: dict, config: DeviceConfig) -> str:
    avail = names(services, config, ready_only=False)
    return f"model {name!r} not found; available: {', '.join(avail) if avail else '(none)'}"
