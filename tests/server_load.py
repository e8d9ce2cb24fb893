"""Load on python -m pyturbo.server over loopback: concurrent answers against the same requests
sent one at a time, per K/V cache pair.

    python tests/server_load.py --pairs f16/f16 q8_0/q8_0 q8_0/turbo3 turbo3/turbo3 \
        --json docs/results/server-load.json

For each pair a server with --parallel 4 (-c 8192) gets 64 chat requests (greedy, 24 tokens,
streamed) from 16 concurrent clients, then the same 64 one at a time, for each prompt set:
"capital" (Request i: name the capital city of France.) and "mixed" (four questions in turn).
Every request must be answered with status 200 and a stream that ends in [DONE]; the answers
of the two runs are compared request by request, and the latencies of the concurrent run are
summarized (p50, p95, max). tests/test_server_load.py runs it in CI; the committed figures
(docs/results/server-load.md) come from the command above.
"""

from __future__ import annotations

import argparse
import json
import queue
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from tqdm import tqdm

SYSTEM = "Answer in one short sentence."
MIXED = ["name the capital city of Italy.", "what is the largest planet in the solar system?",
         "which gas do plants take in from the air?", "how many legs does a spider have?"]
PROMPT_SETS = {
    "capital": [f"Request {i}: name the capital city of France." for i in range(64)],
    "mixed": [f"Request {i}: {MIXED[i % 4]}" for i in range(64)],
}
START_S = 180
REQUEST_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, cache_k: str, cache_v: str, log: Path, *extra: str) -> "tuple[str, subprocess.Popen]":
    """pyturbo's server on a free loopback port, healthy, its output in log."""
    port = free_port()
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "pyturbo.server", model, "--cache-k", cache_k,
                                    "--cache-v", cache_v, "--port", str(port), *extra],
                                   stdout=out, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return base, process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError("the server did not become healthy in time")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


@dataclass
class Answer:
    text: str = ""
    status: int = 0
    done: bool = False       # the stream ended with data: [DONE]
    finish: str = ""         # finish_reason of the last chunk
    seconds: float = 0.0
    error: str = ""


def ask(client: httpx.Client, base: str, question: str, max_tokens: int) -> Answer:
    """One streamed chat request, greedy."""
    answer = Answer()
    start = time.monotonic()
    body = {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True}
    try:
        with client.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=REQUEST_S) as stream:
            answer.status = stream.status_code
            pieces = []
            for line in stream.iter_lines():
                if line == "data: [DONE]":
                    answer.done = True
                elif line.startswith("data: "):
                    choice = json.loads(line[len("data: "):])["choices"][0]
                    pieces.append(choice["delta"].get("content") or "")
                    answer.finish = choice.get("finish_reason") or answer.finish
            answer.text = "".join(pieces)
    except (httpx.HTTPError, ValueError, KeyError, IndexError) as e:
        answer.error = f"{type(e).__name__}: {e}"
    answer.seconds = time.monotonic() - start
    return answer


def run_requests(base: str, questions: "list[str]", clients: int, max_tokens: int, label: str) -> "list[Answer]":
    """questions from `clients` threads at once (1: one at a time), answers in question order."""
    answers: "list[Answer | None]" = [None] * len(questions)
    work: "queue.Queue[int]" = queue.Queue()
    for i in range(len(questions)):
        work.put(i)
    bar = tqdm(total=len(questions), desc=label, leave=False, file=sys.stderr)

    def client_loop() -> None:
        # a new connection per request: llama-server closes a kept-alive connection its temporary
        # HTTP threads served (more clients than its fixed threads) without saying so, and a client
        # that reuses one gets "Server disconnected without sending a response" (clients retry those)
        with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)) as client:
            while True:
                try:
                    i = work.get_nowait()
                except queue.Empty:
                    return
                answers[i] = ask(client, base, questions[i], max_tokens)
                bar.update(1)

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bar.close()
    return [a if a is not None else Answer(error="not sent") for a in answers]


def percentile(values: "list[float]", q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass
class PairResult:
    pair: str
    prompt_set: str
    requests: int
    clients: int
    answered: int            # both runs: status 200, a stream ending in [DONE], a finish reason, no error
    server_errors: int       # 5xx
    differing: "list[int]" = field(default_factory=list)   # requests whose answers differ
    p50_s: float = 0.0
    p95_s: float = 0.0
    max_s: float = 0.0
    wall_s: float = 0.0
    examples: "dict[str, list[str]]" = field(default_factory=dict)  # request -> [concurrent, sequential]
    errors: "list[str]" = field(default_factory=list)   # requests not answered, and why


def complete(answer: Answer) -> bool:
    return answer.status == 200 and answer.done and bool(answer.finish) and not answer.error


def measure(base: str, pair: str, prompt_set: str, clients: int, max_tokens: int) -> PairResult:
    questions = PROMPT_SETS[prompt_set]
    start = time.monotonic()
    concurrent = run_requests(base, questions, clients, max_tokens, f"{pair} {prompt_set} x{clients}")
    wall = time.monotonic() - start
    sequential = run_requests(base, questions, 1, max_tokens, f"{pair} {prompt_set} x1")
    latencies = [a.seconds for a in concurrent]
    result = PairResult(pair, prompt_set, len(questions), clients,
                        answered=sum(complete(c) and complete(s) for c, s in zip(concurrent, sequential)),
                        server_errors=sum(a.status >= 500 for a in concurrent + sequential),
                        p50_s=percentile(latencies, 0.5), p95_s=percentile(latencies, 0.95), max_s=max(latencies),
                        wall_s=wall)
    for i, (c, s) in enumerate(zip(concurrent, sequential)):
        for run, a in (("concurrent", c), ("sequential", s)):
            if not complete(a):
                result.errors.append(f"{i} {run}: status {a.status}, done {a.done}, finish {a.finish!r}, {a.error}")
        if c.text != s.text:
            result.differing.append(i)
            result.examples[str(i)] = [c.text, s.text]
    return result


def run_pair(model: str, pair: str, prompt_sets: "list[str]", log: Path, clients: int = 16, parallel: int = 4,
             n_ctx: int = 8192, max_tokens: int = 24, server_args: "tuple[str, ...]" = ()) -> "list[PairResult]":
    cache_k, cache_v = pair.split("/")
    base, process = start_server(model, cache_k, cache_v, log, "-c", str(n_ctx), "--parallel", str(parallel),
                                 *server_args)
    try:
        return [measure(base, pair, prompt_set, clients, max_tokens) for prompt_set in prompt_sets]
    finally:
        stop_server(process)


def main(argv: "list[str] | None" = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="GGUF (default: pyturbo's SmolLM2)")
    parser.add_argument("--pairs", nargs="+", default=["f16/f16", "q8_0/q8_0", "q8_0/turbo3", "turbo3/turbo3"])
    parser.add_argument("--prompt-sets", nargs="+", default=list(PROMPT_SETS), choices=list(PROMPT_SETS))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp"))
    parser.add_argument("--threads", type=int, default=None, help="the server's -t (default: llama-server's)")
    args = parser.parse_args(argv)
    import pyturbo
    model = args.model or str(pyturbo.default_model())
    results = []
    for pair in args.pairs:
        log = args.log_dir / f"server-load-{pair.replace('/', '-')}.log"
        server_args = ("-t", str(args.threads)) if args.threads else ()
        for r in run_pair(model, pair, args.prompt_sets, log, server_args=server_args):
            results.append(r)
            print(f"{r.pair:14} {r.prompt_set:8} answered {r.answered}/{r.requests}  5xx {r.server_errors}  "
                  f"differing {len(r.differing)}  p50 {r.p50_s:.2f}s p95 {r.p95_s:.2f}s max {r.max_s:.2f}s  "
                  f"wall {r.wall_s:.1f}s", flush=True)
            if args.json:   # after each pair: a long run stopped midway keeps what it measured
                args.json.write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    return 0 if all(r.answered == r.requests and not r.server_errors and not r.differing for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
