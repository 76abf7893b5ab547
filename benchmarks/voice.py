"""Voice benchmark: how fast liteinfer hears and speaks on this machine.

    python benchmarks/voice.py [--utterances 20] [--no-concurrent] [--json out.json]

What runs, in this one invocation:
  stt      Whisper tiny.en (int8, speech.stt_threads) over N utterances made with espeak-ng
           (the 20 assistant sentences of tests/test_speech.py): real-time factor (compute /
           audio seconds) per clip p50/p95 and in total, CPU seconds per audio second, and the
           WER, with the short encoder window (speech.stt_short_window) and, the peer, the same
           engine with Whisper's whole 30 s window; and faster-whisper called directly with its
           defaults (beam 5, no VAD filter), i.e. what liteinfer's decode + queue + options add.
  tts      eSpeak NG (and piper when its extra is installed) through SpeechService.speak over
           the same sentences: RTF (synthesis / audio seconds) and time to the first chunk.
  loop     `liteinfer voice`'s loop (cli/voice.run_turns) fed each utterance at a
           microphone's pace (0.3 s silence, the question, 1.2 s silence): end of speech ->
           first audio of the spoken answer, p50/p95, with its stages (VAD's end-of-turn wait,
           transcription, first token); the peer: the same loop with Whisper's 30 s window
           (--early-stt adds the loop with Whisper started in the pause).
  loop4    the loop with 4 chat clients streaming from a `liteinfer serve` process beside it
           (unless --no-concurrent): their tok/s is shown.
  rss      peak RSS (VmHWM) of `liteinfer serve --voice` with the LLM, Whisper and eSpeak
           loaded and each used once.

Targets (issue 19, two cores): transcription RTF <= 0.3, end of speech -> first audio <= 1.5 s
p50, server peak RSS <= 600 MB. The load average is printed: on a machine busy with other work
every time here is an upper bound.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402

from liteinfer.core.config import DeviceConfig  # noqa: E402
from liteinfer.engines.audio import decode  # noqa: E402
from liteinfer.services import SpeechService  # noqa: E402

SENTENCES = [
    "What is the weather like today?", "Please set a timer for ten minutes.", "Turn off the lights in the kitchen.",
    "How long does it take to boil an egg?", "Remind me to call my mother tomorrow morning.",
    "What time is it in London right now?", "Play some quiet music in the living room.",
    "Add milk and bread to the shopping list.", "How many days are there in a leap year?",
    "Tell me a short story about a brave little dog.", "The train to the city leaves at seven o'clock.",
    "I would like a cup of hot tea with lemon.", "Open the window, it is too warm in here.",
    "Where did I leave my keys last night?", "The children are playing in the garden.",
    "Can you read me the news headlines?", "My favorite color is green like the grass.",
    "We are going to the beach on Saturday.", "Please lock the front door before you go to bed.",
    "Thank you very much for your help today.",
]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def espeak_wav(text: str) -> bytes:
    return subprocess.run(["espeak-ng", "--stdout", "-v", "en-us", text], capture_output=True, check=True).stdout


def load_note() -> str:
    la = os.getloadavg()[0]
    n = os.cpu_count() or 1
    note = f"load average {la:.2f} on {n} CPUs"
    if la > 0.5 * n:
        note += "  ** BUSY: other work is running; times are upper bounds **"
    return note


def wer(refs, hyps) -> float:
    import jiwer

    norm = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(),
                          jiwer.Strip(), jiwer.ReduceToListOfListOfWords()])
    return jiwer.wer(refs, hyps, reference_transform=norm, hypothesis_transform=norm)


def bench_stt(config: DeviceConfig, clips: list[bytes], refs: list[str]) -> dict:
    stt = SpeechService.open(config, "stt", config.speech.stt_model)
    stt.transcribe(clips[0])  # warm-up
    out = run_stt(stt, clips, refs)
    # the peer: the same engine and clips with Whisper's whole 30 s window
    short, stt.engine.short_window = stt.engine.short_window, not stt.engine.short_window
    out["other_window"] = run_stt(stt, clips, refs)
    stt.engine.short_window = short
    out["short_window"] = short
    out["margin_s"] = stt.engine.model.margin_frames / 100
    # and faster-whisper with its defaults, on the same decoded clips
    model = stt.engine.model
    model.local.on = False
    c2 = 0.0
    for data in clips:
        samples = decode(data)
        t0 = time.perf_counter()
        segs, _ = model.transcribe(samples, language="en")
        "".join(s.text for s in segs)
        c2 += time.perf_counter() - t0
    out["peer_rtf_total"] = c2 / out["audio_s"]
    stt.close()
    return out


def run_stt(stt, clips: list[bytes], refs: list[str]) -> dict:
    rtfs, hyps, total_c, total_a, cpu = [], [], 0.0, 0.0, 0.0
    for data in clips:
        samples = decode(data)
        t0, c0 = time.perf_counter(), time.process_time()
        t = stt.batcher.run_sync((samples, {}))
        dt = time.perf_counter() - t0
        cpu += time.process_time() - c0  # all of this process's threads: steadier than wall time on a busy box
        rtfs.append(dt / t.duration)
        total_c, total_a = total_c + dt, total_a + t.duration
        hyps.append(t.text)
    return {"rtf_p50": pct(rtfs, 0.5), "rtf_p95": pct(rtfs, 0.95), "rtf_total": total_c / total_a,
            "cpu_s_per_audio_s": cpu / total_a, "audio_s": total_a,
            "audio_s_mean": total_a / len(clips), "wer": wer(refs, hyps), "threads": stt.engine.threads,
            "beam": stt.engine.beam_size, "hyps": hyps}


def bench_tts(config: DeviceConfig, name: str) -> dict:
    config = config.model_copy(deep=True)
    tts = SpeechService.open(config, "tts", name)
    rtfs, firsts = [], []
    for s in SENTENCES:
        t0 = time.perf_counter()
        n, first = 0, None
        for chunk in tts.speak(s, fmt="pcm"):
            if first is None:
                first = time.perf_counter() - t0
            n += len(chunk)
        dt = time.perf_counter() - t0
        rtfs.append(dt / (n / 2 / tts.rate))
        firsts.append(first)
    tts.close()
    return {"rtf_p50": pct(rtfs, 0.5), "rtf_p95": pct(rtfs, 0.95), "first_chunk_p50_s": pct(firsts, 0.5)}


def utterance(text: str):
    speech = decode(espeak_wav(text))
    return np.concatenate([np.zeros(4800, np.float32), speech, np.zeros(19200, np.float32)])


def bench_loop(config: DeviceConfig, model: str, n: int, early: bool = False) -> dict:
    # the voice loop's own code, as `liteinfer voice --realtime` runs it
    from liteinfer.cli.voice import Assistant, run_turns

    assistant = Assistant(config, model, max_tokens=48)
    assistant.early_stt = early
    try:
        run_turns(assistant, utterance("Hello."), realtime=False)  # warm-up
        rows = []
        for i in range(n):
            assistant.messages = assistant.messages[:1]  # a fresh conversation per utterance
            turns = run_turns(assistant, utterance(SENTENCES[i % len(SENTENCES)]), realtime=True)
            rows += [t for t in turns if t.first_audio_s is not None]
    finally:
        assistant.close()
    first = [t.first_audio_s for t in rows]
    return {"n": len(rows), "first_audio_p50_s": pct(first, 0.5), "first_audio_p95_s": pct(first, 0.95),
            "detected_p50_s": pct([t.detected_s for t in rows], 0.5),
            "transcribed_p50_s": pct([t.transcribed_s for t in rows], 0.5),
            "first_token_p50_s": pct([t.first_token_s for t in rows], 0.5),
            "early_stt": sum(t.early_stt for t in rows),
            "first_sentence_chars_p50": pct([len(t.sentences[0]) for t in rows if t.sentences], 0.5),
            "reply_example": rows[0].reply if rows else ""}


def window_name(short: bool, margin_s: float) -> str:
    return f"short window (+{margin_s:g} s)" if short else "30 s window"


class ChatLoad:
    """4 clients streaming chat completions from a `liteinfer serve` process, in threads."""

    def __init__(self, model: str, clients: int = 4):
        from conftest import ServerProcess

        self.srv = ServerProcess("-m", model)
        self.stop_flag = threading.Event()
        self.tokens = 0
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def _client(self) -> None:
        import httpx

        body = {"messages": [{"role": "user", "content": "Tell me about the sea."}], "max_tokens": 64, "stream": True}
        with httpx.Client(timeout=120) as c:
            while not self.stop_flag.is_set():
                with c.stream("POST", self.srv.url + "/v1/chat/completions", json=body) as r:
                    for line in r.iter_lines():
                        if line.startswith("data: {"):
                            self.tokens += 1

    def __enter__(self):
        self.t0 = time.perf_counter()
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        for t in self.threads:
            t.join(180)
        self.seconds = time.perf_counter() - self.t0
        self.srv.stop()


def server_rss(model: str) -> dict:
    """Peak RSS of `liteinfer serve --voice` after one chat, one transcription, one speech."""
    import httpx
    from conftest import ServerProcess

    srv = ServerProcess("-m", model, "--voice")
    try:
        httpx.post(srv.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}],
                   "max_tokens": 16}, timeout=120).raise_for_status()
        httpx.post(srv.url + "/v1/audio/transcriptions", files={"file": ("a.wav", espeak_wav(SENTENCES[0]))},
                   timeout=120).raise_for_status()
        httpx.post(srv.url + "/v1/audio/speech", json={"model": "tts-1", "input": SENTENCES[1], "response_format":
                   "mp3"}, timeout=120).raise_for_status()
        status = Path(f"/proc/{srv.proc.pid}/status").read_text()
        field = {ln.split(":")[0]: int(ln.split()[1]) for ln in status.splitlines() if ln.startswith(("VmHWM", "VmRSS"))}
        return {"peak_rss_mb": field["VmHWM"] / 1024, "rss_mb": field["VmRSS"] / 1024}
    finally:
        srv.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--utterances", type=int, default=20)
    ap.add_argument("-m", "--model", default=None, help="chat model (default: the catalog's smollm2-135m)")
    ap.add_argument("--no-concurrent", action="store_true", help="skip the run beside 4 chat clients")
    ap.add_argument("--only", choices=["stt", "tts", "loop", "loop4", "rss"], action="append", default=None,
                    help="loop4: only the loop beside 4 chat clients")
    ap.add_argument("--beam", type=int, default=None, help="Whisper's beam (default speech.stt_beam_size, 5)")
    ap.add_argument("--margin", type=float, default=None,
                    help="silence after the audio in the short window, s (default speech.stt_window_margin_s)")
    ap.add_argument("--full-window", action="store_true", help="Whisper's 30 s window (stt_short_window off); "
                    "the peers then use the short one")
    ap.add_argument("--early-stt", action="store_true", help="loop: also Whisper from the pause")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()
    from liteinfer.core.catalog import resolve_llm

    model = args.model or str(resolve_llm("smollm2-135m"))
    config = DeviceConfig()
    config.speech.stt_model, config.speech.tts_model = "whisper-tiny.en", "espeak-ng"
    if args.beam:
        config.speech.stt_beam_size = args.beam
    if args.margin is not None:
        config.speech.stt_window_margin_s = args.margin
    config.speech.stt_short_window = not args.full_window
    only = set(args.only or ["stt", "tts", "loop", "loop4", "rss"])
    if args.no_concurrent:
        only.discard("loop4")
    print(f"voice benchmark: {load_note()}", flush=True)
    res: dict = {"load_before": os.getloadavg()[0]}
    if "stt" in only:
        n = args.utterances
        refs = [SENTENCES[i % len(SENTENCES)] for i in range(n)]
        s = res["stt"] = bench_stt(config, [espeak_wav(r) for r in refs], refs)
        for label, r in ((window_name(s["short_window"], s["margin_s"]), s),
                         (window_name(not s["short_window"], s["margin_s"]), s["other_window"])):
            print(f"stt  whisper-tiny.en int8 {r['threads']} threads beam {r['beam']}, {label}: RTF p50 "
                  f"{r['rtf_p50']:.3f} p95 {r['rtf_p95']:.3f} total {r['rtf_total']:.3f} (clips "
                  f"{r['audio_s_mean']:.1f} s), WER {r['wer']:.3f}, CPU seconds per audio second "
                  f"{r['cpu_s_per_audio_s']:.3f} (so on {r['threads']} free cores the wall RTF is at best "
                  f"{r['cpu_s_per_audio_s'] / r['threads']:.3f})", flush=True)
        print(f"stt  RTF {window_name(s['short_window'], s['margin_s'])} / other window: "
              f"{s['rtf_total'] / s['other_window']['rtf_total']:.2f} (CPU-s "
              f"{s['cpu_s_per_audio_s'] / s['other_window']['cpu_s_per_audio_s']:.2f}); faster-whisper direct "
              f"(defaults, 30 s window) RTF {s['peer_rtf_total']:.3f} (ratio {s['rtf_total'] / s['peer_rtf_total']:.2f}); "
              f"{load_note()}", flush=True)
        for ref, a, b in zip(refs, s["hyps"], s["other_window"]["hyps"]):
            if a != b:
                print(f"     {ref!r}: {a!r} / {b!r}")
    if "tts" in only:
        res["tts"] = {"espeak-ng": bench_tts(config, "espeak-ng")}
        try:
            res["tts"]["piper-joe"] = bench_tts(config, "piper-joe")
        except Exception as e:  # the optional GPL-3.0 extra
            print(f"tts  piper: not measured ({e})")
        for name, t in res["tts"].items():
            print(f"tts  {name}: RTF p50 {t['rtf_p50']:.4f} p95 {t['rtf_p95']:.4f}, first chunk p50 "
                  f"{t['first_chunk_p50_s'] * 1000:.0f} ms", flush=True)
    if "loop" in only:
        # the peer: the same loop with the other Whisper window (and, with --early-stt, from the pause)
        other = config.model_copy(deep=True)
        other.speech.stt_short_window = not config.speech.stt_short_window
        runs = [("loop", config, False), ("loop_other_window", other, False)]
        runs += [("loop_early_stt", config, True)] if args.early_stt else []
        for key, cfg, early in runs:
            lp = res[key] = bench_loop(cfg, model, args.utterances, early)
            label = window_name(cfg.speech.stt_short_window, cfg.speech.stt_window_margin_s)
            print(f"loop ({label}, {'Whisper from the pause' if early else 'Whisper at the end'}) end of speech -> first "
                  f"audio over {lp['n']}: p50 {lp['first_audio_p50_s']:.2f} s p95 {lp['first_audio_p95_s']:.2f} s "
                  f"(stages p50: detected {lp['detected_p50_s']:.2f}, transcribed {lp['transcribed_p50_s']:.2f}, "
                  f"first token {lp['first_token_p50_s']:.2f}; early transcripts {lp['early_stt']}; first "
                  f"sentence p50 {lp['first_sentence_chars_p50']} chars); {load_note()}", flush=True)
        print(f"loop first audio p50, {window_name(config.speech.stt_short_window, config.speech.stt_window_margin_s)}"
              f" / other window: {res['loop']['first_audio_p50_s'] / res['loop_other_window']['first_audio_p50_s']:.2f}")
    if "loop4" in only:
        with ChatLoad(model) as load:
            lc = res["loop_with_4_chat_clients"] = bench_loop(config, model, args.utterances)
        lc["chat_tok_s"] = load.tokens / load.seconds
        print(f"loop beside 4 chat clients ({window_name(config.speech.stt_short_window, config.speech.stt_window_margin_s)}): p50 {lc['first_audio_p50_s']:.2f} s p95 {lc['first_audio_p95_s']:.2f} s "
              f"(transcribed p50 {lc['transcribed_p50_s']:.2f}, first token {lc['first_token_p50_s']:.2f}); "
              f"the clients got {lc['chat_tok_s']:.1f} tok/s; {load_note()}", flush=True)
    if "rss" in only:
        r = res["rss"] = server_rss(model)
        print(f"rss  serve --voice (LLM + Whisper + eSpeak, each used once): peak {r['peak_rss_mb']:.0f} MB, "
              f"now {r['rss_mb']:.0f} MB; {load_note()}", flush=True)
    res["load_after"] = os.getloadavg()[0]
    print(f"done: {load_note()}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
