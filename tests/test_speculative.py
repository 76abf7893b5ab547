"""Prompt-lookup speculation (scheduler/prompt_lookup.py, engines/llama.verify_draft): the pure
drafting and acceptance rules, then the real engine and model through the continuous
scheduler: greedy output the same with speculation on and off (alone and in a batch of 8),
drafts really accepted on copy-heavy prompts, rejected drafts' KV cells gone, a seed still
reproducible, and the server's per-request switch and /metrics counters."""

from __future__ import annotations

import httpx
import pytest

from liteinfer.core.config import SchedulerSettings
from liteinfer.engines.llama import SamplingParams, verify_draft
from liteinfer.scheduler.continuous import ContinuousScheduler, GenRequest
from liteinfer.scheduler.prompt_lookup import NgramIndex, Speculator, break_even_rate

# A step that runs a sequence's drafts sums its matmuls in another order than a one-token
# step, so a near-tie may flip (as batched vs alone, tests/test_server.py's TIE_TOLERANCE): a
# difference is accepted only where the top-2 logit margin there is below this.
TIE_TOLERANCE = 1.0

# ---- pure rules ------------------------------------------------------------------------


def test_ngram_index_drafts_what_followed_the_latest_match():
    idx = NgramIndex(min_ngram=2, max_ngram=3)
    toks = [1, 2, 3, 4, 5, 9, 2, 3, 7, 8, 2, 3]
    # tail (2, 3): latest earlier occurrence is followed by 7, 8
    assert idx.draft(toks, 3) == [7, 8, 2]
    assert idx.draft(toks + [4], 2) == [5, 9]  # (2, 3, 4): only the first occurrence has it
    assert idx.draft([5, 6, 7], 4) == []  # no earlier occurrence: no draft
    assert idx.draft(toks, 0) == []
    assert NgramIndex().draft([1, 1], 4) == []  # the tail never matches itself


def test_verify_draft_keeps_the_samples_while_they_equal_the_draft():
    calls = []

    def sampler(seq_of_samples):
        def at(i):
            calls.append(i)
            return seq_of_samples[i]
        return at

    assert verify_draft([5, 6, 7], sampler([5, 6, 9, 99])) == ([5, 6, 9], 2)
    assert calls == [0, 1, 2]  # stops at the first rejection: no draw past it
    calls.clear()
    assert verify_draft([5, 6], sampler([5, 6, 8])) == ([5, 6, 8], 2)  # all accepted: one more token
    assert verify_draft([5], sampler([4, 5])) == ([4], 0)
    assert verify_draft([], sampler([3])) == ([3], 0)


def test_point_mass_acceptance_is_the_standard_rule():
    """Standard speculative sampling with draft distribution q: accept t with min(1, p(t)/q(t)),
    else sample from max(0, p - q) renormalised. For q a point mass on t that is: accept with
    p(t), else p without t renormalised; the emitted token's distribution is p either way.
    verify_draft implements it as "sample from p, accept if it is t": same distribution."""
    p = [0.5, 0.2, 0.2, 0.1]
    for t in range(len(p)):
        q = [1.0 if i == t else 0.0 for i in range(len(p))]
        accept = min(1.0, p[t] / q[t])
        residual = [max(0.0, pi - qi) for pi, qi in zip(p, q)]
        z = sum(residual)
        standard = [(accept if i == t else 0.0) + (1 - accept) * residual[i] / z for i in range(len(p))]
        # sample-and-compare: token i comes out with p(i); it is "accepted" iff i == t
        assert standard == pytest.approx(p)
        assert accept == pytest.approx(p[t])


def test_speculator_backs_off_where_drafts_fail_and_comes_back():
    sp = Speculator(max_draft=8)
    toks = [1, 2, 3, 4, 5, 6, 7, 1, 2, 3]
    assert sp.propose(toks, 8, min_rate=0.3) == [4, 5, 6, 7]  # k starts at 4
    sp.record(4, 4)
    assert sp.k == 8  # all accepted: longer drafts
    for _ in range(20):  # every draft rejected: the rate falls under what the batch needs
        draft = sp.propose(toks, 8, 0.3)
        if not draft:
            break
        sp.record(len(draft), 0)
    assert draft == [] and sp.k == Speculator.MIN_DRAFT  # paused, and short drafts
    paused = [sp.propose(toks, 8, 0.3) for _ in range(Speculator.BACKOFF_MIN)]
    assert paused == [[]] * Speculator.BACKOFF_MIN
    retry = sp.propose(toks, 8, 0.3)  # one more try after the pause ...
    assert retry == [4, 5]
    sp.record(2, 0)
    assert sp.propose(toks, 8, 0.3) == []  # ... failed: a pause twice as long
    assert [sp.propose(toks, 8, 0.3) for _ in range(2 * Speculator.BACKOFF_MIN)] == [[]] * 32
    assert sp.propose(toks, 2, 0.0) == [4, 5]  # the caller's limit caps the draft


def test_break_even_rate_rises_with_the_batch():
    coef = [0.005, 0.002, 0.003]  # base, per sequence, per extra token (seconds)
    one, many = break_even_rate(coef, 1), break_even_rate(coef, 16)
    assert 0 < one < many <= 1.0
    assert break_even_rate(None, 4) == 0.0


# ---- the real engine and model ------------------------------------------------------------

PASSAGE = ("Alice went to the market on Monday to buy apples, pears and three loaves of bread. "
           "She paid with a twenty dollar note and got four dollars back. On the way home she met Bob, "
           "who was walking his dog along the river. They talked about the weather and the price of bread.")
CODE = '''def parse_config(path):
    with open(path) as f:
        data = json.load(f)
    if "name" not in data:
        raise ValueError("missing name")
    return Config(name=data["name"], port=int(data.get("port", 8080)))
'''
COPY_PROMPTS = [
    "Quote the sentences of this story that mention bread:\n\n" + PASSAGE,
    "Rewrite this story in the present tense:\n\n" + PASSAGE,
    "Rename the function parse_config to load_config and show the whole code:\n\n" + CODE,
    "Add a docstring to this function and show the whole code:\n\n" + CODE,
    "Repeat this text exactly:\n\n" + PASSAGE,
]
PLAIN_PROMPTS = ["Tell me one fact about the number 7.", "What is a cat?", "Describe the sun.",
                 "Write a short greeting.", "Name a planet and say why it is interesting."]
MAX_TOKENS = 48


def _run(engine, prompts, speculative, temperature=0.0, seed=None):
    """Generate for all prompts together in one scheduler; returns (token lists, scheduler)."""
    sched = ContinuousScheduler(engine, SchedulerSettings(speculative=speculative, prefix_cache=False,
                                                          adaptive=False, speculative_max_batch=8))
    reqs = []
    for p in prompts:
        toks = engine.chat_tokens([{"role": "user", "content": p}])
        req = GenRequest(toks, SamplingParams(max_tokens=MAX_TOKENS, temperature=temperature, seed=seed),
                         emit=lambda e: None)
        sched.submit(req)
        reqs.append(req)
    while sched.waiting or sched.running:
        sched.step()
    assert engine.n_active == 0
    return [r.seq.tokens[r.n_prompt : r.n_prompt + r.completion_tokens] for r in reqs], sched


def _same_or_near_tie(engine, prompt, on, off):
    """on == off, or they part where the model's top-2 logits are within TIE_TOLERANCE."""
    if on == off:
        return
    k = next((i for i, (a, b) in enumerate(zip(on, off)) if a != b), min(len(on), len(off)))
    toks = engine.chat_tokens([{"role": "user", "content": prompt}]) + off[:k]
    row = engine.logits(toks)[-1]
    top2 = sorted(row.tolist())[-2:]
    margin = top2[1] - top2[0]
    assert margin < TIE_TOLERANCE, (
        f"{prompt[:40]!r}: speculation changed greedy token {k} ({on[k:k + 3]} vs {off[k:k + 3]}), margin {margin}")


@pytest.mark.parametrize("prompt", COPY_PROMPTS + PLAIN_PROMPTS)
def test_greedy_alone_is_the_same_with_and_without_speculation(serving_engine, prompt):
    off, s_off = _run(serving_engine, [prompt], speculative=False)
    on, s_on = _run(serving_engine, [prompt], speculative=True)
    assert s_off.drafted == 0
    _same_or_near_tie(serving_engine, prompt, on[0], off[0])
    if prompt in COPY_PROMPTS[:2]:
        # quoting the passage: the drafts really ran, were accepted, and took steps away
        assert s_on.accepted > 0, "no draft accepted on a copy-heavy prompt"
        assert s_on.steps < s_off.steps


def test_greedy_batch_of_8_is_the_same_with_and_without_speculation(serving_engine):
    prompts = COPY_PROMPTS[:4] + PLAIN_PROMPTS[:4]
    off, _ = _run(serving_engine, prompts, speculative=False)
    on, sched = _run(serving_engine, prompts, speculative=True)
    assert sched.accepted > 0 and sched.drafted >= sched.accepted
    for p, a, b in zip(prompts, on, off):
        _same_or_near_tie(serving_engine, p, a, b)


def test_rejected_drafts_leave_no_kv_cells(serving_engine):
    eng = serving_engine
    seq = eng.start(eng.tokenize("one two three four five six"), SamplingParams(temperature=0, max_tokens=8))
    eng.step([(seq, seq.n_pending)])
    seq.draft = [eng.tokenize(" zebra", add_special=False)[0]] * 5  # nonsense: the first one fails
    out = eng.step([(seq, 1)])
    assert len(out) == 1 + seq.n_accepted and seq.n_accepted < 5
    assert eng.slot_kv_len(seq.slot) == seq.n_cached == len(seq.tokens) - 1
    eng.release(seq, keep_prefix=False)


def test_a_seed_stays_reproducible_with_speculation(serving_engine):
    prompt = COPY_PROMPTS[4]
    a, s_a = _run(serving_engine, [prompt], speculative=True, temperature=0.7, seed=1234)
    b, _ = _run(serving_engine, [prompt], speculative=True, temperature=0.7, seed=1234)
    assert a == b
    assert s_a.drafted > 0  # the sampled request did speculate


# ---- the server -----------------------------------------------------------------------------


def test_server_request_switch_and_metrics(server):
    body = {"messages": [{"role": "user", "content": COPY_PROMPTS[0]}], "temperature": 0,
            "max_tokens": MAX_TOKENS}
    before = server.metric("liteinfer_speculative_drafted_tokens_total")
    off = httpx.post(server.url + "/v1/chat/completions", json={**body, "speculative": False}, timeout=300)
    assert off.status_code == 200, off.text
    assert server.metric("liteinfer_speculative_drafted_tokens_total") == before
    on = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=300)  # default: on
    assert on.status_code == 200, on.text
    assert server.metric("liteinfer_speculative_accepted_tokens_total") > 0
    assert server.metric("liteinfer_speculative_drafted_tokens_total") > before
    bad = httpx.post(server.url + "/v1/chat/completions", json={**body, "speculative": "yes"}, timeout=60)
    assert bad.status_code == 400 and "speculative" in bad.text
