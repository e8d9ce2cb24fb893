"""Logits that do not depend on the batch: SmolLM2 through llama.cpp's API, four sequences
decoded in one batch (the server's continuous batching) against each sequence alone, and one
sequence's prompt in one ubatch against the same prompt three tokens at a time.

Bit for bit, for f16/f16 (llama.cpp's own flash attention) and for every pair that runs
pyturbo's (q8_0/q8_0, q8_0/turbo3, turbo3/turbo3): the same logits, so the same greedy
tokens, whoever else is asking. With a unified cache the batch's sequences share the cells
(theirs interleaved with the others'), without it each has a stream of its own.
Before pyturbo's kernel had one reduction order the quantized pairs differed here by
rounding (docs/results/server-load.md).
"""

from __future__ import annotations

import numpy as np
import pytest

from pyturbo import _native
from pyturbo.cache_types import cache_type

pytestmark = pytest.mark.slow

PAIRS = [("f16", "f16"), ("q8_0", "q8_0"), ("q8_0", "turbo3"), ("turbo3", "turbo3")]
PROMPTS = ["The capital city of France is", "Request 44: name the capital city of France. The answer is",
           "List three colors of the rainbow:", "A spider has eight legs and an insect has"]
STEPS = 6   # greedy tokens decoded after the prompts


class Session:
    """A raw llama.cpp context with n_seq sequences (pyturbo.Context has one)."""

    def __init__(self, model, cache_k: str, cache_v: str, n_seq: int, unified: bool, n_ubatch: int = 512):
        llama, ffi = _native.llama, _native.ffi
        params = llama.llama_context_default_params()
        params.n_ctx = 1024
        params.n_batch = 512
        params.n_ubatch = n_ubatch
        params.n_seq_max = n_seq
        params.kv_unified = unified
        params.n_threads = params.n_threads_batch = 2
        params.flash_attn_type = llama.LLAMA_FLASH_ATTN_TYPE_ENABLED
        params.type_k = cache_type(cache_k).type_id
        params.type_v = cache_type(cache_v).type_id
        applied = ffi.new("int32_t *")
        self.handle = llama.pyturbo_context_create(model.handle, params, -1, ffi.NULL, applied)
        assert self.handle != ffi.NULL
        self.n_vocab = model.n_vocab

    def close(self) -> None:
        _native.llama.llama_free(self.handle)

    def decode(self, entries: "list[tuple[int, int, int]]") -> np.ndarray:
        """Decodes (token, position, sequence) entries as one batch; logits of every entry."""
        llama, ffi = _native.llama, _native.ffi
        batch = llama.llama_batch_init(len(entries), 0, 1)
        try:
            for i, (token, pos, seq) in enumerate(entries):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, True
                batch.seq_id[i][0] = seq
            batch.n_tokens = len(entries)
            assert llama.llama_decode(self.handle, batch) == 0
            logits = ffi.buffer(llama.llama_get_logits(self.handle), 4 * len(entries) * self.n_vocab)
            return np.frombuffer(logits, dtype=np.float32).reshape(len(entries), self.n_vocab).copy()
        finally:
            llama.llama_batch_free(batch)


def run(session: Session, prompts: "list[list[int]]", seqs: "list[int]") -> "dict[int, list[np.ndarray]]":
    """The prompts of seqs in one interleaved batch, then STEPS greedy tokens of all of them per
    batch; each sequence's logits, in order."""
    out = {s: [] for s in seqs}
    longest = max(len(prompts[s]) for s in seqs)
    entries = [(prompts[s][j], j, n) for j in range(longest) for n, s in enumerate(seqs) if j < len(prompts[s])]
    logits = session.decode(entries)
    for (token, pos, n), row in zip(entries, logits):
        out[seqs[n]].append(row)
    for _ in range(STEPS):
        entries = [(int(np.argmax(out[s][-1])), len(out[s]), n) for n, s in enumerate(seqs)]
        for (_, _, n), row in zip(entries, session.decode(entries)):
            out[seqs[n]].append(row)
    return out


@pytest.mark.parametrize("unified", [True, False], ids=["unified", "streams"])
@pytest.mark.parametrize("pair", PAIRS, ids=["/".join(p) for p in PAIRS])
def test_four_sequences_in_one_batch_give_the_logits_each_gives_alone(smol_model, pair, unified):
    prompts = [smol_model.tokenize(p) for p in PROMPTS]
    together = Session(smol_model, *pair, n_seq=4, unified=unified)
    try:
        batched = run(together, prompts, [0, 1, 2, 3])
    finally:
        together.close()
    for s in range(4):
        alone = Session(smol_model, *pair, n_seq=1, unified=unified)
        try:
            single = run(alone, [prompts[s]], [0])[0]
        finally:
            alone.close()
        assert len(single) == len(batched[s]) == len(prompts[s]) + STEPS
        for i, (a, b) in enumerate(zip(single, batched[s])):
            assert np.array_equal(a, b), f"sequence {s} token {i}: max |diff| {np.abs(a - b).max():.3g}"


@pytest.mark.parametrize("pair", PAIRS, ids=["/".join(p) for p in PAIRS])
def test_a_prompt_in_one_ubatch_and_three_tokens_at_a_time_give_the_same_logits(smol_model, pair):
    tokens = smol_model.tokenize(" ".join(PROMPTS))
    results = []
    for n_ubatch in (512, 3):
        session = Session(smol_model, *pair, n_seq=1, unified=True, n_ubatch=n_ubatch)
        try:
            results.append(session.decode([(t, i, 0) for i, t in enumerate(tokens)]))
        finally:
            session.close()
    whole, pieces = results
    assert np.array_equal(whole, pieces), f"max |diff| {np.abs(whole - pieces).max():.3g}"
