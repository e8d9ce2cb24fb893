"""How long writing a block of each KV type takes on this CPU: the cost prefill pays per block.

    python docs/results/tcq_encode_speed.py [--blocks 8192] [--repetitions 7] > docs/results/tcq-encode-speed.md

Times the CPU backend's from_float (what SET_ROWS runs for a KV write, one thread) and
ggml-base's reference quantizer on the same rows of rotated, heavy-tailed data (the
test suite's rotated_gaussian), the median of --repetitions runs per type, in one process
so the ratios compare like with like. Prints the page.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import pyturbo
from pyturbo._native import ffi, ggml, ggml_cpu

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from test_turbo import rotated_gaussian  # noqa: E402

TYPES = ["q8_0", "q4_0", "turbo4", "turbo3", "turbo2", "turbo3t", "turbo2t"]
ROW = 512


def time_per_block(encode, blocks: int, repetitions: int) -> float:
    runs = []
    for _ in range(repetitions):
        started = time.perf_counter()
        encode()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs) / blocks * 1e6


def measure(name: str, x: np.ndarray, repetitions: int) -> dict:
    t = pyturbo.cache_type(name)
    nrows, n = x.shape
    dst = ffi.new("char[]", ggml.ggml_row_size(t.type_id, n) * nrows)
    src = ffi.cast("float *", ffi.from_buffer(x))
    from_float = ggml_cpu.ggml_get_type_traits_cpu(t.type_id).from_float
    blocks = x.size // 32 if name.startswith("q") else x.size // 64
    cpu = time_per_block(lambda: from_float(src, dst, x.size), blocks, repetitions)
    ref = time_per_block(lambda: ggml.ggml_quantize_chunk(t.type_id, src, dst, 0, nrows, n, ffi.NULL), blocks,
                         repetitions)
    return {"type": name, "block_values": x.size // blocks, "cpu_us": cpu, "reference_us": ref}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=8192, help="64-value blocks per run")
    parser.add_argument("--repetitions", type=int, default=7)
    args = parser.parse_args()
    x = np.ascontiguousarray(rotated_gaussian(args.blocks * 64 // ROW, ROW, seed=5), dtype=np.float32)
    rows = [measure(name, x, args.repetitions) for name in TYPES]
    per_value = {r["type"]: r["cpu_us"] / r["block_values"] for r in rows}
    lines = ["# Time to write a KV block, per type", "",
             f"Produced by `python docs/results/tcq_encode_speed.py --blocks {args.blocks} --repetitions "
             f"{args.repetitions}` on {platform.machine()} ({pyturbo.__name__} {pyturbo.__version__}): one thread, "
             f"{args.blocks * 64} values of rotated heavy-tailed data, median of {args.repetitions} runs. "
             "`from_float` is the CPU backend's entry (what a KV write runs); the reference is ggml-base's "
             "quantizer (the blocks are identical).", "",
             "| type | values/block | CPU from_float µs/block | reference µs/block | per value vs turbo3 |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['type']} | {r['block_values']} | {r['cpu_us']:.3f} | {r['reference_us']:.3f} | "
                     f"{per_value[r['type']] / per_value['turbo3']:.2f}x |")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
