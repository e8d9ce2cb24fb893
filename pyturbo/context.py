"""Context: an inference context on a Model, with its KV cache; tokenize, generate, chat."""

from __future__ import annotations

import codecs
import os
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

from . import _native
from ._allocation_log import parse_allocation_log
from ._native import ffi, llama
from .cache_types import cache_type, check_cache, flash_attn_mode
from .errors import ContextError, ContextOverflowError, PyturboError
from .kv_transform import NO_REQUEST as KV_TRANSFORM_NO_REQUEST
from .kv_transform import describe as describe_kv_transform
from .kv_transform import parse as kv_transform_flags


def default_threads() -> int:
    """The CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


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

    cache_k / cache_v take any name from `pyturbo.cache_types()`; flash_attn is
    'on', 'off' or 'auto' as in llama.cpp's -fa. kv_transform: 'auto' (the exact
    K/V transforms that help this model, see pyturbo.kv_transform), 'off', or
    transform names joined by '+'; `self.kv_transform` says what applies. Free it
    with close() or `with`.
    """

    def __init__(self, model, n_ctx: int = 4096, cache_k: str = "f16", cache_v: str = "f16",
                 flash_attn: "str | bool" = "auto", n_threads: "int | None" = None, seed: int = 0,
                 n_batch: int = 512, n_ubatch: int = 512, kv_transform: "str | int" = "auto") -> None:
        self.model = model
        transform_request = kv_transform_flags(kv_transform)
        self.cache_k = cache_type(cache_k)
        self.cache_v = cache_type(cache_v)
        self.flash_attn = flash_attn_mode(flash_attn)
        if n_ctx < 0:
            raise ValueError(f"n_ctx must be >= 0 (0 = the model's training context), got {n_ctx}")
        check_cache(self.cache_k, self.cache_v, self.flash_attn, model.geometry)
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
        with _native.captured_log() as log:
            # the request is for this thread's next context: this one
            llama.pyturbo_kv_transform_request(transform_request)
            try:
                handle = llama.llama_init_from_model(model.handle, params)
            finally:
                llama.pyturbo_kv_transform_request(KV_TRANSFORM_NO_REQUEST)
        if handle == ffi.NULL:
            reason = _native.last_problem(log) or "llama.cpp gave no reason"
            raise ContextError(f"could not create a context (K {self.cache_k.name}, V {self.cache_v.name}, "
                               f"n_ctx {n_ctx}): {reason}")
        self._own(handle, llama.llama_free)
        self.kv_transform = describe_kv_transform(llama.pyturbo_kv_transform_flags(handle))
        self._memory = llama.llama_get_memory(handle)
        allocation = parse_allocation_log(line for _, line in log)
        self._kv_bytes = {"k": allocation.kv_k, "v": allocation.kv_v}
        self._cached: list[int] = []  # tokens whose K/V are in the cache (sequence 0)
        self.last_stats = GenerationStats()

    def __repr__(self) -> str:
        return (f"<pyturbo.Context n_ctx={self.n_ctx if not self.closed else '?'} "
                f"K={self.cache_k.name} V={self.cache_v.name} kv_transform={self.kv_transform}>")

    @property
    def n_ctx(self) -> int:
        return llama.llama_n_ctx(self.handle)

    @property
    def n_batch(self) -> int:
        return llama.llama_n_batch(self.handle)

    def kv_cache_bytes(self) -> dict:
        """Bytes of the K and V caches as llama.cpp allocated them: {"k": ..., "v": ...}.

        Read from llama.cpp's allocation report, which states MiB to two decimals,
        so each figure is exact to within 0.005 MiB.
        """
        return dict(self._kv_bytes)

    # -- text <-> tokens ------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        while True:
            buf = ffi.new("llama_token[]", capacity)
            n = llama.llama_tokenize(self.model.vocab, data, len(data), buf, capacity,
                                     add_special, parse_special)
            if n >= 0:
                return list(buf[0:n])
            capacity = -n

    def detokenize(self, tokens: Sequence[int], remove_special: bool = False,
                   unparse_special: bool = False) -> str:
        ids = ffi.new("llama_token[]", list(tokens))
        capacity = len(tokens) * 16 + 16
        while True:
            buf = ffi.new("char[]", capacity)
            n = llama.llama_detokenize(self.model.vocab, ids, len(tokens), buf, capacity,
                                       remove_special, unparse_special)
            if n >= 0:
                return ffi.unpack(buf, n).decode("utf-8", "replace")
            capacity = -n

    def token_bytes(self, token: int) -> bytes:
        """The bytes one token stands for (may be part of a UTF-8 character)."""
        capacity = 64
        while True:
            buf = ffi.new("char[]", capacity)
            n = llama.llama_token_to_piece(self.model.vocab, token, buf, capacity, 0, False)
            if n >= 0:
                return ffi.unpack(buf, n)
            capacity = -n

    # -- evaluation -----------------------------------------------------------------

    def reset(self) -> None:
        """Empty the KV cache."""
        llama.llama_memory_clear(self._memory, True)
        self._cached = []

    def _decode(self, tokens: Sequence[int]) -> None:
        """Append tokens to the cache (sequence 0), n_batch at a time."""
        step = self.n_batch
        for start in range(0, len(tokens), step):
            chunk = list(tokens[start:start + step])
            ids = ffi.new("llama_token[]", chunk)
            with _native.captured_log() as log:
                status = llama.llama_decode(self.handle, llama.llama_batch_get_one(ids, len(chunk)))
            if status != 0:
                self._cached = self._cached[:max(0, llama.llama_memory_seq_pos_max(self._memory, 0) + 1)]
                reason = _native.last_problem(log) or f"llama_decode returned {status}"
                raise ContextError(f"could not evaluate {len(chunk)} tokens: {reason}")
            self._cached.extend(chunk)

    def truncate(self, n_tokens: int) -> None:
        """Keep only the first n_tokens of the cache (sequence 0)."""
        if n_tokens < len(self._cached):
            if not llama.llama_memory_seq_rm(self._memory, 0, n_tokens, -1):
                raise ContextError(f"llama.cpp could not drop the cache after position {n_tokens}")
            del self._cached[n_tokens:]

    def decode(self, tokens: Sequence[int]) -> None:
        """Evaluate tokens after those already in the cache (only the last one's logits are kept)."""
        if len(self._cached) + len(tokens) > self.n_ctx:
            raise ContextOverflowError(
                f"{len(self._cached)} cached + {len(tokens)} new tokens do not fit a context of {self.n_ctx}")
        self._decode(tokens)
        llama.llama_synchronize(self.handle)

    def score(self, tokens: Sequence[int], first_output: int = 0):
        """Logits after each of tokens[first_output:], evaluated from an empty cache.

        Returns a float32 numpy array of shape (len(tokens) - first_output, n_vocab):
        row i holds the logits predicting tokens[first_output + i + 1].
        """
        import numpy as np

        if len(tokens) > self.n_ctx:
            raise ContextOverflowError(f"{len(tokens)} tokens do not fit a context of {self.n_ctx}")
        if not 0 <= first_output < len(tokens):
            raise ValueError(f"first_output must lie in [0, {len(tokens)}), got {first_output}")
        self.reset()
        n_vocab = self.model.n_vocab
        rows = []
        batch = llama.llama_batch_init(self.n_batch, 0, 1)
        try:
            for start in range(0, len(tokens), self.n_batch):
                chunk = tokens[start:start + self.n_batch]
                n_out = 0
                for i, token in enumerate(chunk):
                    batch.token[i] = token
                    batch.pos[i] = start + i
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = 0
                    batch.logits[i] = start + i >= first_output
                    n_out += start + i >= first_output
                batch.n_tokens = len(chunk)
                with _native.captured_log() as log:
                    status = llama.llama_decode(self.handle, batch)
                if status != 0:
                    self.reset()
                    reason = _native.last_problem(log) or f"llama_decode returned {status}"
                    raise ContextError(f"could not evaluate {len(chunk)} tokens: {reason}")
                self._cached.extend(chunk)
                if n_out:
                    logits = ffi.buffer(llama.llama_get_logits(self.handle), 4 * n_out * n_vocab)
                    rows.append(np.frombuffer(logits, dtype=np.float32).reshape(n_out, n_vocab).copy())
        finally:
            llama.llama_batch_free(batch)
        return np.concatenate(rows)

    def _load_prompt(self, tokens: list[int]) -> int:
        """Make the cache hold exactly `tokens`, reusing the common prefix; returns tokens evaluated."""
        keep = 0
        for cached, new in zip(self._cached, tokens):
            if cached != new:
                break
            keep += 1
        keep = min(keep, len(tokens) - 1)  # re-evaluate the last token to get its logits
        if keep < len(self._cached):
            if not llama.llama_memory_seq_rm(self._memory, 0, keep, -1):
                self.reset()
                keep = 0
            self._cached = self._cached[:keep]
        self._decode(tokens[keep:])
        return len(tokens) - keep

    def _shift_out(self, n_keep: int) -> None:
        """Context shift: drop half of the tokens after the first n_keep and slide the rest back."""
        n_past = len(self._cached)
        n_discard = (n_past - n_keep) // 2
        llama.llama_memory_seq_rm(self._memory, 0, n_keep, n_keep + n_discard)
        llama.llama_memory_seq_add(self._memory, 0, n_keep + n_discard, n_past, -n_discard)
        del self._cached[n_keep:n_keep + n_discard]

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
        older half of the tokens after the prompt's first one and goes on.
        Raises ContextOverflowError at once if the prompt alone does not fit.
        """
        tokens = (self.tokenize(prompt, add_special, parse_special) if isinstance(prompt, str)
                  else list(prompt))
        if not tokens:
            raise ValueError("the prompt is empty")
        if len(tokens) > self.n_ctx:
            raise ContextOverflowError(
                f"the prompt has {len(tokens)} tokens but the context holds {self.n_ctx}; "
                "use a larger context (n_ctx / -c) or a shorter prompt")
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        seed = self.seed if seed is None else seed
        return self._generate(tokens, max_tokens, temperature, top_k, top_p, seed, context_shift)

    def _generate(self, tokens, max_tokens, temperature, top_k, top_p, seed, context_shift):
        stats = self.last_stats = GenerationStats(n_prompt=len(tokens))
        started = time.perf_counter()
        stats.n_prompt_eval = self._load_prompt(tokens)
        stats.prompt_seconds = time.perf_counter() - started
        started = time.perf_counter()
        sampler = self._make_sampler(temperature, top_k, top_p, seed)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        vocab = self.model.vocab
        stats.stop_reason = "max_tokens"
        try:
            for _ in range(max_tokens):
                token = llama.llama_sampler_sample(sampler, self.handle, -1)
                if llama.llama_vocab_is_eog(vocab, token):
                    stats.stop_reason = "eog"
                    break
                stats.n_gen += 1
                text = decoder.decode(self.token_bytes(token))
                stats.gen_seconds = time.perf_counter() - started
                if text:
                    yield text
                if len(self._cached) >= self.n_ctx:
                    if not context_shift:
                        stats.stop_reason = "context"
                        break
                    self._shift_out(n_keep=1)
                self._decode([token])
            tail = decoder.decode(b"", final=True)
            if tail:
                yield tail
        finally:
            llama.llama_sampler_free(sampler)
            stats.gen_seconds = time.perf_counter() - started

    def complete(self, prompt: "str | Sequence[int]", max_tokens: int = 64, **kwargs) -> str:
        """generate() joined into one string."""
        return "".join(self.generate(prompt, max_tokens, **kwargs))

    # -- chat --------------------------------------------------------------------------

    def format_chat(self, messages: Sequence[dict], add_assistant: bool = True) -> str:
        """Render messages ([{"role": ..., "content": ...}]) with the model's chat template."""
        template = self.model.chat_template
        keep_alive = []
        chat = ffi.new("llama_chat_message[]", len(messages))
        for i, message in enumerate(messages):
            role = ffi.new("char[]", str(message["role"]).encode())
            content = ffi.new("char[]", str(message["content"]).encode())
            keep_alive += [role, content]
            chat[i].role, chat[i].content = role, content
        tmpl = ffi.new("char[]", template.encode()) if template else ffi.NULL
        capacity = 2 * sum(len(str(m["content"])) for m in messages) + 256
        while True:
            buf = ffi.new("char[]", capacity)
            n = llama.llama_chat_apply_template(tmpl, chat, len(messages), add_assistant, buf, capacity)
            if n < 0:
                raise PyturboError("llama.cpp does not support this model's chat template")
            if n <= capacity:
                return ffi.unpack(buf, n).decode("utf-8", "replace")
            capacity = n

    def chat(self, messages: Sequence[dict], max_tokens: int = 256, *, stream: bool = False, **kwargs):
        """The assistant's reply to `messages`, using the model's chat template.

        Returns the reply as a string, or an iterator of pieces with stream=True.
        """
        prompt = self.format_chat(messages)
        pieces = self.generate(prompt, max_tokens, parse_special=True, **kwargs)
        return pieces if stream else "".join(pieces)

