"""Context: an inference context on a Model, with its KV cache; tokenize, generate, chat."""

from __future__ import annotations

import codecs
import contextlib
import os
import threading
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

from . import _native, layer_types, state
from ._native import ffi, llama
from .context_memory import ContextMemory, read_context_memory
from .host import check_context_limits, default_threads
from .cache_types import flash_attn_enabled, flash_attn_mode
from .errors import ContextBusyError, ContextError, ContextOverflowError, StateError
from .kv_transform import describe as describe_kv_transform
from .kv_transform import parse as kv_transform_flags


# Tokens a context shift always keeps at the start (llama.cpp's --keep 1: the BOS/system start).
SHIFT_KEEP = 1


@dataclass
class GenerationStats:
    """Counts and timings of the last generate()/chat() call."""

    n_prompt: int = 0          # prompt tokens
    n_prompt_eval: int = 0     # of which evaluated (the rest was already in the cache)
    n_gen: int = 0             # generated tokens
    prompt_seconds: float = 0.0
    gen_seconds: float = 0.0
    stop_reason: str = ""      # "eog", "max_tokens" or "context"

    @property
    def prompt_tps(self) -> float:
        return self.n_prompt_eval / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def gen_tps(self) -> float:
        return self.n_gen / self.gen_seconds if self.gen_seconds > 0 else 0.0


class Context(_native.NativeObject):
    """An inference context: a KV cache of n_ctx cells with the given K and V types.

    cache_k / cache_v take any name from `pyturbo.cache_types()`, or a type per layer: a
    spec such as "turbo3,q8_0@0-1,q8_0@-2" or a list (pyturbo.layer_types); self.cache_k /
    cache_v are then the types standing for all layers (llama.cpp's checks and rotation go
    by them), self.layer_types_k / layer_types_v each layer's. flash_attn is
    'on', 'off' or 'auto' as in llama.cpp's -fa. kv_transform: 'auto' (the exact
    K/V transforms that help this model, see pyturbo.kv_transform), 'off', or
    transform names joined by '+'; `self.kv_transform` says what applies. Free it
    with close() or `with`.

    swa_full: on sliding-window models (Gemma-3, ...) the window layers keep only
    the window's cells by default, as llama.cpp's tools do (and as pyturbo.memory
    and fit plan for); True keeps every cell, which costs memory but lets a prompt
    that shares a long prefix with the cache reuse it instead of re-evaluating.

    A Context is for one thread at a time (contexts on one Model may run in
    parallel threads): a call while another thread is inside one raises
    ContextBusyError. Creation refuses, before llama.cpp allocates, a context whose
    caches and buffers exceed the memory available, and warns when n_ctx is beyond
    the model's training context.
    """

    def __init__(self, model, n_ctx: int = 4096, cache_k: str = "f16", cache_v: str = "f16",
                 flash_attn: "str | bool" = "auto", n_threads: "int | None" = None, seed: int = 0,
                 n_batch: int = 512, n_ubatch: int = 512, kv_transform: "str | int" = "auto",
                 swa_full: bool = False) -> None:
        self.model = model
        self._busy = threading.Lock()
        self.swa_full = bool(swa_full)
        transform_request = kv_transform_flags(kv_transform)
        self.flash_attn = flash_attn_mode(flash_attn)
        if n_ctx < 0:
            raise ValueError(f"n_ctx must be >= 0 (0 = the model's training context), got {n_ctx}")
        self.layer_types_k, self.layer_types_v = layer_types.parse_pair(cache_k, cache_v, self.flash_attn,
                                                                        model.geometry)
        self.cache_k, self.cache_v = self.layer_types_k.standing, self.layer_types_v.standing
        check_context_limits(model.geometry, model.path.name, n_ctx, self.layer_types_k, self.layer_types_v,
                             flash_attn_enabled(self.flash_attn), swa_full=self.swa_full, n_batch=n_batch,
                             n_ubatch=n_ubatch, host_only=not getattr(model, "n_gpu_layers", 0))
        self.n_threads = n_threads or default_threads()
        self.seed = seed

        params = llama.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = min(n_ubatch, n_batch)
        params.n_threads = self.n_threads
        params.n_threads_batch = self.n_threads
        params.flash_attn_type = self.flash_attn
        params.type_k = self.cache_k.type_id
        params.type_v = self.cache_v.type_id
        params.swa_full = self.swa_full
        applied = ffi.new("int32_t *")
        layers, _arrays = layer_types.native_struct(self.layer_types_k, self.layer_types_v)  # alive until made
        with _native.captured_log() as log:
            handle = llama.pyturbo_context_create(model.handle, params, transform_request, layers, applied)
        if handle == ffi.NULL:
            reason = _native.last_problem(log) or "llama.cpp gave no reason"
            raise ContextError(f"could not create a context (K {self.cache_k_spec}, V {self.cache_v_spec}, "
                               f"n_ctx {n_ctx}): {reason}")
        self._own(handle, llama.llama_free, model.health)
        self.kv_transform = describe_kv_transform(applied[0])
        self._memory = llama.llama_get_memory(handle)
        self._cached: list[int] = []  # tokens whose K/V are in the cache (sequence 0)
        self._n_dropped = 0  # tokens context shifts took out of the text the cache stands for
        self.last_stats = GenerationStats()

    @contextlib.contextmanager
    def _exclusive(self):
        """Hold the context for one call; a second thread is refused, not left to race in C."""
        if not self._busy.acquire(blocking=False):
            raise ContextBusyError("this Context is in use by another thread; give each thread its own "
                                   "Context (they can share one Model)")
        try:
            self.handle  # raises when closed
            yield
        finally:
            self._busy.release()

    def close(self) -> None:
        """Free the context. A call running in another thread finishes first. Safe to call twice."""
        with self._busy:
            super().close()

    def __repr__(self) -> str:
        return (f"<pyturbo.Context n_ctx={self.n_ctx if not self.closed else '?'} "
                f"K={self.cache_k_spec} V={self.cache_v_spec} kv_transform={self.kv_transform}>")

    @property
    def cache_k_spec(self) -> str:   # a name, or a per-layer spec (pyturbo.layer_types)
        return self.layer_types_k.spec

    @property
    def cache_v_spec(self) -> str:
        return self.layer_types_v.spec

    @property
    def n_ctx(self) -> int:
        return llama.llama_n_ctx(self.handle)

    @property
    def n_batch(self) -> int:
        return llama.llama_n_batch(self.handle)

    @property
    def n_ubatch(self) -> int:
        """Tokens per graph evaluation (at most n_batch): what the compute buffer is sized for."""
        return llama.llama_n_ubatch(self.handle)

    def kv_cache_bytes(self) -> dict:
        """Bytes of the K and V caches as llama.cpp allocated them: {"k": ..., "v": ...}."""
        memory = self.memory()
        return {"k": memory.kv_k, "v": memory.kv_v}

    def memory(self) -> ContextMemory:
        """What llama.cpp allocated for this context, exactly, per buffer type: K and V caches,
        recurrent states, compute and output buffers (the output buffer grows with the
        largest batch of logits asked for)."""
        return read_context_memory(self.handle)

    # -- text <-> tokens ------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        return self.model.tokenize(text, add_special, parse_special)

    def detokenize(self, tokens: Sequence[int], remove_special: bool = False,
                   unparse_special: bool = False) -> str:
        return self.model.detokenize(tokens, remove_special, unparse_special)

    def token_bytes(self, token: int) -> bytes:
        """The bytes one token stands for (may be part of a UTF-8 character)."""
        return self.model.token_bytes(token)

    # -- evaluation -----------------------------------------------------------------

    def reset(self) -> None:
        """Empty the KV cache."""
        with self._exclusive():
            self._clear()

    def _clear(self) -> None:
        _native.guarded_memory_clear(self)
        self._cached = []
        self._n_dropped = 0

    @property
    def cached_tokens(self) -> list[int]:
        """The tokens whose K/V the cache holds, in order. After a context shift that is the
        first SHIFT_KEEP tokens and the most recent ones: pass it plus new tokens to
        generate() to go on from the cache without evaluating anything again."""
        return list(self._cached)

    def _window_lost(self, n_keep: int) -> bool:
        """Whether, after cutting the cache back to n_keep tokens, a sliding-window cache
        lacks the window before n_keep (its cells were reused as the context went on)."""
        n_swa = self.model.geometry.n_swa
        if not n_swa or self.swa_full or n_keep == 0:
            return False
        return llama.llama_memory_seq_pos_min(self._memory, 0) > max(0, n_keep - n_swa)

    def _check_fits(self, n_new: int) -> None:
        """ContextOverflowError unless n_new tokens fit after the cached ones."""
        if len(self._cached) + n_new > self.n_ctx:
            raise ContextOverflowError(f"{len(self._cached)} cached + {n_new} new tokens do not fit a context "
                                       f"of {self.n_ctx}")

    def _decode(self, tokens: Sequence[int], context_shift: bool = False) -> None:
        """Append tokens to the cache (sequence 0), n_batch at a time; with context_shift,
        tokens that do not fit push the older ones out (see _shift_out)."""
        # a shift frees half of the cells after SHIFT_KEEP: chunks no larger always fit after one
        step = min(self.n_batch, max(1, (self.n_ctx - SHIFT_KEEP) // 2)) if context_shift else self.n_batch
        for start in range(0, len(tokens), step):
            chunk = list(tokens[start:start + step])
            if not context_shift:
                self._check_fits(len(chunk))
            elif len(self._cached) + len(chunk) > self.n_ctx:
                self._shift_out()
            ids = ffi.new("llama_token[]", chunk)
            self._evaluate(llama.llama_batch_get_one(ids, len(chunk)), len(chunk))
            self._cached.extend(chunk)

    def _evaluate(self, batch, n_tokens: int) -> None:
        """llama_decode of one batch after the cached tokens. ContextError with llama.cpp's reason
        when it fails; the cache then holds what llama.cpp kept of it."""
        with _native.captured_log() as log:
            status = _native.guarded_decode(self, batch)
        if status != 0:
            self._cached = self._cached[:max(0, llama.llama_memory_seq_pos_max(self._memory, 0) + 1)]
            reason = _native.last_problem(log) or f"llama_decode returned {status}"
            raise ContextError(f"could not evaluate {n_tokens} tokens: {reason}")

    def truncate(self, n_tokens: int) -> None:
        """Keep only the first n_tokens of the cache (sequence 0)."""
        with self._exclusive():
            if n_tokens >= len(self._cached):
                return
            kept = self._cached[:n_tokens]
            n_dropped = self._n_dropped if n_tokens > SHIFT_KEEP else 0
            if not llama.llama_memory_seq_rm(self._memory, 0, n_tokens, -1) or self._window_lost(n_tokens):
                self._clear()  # the sliding window before n_tokens is gone: evaluate them again
            else:
                del self._cached[n_tokens:]
            self._decode(kept[len(self._cached):])
            self._n_dropped = n_dropped

    def decode(self, tokens: Sequence[int]) -> None:
        """Evaluate tokens after those already in the cache (only the last one's logits are kept)."""
        with self._exclusive():
            self._check_fits(len(tokens))
            self._decode(tokens)
            llama.llama_synchronize(self.handle)

    def score(self, tokens: Sequence[int], first_output: int = 0):
        """Logits after each of tokens[first_output:], evaluated from an empty cache.

        Returns a float32 numpy array of shape (len(tokens) - first_output, n_vocab):
        row i holds the logits predicting tokens[first_output + i + 1].
        """
        if len(tokens) > self.n_ctx:
            raise ContextOverflowError(f"{len(tokens)} tokens do not fit a context of {self.n_ctx}")
        if not 0 <= first_output < len(tokens):
            raise ValueError(f"first_output must lie in [0, {len(tokens)}), got {first_output}")
        with self._exclusive():
            self._clear()
            return self._score(tokens, first_output)

    def score_next(self, tokens: Sequence[int]):
        """Logits after each of tokens, evaluated after the tokens already in the cache
        (e.g. a state restored with load_state); shape (len(tokens), n_vocab)."""
        if not tokens:
            raise ValueError("score_next needs at least one token")
        with self._exclusive():
            self._check_fits(len(tokens))
            return self._score(tokens, 0)

    def _score(self, tokens, first_output):
        """Evaluates tokens after the cached ones; logits of tokens[first_output:]."""
        import numpy as np

        base = len(self._cached)
        n_vocab = self.model.n_vocab
        rows = []
        batch = llama.llama_batch_init(self.n_batch, 0, 1)
        try:
            for start in range(0, len(tokens), self.n_batch):
                chunk = tokens[start:start + self.n_batch]
                n_out = 0
                for i, token in enumerate(chunk):
                    batch.token[i] = token
                    batch.pos[i] = base + start + i
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = 0
                    batch.logits[i] = start + i >= first_output
                    n_out += start + i >= first_output
                batch.n_tokens = len(chunk)
                self._evaluate(batch, len(chunk))
                self._cached.extend(chunk)
                if n_out:
                    logits = ffi.buffer(llama.llama_get_logits(self.handle), 4 * n_out * n_vocab)
                    rows.append(np.frombuffer(logits, dtype=np.float32).reshape(n_out, n_vocab).copy())
        finally:
            llama.llama_batch_free(batch)
        return np.concatenate(rows)

    def _reusable(self, tokens: list[int]) -> "tuple[int, int, int]":
        """(cells of the cache to keep, index in `tokens` where evaluation resumes, tokens
        the kept cells skip).

        After context shifts the cache stands for a text of which it holds the first
        SHIFT_KEEP tokens and the end, _n_dropped tokens later. `tokens` may repeat
        that text (a chat's history) or what the cache holds (cached_tokens), each
        with more after it; the cells that match either reading are kept. The last
        token is always evaluated again, for its logits.
        """
        cached, skip = self._cached, self._n_dropped
        matched = 0
        if skip and tokens[:SHIFT_KEEP] == cached[:SHIFT_KEEP]:
            matched = SHIFT_KEEP + _common_prefix(tokens[SHIFT_KEEP + skip:], cached[SHIFT_KEEP:])
        if matched <= SHIFT_KEEP:
            matched, skip = _common_prefix(tokens, cached), 0
        resume = matched + skip
        if resume >= len(tokens):  # nothing new: evaluate the last token again
            matched, resume = matched - 1, len(tokens) - 1
        return matched, resume, resume - matched if matched else 0

    def _load_prompt(self, tokens: list[int], context_shift: bool = False) -> int:
        """Make the cache stand for `tokens`, reusing what it holds of them; returns tokens evaluated."""
        keep, resume, self._n_dropped = self._reusable(tokens)
        if keep < len(self._cached):
            if not llama.llama_memory_seq_rm(self._memory, 0, keep, -1) or self._window_lost(keep):
                self._clear()
                keep = resume = 0
            del self._cached[keep:]
        if keep == 0:
            resume = 0
        self._decode(tokens[resume:], context_shift)
        return len(tokens) - resume

    def _shift_out(self) -> None:
        """Context shift: drop half of the tokens after the first SHIFT_KEEP and slide the rest back."""
        n_past = len(self._cached)
        n_discard = (n_past - SHIFT_KEEP) // 2
        llama.llama_memory_seq_rm(self._memory, 0, SHIFT_KEEP, SHIFT_KEEP + n_discard)
        llama.llama_memory_seq_add(self._memory, 0, SHIFT_KEEP + n_discard, n_past, -n_discard)
        del self._cached[SHIFT_KEEP:SHIFT_KEEP + n_discard]
        self._n_dropped += n_discard

    def _make_sampler(self, temperature: float, top_k: int, top_p: float, seed: int):
        chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
        if temperature <= 0:
            llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_greedy())
        else:
            if top_k > 0:
                llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_top_k(top_k))
            if 0 < top_p < 1:
                llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_top_p(top_p, 1))
            llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_temp(temperature))
            llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def generate(self, prompt: "str | Sequence[int]", max_tokens: int = 64, temperature: float = 0.0,
                 top_k: int = 40, top_p: float = 0.95, *, seed: "int | None" = None,
                 add_special: bool = True, parse_special: bool = False,
                 context_shift: bool = False) -> Iterator[str]:
        """Stream the continuation of `prompt` as text pieces.

        temperature 0 is greedy decoding. When the cache fills up, generation stops
        (stats.stop_reason == "context") unless context_shift=True, which drops the
        older half of the tokens after the first SHIFT_KEEP and goes on; a prompt
        longer than the context then streams through it the same way. Without
        context_shift, ContextOverflowError is raised at once if the prompt alone
        does not fit. A prompt that repeats what the cache holds (cached_tokens, or
        a chat's history, shifted or not) is evaluated only from where it differs.
        """
        tokens = (self.tokenize(prompt, add_special, parse_special) if isinstance(prompt, str)
                  else list(prompt))
        if not tokens:
            raise ValueError("the prompt is empty")
        if len(tokens) > self.n_ctx and not context_shift:
            raise ContextOverflowError(
                f"the prompt has {len(tokens)} tokens but the context holds {self.n_ctx}; "
                "use a larger context (n_ctx / -c), a shorter prompt or context_shift=True")
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        seed = self.seed if seed is None else seed
        return self._generate(tokens, max_tokens, temperature, top_k, top_p, seed, context_shift)

    def _generate(self, tokens, max_tokens, temperature, top_k, top_p, seed, context_shift):
        stats = self.last_stats = GenerationStats(n_prompt=len(tokens))
        started = time.perf_counter()
        with self._exclusive():
            stats.n_prompt_eval = self._load_prompt(tokens, context_shift)
        stats.prompt_seconds = time.perf_counter() - started
        started = time.perf_counter()
        sampler = self._make_sampler(temperature, top_k, top_p, seed)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        vocab = self.model.vocab
        stats.stop_reason = "max_tokens"
        try:
            for _ in range(max_tokens):
                # the lock is held for each step, never across a yield: the caller's code runs in between
                with self._exclusive():
                    token = llama.llama_sampler_sample(sampler, self.handle, -1)
                if llama.llama_vocab_is_eog(vocab, token):
                    stats.stop_reason = "eog"
                    break
                stats.n_gen += 1
                text = decoder.decode(self.token_bytes(token))
                stats.gen_seconds = time.perf_counter() - started
                if text:
                    yield text
                with self._exclusive():
                    if len(self._cached) >= self.n_ctx and not context_shift:
                        stats.stop_reason = "context"
                        break
                    self._decode([token], context_shift)
            tail = decoder.decode(b"", final=True)
            if tail:
                yield tail
        finally:
            llama.llama_sampler_free(sampler)
            stats.gen_seconds = time.perf_counter() - started

    def complete(self, prompt: "str | Sequence[int]", max_tokens: int = 64, **kwargs) -> str:
        """generate() joined into one string."""
        return "".join(self.generate(prompt, max_tokens, **kwargs))

    # -- saved state -----------------------------------------------------------------

    def _state_header(self, sequence_only: bool) -> state.StateHeader:
        return state.StateHeader(
            model=self.model.fingerprint, model_name=self.model.path.name, cache_k=self.cache_k_spec,
            cache_v=self.cache_v_spec, kv_transform=self.kv_transform, n_ctx=self.n_ctx, swa_full=self.swa_full,
            sequence_only=sequence_only, tokens=tuple(self._cached), n_dropped=self._n_dropped)

    def save_state(self, path: "str | os.PathLike | None" = None, *, sequence_only: bool = False) -> "bytes | None":
        """The cache and the tokens in it (and the last logits), as bytes, or written to `path`.

        sequence_only=True saves only the cache cells of the context's sequence
        (llama_state_seq_*: no logits, a little smaller). load_state() takes either.
        """
        with self._exclusive():
            data = state.pack(self._state_header(sequence_only), state.read_native(self, sequence_only))
        if path is None:
            return data
        state.write_file(path, data)
        return None

    def load_state(self, source: "bytes | str | os.PathLike") -> None:
        """Restore what save_state() saved (bytes or a file) into this context.

        StateError, and an empty cache, if the state is damaged or was saved from
        another model, other cache types or transforms, or needs more cells than
        this context has; the context stays usable.
        """
        saved, payload = state.unpack(source if isinstance(source, (bytes, bytearray, memoryview))
                                      else state.read_file(source))
        with self._exclusive():
            state.check_compatible(saved, self._state_header(saved.sequence_only), self.n_ctx)
            self._clear()
            try:
                state.write_native(self, payload, saved.sequence_only)
            except StateError:
                self._clear()  # whatever llama.cpp had read before it gave up
                raise
            self._cached = list(saved.tokens)
            self._n_dropped = saved.n_dropped

    # -- chat --------------------------------------------------------------------------

    def format_chat(self, messages: Sequence[dict], add_assistant: bool = True) -> str:
        """Render messages with the model's chat template (Model.format_chat)."""
        return self.model.format_chat(messages, add_assistant)

    def chat(self, messages: Sequence[dict], max_tokens: int = 256, *, stream: bool = False, **kwargs):
        """The assistant's reply to `messages`, using the model's chat template.

        Returns the reply as a string, or an iterator of pieces with stream=True.
        """
        prompt = self.format_chat(messages)
        pieces = self.generate(prompt, max_tokens, parse_special=True, **kwargs)
        return pieces if stream else "".join(pieces)



def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
