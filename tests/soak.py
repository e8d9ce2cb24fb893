"""Soak: many contexts made and freed, and one long chat through context shifts, in one process.

    python tests/soak.py --generations 500 --chat-turns 40 \
        --json docs/results/reliability-soak.json --plot docs/results/reliability-soak.png

Part 1 creates and frees `generations` contexts on one SmolLM2 model, cycling through
cache types, context sizes and the K/V transforms, and generates a few tokens in each,
sampling the process's resident memory (RSS) and open file descriptors after each.
Part 2 holds one chat on a turbo K cache far longer than its context (n_ctx 1024):
each turn's whole history goes to Context.chat with context_shift=True, which reuses
the shifted cache and evaluates only the new turn. After the shifts a fact told in a
recent turn is asked back. tests/test_soak.py runs a short version; the committed
figures come from the command above.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import pyturbo

CACHES = [("f16", "f16"), ("q8_0", "turbo3"), ("turbo3", "turbo3"), ("turbo4", "turbo2"), ("q4_0", "q8_0"),
          ("turbo2", "turbo4")]
CONTEXT_SIZES = [256, 512, 1024]
TRANSFORMS = ["auto", "off"]
FILLER_TOPICS = ["the history of bread", "how rivers form", "why the sky is blue", "the rules of chess",
                 "how bees make honey", "what a compiler does", "the life of a lighthouse keeper",
                 "how tides work"]
FACT = "The code word for the vault is PELICAN."
QUESTION = "What is the code word for the vault? Answer with the code word only."
# One thread: the soak measures memory and descriptors, not speed, and ggml's spinning
# threads crawl when the machine is busy with other work.
THREADS = 1


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@dataclass
class SoakResult:
    generations: int
    rss: list = field(default_factory=list)           # bytes after each generation
    fds: list = field(default_factory=list)
    warmup: int = 0
    rss_growth: float = 0.0                             # last tenth vs the tenth after warm-up
    fd_growth: int = 0
    chat_turns: int = 0
    chat_ctx: int = 0
    chat_tokens: int = 0                                # tokens of the whole conversation
    chat_shifts_dropped: int = 0                        # tokens the shifts took out
    chat_prompt_evaluated: int = 0                      # prompt tokens evaluated over all turns
    recall_answer: str = ""
    recall_ok: bool = False
    seconds: float = 0.0


def churn_contexts(model, n: int, progress=None) -> "tuple[list, list]":
    """Create, use and free n contexts; RSS and fds after each."""
    rss, fds = [], []
    for i in range(n):
        cache_k, cache_v = CACHES[i % len(CACHES)]
        n_ctx = CONTEXT_SIZES[(i // len(CACHES)) % len(CONTEXT_SIZES)]
        transform = TRANSFORMS[(i // (len(CACHES) * len(CONTEXT_SIZES))) % len(TRANSFORMS)]
        with model.context(n_ctx=n_ctx, cache_k=cache_k, cache_v=cache_v, kv_transform=transform,
                           n_threads=THREADS) as ctx:
            text = ctx.complete(f"Question {i}: what is {i} plus {i}? Answer:", 6)
            if not isinstance(text, str):
                raise AssertionError("generation returned no text")
        gc.collect()
        rss.append(rss_bytes())
        fds.append(open_fds())
        if progress:
            progress.update(1)
    return rss, fds


def growth(samples: list, warmup: int) -> float:
    """Growth of the median of the last tenth over the median of the first tenth after warm-up."""
    steady = samples[warmup:]
    tenth = max(1, len(steady) // 10)
    first, last = sorted(steady[:tenth]), sorted(steady[-tenth:])
    return last[len(last) // 2] / first[len(first) // 2] - 1


def long_chat(model, turns: int, n_ctx: int = 1024, reply_tokens: int = 96, progress=None) -> dict:
    """A chat far longer than its context, on a turbo K cache, with the fact told in the last turn."""
    messages = [{"role": "system", "content": "You are a helpful assistant. Keep answers short."}]
    evaluated = 0
    with model.context(n_ctx=n_ctx, cache_k="turbo3", cache_v="q8_0", n_threads=THREADS) as ctx:
        for turn in range(turns):
            if turn == turns - 1:
                messages.append({"role": "user", "content": f"{FACT} {QUESTION}"})
                reply = ctx.chat(messages, 12, context_shift=True)
            else:
                topic = FILLER_TOPICS[turn % len(FILLER_TOPICS)]
                messages.append({"role": "user", "content": f"Tell me about {topic}, in three sentences."})
                reply = ctx.chat(messages, reply_tokens, context_shift=True)
            evaluated += ctx.last_stats.n_prompt_eval
            messages.append({"role": "assistant", "content": reply})
            if progress:
                progress.update(1)
        total = len(ctx.tokenize(ctx.format_chat(messages, add_assistant=False), parse_special=True))
        return {"answer": reply, "tokens": total, "dropped": ctx._n_dropped, "evaluated": evaluated}


def run(generations: int, chat_turns: int, warmup: int, chat_ctx: int = 1024) -> SoakResult:
    from tqdm import tqdm

    started = time.perf_counter()
    result = SoakResult(generations=generations, warmup=warmup, chat_turns=chat_turns, chat_ctx=chat_ctx)
    with pyturbo.Model() as model:
        with tqdm(total=generations, desc="contexts", unit="ctx") as bar:
            result.rss, result.fds = churn_contexts(model, generations, bar)
        result.rss_growth = growth(result.rss, warmup)
        result.fd_growth = result.fds[-1] - result.fds[warmup]
        with tqdm(total=chat_turns, desc="chat", unit="turn") as bar:
            chat = long_chat(model, chat_turns, chat_ctx, progress=bar)
    result.chat_tokens = chat["tokens"]
    result.chat_shifts_dropped = chat["dropped"]
    result.chat_prompt_evaluated = chat["evaluated"]
    result.recall_answer = chat["answer"]
    result.recall_ok = "PELICAN" in chat["answer"].upper()
    result.seconds = time.perf_counter() - started
    return result


def plot(result: SoakResult, path: str) -> None:
    from pyturbo._report import pyplot

    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    x = range(1, len(result.rss) + 1)
    top.plot(x, [r / 2**20 for r in result.rss])
    top.axvline(result.warmup, color="gray", linestyle=":", label="end of warm-up")
    top.set_ylabel("RSS (MiB)")
    top.set_title(f"SmolLM2-135M: {result.generations} contexts created, used and freed "
                  f"(RSS {100 * result.rss_growth:+.1f}% after warm-up)")
    top.legend()
    bottom.plot(x, result.fds, color="tab:orange")
    bottom.set_ylabel("open file descriptors")
    bottom.set_xlabel("contexts so far")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, default=500)
    parser.add_argument("--chat-turns", type=int, default=40)
    parser.add_argument("--chat-ctx", type=int, default=1024, help="the chat's context size")
    parser.add_argument("--warmup", type=int, default=None, help="contexts before RSS counts (default a tenth)")
    parser.add_argument("--json")
    parser.add_argument("--plot")
    args = parser.parse_args()
    warmup = args.warmup if args.warmup is not None else max(1, args.generations // 10)
    result = run(args.generations, args.chat_turns, warmup, args.chat_ctx)
    if args.json:
        record = asdict(result)
        record["command"] = "python tests/soak.py " + " ".join(sys.argv[1:])
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)
    if args.plot:
        plot(result, args.plot)
    print(f"{result.generations} contexts: RSS {result.rss[warmup] / 2**20:.1f} -> {result.rss[-1] / 2**20:.1f} MiB "
          f"({100 * result.rss_growth:+.2f}% after warm-up), fds {result.fds[warmup]} -> {result.fds[-1]}")
    print(f"chat: {result.chat_turns} turns, {result.chat_tokens} tokens in a {result.chat_ctx}-token context, "
          f"{result.chat_shifts_dropped} dropped by shifts, {result.chat_prompt_evaluated} prompt tokens evaluated; "
          f"recall {'ok' if result.recall_ok else 'FAILED'}: {result.recall_answer!r} ({result.seconds:.0f} s)")
    return 0 if result.recall_ok and result.rss_growth < 0.05 and result.fd_growth <= 0 else 1


if __name__ == "__main__":
    sys.exit(main())
