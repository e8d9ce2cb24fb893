"""Saved context state: round trips with turbo caches, and clear refusals of what does not fit."""

from __future__ import annotations

import pytest

import pyturbo
from pyturbo import state
from tiny_gguf import write_tiny_llama

PROMPT = "The quick brown fox jumps over the lazy dog because it"
TURBO_PAIRS = [("turbo3", "turbo3"), ("turbo4", "turbo2"), ("q8_0", "turbo3"), ("turbo3t", "turbo2t")]


def continue_greedily(ctx, n: int = 24) -> str:
    """Go on from exactly what is in the cache (its last token is evaluated again for its logits)."""
    return ctx.complete(list(ctx._cached), n)


@pytest.mark.parametrize("cache_k, cache_v", TURBO_PAIRS)
@pytest.mark.parametrize("sequence_only", [False, True])
def test_restored_state_continues_exactly_as_the_original(smol_model, cache_k, cache_v, sequence_only):
    with smol_model.context(n_ctx=512, cache_k=cache_k, cache_v=cache_v) as ctx:
        ctx.complete(PROMPT, 16)
        saved = ctx.save_state(sequence_only=sequence_only)
        expected = continue_greedily(ctx)
    with smol_model.context(n_ctx=512, cache_k=cache_k, cache_v=cache_v) as restored:
        restored.load_state(saved)
        tokens = list(restored._cached)
        assert continue_greedily(restored) == expected
        # nothing was evaluated again but the last token
        assert restored.last_stats.n_prompt_eval == 1
        assert len(tokens) == len(restored.tokenize(PROMPT)) + 16


def test_state_round_trips_through_a_file(smol_model, tmp_path):
    path = tmp_path / "chat.state"
    with smol_model.context(n_ctx=512, cache_k="turbo3", cache_v="turbo3") as ctx:
        ctx.complete(PROMPT, 8)
        assert ctx.save_state(path) is None
        expected = continue_greedily(ctx)
    assert not list(tmp_path.glob("*.partial"))
    with smol_model.context(n_ctx=512, cache_k="turbo3", cache_v="turbo3") as restored:
        restored.load_state(path)
        assert continue_greedily(restored) == expected


def test_a_larger_context_takes_the_state_when_nothing_depends_on_n_ctx(smol_model):
    with smol_model.context(n_ctx=512, cache_k="q8_0", cache_v="turbo3", kv_transform="off") as ctx:
        ctx.complete(PROMPT, 8)
        saved = ctx.save_state()
        expected = continue_greedily(ctx)
    with smol_model.context(n_ctx=1024, cache_k="q8_0", cache_v="turbo3", kv_transform="off") as bigger:
        bigger.load_state(saved)
        assert continue_greedily(bigger) == expected


@pytest.fixture(scope="module")
def saved_turbo3(smol_model):
    with smol_model.context(n_ctx=512, cache_k="turbo3", cache_v="turbo3") as ctx:
        ctx.complete(PROMPT * 6, 8)  # about 100 tokens
        assert ctx.kv_transform != "off"
        return ctx.save_state()


@pytest.mark.parametrize("kwargs, reason", [
    (dict(n_ctx=512, cache_k="q8_0", cache_v="turbo3"), "K turbo3 / V turbo3 cache; this context's is K q8_0"),
    (dict(n_ctx=512, cache_k="turbo3", cache_v="turbo4"), "this context's is K turbo3 / V turbo4"),
    (dict(n_ctx=512, cache_k="turbo3", cache_v="turbo3", kv_transform="off"), "kv_transform"),
    (dict(n_ctx=1024, cache_k="turbo3", cache_v="turbo3"), "matrices depend on n_ctx"),
])
def test_a_context_that_cannot_take_the_state_refuses_it_and_stays_usable(smol_model, saved_turbo3, kwargs,
                                                                         reason):
    with smol_model.context(**kwargs) as other:
        other.complete("Hello", 2)
        with pytest.raises(pyturbo.StateError, match=reason):
            other.load_state(saved_turbo3)
        assert "Paris" in other.complete("The capital of France is", 8) or other.last_stats.n_gen == 8


def test_a_smaller_context_refuses_a_state_with_more_tokens_than_it_holds(smol_model):
    with smol_model.context(n_ctx=512, cache_k="turbo4", cache_v="turbo4", kv_transform="off") as ctx:
        ctx.complete(PROMPT * 30, 4)  # about 360 tokens
        saved = ctx.save_state()
    with smol_model.context(n_ctx=256, cache_k="turbo4", cache_v="turbo4", kv_transform="off") as small:
        with pytest.raises(pyturbo.StateError, match="room for 256"):
            small.load_state(saved)


def test_another_model_of_the_same_shape_is_refused(tmp_path, saved_turbo3):
    # Two tiny models that differ only in their random weights: llama.cpp would load one's
    # cache into the other without a word.
    first = write_tiny_llama(tmp_path / "a.gguf", seed=1)
    second = write_tiny_llama(tmp_path / "b.gguf", seed=2)
    with pyturbo.Model(first) as a, pyturbo.Model(second) as b:
        assert a.fingerprint != b.fingerprint
        with a.context(n_ctx=256, cache_k="turbo3", cache_v="turbo3") as ctx:
            ctx.complete("the cat", 8)
            saved = ctx.save_state()
        with b.context(n_ctx=256, cache_k="turbo3", cache_v="turbo3") as other:
            with pytest.raises(pyturbo.StateError, match="another model.*a.gguf"):
                other.load_state(saved)
            with pytest.raises(pyturbo.StateError, match="another model"):
                other.load_state(saved_turbo3)


def test_damaged_states_are_refused_with_a_reason(smol_model, saved_turbo3, tmp_path):
    with smol_model.context(n_ctx=512, cache_k="turbo3", cache_v="turbo3") as ctx:
        with pytest.raises(pyturbo.StateError, match="not a pyturbo context state"):
            ctx.load_state(b"GGUF" + bytes(100))
        with pytest.raises(pyturbo.StateError, match="truncated context state"):
            ctx.load_state(saved_turbo3[:40])
        with pytest.raises(pyturbo.StateError, match="llama.cpp could not restore"):
            ctx.load_state(saved_turbo3[:len(saved_turbo3) // 2])
        with pytest.raises(pyturbo.StateError, match="cannot read"):
            ctx.load_state(tmp_path / "missing.state")
        # after every refusal the context is empty and works
        assert ctx._cached == []
        assert ctx.complete("The capital of France is", 8)
        ctx.load_state(saved_turbo3)
        assert len(ctx._cached) > 60


def test_state_header_round_trips():
    header = state.StateHeader(model="ab" * 32, model_name="m.gguf", cache_k="turbo3", cache_v="q8_0",
                               kv_transform="k_calibrate", n_ctx=512, swa_full=False, sequence_only=True,
                               tokens=(1, 2, 3))
    unpacked, payload = state.unpack(state.pack(header, b"llama bytes"))
    assert unpacked == header
    assert bytes(payload) == b"llama bytes"
