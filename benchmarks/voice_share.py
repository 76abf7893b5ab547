"""Voice turns on a server that is also serving chat: speech first on the cores, or not.

    python benchmarks/voice_share.py [--utterances 10] [--clients 4] [--rounds 2] [--json out.json]

One `liteinfer serve --voice` process at a time, with `scheduler.speech_first` on (the default)
or off, rounds alternating. In each, `--clients` streaming chat clients run the whole time and
voice turns go over HTTP as the web page's microphone sends them: the utterance's WAV (made with
espeak-ng) to /v1/audio/transcriptions, the text to /v1/chat/completions (streamed, 48 tokens),
the first sentence (engines/tts.SentenceSplitter, as the page and `liteinfer voice` cut it) to
/v1/audio/speech, until its first audio bytes. Reported per setting: upload -> first audio
p50/p95 (end of speech, VAD's end-of-turn wait not included), transcription time p50, the chat
clients' tok/s, and the time the LLM paused for speech (/metrics). The load average is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import httpx  # noqa: E402
from voice import SENTENCES, espeak_wav, load_note, pct  # noqa: E402

from liteinfer.engines.tts import SentenceSplitter  # noqa: E402


class ChatClients:
    """Streaming chat clients against one server, in threads, counting content events."""

    def __init__(self, url: str, clients: int):
        self.url, self.stop_flag, self.tokens = url, threading.Event(), 0
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def _client(self) -> None:
        body = {"messages": [{"role": "user", "content": "Tell me about the sea."}], "max_tokens": 64, "stream": True}
        with httpx.Client(timeout=300) as c:
            while not self.stop_flag.is_set():
                with c.stream("POST", self.url + "/v1/chat/completions", json=body) as r:
                    for line in r.iter_lines():
                        if line.startswith("data: {") and '"content"' in line:
                            self.tokens += 1

    def __enter__(self):
        self.t0 = time.perf_counter()
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        for t in self.threads:
            t.join(300)
        self.seconds = time.perf_counter() - self.t0


def voice_turn(c: httpx.Client, url: str, wav: bytes) -> tuple[float, float]:
    """(upload -> transcript, upload -> first audio of the answer's first sentence), seconds."""
    t0 = time.perf_counter()
    r = c.post(url + "/v1/audio/transcriptions", files={"file": ("q.wav", wav, "audio/wav")},
               data={"model": "whisper-1"})
    r.raise_for_status()
    t_text = time.perf_counter() - t0
    body = {"messages": [{"role": "user", "content": r.json()["text"]}], "max_tokens": 48, "stream": True}
    split, first = SentenceSplitter(), None
    with c.stream("POST", url + "/v1/chat/completions", json=body) as s:
        for line in s.iter_lines():
            if not line.startswith("data: {"):
                continue
            delta = json.loads(line[6:])["choices"]
            text = (delta[0]["delta"].get("content") or "") if delta else ""
            done = split.feed(text)
            if done:
                first = done[0]
                break
    first = first or " ".join(split.flush()) or "Sorry."
    with c.stream("POST", url + "/v1/audio/speech", json={"model": "tts-1", "input": first, "voice": "alloy",
                                                          "response_format": "pcm"}) as s:
        for chunk in s.iter_bytes():
            if chunk:
                break
    return t_text, time.perf_counter() - t0


def run(speech_first: bool, n: int, clients: int, offset: int) -> dict:
    from conftest import ServerProcess

    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "config.json"
        cfg.write_text(json.dumps({"schema_version": 1, "scheduler": {"speech_first": speech_first}}))
        srv = ServerProcess("--config", str(cfg), "--voice")
        try:
            rows = []
            with httpx.Client(timeout=300) as c:
                voice_turn(c, srv.url, espeak_wav("Hello."))  # warm-up
                with ChatClients(srv.url, clients) as load:
                    time.sleep(2)  # the clients are streaming
                    for i in range(n):
                        rows.append(voice_turn(c, srv.url, espeak_wav(SENTENCES[(offset + i) % len(SENTENCES)])))
                paused = srv.metric("liteinfer_llm_paused_for_speech_seconds")
        finally:
            srv.stop()
    return {"speech_first": speech_first, "transcribed": [r[0] for r in rows], "first_audio": [r[1] for r in rows],
            "chat_tok_s": load.tokens / load.seconds, "llm_paused_s": paused}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--utterances", type=int, default=10, help="voice turns per setting and round")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    print(f"start: {load_note()}", flush=True)
    out: dict[bool, list[dict]] = {True: [], False: []}
    for k in range(args.rounds):
        for on in ((True, False) if k % 2 == 0 else (False, True)):
            r = run(on, args.utterances, args.clients, offset=k * args.utterances)
            out[on].append(r)
            print(f"round {k + 1} speech_first={on}: first audio p50 {pct(r['first_audio'], 0.5):.2f} s, "
                  f"transcribed p50 {pct(r['transcribed'], 0.5):.2f} s, chat {r['chat_tok_s']:.1f} tok/s, "
                  f"LLM paused {r['llm_paused_s']:.1f} s; {load_note()}", flush=True)
    summary = {}
    for on, runs in out.items():
        fa = [x for r in runs for x in r["first_audio"]]
        tr = [x for r in runs for x in r["transcribed"]]
        summary["on" if on else "off"] = {
            "n": len(fa), "first_audio_p50_s": pct(fa, 0.5), "first_audio_p95_s": pct(fa, 0.95),
            "transcribed_p50_s": pct(tr, 0.5), "chat_tok_s": sum(r["chat_tok_s"] for r in runs) / len(runs),
            "llm_paused_s": sum(r["llm_paused_s"] for r in runs)}
    for key, s in summary.items():
        print(f"speech_first {key}: upload -> first audio over {s['n']}: p50 {s['first_audio_p50_s']:.2f} s, "
              f"p95 {s['first_audio_p95_s']:.2f} s; transcribed p50 {s['transcribed_p50_s']:.2f} s; "
              f"{args.clients} chat clients {s['chat_tok_s']:.1f} tok/s; LLM paused {s['llm_paused_s']:.1f} s")
    on, off = summary["on"], summary["off"]
    print(f"on/off: first audio p50 {on['first_audio_p50_s'] / off['first_audio_p50_s']:.2f}x, "
          f"chat tok/s {on['chat_tok_s'] / off['chat_tok_s']:.2f}x; end: {load_note()}")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "runs": out[True] + out[False]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
