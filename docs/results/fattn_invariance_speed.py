"""Speed cost of the batch-invariant CPU flash attention: the op's time with two libraries.

Compiles tests/native/fattn_bench.cpp against each library folder and runs the two in turn,
`--rounds` times (before, after, before, after, ...) so that the drift of a shared machine
falls on both; each run times every case `-r` times. Writes the median milliseconds per op
of each case and library and their ratio (after/before) as JSON and a Markdown table.

    python docs/results/fattn_invariance_speed.py --before /tmp/old/lib --after build/<tag>/bin \
        --rounds 3 -r 3 -t 2 --out docs/results/fattn-invariance-speed
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "tests" / "native" / "fattn_bench.cpp"
INCLUDE = ROOT / "vendor" / "llama.cpp" / "ggml" / "include"


def build(lib_dir: str, exe: Path) -> None:
    compiler = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    subprocess.run([compiler, "-O2", "-std=c++17", str(SOURCE), f"-I{INCLUDE}", f"-L{lib_dir}", "-lggml",
                    "-lggml-base", "-lggml-cpu", f"-Wl,-rpath,{lib_dir}", "-o", str(exe)], check=True)


def main(argv: "list[str] | None" = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="library folder before the change")
    parser.add_argument("--after", required=True, help="library folder after it")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-r", "--repetitions", type=int, default=3)
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("--out", default="docs/results/fattn-invariance-speed")
    args = parser.parse_args(argv)

    samples: "dict[tuple[str, str, str], list[float]]" = {}
    with tempfile.TemporaryDirectory() as tmp:
        exes = {lib: Path(tmp) / f"fattn_bench_{lib}" for lib in ("before", "after")}
        for lib, exe in exes.items():
            build(getattr(args, lib), exe)
        runs = [lib for _ in range(args.rounds) for lib in ("before", "after")]
        for lib in tqdm(runs, desc="fattn_bench", file=sys.stderr):
            out = subprocess.run([str(exes[lib]), str(args.threads), str(args.repetitions)], check=True,
                                 capture_output=True, text=True).stdout
            for line in out.splitlines():
                pair, case, ms = line.split()
                samples.setdefault((pair, case, lib), []).append(float(ms))
    rows = []
    for pair, case in dict.fromkeys((p, c) for p, c, _ in samples):
        before = statistics.median(samples[(pair, case, "before")])
        after = statistics.median(samples[(pair, case, "after")])
        rows.append({"pair": pair, "case": case, "before_ms": before, "after_ms": after, "ratio": after / before,
                     "samples": len(samples[(pair, case, "after")])})
    Path(f"{args.out}.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["| K/V | case | before ms/op (median) | after ms/op (median) | after/before |",
             "| --- | --- | ---: | ---: | ---: |"]
    lines += [f"| {r['pair']} | {r['case']} | {r['before_ms']:.3f} | {r['after_ms']:.3f} | {r['ratio']:.2f}x |"
              for r in rows]
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
