"""The trellis-coded cache types against every other type: KLD, the bits frontier, and speed at depth.

    python docs/results/kld_tcq.py [MODEL] [--chunks 10] [--name smollm2] [--depths 4096,8192] > docs/results/kld-tcq-smollm2.md
    python docs/results/kld_tcq.py --speed-only      # speed again, the KLDs from kld-tcq-NAME.json

KLD against the f16 cache of every pair in PAIRS (pyturbo.kld_cache: c=512, --chunks chunks of
the Debian license texts, kv_transform auto; a second run reads the numbers back), the issue's
targets checked on them, the per-layer mix at turbo3/turbo3's memory with the trellis types in
the ladder (pyturbo.layer_search), then prefill and generation speed at each depth for SPEED_PAIRS
(`python -m pyturbo.bench`, one run, so the ratios compare like with like). Writes
kld-tcq-NAME.json and .png beside this script and the page to stdout.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pyturbo import kld_cache, layer_search  # noqa: E402
from pyturbo.assets import default_model  # noqa: E402

HERE = Path(__file__).resolve().parent

PAIRS = [("f16", "f16"), ("q8_0", "q8_0"), ("q5_0", "q5_0"), ("q4_0", "q4_0"), ("iq4_nl", "iq4_nl"),
         ("q8_0", "turbo4"), ("q8_0", "turbo3"), ("q8_0", "turbo3t"), ("q8_0", "turbo2"), ("q8_0", "turbo2t"),
         ("turbo4", "turbo4"), ("turbo3", "turbo3"), ("turbo3t", "turbo3t"), ("turbo2", "turbo2"),
         ("turbo2t", "turbo2t")]
# (pair, factor, pair it is measured against): the targets for the trellis types
TARGETS = [(("turbo3t", "turbo3t"), 0.65, ("turbo3", "turbo3")),
           (("q8_0", "turbo3t"), 1.0, ("q5_0", "q5_0")),
           (("turbo2t", "turbo2t"), 0.65, ("turbo2", "turbo2"))]
SPEED_PAIRS = ["q8_0/turbo3", "q8_0/turbo3t", "turbo3/turbo3", "turbo3t/turbo3t", "turbo2/turbo2", "turbo2t/turbo2t"]


def measure_kld(model, chunks: int) -> dict:
    sens = layer_search.sensitivities(model)
    geometry = sens.geometry
    budget = layer_search.bytes_per_cell(geometry, "turbo3", "turbo3")
    mix = layer_search.search(sens, budget)
    configs = PAIRS + [(mix.cache_k, mix.cache_v)]
    measured = kld_cache.measure(model, configs, chunks=chunks)
    values = sum(layer.k_values + layer.v_values for layer in geometry.layers if layer.has_kv)
    rows = [{"cache_k": k, "cache_v": v, "kld": measured[k, v].kld,
             "bits_per_value": 8.0 * layer_search.bytes_per_cell(geometry, k, v) / values} for k, v in PAIRS]
    kld = {(r["cache_k"], r["cache_v"]): r["kld"] for r in rows}
    targets = [{"pair": list(pair), "kld": kld[pair], "factor": factor, "against": list(against),
                "target_kld": factor * kld[against], "ratio": kld[pair] / kld[against],
                "met": kld[pair] <= factor * kld[against]} for pair, factor, against in TARGETS]
    mix_row = {"cache_k": mix.cache_k, "cache_v": mix.cache_v, "bits_per_value": mix.bits_per_value,
               "predicted_kld": mix.predicted_kld, "kld": measured[mix.cache_k, mix.cache_v].kld,
               "ratio": measured[mix.cache_k, mix.cache_v].kld / kld["turbo3", "turbo3"]}
    return {"pairs": rows, "targets": targets, "mix_at_turbo3": mix_row, "ladder": list(layer_search.LADDER)}


def measure_speed(model, depths: str, repetitions: int) -> list:
    """Every pair of SPEED_PAIRS (pyturbo.bench crosses its -ctk and -ctv lists, so one call per pair)."""
    records = []
    for pair in SPEED_PAIRS:
        k, v = pair.split("/")
        command = [sys.executable, "-m", "pyturbo.bench", str(model), "-p", "512", "-n", "32", "-d", depths,
                   "-ctk", k, "-ctv", v, "-r", str(repetitions), "-t", "2", "-o", "json"]
        records += json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    return records


def plot(result: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    for row in result["pairs"]:
        if row["cache_k"] == row["cache_v"] == "f16":
            continue
        names = row["cache_k"] + row["cache_v"]
        color = "tab:red" if names.count("t/") or names.endswith("t") else \
            "tab:orange" if "turbo" in names else "tab:blue"
        ax.scatter(row["bits_per_value"], row["kld"], color=color)
        ax.annotate(f"{row['cache_k']}/{row['cache_v']}", (row["bits_per_value"], row["kld"]), fontsize=7,
                    xytext=(4, 2), textcoords="offset points")
    mix = result["mix_at_turbo3"]
    ax.scatter(mix["bits_per_value"], mix["kld"], color="tab:green", marker="*", s=140)
    ax.annotate("per-layer mix", (mix["bits_per_value"], mix["kld"]), fontsize=7, color="tab:green",
                xytext=(4, -9), textcoords="offset points")
    ax.set_xlabel("bits per cached value (K and V)")
    ax.set_ylabel("KLD against the f16 cache")
    ax.set_yscale("log")
    ax.set_title(f"{result['model']}: upstream (blue), scalar turbo (orange), trellis turbo (red), "
                 "per-layer (green)", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def speed_table(records: list) -> list:
    if not records:
        return ["Not measured in this run (--depths '')."]
    by = {}
    for r in records:
        test = "pp512" if r["n_prompt"] else "tg32"
        by.setdefault((test, r["n_depth"]), {})[f"{r['type_k']}/{r['type_v']}"] = r["avg_ts"]
    lines = ["| test | depth | " + " | ".join(SPEED_PAIRS) + " | turbo3t/turbo3 | q8_0/turbo3t vs q8_0/turbo3 "
             "| turbo2t/turbo2 |", "| --- | ---: |" + " ---: |" * (len(SPEED_PAIRS) + 3)]
    for (test, depth), speed in sorted(by.items()):
        ratios = [speed["turbo3t/turbo3t"] / speed["turbo3/turbo3"], speed["q8_0/turbo3t"] / speed["q8_0/turbo3"],
                  speed["turbo2t/turbo2t"] / speed["turbo2/turbo2"]]
        lines.append(f"| {test} | {depth} | " + " | ".join(f"{speed[p]:.1f}" for p in SPEED_PAIRS) + " | "
                     + " | ".join(f"{x:.2f}x" for x in ratios) + " |")
    return lines


def page(result: dict, name: str) -> str:
    lines = [f"# Trellis-coded cache types on {result['model']}", "",
             f"KLDs by `python docs/results/kld_tcq.py MODEL --chunks {result['chunks']} --name {name}` (through "
             f"pyturbo's KLD cache, 2 CPU threads): KLD against the f16 cache, c=512, {result['chunks']} chunks of "
             "the Debian license texts, kv_transform auto.", "", "## Targets", "",
             "| pair | KLD | target | ratio | met |", "| --- | ---: | --- | ---: | --- |"]
    for t in result["targets"]:
        lines.append(f"| {'/'.join(t['pair'])} | {t['kld']:.4f} | <= {t['factor']:g}x {'/'.join(t['against'])} "
                     f"= {t['target_kld']:.4f} | {t['ratio']:.2f}x | {'yes' if t['met'] else 'no'} |")
    mix = result["mix_at_turbo3"]
    lines += ["", f"Per-layer mix at turbo3/turbo3's memory, ladder {', '.join(result['ladder'])}: "
              f"K `{mix['cache_k']}`, V `{mix['cache_v']}`, {mix['bits_per_value']:.3f} bits, KLD "
              f"{mix['kld']:.4f} = {mix['ratio']:.2f}x turbo3/turbo3 (predicted {mix['predicted_kld']:.4f}).",
              "", "## Every pair", "", "| K / V | bits/value | KLD |", "| --- | ---: | ---: |"]
    for row in sorted(result["pairs"], key=lambda r: -r["bits_per_value"]):
        lines.append(f"| {row['cache_k']} / {row['cache_v']} | {row['bits_per_value']:.3f} | {row['kld']:.4f} |")
    minutes = f" ({result['speed_minutes']:.1f} min, `--speed-only`)" if "speed_minutes" in result else ""
    lines += ["", f"![bits against KLD](kld-tcq-{name}.png)", "", "## Speed at depth (tokens/s)", "",
              f"`python -m pyturbo.bench MODEL -p 512 -n 32 -d {result['depths']} -ctk K -ctv V -r 2 -t 2` for each "
              f"pair, one after the other in one run{minutes}:", ""]
    lines += speed_table(result["speed"])
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=None)
    parser.add_argument("--chunks", type=int, default=10)
    parser.add_argument("--name", default="smollm2")
    parser.add_argument("--depths", default="4096,8192", help="'' skips the speed runs")
    parser.add_argument("--repetitions", type=int, default=2)
    parser.add_argument("--render", action="store_true", help="the page again from the JSON")
    parser.add_argument("--speed-only", action="store_true", help="the KLDs from the JSON, speed measured again")
    args = parser.parse_args()
    json_path = HERE / f"kld-tcq-{args.name}.json"
    if args.render:
        result = json.loads(json_path.read_text())
    elif args.speed_only:
        started = time.time()
        result = json.loads(json_path.read_text())
        result["speed"] = measure_speed(args.model or default_model(), args.depths, args.repetitions)
        result.update(depths=args.depths, speed_minutes=(time.time() - started) / 60)
        json_path.write_text(json.dumps(result, indent=1))
    else:
        started = time.time()
        model = args.model or default_model()
        result = {"model": Path(model).name, "chunks": args.chunks, "depths": args.depths,
                  **measure_kld(model, args.chunks)}
        result["speed"] = measure_speed(model, args.depths, args.repetitions) if args.depths else []
        result["minutes"] = (time.time() - started) / 60
        json_path.write_text(json.dumps(result, indent=1))
    plot(result, HERE / f"kld-tcq-{args.name}.png")
    sys.stdout.write(page(result, args.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
