"""Needle in a haystack on Qwen2.5-Coder-0.5B-Instruct at 4K, exact K/V transforms off and auto.

    python docs/results/niah_qwen25.py MODEL [--configs f16/f16,turbo4/turbo4,turbo3/turbo3]
        [--modes off,auto] [-t 2] > docs/results/niah-qwen2.5.md
    python docs/results/niah_qwen25.py --render    # the page again from niah-qwen2.5.json

Runs pyturbo.eval.niah (4096 tokens, depths 0.1/0.5/0.9, 2 trials each, seed 0) for each
configuration and mode asked and merges the records into niah-qwen2.5.json (a rerun of some
configurations keeps the others' records), then writes the page and niah-qwen2.5.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from pyturbo import eval as pteval
from pyturbo._report import pyplot

HERE = Path(__file__).resolve().parent
SAVED = HERE / "niah-qwen2.5.json"
MODES = ("off", "auto")
COMMAND = ("python -m pyturbo.eval niah MODEL --lengths 4096 --depths 0.1,0.5,0.9 --trials 2 "
           "--configs CONFIGS --kv-transform MODE -t 2")


def load() -> dict:
    data = json.loads(SAVED.read_text()) if SAVED.exists() else {}
    return {mode: [pteval.NeedleResult(**r) for r in data.get(mode, [])] for mode in MODES}


def merge(old: list, new: list) -> list:
    """old's records, those of configurations measured again replaced by the new ones."""
    redone = {(r.type_k, r.type_v) for r in new}
    return [r for r in old if (r.type_k, r.type_v) not in redone] + new


def plot(runs: dict, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(MODES), figsize=(10, 4), sharey=True)
    for ax, mode in zip(axes, MODES):
        configs = sorted({(r.type_k, r.type_v) for r in runs[mode]}, key=lambda c: c != ("f16", "f16"))
        for type_k, type_v in configs:
            rows = sorted((r for r in runs[mode] if (r.type_k, r.type_v) == (type_k, type_v)), key=lambda r: r.depth)
            ax.plot([r.depth for r in rows], [r.passed / r.trials for r in rows], marker="o",
                    label=f"{type_k}/{type_v}")
        ax.set_title(f"kv_transform {mode}")
        ax.set_xlabel("needle depth")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    axes[0].set_ylabel("needles found")
    fig.suptitle("Qwen2.5-Coder-0.5B-Instruct, 4096 tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def page(runs: dict) -> str:
    parts = ["# Needle in a haystack on Qwen2.5-Coder-0.5B-Instruct at 4K: exact K/V transforms off and auto\n",
             f"Produced by `python docs/results/niah_qwen25.py MODEL` (each mode: `{COMMAND}`), 2 threads. "
             "A six-digit passcode hidden at each depth of 4096 tokens of license text, asked for through the "
             "chat template, greedy; the same needles for every row (seed 0). \"auto\" leaves an F16 cache "
             "exactly as it is, so its f16/f16 row is the off row.\n"]
    for mode in MODES:
        applied = sorted({r.kv_transform for r in runs[mode] if r.kv_transform != "off"}) or ["off"]
        parts.append(f"## kv_transform {mode} (applied: {', '.join(applied)})\n")
        parts.append(pteval.niah_to_markdown(runs[mode]) + "\n")
    parts.append("![needles found by depth, transforms off and auto](niah-qwen2.5.png)\n")
    return "\n".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?")
    parser.add_argument("--configs", default="f16/f16,turbo4/turbo4,turbo3/turbo3")
    parser.add_argument("--modes", default="off,auto")
    parser.add_argument("-t", "--threads", type=int, default=None)
    parser.add_argument("--render", action="store_true", help="print the page of the saved json instead")
    args = parser.parse_args()
    runs = load()
    if not args.render:
        if not args.model:
            parser.error("give the model (or --render)")
        for mode in args.modes.split(","):
            new = pteval.niah(args.model, lengths=[4096], depths=[0.1, 0.5, 0.9], configs=args.configs, trials=2,
                              n_threads=args.threads, kv_transform=mode)
            runs[mode] = merge(runs[mode], new)
        SAVED.write_text(json.dumps({mode: [dataclasses.asdict(r) for r in rs] for mode, rs in runs.items()},
                                    indent=2) + "\n")
        plot(runs, HERE / "niah-qwen2.5.png")
    print(page(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
