"""GGUF LLM engine on llama.cpp's low-level API, built for batching.

One `step()` = one `llama_decode` call that advances many sequences at once: prompt chunks
and single decode tokens mixed in one batch. Each sequence owns a KV "slot" (llama.cpp seq
id) in one unified KV cache, so sequences can share a common prefix's cells (seq_cp) instead
of recomputing it. Sampling runs in llama.cpp's sampler chains, one per sequence.

The engine owns memory (slots, KV cells, prefix cache); the scheduler decides what goes into
each step. Not thread-safe: one thread drives an engine.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import math
import os
import time
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from pathlib import Path

from liteinfer.core.catalog import check_gguf
from liteinfer.core.config import EngineSettings
from liteinfer.core.errors import LiteInferError
from liteinfer.engines.chat_template import CHATML, ChatTemplate, split_special
from liteinfer.engines.llama_cpp_lazy import c_api, repack_buffers_safe
from liteinfer.engines.q4_1_split import prepare
from liteinfer.hardware.cores import usable_cores

# When the grammar rejects the plain pick, it first checks only this many most likely tokens
# (one pass over 64 tokens instead of the whole vocabulary, see LlamaEngine._shortlist_sample).
SHORTLIST = 64
# ... and a sampled (not greedy) request keeps the shortlist's pick only when the tokens left
# out of it hold less than this share of the probability
SHORTLIST_MASS = 1e-4

GGML_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "bf16": 30}


def common_prefix_len(a: Seq[int], b: Seq[int]) -> int:
    """How many leading tokens two sequences share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def verify_draft(draft: Seq[int], sample_at: Callable[[int], int]) -> tuple[list[int], int]:
    """The tokens one speculative step emits, and how many drafts they accepted.
    `sample_at(i)` samples from the model at position i (0 = after the pending token, i = after
    draft[i-1]) with the request's own sampler; it is called in order, and only while every
    earlier draft was accepted. The draft is deterministic (a point mass), so the standard
    speculative sampling rule (accept t with probability p(t), else sample from p without t,
    renormalised) is exactly this: sample from p, keep going while the sample is the draft.
    Emits 1..len(draft)+1 tokens, each one draw of the sampler, as without speculation."""
    out: list[int] = []
    for i in range(len(draft) + 1):
        tok = sample_at(i)
        out.append(tok)
        if i == len(draft) or tok != draft[i]:
            break
    return out, len(out) - 1


class KVCacheFull(LiteInferError):
    """No room in the KV cache for this step even after evicting cached prefixes."""


@dataclass
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    seed: int | None = None
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    stop: list[str] = field(default_factory=list)
    grammar: str | None = None  # GBNF (engines/grammar.py builds it from a JSON schema)
    logit_bias: dict[int, float] = field(default_factory=dict)  # token -> added logit; <= -100 bans
    logprobs: bool = False  # record each sampled token's logprob (from the raw logits row)
    top_logprobs: int = 0  # ... and this many most likely alternatives, sorted
    speculative: bool | None = None  # prompt-lookup drafts for this request; None = the scheduler's setting

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def penalized(self) -> bool:
        return self.repeat_penalty != 1.0 or bool(self.frequency_penalty) or bool(self.presence_penalty)


@dataclass
class TokenLogprob:
    """One sampled token's log-probability under the model (log-softmax of the raw logits,
    before temperature, bias and grammar, as OpenAI reports it), and the top alternatives."""

    token: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass(eq=False)
class Sequence:
    """One generation: its KV slot, all its tokens, and how many of them are in the KV cache."""

    slot: int
    tokens: list[int]
    n_prompt: int
    n_cached: int
    params: SamplingParams
    sampler: object
    n_reused: int = 0  # prompt tokens whose KV came from the prefix cache
    record_margins: bool = False
    margins: list[float] = field(default_factory=list)  # top1 - top2 logit at each sample
    # grammar-constrained sequences: `sampler` runs without the grammar (cheap), `constrained`
    # is the same chain behind the grammar sampler `grammar`, used when the cheap pick breaks it
    constrained: object = None
    grammar: object = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    # speculation (scheduler/prompt_lookup.py): tokens guessed to follow the pending one; the
    # next step runs them too and keeps the ones the model samples itself (see LlamaEngine.step)
    draft: list[int] = field(default_factory=list)
    n_accepted: int = 0  # drafts the last step accepted

    @property
    def n_pending(self) -> int:
        return len(self.tokens) - self.n_cached

    @property
    def generated(self) -> list[int]:
        return self.tokens[self.n_prompt :]


@dataclass
class _CachedPrefix:
    tokens: list[int]
    last_used: float


@dataclass
class EngineStats:
    prompt_tokens: int = 0
    decode_tokens: int = 0
    reused_tokens: int = 0
    steps: int = 0
    decode_seconds: float = 0.0


def _silence_llama_logs() -> None:
    llama_cpp = c_api()

    if os.environ.get("LITEINFER_DEBUG"):
        return

    @llama_cpp.llama_log_callback
    def _quiet(level, text, user_data):  # noqa: ARG001 - llama.cpp callback signature
        return None

    _silence_llama_logs.callback = _quiet  # keep a reference: C holds the pointer
    llama_cpp.llama_log_set(_quiet, ctypes.c_void_p(0))


def _drop_mapped_pages(path: Path) -> None:
    """Release this process's resident pages of a mapped file (MADV_DONTNEED): pages still
    needed fault back in from the file on first use, the rest stop counting as our memory."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        target = os.path.realpath(path)
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and parts[5] == target:
                    lo, hi = (int(x, 16) for x in parts[0].split("-"))
                    libc.madvise(lo, hi - lo, 4)  # MADV_DONTNEED
    except (OSError, AttributeError):
        pass  # not Linux: memory stays as it was, nothing breaks


class LlamaEngine:
    def __init__(self, model_path: str | os.PathLike, settings: EngineSettings | None = None):
        llama_cpp = c_api()

        self._ll = llama_cpp
        self.settings = s = settings or EngineSettings()
        self.path = Path(model_path)

        check_gguf(self.path)
        _silence_llama_logs()
        llama_cpp.llama_backend_init()

        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = 0
        mparams.use_mmap = s.use_mmap
        mparams.use_mlock = s.use_mlock
        # repack buffers crash batched decode only in a build with AMX code on an AMX CPU
        mparams.use_extra_bufts = repack_buffers_safe() if s.use_extra_bufts is None else s.use_extra_bufts
        load_path, self._offsets = self.path, None
        if s.split_q4_1:
            try:
                load_path, offsets_path = prepare(self.path) or (self.path, None)
            except OSError as e:  # e.g. no room for the cached pair: serve the Q4_1 kernels
                logging.getLogger("liteinfer.engine").warning("Q4_1 split unavailable (%s): using Q4_1", e)
        self.model = llama_cpp.llama_model_load_from_file(str(load_path).encode(), mparams)
        if not self.model:
            raise LiteInferError(f"llama.cpp could not load {self.path} (unsupported or damaged GGUF)")
        if load_path != self.path:
            self._offsets = llama_cpp.llama_adapter_lora_init(self.model, str(offsets_path).encode())
            if not self._offsets:
                raise LiteInferError(f"llama.cpp could not load the Q4_1 offsets for {self.path}")
            if mparams.use_extra_bufts and s.use_mmap:
                # the Q4_0 weights now live in repacked copies; their mapped file pages are dead
                _drop_mapped_pages(load_path)
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train = llama_cpp.llama_model_n_ctx_train(self.model)

        if s.type_v not in ("f32", "f16", "bf16") and s.flash_attn is False:
            raise LiteInferError("a quantized V cache (type_v) needs flash_attn on (or auto)")
        threads = s.n_threads or usable_cores()
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = s.n_ctx
        cparams.n_batch = s.n_batch
        cparams.n_ubatch = min(s.n_ubatch, s.n_batch)
        cparams.n_seq_max = s.n_seq_max
        cparams.n_threads = threads
        cparams.n_threads_batch = s.n_threads_batch or threads
        cparams.type_k = GGML_TYPES[s.type_k]
        cparams.type_v = GGML_TYPES[s.type_v]
        cparams.flash_attn_type = -1 if s.flash_attn is None else int(s.flash_attn)
        cparams.kv_unified = True  # one cell pool shared by all sequences: prefix cells are shared
        cparams.no_perf = True
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            raise LiteInferError(f"llama.cpp could not create a context (n_ctx={s.n_ctx}): out of memory?")
        self._attach_offsets(self.ctx)
        self.n_threads = threads
        self.n_ctx = llama_cpp.llama_n_ctx(self.ctx)
        self.n_batch = s.n_batch
        self.max_seq_len = min(self.n_ctx, self.n_ctx_train or self.n_ctx)
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self._batch = llama_cpp.llama_batch_init(s.n_batch, 0, 1)
        self._pieces: dict[int, bytes] = {}
        self._free_slots = list(range(s.n_seq_max - 1, -1, -1))
        self._active: dict[int, Sequence] = {}
        self._cached: dict[int, _CachedPrefix] = {}
        self.prefix_cache = True
        self.stats = EngineStats()
        self._template = None
        self._specials: dict[str, int] | None = None
        self._one_token = (llama_cpp.llama_token_data * 1)()
        self._one_array = llama_cpp.llama_token_data_array(self._one_token, 1, -1, False)
        self._short_tokens = (llama_cpp.llama_token_data * SHORTLIST)()
        self._short_array = llama_cpp.llama_token_data_array(self._short_tokens, SHORTLIST, -1, False)

    @property
    def q4_1_split(self) -> bool:
        """Running a Q4_1 model as Q4_0 plus its offset term (see engines/q4_1_split.py)."""
        return self._offsets is not None

    def _attach_offsets(self, ctx) -> None:
        """Every context on a split Q4_1 model needs its offset term (see q4_1_split)."""
        if self._offsets:
            adapters = (self._ll.llama_adapter_lora_p_ctypes * 1)(self._offsets)
            if self._ll.llama_set_adapters_lora(ctx, adapters, 1, (ctypes.c_float * 1)(1.0)) != 0:
                raise LiteInferError("llama.cpp refused the Q4_1 offset adapter")

    def set_threads(self, n: int) -> None:
        """Change compute threads between steps (the controller does when cores get busy)."""
        self._ll.llama_set_n_threads(self.ctx, n, n)
        self.n_threads = n

    # ---- text ---------------------------------------------------------------------------
    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8", errors="replace")
        n_max = len(data) + 16
        buf = (self._ll.llama_token * n_max)()
        n = self._ll.llama_tokenize(self.vocab, data, len(data), buf, n_max, add_special, parse_special)
        if n < 0:
            n_max = -n
            buf = (self._ll.llama_token * n_max)()
            n = self._ll.llama_tokenize(self.vocab, data, len(data), buf, n_max, add_special, parse_special)
        return list(buf[:n])

    def token_bytes(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = self._ll.llama_token_to_piece(self.vocab, token, buf, 64, 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self._ll.llama_token_to_piece(self.vocab, token, buf, -n, 0, False)
            piece = self._pieces[token] = buf.raw[:n]
        return piece

    def detokenize(self, tokens: Seq[int]) -> str:
        return b"".join(self.token_bytes(t) for t in tokens).decode("utf-8", errors="replace")

    def text_decoder(self) -> codecs.IncrementalDecoder:
        """Streaming UTF-8 decoder: a multi-byte character split over tokens comes out whole."""
        return codecs.getincrementaldecoder("utf-8")(errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(self._ll.llama_vocab_is_eog(self.vocab, token))

    def metadata(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 16)
        n = self._ll.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            self._ll.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    @property
    def chat_template(self):
        """The chat template: settings.chat_template_file, else the GGUF's, else ChatML."""
        if self._template is None:
            special = {"bos_token": self._token_text(self._ll.llama_vocab_bos(self.vocab)),
                       "eos_token": self._token_text(self._ll.llama_vocab_eos(self.vocab))}
            if self.settings.chat_template_file:
                self._template = ChatTemplate.from_file(self.settings.chat_template_file, **special)
            else:
                self._template = ChatTemplate(self.metadata("tokenizer.chat_template") or CHATML, **special)
        return self._template

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return (self._ll.llama_vocab_get_text(self.vocab, token) or b"").decode("utf-8", errors="replace")

    @property
    def special_tokens(self) -> dict[str, int]:
        """Control tokens by their text (what parse_special would turn into ids)."""
        if self._specials is None:
            ll, v = self._ll, self.vocab
            wanted = ll.LLAMA_TOKEN_ATTR_CONTROL | ll.LLAMA_TOKEN_ATTR_UNKNOWN
            specials: dict[str, int] = {}
            for tok in range(self.n_vocab):
                if ll.llama_vocab_get_attr(v, tok) & wanted:
                    text = self._token_text(tok)
                    if text:
                        specials.setdefault(text, tok)
            self._specials = specials
        return self._specials

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        """Render messages with the chat template (as text: tokenize it with chat_tokens's
        care, or user text may turn into control tokens)."""
        return self.chat_template.render(messages, add_generation_prompt=add_generation_prompt, **kwargs)

    def chat_tokens(self, messages: list[dict], tools: list[dict] | None = None, add_generation_prompt: bool = True,
                    **kwargs) -> list[int]:
        """The prompt tokens of a conversation. Control tokens come only from the template's
        own markup; message contents are tokenized as text (a user typing `<|im_end|>` gets
        those characters, not the turn marker). Text runs between control tokens are
        tokenized whole, as llama.cpp does when it splits a prompt at special tokens, so a
        conversation without such strings gets exactly the tokens of its rendered text."""
        parts = self.chat_template.render_parts(messages, tools=tools, add_generation_prompt=add_generation_prompt,
                                                **kwargs)
        tokens: list[int] = []
        for piece in split_special(parts, self.special_tokens):
            if isinstance(piece, int):
                tokens.append(piece)
            else:
                tokens += self.tokenize(piece, add_special=False, parse_special=False)
        bos = self._ll.llama_vocab_bos(self.vocab)
        if self._ll.llama_vocab_get_add_bos(self.vocab) and bos >= 0 and tokens[:1] != [bos]:
            tokens.insert(0, bos)
        return tokens

    # ---- sequences ----------------------------------------------------------------------
    def _chain(self, p: SamplingParams, grammar=None):
        """One llama.cpp sampler chain for `p`, behind `grammar` (a grammar sampler) if given."""
        ll = self._ll
        chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        if grammar is not None:
            ll.llama_sampler_chain_add(chain, grammar)
        if p.logit_bias:
            biases = (ll.llama_logit_bias * len(p.logit_bias))()
            for i, (tok, bias) in enumerate(p.logit_bias.items()):
                biases[i].token = tok
                biases[i].bias = -math.inf if bias <= -100 else bias  # OpenAI: -100 bans the token
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_logit_bias(self.n_vocab, len(biases), biases))
        if p.penalized:
            ll.llama_sampler_chain_add(
                chain, ll.llama_sampler_init_penalties(self.n_vocab, 64, p.repeat_penalty, p.frequency_penalty,
                                                  p.presence_penalty)
            )
        if p.greedy:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_greedy())
            return chain
        if p.top_k > 0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_k(p.top_k))
        if p.top_p < 1.0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_p(p.top_p, 1))
        if p.min_p > 0.0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_min_p(p.min_p, 1))
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_temp(p.temperature))
        seed = 0xFFFFFFFF if p.seed is None else p.seed & 0xFFFFFFFF  # LLAMA_DEFAULT_SEED = random
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_dist(seed))
        return chain

    def _new_sampler(self, p: SamplingParams):
        return self._chain(p)

    def _grammar_sampler(self, gbnf: str):
        g = self._ll.llama_sampler_init_grammar(self.vocab, gbnf.encode(), b"root")
        if not g:
            raise LiteInferError("the grammar does not parse (GBNF with a `root` rule expected)")
        return g

    def check_grammar(self, gbnf: str) -> None:
        """Raise LiteInferError if llama.cpp cannot parse `gbnf` (callers check before queuing)."""
        self._ll.llama_sampler_free(self._grammar_sampler(gbnf))

    def _attach_samplers(self, seq: Sequence) -> None:
        """Samplers for a new sequence. With a grammar: the plain chain samples first and the
        grammar only checks that one token; the grammar runs over the whole vocabulary only
        when it rejects the pick (llama-server's rejection sampling: the grammar sampler costs
        ~a millisecond per call on a 49k vocabulary). A penalty sampler remembers every token
        its chain accepts, so penalized requests take the grammar-first chain alone."""
        p = seq.params
        if not p.grammar:
            seq.sampler = self._chain(p)
            return
        seq.grammar = self._grammar_sampler(p.grammar)
        seq.constrained = self._chain(p, seq.grammar)
        seq.sampler = None if p.penalized else self._chain(p)

    def _free_samplers(self, seq: Sequence) -> None:
        for name in ("sampler", "constrained"):
            chain = getattr(seq, name)
            if chain is not None:
                self._ll.llama_sampler_free(chain)  # a chain frees its members (the grammar too)
                setattr(seq, name, None)
        seq.grammar = None

    def _grammar_allows(self, grammar, token: int) -> bool:
        one = self._one_token
        one[0].id, one[0].logit, one[0].p = token, 1.0, 0.0
        arr = self._one_array
        arr.size, arr.selected, arr.sorted = 1, -1, False
        self._ll.llama_sampler_apply(grammar, ctypes.byref(arr))
        return one[0].logit != -math.inf

    def _sample(self, seq: Sequence, idx: int) -> int:
        ll = self._ll
        if seq.grammar is None:
            return int(ll.llama_sampler_sample(seq.sampler, self.ctx, idx))
        if seq.sampler is not None:
            tok = int(ll.llama_sampler_sample(seq.sampler, self.ctx, idx))
            if self._grammar_allows(seq.grammar, tok):
                ll.llama_sampler_accept(seq.constrained, tok)  # advances the grammar
                return tok
            tok = self._shortlist_sample(seq, idx)
            if tok is not None:
                return tok
        return int(ll.llama_sampler_sample(seq.constrained, self.ctx, idx))

    def _shortlist_sample(self, seq: Sequence, idx: int) -> int | None:
        """The grammar rejected the plain pick: let it judge only the SHORTLIST most likely
        tokens before it runs over the whole vocabulary (that pass costs ~a millisecond per
        49k-token vocabulary and structured replies need it on every third token or so).
        Greedy: the best token the grammar allows among the most likely ones is the best it
        allows anywhere, so the pick is exact. Sampled: the request's own chain picks among
        the allowed ones, when the tokens outside the shortlist hold < SHORTLIST_MASS of the
        probability at this temperature. None: no allowed token there, or a request whose
        logit_bias reorders the logits (the caller runs the full pass)."""
        p = seq.params
        if p.logit_bias:
            return None
        # on use: numpy only for grammar requests (as for logprobs: the plain serving path stays numpy-free)
        import numpy as np

        ll = self._ll
        row = self._logits_row(idx)
        k = min(SHORTLIST, self.n_vocab)
        top = np.argpartition(row, -k)[-k:]
        logits = row[top]
        if not p.greedy:
            scaled = (row.astype(np.float64) - float(logits.max())) / max(p.temperature, 1e-6)
            inside = float(np.exp(scaled[top]).sum())
            if 1.0 - inside / float(np.exp(scaled).sum()) > SHORTLIST_MASS:
                return None
        data, arr = self._short_tokens, self._short_array
        for i, (t, v) in enumerate(zip(top.tolist(), logits.tolist())):
            data[i].id, data[i].logit, data[i].p = t, v, 0.0
        arr.data, arr.size, arr.selected, arr.sorted = data, k, -1, False
        ll.llama_sampler_apply(seq.grammar, ctypes.byref(arr))
        allowed = [i for i in range(k) if data[i].logit != -math.inf]
        if not allowed:
            return None
        if p.greedy:
            tok = data[max(allowed, key=lambda i: data[i].logit)].id
        else:
            ll.llama_sampler_apply(seq.sampler, ctypes.byref(arr))  # top-k/p, min-p, temperature, dist
            if not 0 <= arr.selected < arr.size or arr.data[arr.selected].logit == -math.inf:
                return None
            tok = arr.data[arr.selected].id
        ll.llama_sampler_accept(seq.constrained, tok)  # advances the grammar
        return int(tok)

    def _replay(self, seq: Sequence, tokens: Seq[int]) -> None:
        """Feed already generated tokens to a resumed sequence's samplers (grammar state,
        penalty history), as if they had just sampled them."""
        for tok in tokens:
            for chain in (seq.sampler, seq.constrained):
                if chain is not None:
                    self._ll.llama_sampler_accept(chain, tok)

    @property
    def free_slots(self) -> int:
        """Slots a new sequence can take (free ones plus evictable cached prefixes)."""
        return len(self._free_slots) + len(self._cached)

    @property
    def cells_used(self) -> int:
        """Upper bound on KV cells in use (shared prefix cells counted once per holder)."""
        return sum(s.n_cached for s in self._active.values()) + sum(len(c.tokens) for c in self._cached.values())

    @property
    def cells_active(self) -> int:
        return sum(s.n_cached for s in self._active.values())

    @property
    def n_active(self) -> int:
        return len(self._active)

    def _longest_prefix(self, prompt: list[int]) -> tuple[int | None, int]:
        best_slot, best_len = None, 0
        holders = [(slot, s.tokens[: s.n_cached]) for slot, s in self._active.items()]
        holders += [(slot, c.tokens) for slot, c in self._cached.items()]
        for slot, toks in holders:
            n = common_prefix_len(toks, prompt)
            if n > best_len:
                best_slot, best_len = slot, n
        return best_slot, best_len

    def _evict_lru(self) -> bool:
        if not self._cached:
            return False
        slot = min(self._cached, key=lambda k: self._cached[k].last_used)
        del self._cached[slot]
        self._ll.llama_memory_seq_rm(self.mem, slot, -1, -1)
        self._free_slots.append(slot)
        return True

    def start(self, prompt_tokens: list[int], params: SamplingParams | None = None,
              record_margins: bool = False, replay: int = 0) -> Sequence:
        """Take a KV slot for a new sequence, reusing the longest cached prefix of its prompt.
        `replay`: the prompt's last tokens were generated by this request before it was
        preempted; its samplers (grammar, penalties) see them again."""
        params = params or SamplingParams()
        if not prompt_tokens:
            raise LiteInferError("empty prompt")
        if len(prompt_tokens) >= self.max_seq_len:
            raise LiteInferError(
                f"prompt is {len(prompt_tokens)} tokens, the context holds {self.max_seq_len}"
            )
        src, reuse = self._longest_prefix(prompt_tokens) if self.prefix_cache else (None, 0)
        reuse = min(reuse, len(prompt_tokens) - 1)  # the last prompt token must run for logits
        if src is not None and src in self._cached and reuse > 0:
            slot = src  # take the cached slot over: keep its prefix, drop the rest
            del self._cached[slot]
            if not self._ll.llama_memory_seq_rm(self.mem, slot, reuse, -1):
                self._ll.llama_memory_seq_rm(self.mem, slot, -1, -1)
                reuse = 0
        else:
            if not self._free_slots and not self._evict_lru():
                raise LiteInferError("no free sequence slot (raise engine.n_seq_max)")
            slot = self._free_slots.pop()
            if reuse > 0 and src is not None:
                self._ll.llama_memory_seq_cp(self.mem, src, slot, 0, reuse)
        seq = Sequence(slot=slot, tokens=list(prompt_tokens), n_prompt=len(prompt_tokens), n_cached=reuse,
                       params=params, sampler=None, n_reused=reuse, record_margins=record_margins)
        try:
            self._attach_samplers(seq)
            if replay:
                self._replay(seq, prompt_tokens[len(prompt_tokens) - replay :])
        except BaseException:
            self._free_samplers(seq)
            self._ll.llama_memory_seq_rm(self.mem, slot, -1, -1)
            self._free_slots.append(slot)
            raise
        self._active[slot] = seq
        self.stats.reused_tokens += reuse
        return seq

    def release(self, seq: Sequence, keep_prefix: bool = True) -> None:
        """End a sequence. Its KV stays as an evictable cached prefix unless keep_prefix=False."""
        if self._active.get(seq.slot) is not seq:
            return
        del self._active[seq.slot]
        self._free_samplers(seq)
        if keep_prefix and self.prefix_cache and seq.n_cached > 0:
            self._cached[seq.slot] = _CachedPrefix(seq.tokens[: seq.n_cached], time.monotonic())
        else:
            self._ll.llama_memory_seq_rm(self.mem, seq.slot, -1, -1)
            self._free_slots.append(seq.slot)

    def clear_prefix_cache(self) -> None:
        while self._evict_lru():
            pass

    def slot_kv_len(self, slot: int) -> int:
        """Tokens llama.cpp holds for a slot (0 when its KV is freed)."""
        return int(self._ll.llama_memory_seq_pos_max(self.mem, slot)) + 1

    # ---- the batched step ---------------------------------------------------------------
    def step(self, plan: list[tuple[Sequence, int]]) -> list[tuple[Sequence, int]]:
        """Feed each sequence's next `n` uncached tokens in ONE llama_decode; sample where a
        sequence's last token ran. Returns [(sequence, new_token)] for those sequences.

        A decoding sequence (one pending token) with a `draft` runs the draft after its pending
        token, with logits at each: it samples position by position with its own chain while
        the samples equal the draft (verify_draft), so it may return several
        (sequence, token) pairs, in order. The KV cells of the drafts it rejected are removed."""
        b = self._batch
        n = 0
        outputs: list[tuple[Sequence, int]] = []
        for seq, k in plan:
            k = min(k, seq.n_pending)
            if seq.draft and seq.n_pending != 1:
                seq.draft = []
            if n + k + len(seq.draft) > self.n_batch:
                raise ValueError(f"step plan has more than n_batch={self.n_batch} tokens")
            last = len(seq.tokens) - 1
            for j in range(seq.n_cached, seq.n_cached + k):
                b.token[n] = seq.tokens[j]
                b.pos[n] = j
                b.n_seq_id[n] = 1
                b.seq_id[n][0] = seq.slot
                b.logits[n] = j == last
                if j == last:
                    outputs.append((seq, n))
                n += 1
            for j, tok in enumerate(seq.draft, start=last + 1):
                b.token[n], b.pos[n], b.n_seq_id[n], b.logits[n] = tok, j, 1, True
                b.seq_id[n][0] = seq.slot
                n += 1
        if n == 0:
            return []
        b.n_tokens = n
        t0 = time.perf_counter()
        rc = self._ll.llama_decode(self.ctx, b)
        while rc == 1 and self._evict_lru():  # no KV room: drop cached prefixes and retry
            rc = self._ll.llama_decode(self.ctx, b)
        if rc == 1:
            for seq, _ in plan:  # llama.cpp took nothing of this batch: the drafts go too
                seq.draft = []
            raise KVCacheFull("KV cache full: too many tokens in flight for n_ctx")
        if rc != 0:
            raise LiteInferError(f"llama_decode failed ({rc})")
        for seq, k in plan:
            k = min(k, seq.n_pending)
            if seq.n_cached < seq.n_prompt:
                self.stats.prompt_tokens += k
            else:
                self.stats.decode_tokens += k
            seq.n_cached += k
        results = []
        for seq, idx in outputs:
            draft, seq.draft = seq.draft, []
            emitted, accepted = verify_draft(draft, lambda i, seq=seq, idx=idx: self._sample_at(seq, idx + i))
            for tok in emitted:
                seq.tokens.append(tok)
                results.append((seq, tok))
            seq.n_accepted = accepted
            if draft:
                # the pending token and the accepted drafts are in the KV; the rest is not the sequence's
                seq.n_cached += accepted
                self.stats.decode_tokens += accepted
                if accepted < len(draft) and not self._ll.llama_memory_seq_rm(self.mem, seq.slot, seq.n_cached, -1):
                    raise LiteInferError("llama.cpp could not remove rejected draft tokens from the KV cache")
        self.stats.steps += 1
        self.stats.decode_seconds += time.perf_counter() - t0
        return results

    def _sample_at(self, seq: Sequence, idx: int) -> int:
        """Sample from the logits row `idx` with the sequence's chain (margins and logprobs as asked)."""
        if seq.record_margins:
            seq.margins.append(self._top2_margin(idx))
        tok = self._sample(seq, idx)
        if seq.params.logprobs:
            seq.logprobs.append(self._logprob(idx, tok, seq.params.top_logprobs))
        return tok

    def _logits_row(self, idx: int):
        # on use: numpy only for logprobs / embeddings: the serving path stays numpy-free (memory)
        import numpy as np

        ptr = self._ll.llama_get_logits_ith(self.ctx, idx)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def _logprob(self, idx: int, token: int, n_top: int) -> TokenLogprob:
        """log-softmax of the logits row the sampler saw. numpy only here: requests that
        ask for no logprobs never import it (the serving path stays numpy-free)."""
        # on use: numpy, as above (memory)
        import numpy as np

        row = self._logits_row(idx)
        m = float(row.max())
        lse = m + math.log(float(np.exp(row - m, dtype=np.float64).sum()))
        top: list[tuple[int, float]] = []
        if n_top > 0:
            n_top = min(n_top, self.n_vocab)
            best = np.argpartition(row, -n_top)[-n_top:]
            best = best[np.argsort(-row[best], kind="stable")]
            top = [(int(t), float(row[t]) - lse) for t in best]
        return TokenLogprob(token, float(row[token]) - lse, top)

    def _top2_margin(self, idx: int) -> float:
        # on use: numpy, as above (memory)
        import numpy as np

        row = self._logits_row(idx)
        top2 = np.partition(row, -2)[-2:]
        return float(abs(top2[1] - top2[0]))

    def logits(self, tokens: list[int], chunk: int = 128):
        """Logits after every position of `tokens` in one sequence: [len(tokens), n_vocab]."""
        # on use: numpy, as above (memory)
        import numpy as np

        if not tokens:
            raise LiteInferError("empty token list")
        if len(tokens) > self.max_seq_len:
            raise LiteInferError(f"{len(tokens)} tokens exceed the context ({self.max_seq_len})")
        if not self._free_slots and not self._evict_lru():
            raise LiteInferError("no free sequence slot")
        slot = self._free_slots.pop()
        out = np.empty((len(tokens), self.n_vocab), dtype=np.float32)
        b = self._batch
        chunk = min(chunk, self.n_batch)
        try:
            for start in range(0, len(tokens), chunk):
                part = tokens[start : start + chunk]
                for j, tok in enumerate(part):
                    b.token[j] = tok
                    b.pos[j] = start + j
                    b.n_seq_id[j] = 1
                    b.seq_id[j][0] = slot
                    b.logits[j] = True
                b.n_tokens = len(part)
                rc = self._ll.llama_decode(self.ctx, b)
                while rc == 1 and self._evict_lru():
                    rc = self._ll.llama_decode(self.ctx, b)
                if rc != 0:
                    raise LiteInferError(f"llama_decode failed ({rc})")
                for j in range(len(part)):
                    out[start + j] = self._logits_row(j)
        finally:
            self._ll.llama_memory_seq_rm(self.mem, slot, -1, -1)
            self._free_slots.append(slot)
        return out

    def embed(self, texts: list[str], normalize: bool = True):
        """Mean-pooled sentence embeddings from this GGUF, on a second context made for it
        (embeddings on, its own small KV), so generation in the main context is untouched."""
        # on use: numpy, as above (memory)
        import numpy as np

        ll = self._ll
        if getattr(self, "_embed_ctx", None) is None:
            cp = ll.llama_context_default_params()
            cp.n_ctx = cp.n_batch = cp.n_ubatch = min(2048, self.n_ctx_train or 2048)
            cp.n_seq_max = 16
            cp.n_threads = cp.n_threads_batch = self.n_threads
            cp.embeddings = True
            cp.pooling_type = 1  # LLAMA_POOLING_TYPE_MEAN
            cp.kv_unified = True
            self._embed_ctx = ll.llama_init_from_model(self.model, cp)
            if not self._embed_ctx:
                raise LiteInferError("could not create an embedding context for this model")
            self._attach_offsets(self._embed_ctx)
            self._embed_batch = ll.llama_batch_init(cp.n_batch, 0, 1)
            self._embed_limit = cp.n_batch
        n_embd = ll.llama_model_n_embd(self.model)
        token_lists = [self.tokenize(t) for t in texts]
        for toks in token_lists:
            if not toks:
                raise LiteInferError("empty input")
            if len(toks) > self._embed_limit:
                raise LiteInferError(f"input is {len(toks)} tokens; embeddings take at most {self._embed_limit}")
        out = np.zeros((len(texts), n_embd), dtype=np.float32)
        mem, b, i = ll.llama_get_memory(self._embed_ctx), self._embed_batch, 0
        while i < len(token_lists):
            group, n = [], 0  # as many texts as fit one batch
            while i < len(token_lists) and len(group) < 16 and n + len(token_lists[i]) <= self._embed_limit:
                group.append(i)
                n += len(token_lists[i])
                i += 1
            ll.llama_memory_clear(mem, True)
            n = 0
            for sid, idx in enumerate(group):
                for pos, tok in enumerate(token_lists[idx]):
                    b.token[n], b.pos[n], b.n_seq_id[n], b.logits[n] = tok, pos, 1, True
                    b.seq_id[n][0] = sid
                    n += 1
            b.n_tokens = n
            if ll.llama_decode(self._embed_ctx, b) != 0:
                raise LiteInferError("embedding decode failed")
            for sid, idx in enumerate(group):
                ptr = ll.llama_get_embeddings_seq(self._embed_ctx, sid)
                out[idx] = np.ctypeslib.as_array(ptr, shape=(n_embd,))
        if normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def close(self) -> None:
        ll = getattr(self, "_ll", None)
        if ll is None or getattr(self, "ctx", None) is None:
            return
        for seq in list(self._active.values()):
            self.release(seq, keep_prefix=False)
        ll.llama_batch_free(self._batch)
        if getattr(self, "_embed_ctx", None):
            ll.llama_batch_free(self._embed_batch)
            ll.llama_free(self._embed_ctx)
        ll.llama_free(self.ctx)
        ll.llama_model_free(self.model)
        self.ctx = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
