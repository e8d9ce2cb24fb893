"""docs/scale.md's figures: a 70B model over four machines on paper, SmolLM2 over two
RPC workers on loopback measured.

    python docs/results/rpc_scale.py [--repetitions 5] > docs/results/rpc-scale.md

writes docs/results/rpc-scale.json and rpc-scale.png next to this file.

On paper: a header-only GGUF with Llama-3-70B's geometry (docs/results/fit_synthetic.py's),
weights sized as llama-quantize's Q4_K_M, a 131072-token context; pyturbo.memory.estimate
gives weights, K and V cache and compute buffers; a layer split over four workers gives each
a quarter of the layers with their caches.

Measured: two `python -m pyturbo.rpc_worker --threads 1` processes on 127.0.0.1 and
SmolLM2-135M (Q4_1) with a q8_0/turbo3 cache, against the same model in one process with 1
and 2 threads, in the same run. Prefill: a 256-token prompt; decode: 64 tokens one at a
time (bench's tg). Bytes on the RPC links: the client's TCP counters (ss -ti: bytes_sent +
bytes_received over both connections) before and after each phase, divided by its tokens.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from tiny_gguf import write_header_only  # noqa: E402

import pyturbo  # noqa: E402
from pyturbo.memory import estimate  # noqa: E402
from pyturbo.units import GiB  # noqa: E402

HERE = Path(__file__).resolve().parent
LLAMA_70B = (80, 8192, 64, 8, 128, 28672, 128256, 131072)  # fit_synthetic.py's llama-70b-shape
N_CTX = 131072
N_WORKERS = 4
CACHE = ("q8_0", "turbo3")
PROMPT_TOKENS = 256
GEN_TOKENS = 64


def on_paper() -> dict:
    path = write_header_only(Path(tempfile.mkdtemp()) / "llama-70b-shape.gguf", "llama", *LLAMA_70B)
    n_layer, n_embd, n_vocab = LLAMA_70B[0], LLAMA_70B[1], LLAMA_70B[6]
    rows = {}
    for k, v in (CACHE, ("f16", "f16")):
        est = estimate(path, N_CTX, k, v, weight_quant="q4_K_M")
        rows[f"{k}/{v}"] = dict(weights=est.weights, kv_k=est.kv_k, kv_v=est.kv_v, compute=est.compute,
                                total=est.total, per_worker=(est.weights + est.kv) / N_WORKERS + est.compute)
    # One decoded token: the client embeds it (its input layer stays on the CPU) and sends the
    # activation to worker 1; each worker boundary goes worker -> client -> next worker (ggml copies
    # between two RPC servers through the client); the last worker returns the logits.
    activation = n_embd * 4
    per_token = activation * (1 + 2 * (N_WORKERS - 1)) + n_vocab * 4
    return dict(shape=dict(n_layer=n_layer, n_embd=n_embd, n_vocab=n_vocab, n_ctx=N_CTX), caches=rows,
                activation_bytes=activation, bytes_per_token=per_token, n_workers=N_WORKERS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_workers(n: int) -> "tuple[list[str], list[subprocess.Popen]]":
    ports = [free_port() for _ in range(n)]
    workers = [subprocess.Popen([sys.executable, "-m", "pyturbo.rpc_worker", "--port", str(p), "--threads", "1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for p in ports]
    for port in ports:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"worker on {port} did not start")
                time.sleep(0.2)
    return [f"127.0.0.1:{p}" for p in ports], workers


def link_bytes(endpoints: "list[str]") -> "tuple[int, int]":
    """Bytes this process sent to and received from the workers, over all its connections to them."""
    sent = received = 0
    for endpoint in endpoints:
        port = endpoint.rsplit(":", 1)[1]
        out = subprocess.run(["ss", "-tinH", "state", "established", "dport", f"= :{port}"],
                             capture_output=True, text=True, check=True).stdout
        sent += sum(int(n) for n in re.findall(r"bytes_sent:(\d+)", out))
        received += sum(int(n) for n in re.findall(r"bytes_received:(\d+)", out))
    return sent, received


def timed_phases(model, n_threads: int, repetitions: int, endpoints: "list[str]") -> dict:
    rng = random.Random(0)
    prefill, decode, pp_bytes, tg_bytes = [], [], [], []

    def link() -> "tuple[int, int]":
        return link_bytes(endpoints) if endpoints else (0, 0)

    with model.context(n_ctx=1024, cache_k=CACHE[0], cache_v=CACHE[1], n_threads=n_threads) as ctx:
        for rep in range(repetitions + 1):  # the first is a warm-up
            ctx.reset()
            prompt = [rng.randrange(model.n_vocab) for _ in range(PROMPT_TOKENS)]
            before = link()
            started = time.perf_counter()
            ctx.decode(prompt)
            pp = PROMPT_TOKENS / (time.perf_counter() - started)
            middle = link()
            started = time.perf_counter()
            for _ in range(GEN_TOKENS):
                ctx.decode([rng.randrange(model.n_vocab)])
            tg = GEN_TOKENS / (time.perf_counter() - started)
            after = link()
            if rep:
                prefill.append(pp)
                decode.append(tg)
                pp_bytes.append([(m - b) / PROMPT_TOKENS for m, b in zip(middle, before)])
                tg_bytes.append([(a - m) / GEN_TOKENS for a, m in zip(after, middle)])
    result = dict(prefill_tps=statistics.median(prefill), decode_tps=statistics.median(decode),
                  prefill_samples=prefill, decode_samples=decode)
    if endpoints:
        for phase, samples in (("prefill", pp_bytes), ("decode", tg_bytes)):
            sent = statistics.median(x[0] for x in samples)
            received = statistics.median(x[1] for x in samples)
            result.update({f"{phase}_bytes_sent_per_token": sent, f"{phase}_bytes_received_per_token": received,
                           f"{phase}_bytes_per_token": sent + received})
    return result


def measured(repetitions: int) -> dict:
    path = pyturbo.default_model()
    runs = {}
    with pyturbo.Model(path) as model:
        for threads in (1, 2):
            runs[f"one process, {threads} thread{'s' if threads > 1 else ''}"] = timed_phases(
                model, threads, repetitions, [])
    endpoints, workers = start_workers(2)
    try:
        with pyturbo.Model(path, rpc=endpoints) as model:
            runs["two RPC workers, 1 thread each"] = timed_phases(model, 1, repetitions, endpoints)
            n_layer = model.n_layer
    finally:
        for worker in workers:
            worker.terminate()
            worker.wait(timeout=30)
    return dict(model=path.name, cache=f"{CACHE[0]}/{CACHE[1]}", n_layer=n_layer, runs=runs,
                repetitions=repetitions)


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runs = results["measured"]["runs"]
    names = list(runs)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in ((axes[0], "prefill_tps", f"prefill ({PROMPT_TOKENS}-token prompt)"),
                           (axes[1], "decode_tps", f"decode ({GEN_TOKENS} tokens)")):
        values = [runs[n][key] for n in names]
        ax.barh(names, values, color=["#4c72b0", "#4c72b0", "#dd8452"])
        for y, value in enumerate(values):
            ax.text(value, y, f" {value:.0f}", va="center")
        ax.set_title(title)
        ax.set_xlabel("tokens/s (median)")
        ax.invert_yaxis()
    fig.suptitle(f"{results['measured']['model']}, {results['measured']['cache']} cache, 2 CPU cores, loopback")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def to_markdown(results: dict) -> str:
    paper, meas = results["on_paper"], results["measured"]
    lines = ["# RPC scale: a 70B model over four machines, and SmolLM2 over two loopback workers", "",
             f"Produced by `python docs/results/rpc_scale.py --repetitions {meas['repetitions']} > "
             "docs/results/rpc-scale.md`", "(also writes rpc-scale.json and rpc-scale.png). docs/scale.md explains "
             "the figures.", "",
             f"## On paper: Llama-3-70B shape, Q4_K_M weights, {N_CTX} tokens, {N_WORKERS} workers", "",
             "| K/V | weights | K cache | V cache | compute | total | per worker |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, row in paper["caches"].items():
        lines.append(f"| {name} | " + " | ".join(f"{row[k] / GiB:.2f} GiB" for k in
                     ("weights", "kv_k", "kv_v", "compute", "total", "per_worker")) + " |")
    lines += ["", f"Bytes per decoded token between client and workers: {paper['bytes_per_token'] / 1024:.0f} KiB "
              f"({paper['activation_bytes'] // 1024} KiB activations x {1 + 2 * (N_WORKERS - 1)} transfers "
              f"+ {paper['shape']['n_vocab'] * 4 // 1024} KiB of logits).", "",
              f"## Measured: {meas['model']}, {meas['cache']}, {meas['repetitions']} repetitions, medians", "",
              "| run | prefill t/s | decode t/s | prefill bytes/token (sent + received) "
              "| decode bytes/token (sent + received) |",
              "| --- | ---: | ---: | ---: | ---: |"]

    def link_cell(run: dict, phase: str) -> str:
        if f"{phase}_bytes_per_token" not in run:
            return "-"
        return (f"{run[f'{phase}_bytes_per_token'] / 1024:.1f} KiB "
                f"({run[f'{phase}_bytes_sent_per_token'] / 1024:.1f} + "
                f"{run[f'{phase}_bytes_received_per_token'] / 1024:.1f})")

    for name, run in meas["runs"].items():
        lines.append(f"| {name} | {run['prefill_tps']:.1f} | {run['decode_tps']:.1f} | {link_cell(run, 'prefill')} "
                     f"| {link_cell(run, 'decode')} |")
    lines += ["", "![tokens/s](rpc-scale.png)", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repetitions", type=int, default=5)
    args = parser.parse_args()
    results = dict(on_paper=on_paper(), measured=measured(args.repetitions))
    (HERE / "rpc-scale.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, HERE / "rpc-scale.png")
    print(to_markdown(results))


if __name__ == "__main__":
    main()
