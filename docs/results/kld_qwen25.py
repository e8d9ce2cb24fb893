"""KLD of K/V caches on Qwen2.5-Coder-0.5B-Instruct with the exact K/V transforms off and "auto".

    python docs/results/kld_qwen25.py MODEL [--chunks 20] [-t 2] > docs/results/kld-qwen2.5.md
    python docs/results/kld_qwen25.py --render      # the page again from kld-qwen2.5.json

Runs pyturbo.eval.kld (c=512, the Debian license texts) once per kv_transform
setting; the reference is always the untransformed f16/f16 cache. Also writes
kld-qwen2.5.json and kld-qwen2.5.png beside this script.
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
CONFIGS = "f16/f16,q8_0/q8_0,q4_0/q8_0,q8_0/turbo3,turbo4/turbo4,turbo3/turbo3"
# The targets with "auto" (mean KLD against the untransformed f16 cache).
TARGETS = {("q8_0", "q8_0"): 0.006, ("q4_0", "q8_0"): 0.03, ("turbo4", "q8_0"): 0.03, ("turbo4", "turbo4"): 0.06,
           ("q8_0", "turbo3"): 0.03, ("turbo3", "turbo3"): 0.2}


def table(off: list, auto: list) -> str:
    header = ["K / V", "bits/value", "KLD off", "KLD auto", "ratio", "same top off", "same top auto",
              "PPL ratio auto", "target", "met"]
    rows = []
    for a, b in zip(off, auto):
        target = TARGETS.get((a.type_k, a.type_v))
        rows.append([f"{a.type_k} / {a.type_v}", f"{(a.bpv_k + a.bpv_v) / 2:g}", f"{a.kld:.4f}", f"{b.kld:.4f}",
                     f"{a.kld / b.kld:.1f}x" if a.kld > 1e-4 and b.kld > 0 else "-", f"{100 * a.same_top:.1f}%",
                     f"{100 * b.same_top:.1f}%", f"{b.ppl_ratio:.4f}", f"<= {target:g}" if target else "",
                     ("yes" if b.kld <= target else "no") if target else ""])
    return markdown_table(header, rows, [False] + [True] * 9)


def plot(off: list, auto: list, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    names = [f"{r.type_k}/{r.type_v}" for r in off]
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [max(r.kld, 1e-5) for r in off], width=0.4, label="kv_transform off")
    ax.bar([i + 0.2 for i in x], [max(r.kld, 1e-5) for r in auto], width=0.4, label="kv_transform auto")
    ax.set_xticks(list(x), names, rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("mean KLD vs untransformed f16 cache")
    ax.set_title("Qwen2.5-Coder-0.5B-Instruct, c=512")
    ax.grid(axis="y", alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def applied(auto: list) -> str:
    """What "auto" applied to the quantized configurations (F16 ones it leaves alone)."""
    return ", ".join(sorted({r.kv_transform for r in auto if r.kv_transform != "off"})) or "off"


def page(off: list, auto: list, chunks: int, minutes: "float | None") -> str:
    took = f" ({minutes:.1f} min)" if minutes else ""
    return ("# KLD on Qwen2.5-Coder-0.5B-Instruct: exact K/V transforms off and auto\n\n"
            f"Produced by `python docs/results/kld_qwen25.py MODEL --chunks {chunks}`{took}: "
            f"pyturbo.eval.kld, c=512, {chunks} chunks of the Debian license texts, flash attention auto, "
            f"KLD against the untransformed f16/f16 cache. \"auto\" applied {applied(auto)} to the quantized "
            "caches and nothing to F16 ones.\n\n" + table(off, auto))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?")
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("-t", "--threads", type=int, default=None)
    parser.add_argument("--render", action="store_true", help="print the table of the saved json instead")
    args = parser.parse_args()
    saved = HERE / "kld-qwen2.5.json"
    if args.render:
        data = json.loads(saved.read_text())
        runs = {mode: [pteval.KLDResult(**r) for r in data[mode]] for mode in ("off", "auto")}
        meta = data.get("meta", {})
        print(page(runs["off"], runs["auto"], meta.get("chunks", args.chunks), meta.get("minutes")))
        return 0
    if not args.model:
        parser.error("give the model (or --render)")
    started = time.perf_counter()
    runs = {mode: pteval.kld(args.model, CONFIGS, n_ctx=512, chunks=args.chunks, n_threads=args.threads,
                             kv_transform=mode) for mode in ("off", "auto")}
    minutes = (time.perf_counter() - started) / 60
    records = {mode: [dataclasses.asdict(r) for r in results] for mode, results in runs.items()}
    records["meta"] = {"chunks": args.chunks, "minutes": round(minutes, 1)}
    saved.write_text(json.dumps(records, indent=2) + "\n")
    plot(runs["off"], runs["auto"], HERE / "kld-qwen2.5.png")
    print(page(runs["off"], runs["auto"], args.chunks, minutes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
