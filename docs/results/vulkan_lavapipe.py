"""The turbo types on a Vulkan device, measured on Mesa's lavapipe (llvmpipe): which ops
pass against the CPU (test-backend-ops -b Vulkan0), pyturbo.selftest's table, and speed
against the CPU backend of the same build (docs/results/vulkan-lavapipe.md).

    GGML_VK_VISIBLE_DEVICES=0 python docs/results/vulkan_lavapipe.py --build build-vk \\
        [--fa-pattern REGEX] [--json docs/results/vulkan-lavapipe.json]

--build is a build folder configured with -DGGML_VULKAN=ON -DPYTURBO_DEV_TOOLS=ON, with
test-backend-ops and libllama built. Flash attention runs the cases tests/test_vulkan.py
runs (one decode case per K/V pair and head size, one prefill case per pair), or those
matching --fa-pattern (test-backend-ops -p; "turbo" is every turbo case: masks, sinks,
soft-capping, ALiBi, GQA ratios, which takes hours on llvmpipe, whose pipeline
compilation dominates). --ops picks the ops; --ops-only stops after them. Markdown goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from test_vulkan import FA_DECODE, FA_PREFILL  # noqa: E402  the patterns CI runs

CASE = re.compile(r"^\s+(\w+)\((.*)\): (?:\x1b\[[0-9;]*m)?(OK|FAIL|not supported \[Vulkan0\])")
SPEED_PAIRS = ("f16/f16", "q8_0/turbo3", "turbo3/turbo3", "turbo3t/turbo3t")


def backend_ops(dev_bin: Path, op: str, pattern: str) -> "tuple[list[dict], float]":
    """Every case test-backend-ops ran for op on Vulkan0 against the CPU, and the seconds it took."""
    started = time.perf_counter()
    result = subprocess.run([str(dev_bin / "test-backend-ops"), "test", "-b", "Vulkan0", "-o", op, "-p", pattern],
                            capture_output=True, text=True)
    seconds = time.perf_counter() - started
    cases = []
    for line in result.stdout.splitlines():
        match = CASE.match(line)
        if match:
            params = dict(re.findall(r"(\w+)=(\[[^\]]*\]|[^,]+)", match.group(2)))
            cases.append({"op": match.group(1), "params": params, "result": match.group(3).split(" [")[0]})
    if result.returncode != 0 and not any(c["result"] == "FAIL" for c in cases):
        sys.exit(f"test-backend-ops {op} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return cases, seconds


def case_group(case: dict) -> str:
    """The row a case counts in: its turbo types (and head size and mode, for flash attention)."""
    p = case["params"]
    if case["op"] == "FLASH_ATTN_EXT":
        mode = "decode" if p["nb"] == "1" else "prefill"
        return f"K {p['type_K']}, V {p['type_V']}, head size {p['hsk']}, {mode}"
    if "type_src" in p:  # CPY, SET_ROWS
        return f"{p['type_src']} -> {p['type_dst']}"
    if case["op"] == "MUL_MAT":
        return f"{p['type_a']} x {p['type_b']}"
    return p["type"]


def ops_table(runs: "dict[str, tuple[list[dict], float]]") -> str:
    lines = ["| op | types | passed | failed | not supported (CPU fallback) |", "| --- | --- | ---: | ---: | ---: |"]
    for op, (cases, _) in runs.items():
        counts = defaultdict(lambda: defaultdict(int))
        for case in cases:
            counts[case_group(case)][case["result"]] += 1
        for group in sorted(counts):
            c = counts[group]
            lines.append(f"| {op} | {group} | {c['OK']} | {c['FAIL']} | {c['not supported']} |")
    return "\n".join(lines)


def run_selftest(model: "str | None", report: Path) -> list:
    command = [sys.executable, "-m", "pyturbo.selftest", *([model] if model else []), "--device", "Vulkan0",
               "--probes", "4", "--json", str(report)]
    subprocess.run(command, check=False, cwd=ROOT, stdout=sys.stderr)
    return json.loads(report.read_text())


def selftest_table(rows: list) -> str:
    lines = ["| device | mode | K | V | kv_transform | KLD vs CPU | top-1 | pair's KLD | device's f16 KLD | passed |",
             "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        lines.append(f"| {r['device']} | {r['mode']} | {r['type_k']} | {r['type_v']} | {r['kv_transform']} | "
                     f"{r['kld']:.2e} | {r['top1']:.2f} | {r['pair_kld']:.2e} | {r['device_kld']:.2e} | "
                     f"{'yes' if r['passed'] else 'NO'} |")
    return "\n".join(lines)


def measure_speed(model: str, repetitions: int) -> list:
    """tokens/s medians of pp128 and tg32 on the CPU backend alone and on Vulkan0, pair by pair.

    The CPU's model has no device at all: with Vulkan0 among its devices, llama.cpp would
    send a prompt's matmuls there even with no layer on it (op offload)."""
    from pyturbo import Model, bench

    rows = []
    for pair in SPEED_PAIRS:
        type_k, type_v = pair.split("/")
        for where, devices, layers in (("CPU", [], 0), ("Vulkan0", ["Vulkan0"], 99)):
            with Model(model, n_gpu_layers=layers, devices=devices) as loaded:
                for r in bench.run(loaded, n_prompt=[128], n_gen=[32], cache_k=[type_k], cache_v=[type_v],
                                   flash_attn=["on"], repetitions=repetitions):
                    rows.append({"device": where, "pair": pair, "test": r.test,
                                 "median_ts": statistics.median(r.samples_ts)})
    return rows


def speed_table(rows: list) -> str:
    by_key = {(r["device"], r["pair"], r["test"]): r["median_ts"] for r in rows}
    lines = ["| K/V | test | CPU t/s | Vulkan0 (llvmpipe) t/s | Vulkan / CPU |", "| --- | --- | ---: | ---: | ---: |"]
    for pair in SPEED_PAIRS:
        for test in ("pp128", "tg32"):
            cpu, vk = by_key[("CPU", pair, test)], by_key[("Vulkan0", pair, test)]
            lines.append(f"| {pair} | {test} | {cpu:.1f} | {vk:.1f} | {vk / cpu:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", type=Path, default=ROOT / "build-vk")
    parser.add_argument("--model", default=None, help="GGUF file (default: SmolLM2-135M, fetched once)")
    parser.add_argument("--ops", default="SET_ROWS,GET_ROWS,CPY,MUL_MAT,FLASH_ATTN_EXT",
                        help="test-backend-ops ops to run, comma-separated")
    parser.add_argument("--fa-pattern", help="the flash-attention cases to run (test-backend-ops -p)")
    parser.add_argument("--ops-only", action="store_true", help="only test-backend-ops")
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write everything measured as JSON")
    args = parser.parse_args()
    dev_bin = args.build.resolve() / "bin"
    os.environ.setdefault("GGML_VK_VISIBLE_DEVICES", "0")
    os.environ["PYTURBO_LIB_DIR"] = str(dev_bin)

    runs = {}
    for op in args.ops.split(","):
        if op != "FLASH_ATTN_EXT":
            runs[op] = backend_ops(dev_bin, op, "turbo")
        elif args.fa_pattern:
            runs[op] = backend_ops(dev_bin, op, args.fa_pattern)
        else:
            decode, t_decode = backend_ops(dev_bin, op, FA_DECODE)
            prefill, t_prefill = backend_ops(dev_bin, op, FA_PREFILL)
            runs[op] = (decode + prefill, t_decode + t_prefill)
    print("## test-backend-ops -b Vulkan0 (against the CPU)\n")
    print(ops_table(runs))
    print("\nseconds: " + ", ".join(f"{op} {seconds:.0f}" for op, (_, seconds) in runs.items()))
    if args.json:
        args.json.write_text(json.dumps({"ops": {op: cases for op, (cases, _) in runs.items()},
                                         "seconds": {op: s for op, (_, s) in runs.items()}}, indent=1))
    if args.ops_only:
        return

    from pyturbo.assets import default_model

    model = args.model or str(default_model())
    selftest = run_selftest(model, args.json.with_name(args.json.stem + "-selftest.json") if args.json
                            else Path("/tmp/vulkan-lavapipe-selftest.json"))
    speed = measure_speed(model, args.repetitions)

    print("\n## pyturbo.selftest --device Vulkan0 --probes 4\n")
    print(selftest_table(selftest))
    print(f"\n## Speed, {Path(model).name}, medians of {args.repetitions}, flash attention on\n")
    print(speed_table(speed))
    if args.json:
        measured = json.loads(args.json.read_text())
        args.json.write_text(json.dumps({**measured, "speed": speed}, indent=1))


if __name__ == "__main__":
    main()
