"""Import time of pyturbo variants, each a folder holding a `pyturbo` package (put first on
PYTHONPATH): medians over fresh interpreters, the variants interleaved run by run so that
load on the machine falls on all of them alike (docs/results/import-time.md).

    python docs/results/import_time.py [--runs 20] NAME=FOLDER [NAME=FOLDER ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

# Each prints its own milliseconds, measured inside the interpreter.
CASES = {
    "import pyturbo": "import time; t = time.perf_counter(); import pyturbo; print((time.perf_counter() - t) * 1e3)",
    "first native call (dlopen)": "import time, pyturbo._native as n; t = time.perf_counter(); "
                                  "n.llama.llama_max_devices(); print((time.perf_counter() - t) * 1e3)",
}
WALL = "python -c 'import pyturbo', whole process"
IMPORTTIME = "pyturbo._native in -X importtime (cumulative)"


def run_once(folder: str) -> dict:
    env = dict(os.environ, PYTHONPATH=folder)
    times = {}
    for case, code in CASES.items():
        out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
        times[case] = float(out.stdout)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import pyturbo"], env=env, check=True)
    times[WALL] = (time.perf_counter() - start) * 1e3
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", "import pyturbo"], env=env, check=True,
                         capture_output=True, text=True).stderr
    native = next(line for line in err.splitlines() if line.split("|")[-1].strip() == "pyturbo._native")
    times[IMPORTTIME] = int(native.split("|")[1]) / 1e3
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("variants", nargs="+", metavar="NAME=FOLDER")
    args = parser.parse_args()
    variants = dict(v.split("=", 1) for v in args.variants)
    samples = {name: [] for name in variants}
    for _ in range(args.runs):
        for name, folder in variants.items():
            samples[name].append(run_once(folder))
    print(f"| median of {args.runs} runs, ms | " + " | ".join(variants) + " |")
    print("| --- |" + " ---: |" * len(variants))
    for case in [*CASES, WALL, IMPORTTIME]:
        cells = [f"{statistics.median(s[case] for s in samples[name]):.1f}" for name in variants]
        print(f"| {case} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
