"""A short soak (tests/soak.py has the long one): contexts made and freed without growth,
and a chat several times longer than its context that still answers from its window."""

from __future__ import annotations

import pytest

from soak import CACHES, CONTEXT_SIZES, TRANSFORMS, churn_contexts, growth, long_chat

pytestmark = pytest.mark.slow

# Every combination of cache, size and transform twice, so that what is built once per
# combination (the transforms' matrices) and the allocator's pools are in place before
# memory counts; then each once more.
CYCLE = len(CACHES) * len(CONTEXT_SIZES) * len(TRANSFORMS)
WARMUP = 2 * CYCLE


def test_contexts_made_and_freed_do_not_grow_memory_or_leak_descriptors(smol_model):
    rss, fds = churn_contexts(smol_model, WARMUP + CYCLE)
    assert growth(rss, WARMUP) < 0.05, [r // 2**20 for r in rss]
    assert max(fds[WARMUP:]) <= fds[WARMUP], fds


def test_a_chat_longer_than_its_context_shifts_and_still_recalls_the_window(smol_model):
    chat = long_chat(smol_model, turns=9, n_ctx=256, reply_tokens=48)
    assert chat["tokens"] > 1.5 * 256
    assert chat["dropped"] > 0
    # each turn evaluates its new part, not the whole history again
    assert chat["evaluated"] < chat["tokens"]
    assert "PELICAN" in chat["answer"].upper()
