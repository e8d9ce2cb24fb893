"""Speed of the exact K/V transforms: kv_transform off against auto, same build, same run.

    python docs/results/kv_transform_speed.py MODEL [--rounds 4] [-t 2] > docs/results/kv-transform-speed-smollm2.md

Runs pyturbo.bench's pp512 and tg64 at depth 4096 for each K/V pair, off and auto
alternating (the order flips every round, so that drift on a noisy machine hits both),
and reports the median tokens/s of each and the ratio auto/off. Also writes
kv-transform-speed-smollm2.json and .png beside this script.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

from tqdm import tqdm

from pyturbo import bench
from pyturbo._report import markdown_table, pyplot

HERE = Path(__file__).resolve().parent
CONFIGS = [("q8_0", "turbo3"), ("turbo3", "turbo3")]  # f16: auto leaves it alone (the same graph)
DEPTH = 4096
MODES = ("off", "auto")


def measure(model: str, rounds: int, threads: "int | None") -> list:
    """(asked mode, BenchResult) pairs."""
    records = []
    bar = tqdm(total=rounds * len(CONFIGS) * len(MODES), desc="speed", unit="bench", file=sys.stderr)
    for r in range(rounds):
        for type_k, type_v in CONFIGS:
            for mode in (MODES if r % 2 == 0 else MODES[::-1]):
                bar.set_postfix_str(f"{type_k}/{type_v} {mode}")
                records += [(mode, r) for r in bench.run(
                    model, n_prompt=(512,), n_gen=(64,), depths=(DEPTH,), cache_k=(type_k,), cache_v=(type_v,),
                    n_threads=threads, repetitions=2, progress=False, kv_transform=mode)]
                bar.update()
    bar.close()
    return records


def medians(records: list) -> dict:
    """(type_k, type_v, test, mode) -> (median tokens/s, samples, what applied)."""
    groups: dict = {}
    for mode, r in records:
        groups.setdefault((r.type_k, r.type_v, r.test, mode), []).append(r)
    return {key: (statistics.median(s for r in rs for s in r.samples_ts), sum(len(r.samples_ts) for r in rs),
                  rs[0].kv_transform) for key, rs in groups.items()}


def table(stats: dict) -> str:
    header = ["K / V", "test", "off t/s", "auto t/s", "auto / off", "auto applied", "runs each"]
    rows = []
    for type_k, type_v in CONFIGS:
        for test in (f"pp512 @ d{DEPTH}", f"tg64 @ d{DEPTH}"):
            off, n, _ = stats[(type_k, type_v, test, "off")]
            auto, _, applied = stats[(type_k, type_v, test, "auto")]
            rows.append([f"{type_k} / {type_v}", test, f"{off:.1f}", f"{auto:.1f}", f"{auto / off:.3f}", applied,
                         str(n)])
    return markdown_table(header, rows, [False, False, True, True, True, False, True])


def plot(stats: dict, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, test in zip(axes, (f"pp512 @ d{DEPTH}", f"tg64 @ d{DEPTH}")):
        names = [f"{k}/{v}" for k, v in CONFIGS]
        x = range(len(names))
        for offset, mode in ((-0.2, "off"), (0.2, "auto")):
            ax.bar([i + offset for i in x], [stats[(k, v, test, mode)][0] for k, v in CONFIGS], width=0.4,
                   label=f"kv_transform {mode}")
        ax.set_xticks(list(x), names, rotation=30, ha="right")
        ax.set_title(test)
        ax.set_ylabel("tokens/s (median)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("-t", "--threads", type=int, default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    records = measure(args.model, args.rounds, args.threads)
    minutes = (time.perf_counter() - started) / 60
    (HERE / "kv-transform-speed-smollm2.json").write_text(
        json.dumps([{"mode": mode, **dataclasses.asdict(r)} for mode, r in records], indent=2) + "\n")
    stats = medians(records)
    plot(stats, HERE / "kv-transform-speed-smollm2.png")
    print("# Speed of the exact K/V transforms on SmolLM2-135M: kv_transform off and auto\n")
    print(f"Produced by `python docs/results/kv_transform_speed.py MODEL --rounds {args.rounds}` "
          f"({minutes:.1f} min): pyturbo.bench, pp512 and tg64 at depth {DEPTH}, flash attention auto, "
          f"{args.threads or 'all'} threads, off and auto alternating, two timed runs per bench. "
          "Medians of the runs.\n")
    print(table(stats))
    print("\n![tokens/s, off and auto](kv-transform-speed-smollm2.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
