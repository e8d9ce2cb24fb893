"""KLD of K/V caches on SmolLM2-135M with the exact K/V transforms off and "auto".

    python docs/results/kld_smollm2_transforms.py MODEL [--chunks 20] [-t 2] > docs/results/kld-smollm2-transforms.md
    python docs/results/kld_smollm2_transforms.py --render    # the page again from the json

Every configuration of kld-smollm2.md with "auto" (what pyturbo.fit ranks by), and the
low-bit ones with "off" in the same run for the ratio. pyturbo.eval.kld, c=512, the
Debian license texts; the reference is always the untransformed f16/f16 cache. Writes
kld-smollm2-transforms.json and .png beside this script.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from pyturbo import eval as pteval
from pyturbo._report import markdown_table, pyplot

HERE = Path(__file__).resolve().parent
AUTO_CONFIGS = ("f16/f16,f16/q8_0,q8_0/q8_0,q5_0/q5_0,q4_0/q4_0,iq4_nl/iq4_nl,q8_0/q4_0,turbo4/turbo4,"
                "turbo3/turbo3,turbo2/turbo2,q8_0/turbo4,q8_0/turbo3,q8_0/turbo2")
OFF_CONFIGS = "q4_0/q4_0,turbo4/turbo4,turbo3/turbo3,turbo2/turbo2,q8_0/turbo3"


def table(auto: list, off: list) -> str:
    by_config = {(r.type_k, r.type_v): r for r in off}
    header = ["K / V", "bits/value", "KLD auto", "KLD off", "off / auto", "same top auto", "PPL ratio auto",
              "auto applied"]
    rows = []
    for r in auto:
        o = by_config.get((r.type_k, r.type_v))
        rows.append([f"{r.type_k} / {r.type_v}", f"{(r.bpv_k + r.bpv_v) / 2:g}", f"{r.kld:.4f}",
                     f"{o.kld:.4f}" if o else "", f"{o.kld / r.kld:.2f}x" if o and r.kld > 0 else "",
                     f"{100 * r.same_top:.1f}%", f"{r.ppl_ratio:.4f}", r.kv_transform])
    return markdown_table(header, rows, [False, True, True, True, True, True, True, False])


def plot(auto: list, off: list, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    by_config = {(r.type_k, r.type_v): r for r in off}
    shown = [r for r in auto if (r.type_k, r.type_v) in by_config]
    x = range(len(shown))
    ax.bar([i - 0.2 for i in x], [by_config[(r.type_k, r.type_v)].kld for r in shown], width=0.4,
           label="kv_transform off")
    ax.bar([i + 0.2 for i in x], [r.kld for r in shown], width=0.4, label="kv_transform auto")
    ax.set_xticks(list(x), [f"{r.type_k}/{r.type_v}" for r in shown], rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("mean KLD vs untransformed f16 cache")
    ax.set_title("SmolLM2-135M-Instruct Q4_1, c=512")
    ax.grid(axis="y", alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def page(auto: list, off: list, chunks: int, minutes: "float | None") -> str:
    took = f" ({minutes:.1f} min)" if minutes else ""
    return ("# KLD on SmolLM2-135M: exact K/V transforms off and auto\n\n"
            f"Produced by `python docs/results/kld_smollm2_transforms.py MODEL --chunks {chunks}`{took}: "
            f"pyturbo.eval.kld, c=512, {chunks} chunks of the Debian license texts, flash attention auto, KLD "
            "against the untransformed f16/f16 cache, 2 threads. \"auto\" transforms the quantized side of a "
            "cache only (F16 stays exactly as it was). kld-smollm2.md has the 50-chunk table without transforms "
            "and llama-perplexity's cross-check.\n\n" + table(auto, off)
            + "\n\n![KLD, transforms off and auto](kld-smollm2-transforms.png)\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?")
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("-t", "--threads", type=int, default=None)
    parser.add_argument("--render", action="store_true", help="print the page of the saved json instead")
    args = parser.parse_args()
    saved = HERE / "kld-smollm2-transforms.json"
    if args.render:
        data = json.loads(saved.read_text())
        runs = {mode: [pteval.KLDResult(**r) for r in data[mode]] for mode in ("auto", "off")}
        print(page(runs["auto"], runs["off"], data["meta"]["chunks"], data["meta"]["minutes"]))
        return 0
    if not args.model:
        parser.error("give the model (or --render)")
    started = time.perf_counter()
    auto = pteval.kld(args.model, AUTO_CONFIGS, n_ctx=512, chunks=args.chunks, n_threads=args.threads,
                      kv_transform="auto")
    off = pteval.kld(args.model, OFF_CONFIGS, n_ctx=512, chunks=args.chunks, n_threads=args.threads,
                     kv_transform="off")
    minutes = (time.perf_counter() - started) / 60
    records = {"auto": [dataclasses.asdict(r) for r in auto], "off": [dataclasses.asdict(r) for r in off],
               "meta": {"chunks": args.chunks, "minutes": round(minutes, 1)}}
    saved.write_text(json.dumps(records, indent=2) + "\n")
    plot(auto, off, HERE / "kld-smollm2-transforms.png")
    print(page(auto, off, args.chunks, minutes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
