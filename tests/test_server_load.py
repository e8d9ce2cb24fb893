"""llama-server under load with turbo caches (tests/server_load.py): nothing lost, and answers
that do not depend on who else is asking.

Per pair (f16/f16, q8_0/q8_0, q8_0/turbo3, turbo3/turbo3) a server with --parallel 4 gets 64
streamed greedy chat requests from 16 concurrent clients and then the same 64 one at a time,
for both prompt sets; every request must be answered (200, a stream ending in [DONE]), no 5xx,
and each concurrent answer must equal the sequential one. And a slot of a turbo cache saved,
erased and restored while the other three slots are busy continues as it did before.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from server_load import PROMPT_SETS, REQUEST_S, run_pair, start_server, stop_server

pytestmark = pytest.mark.slow

PAIRS = ["f16/f16", "q8_0/q8_0", "q8_0/turbo3", "turbo3/turbo3"]


@pytest.mark.parametrize("pair", PAIRS)
def test_64_requests_from_16_clients_are_all_answered_as_they_are_one_at_a_time(smol_path, tmp_path, pair):
    results = run_pair(str(smol_path), pair, list(PROMPT_SETS), tmp_path / "server.log")
    assert [r.prompt_set for r in results] == list(PROMPT_SETS)
    for r in results:
        assert (r.requests, r.clients) == (64, 16)
        assert r.answered == 64, f"{pair} {r.prompt_set}: {r.answered} of 64 answered"
        assert r.server_errors == 0
        assert r.differing == [], f"{pair} {r.prompt_set}: concurrent != sequential: {r.examples}"
        assert r.p95_s < REQUEST_S


def complete(base: str, prompt: str, slot: int, n_predict: int = 24, **extra) -> dict:
    reply = httpx.post(f"{base}/completion", timeout=REQUEST_S, json={
        "prompt": prompt, "n_predict": n_predict, "temperature": 0, "id_slot": slot, "cache_prompt": True, **extra})
    assert reply.status_code == 200, reply.text
    return reply.json()


def slot_action(base: str, slot: int, action: str, filename: "str | None" = None) -> dict:
    reply = httpx.post(f"{base}/slots/{slot}?action={action}", timeout=REQUEST_S,
                       json={"filename": filename} if filename else {})
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_a_restored_turbo_slot_continues_as_it_would_have_while_the_other_slots_are_busy(smol_path, tmp_path):
    slots = tmp_path / "slots"
    slots.mkdir()
    base, process = start_server(str(smol_path), "q8_0", "turbo3", tmp_path / "server.log", "-c", "4096",
                                 "--parallel", "4", "--slot-save-path", f"{slots}/")
    try:
        prompt = "The three largest cities of France are"
        first = complete(base, prompt, 0)["content"]
        assert slot_action(base, 0, "save", "slot0.bin")["n_saved"] > 0
        follow_up = prompt + first + "\nThe river that runs through Paris is"
        before = complete(base, follow_up, 0)
        assert before["timings"]["prompt_n"] < before["tokens_evaluated"]  # it went on from slot 0's cache

        slot_action(base, 0, "erase")
        busy, errors = [], []

        def keep_busy(slot: int) -> None:
            try:
                busy.append((complete(base, f"Write a long story about a lighthouse keeper number {slot}.", slot,
                                      n_predict=300, ignore_eos=True), time.monotonic()))
            except Exception as e:  # reported in the test's thread
                errors.append(e)

        threads = [threading.Thread(target=keep_busy, args=(slot,)) for slot in (1, 2, 3)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while sum(s["is_processing"] for s in httpx.get(f"{base}/slots", timeout=10).json()) < 3:
            assert time.monotonic() < deadline, "the other slots did not start"
            time.sleep(0.05)
        assert slot_action(base, 0, "restore", "slot0.bin")["n_restored"] > 0
        after = complete(base, follow_up, 0)
        finished_after = time.monotonic()
        for t in threads:
            t.join(timeout=REQUEST_S)
        assert not errors and len(busy) == 3
        assert all(done > finished_after for _, done in busy)  # they were still generating meanwhile
        assert after["content"] == before["content"]
        assert after["timings"]["prompt_n"] == before["timings"]["prompt_n"]  # the restored cache, reused
    finally:
        stop_server(process)
