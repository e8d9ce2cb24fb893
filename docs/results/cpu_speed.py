"""CPU speed of K/V cache types before and after pyturbo's quantized-KV flash attention.

Runs `python -m pyturbo.bench` once per K/V pair and library (each library a
build's folder, passed to pyturbo as PYTURBO_LIB_DIR), merges the records, and
writes a JSON file, a Markdown table (tokens/s, the after/before ratio, the
ratio to f16/f16 of the same run, KV bytes read per generated token and the
share of memory bandwidth the decode reaches) and a plot of tokens/s against
depth. The bandwidth is measured here, by reading a 1 GiB array with as many
threads as the benchmark uses.

    python docs/results/cpu_speed.py MODEL --after build-dev/bin --before /tmp/before/lib \\
        -d 0,4096,8192 -r 3 -t 2 --out docs/results/cpu-speed-smollm2

A library given as --before-json FILE reuses records of an earlier run instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from pyturbo import memory
from pyturbo._report import markdown_table, pyplot

PAIRS = ["f16/f16", "q8_0/q8_0", "q4_0/q4_0", "q8_0/turbo3", "turbo4/turbo4", "turbo3/turbo3", "turbo2/turbo2"]


def bench(model: str, lib_dir: str, pair: str, args) -> list[dict]:
    type_k, type_v = pair.split("/")
    command = [sys.executable, "-m", "pyturbo.bench", model, "-p", str(args.n_prompt), "-n", str(args.n_gen),
               "-d", args.depths, "-ctk", type_k, "-ctv", type_v, "-fa", "on", "-t", str(args.threads),
               "-r", str(args.repetitions), "-o", "jsonl"]
    env = dict(os.environ, PYTURBO_LIB_DIR=lib_dir)
    result = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        sys.exit(f"pyturbo.bench failed for {pair} with {lib_dir}")
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def read_bandwidth(threads: int, size: int = 1 << 30, rounds: int = 5) -> float:
    """Best bytes/s of summing a float32 array split over `threads` threads (numpy releases the GIL)."""
    data = np.ones(size // 4, dtype=np.float32)
    parts = np.array_split(data, threads)
    best = 0.0
    for _ in range(rounds):
        workers = [threading.Thread(target=np.add.reduce, args=(part,)) for part in parts]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, size / (time.perf_counter() - start))
    return best


def kv_bytes_per_token(model: str, pair: str, depth: int) -> int:
    """Bytes of K and V one generated token reads at this depth: the whole cache of a context of
    that many tokens (pyturbo.memory's estimate; the depths here are multiples of its 256-cell padding)."""
    type_k, type_v = pair.split("/")
    return memory.estimate(model, depth, type_k, type_v).kv


def simd_level() -> str:
    flags = set()
    try:
        match = re.search(r"^flags\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        flags = set(match.group(1).split()) if match else set()
    except OSError:
        pass
    if "avx512f" in flags:
        return "AVX-512 (the ggml-cpu build uses -march=native)"
    if "avx2" in flags:
        return "AVX2"
    return platform.machine()


def cpu_model() -> str:
    try:
        match = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        return match.group(1).strip() if match else platform.processor()
    except OSError:
        return platform.processor()


def test_name(record: dict) -> str:
    name = f"pp{record['n_prompt']}" if record["n_prompt"] else f"tg{record['n_gen']}"
    return name + (f" @ d{record['n_depth']}" if record["n_depth"] else "")


def write_report(records: list[dict], args, bandwidth: float, out: Path) -> None:
    by_key = {(r["run"], f"{r['type_k']}/{r['type_v']}", test_name(r)): r for r in records}
    tests = sorted({test_name(r) for r in records if r["run"] == "after"},
                   key=lambda t: (int(t.split("d")[-1]) if "@" in t else 0, not t.startswith("pp")))
    rows = []
    for pair in PAIRS:
        for test in tests:
            after = by_key.get(("after", pair, test))
            if not after:
                continue
            before = by_key.get(("before", pair, test))
            f16 = by_key.get(("after", "f16/f16", test))
            rows.append([pair, test,
                         f"{before['avg_ts']:.1f}" if before else "-",
                         f"{after['avg_ts']:.1f} ± {after['stddev_ts']:.1f}",
                         f"{after['avg_ts'] / before['avg_ts']:.2f}x" if before else "-",
                         f"{after['avg_ts'] / f16['avg_ts']:.2f}x" if f16 else "-"])
    speed_table = markdown_table(["K/V", "test", "before t/s", "after t/s", "after/before", "vs f16/f16 (after)"],
                                 rows, [False, False, True, True, True, True])

    depths = sorted({r["n_depth"] for r in records if r["n_depth"]})
    bw_rows = []
    for pair in PAIRS:
        for depth in depths:
            tg0 = by_key.get(("after", pair, f"tg{args.n_gen}"))
            tgd = by_key.get(("after", pair, f"tg{args.n_gen} @ d{depth}"))
            if not (tg0 and tgd):
                continue
            kv = kv_bytes_per_token(args.model, pair, depth)
            attention_s = max(1.0 / tgd["avg_ts"] - 1.0 / tg0["avg_ts"], 1e-9)   # extra time per token at depth
            bw_rows.append([pair, str(depth), f"{kv / 2**20:.1f}", f"{1e3 * attention_s:.2f}",
                            f"{1e3 * kv / bandwidth:.2f}", f"{kv / attention_s / 1e9:.1f}",
                            f"{kv / attention_s / bandwidth:.0%}"])
    bw_table = markdown_table(["K/V", "depth", "KV read/token (MiB)", "attention ms/token", "bandwidth floor ms",
                               "effective GB/s", "of bandwidth"], bw_rows, [False] + [True] * 6)

    command = " ".join(["python docs/results/cpu_speed.py", args.model_arg] + args.argv)
    text = f"""# CPU speed of K/V cache types: SmolLM2-135M, before and after pyturbo's quantized-KV flash attention

Produced by

    {command}

which runs `python -m pyturbo.bench MODEL -p {args.n_prompt} -n {args.n_gen} -d {args.depths} -ctk K -ctv V -fa on -t {args.threads} -r {args.repetitions} -o jsonl`
once per K/V pair and library: "before" is the library built before this change (llama.cpp's flash
attention paths, scalar turbo kernels), "after" is this checkout's build. Machine: {cpu_model()},
{os.cpu_count()} cores, SIMD level {simd_level()}, {args.threads} threads. Took {args.elapsed / 60:.1f} min.
{args.note}

## Tokens per second

{speed_table}

## KV bytes read per generated token, and memory bandwidth

Attention time per token is the decode time at depth minus the decode time at depth 0. The
bandwidth floor is the time to read the token's K and V once at the read bandwidth measured here
({bandwidth / 1e9:.1f} GB/s: a 1 GiB float32 array summed by {args.threads} threads). "Of bandwidth" is how
much of that bandwidth the decode's attention turns into K/V bytes; the rest is arithmetic
(dequantization, dot products, softmax), which at these head sizes (64) dominates on 2 cores.

{bw_table}

![tokens/s against depth]({out.name}.png)
"""
    out.with_suffix(".md").write_text(text)


def plot(records: list[dict], out: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    after = [r for r in records if r["run"] == "after"]
    for ax, kind in zip(axes, ("pp", "tg")):
        for pair in PAIRS:
            points = sorted((r["n_depth"], r["avg_ts"]) for r in after
                            if f"{r['type_k']}/{r['type_v']}" == pair and (r["n_prompt"] > 0) == (kind == "pp"))
            if points:
                ax.plot(*zip(*points), marker="o", label=pair, linestyle="--" if pair == "f16/f16" else "-")
        ax.set_xlabel("depth (tokens already in the cache)")
        ax.set_ylabel("tokens/s")
        ax.set_title(("prompt processing" if kind == "pp" else "generation") + " (after)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--after", required=True, help="library folder of the new build")
    parser.add_argument("--before", help="library folder of the old build")
    parser.add_argument("--before-json", help="records of an earlier 'before' run (JSON list) instead of --before")
    parser.add_argument("--before-depths", help="depths for the before run (default: -d)")
    parser.add_argument("-d", "--depths", default="0,4096,8192")
    parser.add_argument("-p", "--n-prompt", type=int, default=512)
    parser.add_argument("-n", "--n-gen", type=int, default=64)
    parser.add_argument("-r", "--repetitions", type=int, default=3)
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("--note", default="", help="a line added under the header")
    parser.add_argument("--out", default="docs/results/cpu-speed-smollm2")
    args = parser.parse_args(argv)
    args.argv = sys.argv[2:] if argv is None else argv[1:]
    args.model_arg = args.model
    args.model = str(Path(args.model).expanduser())
    out = Path(args.out)

    start = time.perf_counter()
    records = []
    if args.before_json:
        records += [dict(r, run="before") for r in json.loads(Path(args.before_json).read_text())]
    elif args.before:
        before_args = argparse.Namespace(**{**vars(args), "depths": args.before_depths or args.depths})
        for pair in PAIRS:
            records += [dict(r, run="before") for r in bench(args.model, args.before, pair, before_args)]
    for pair in PAIRS:
        print(f"after: {pair}", file=sys.stderr)
        records += [dict(r, run="after") for r in bench(args.model, args.after, pair, args)]
    bandwidth = read_bandwidth(args.threads)
    args.elapsed = time.perf_counter() - start

    out.with_suffix(".json").write_text(json.dumps({"read_bandwidth_bytes_per_s": bandwidth, "records": records},
                                                   indent=1))
    write_report(records, args, bandwidth, out)
    plot(records, out)
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
