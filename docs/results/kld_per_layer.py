"""Per-layer cache types chosen by measurement against uniform types, on one model.

    python docs/results/kld_per_layer.py [MODEL] [--chunks 10] [--name smollm2] > docs/results/kld-per-layer-smollm2.md

Measures each layer's sensitivity (pyturbo.layer_search.sensitivities, 2 chunks), then for
the memory of each uniform pair in TARGETS searches the per-layer mix of least predicted
KLD that fits it, and measures every uniform pair and every mix at --chunks (pyturbo.eval's
KLD, c=512, the Debian license texts, kv_transform auto, through pyturbo.kld_cache, so a
second run reads the numbers back). Writes kld-per-layer-NAME.json and .png beside this
script and the page to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pyturbo import kld_cache, layer_search  # noqa: E402
from pyturbo.assets import default_model  # noqa: E402

HERE = Path(__file__).resolve().parent

# Every upstream type, every scalar turbo type and every trellis-coded one, uniform over layers.
UNIFORM = [("f16", "f16"), ("q8_0", "q8_0"), ("q5_0", "q5_0"), ("q4_0", "q4_0"), ("iq4_nl", "iq4_nl"),
           ("q8_0", "turbo4"), ("q8_0", "turbo3"), ("q8_0", "turbo3t"), ("q8_0", "turbo2"), ("q8_0", "turbo2t"),
           ("turbo4", "turbo4"), ("turbo3", "turbo3"), ("turbo3t", "turbo3t"), ("turbo2", "turbo2"),
           ("turbo2t", "turbo2t")]
# The uniform pairs whose memory a mix is searched for, and the issue's targets at each:
# (pair, the KLD a mix must reach there as (factor, pair it is measured against)).
TARGETS = [(("turbo3", "turbo3"), (0.6, ("turbo3", "turbo3"))),
           (("q8_0", "turbo3"), (1.0, ("q5_0", "q5_0"))),
           (("turbo4", "turbo4"), (1.0, ("turbo4", "turbo4"))),
           (("turbo2", "turbo2"), (1.0, ("turbo2", "turbo2")))]


def run(model, chunks: int) -> dict:
    started = time.time()
    sens = layer_search.sensitivities(model)
    geometry = sens.geometry
    mixes = []
    for pair, target in TARGETS:
        budget = layer_search.bytes_per_cell(geometry, *pair)
        choice = layer_search.search(sens, budget)
        mixes.append({"memory_of": list(pair), "budget": budget, "cache_k": choice.cache_k,
                      "cache_v": choice.cache_v, "bytes_per_cell": choice.bytes_per_cell,
                      "bits_per_value": choice.bits_per_value, "predicted_kld": choice.predicted_kld,
                      "target": [target[0], list(target[1])]})
    configs = UNIFORM + [(m["cache_k"], m["cache_v"]) for m in mixes]
    measured = kld_cache.measure(model, configs, chunks=chunks)
    uniform = [{"cache_k": k, "cache_v": v, "kld": measured[k, v].kld,
                "bits_per_value": 8.0 * layer_search.bytes_per_cell(geometry, k, v) / values_per_cell(geometry)}
               for k, v in UNIFORM]
    for m in mixes:
        m["kld"] = measured[m["cache_k"], m["cache_v"]].kld
        factor, against = m["target"]
        m["target_kld"] = factor * measured[tuple(against)].kld
        m["met"] = m["kld"] <= m["target_kld"]
    return {"model": Path(model).name, "chunks": chunks, "sensitivity_chunks": sens.chunks,
            "probe": layer_search.PROBE, "ladder": list(layer_search.LADDER),
            "layer_kld": sens.layer_kld, "type_kld": sens.type_kld, "uniform": uniform, "mixes": mixes,
            "minutes": (time.time() - started) / 60}


def values_per_cell(geometry) -> int:
    return sum(layer.k_values + layer.v_values for layer in geometry.layers if layer.has_kv)


def family(cache_k: str, cache_v: str) -> str:
    """upstream, turbo (scalar) or trellis: the plot's colour of a uniform pair."""
    names = (cache_k, cache_v)
    if any(n.startswith("turbo") and n.endswith("t") for n in names):
        return "trellis"
    return "turbo" if any(n.startswith("turbo") for n in names) else "upstream"


FAMILY_COLORS = {"upstream": "tab:blue", "turbo": "tab:orange", "trellis": "tab:red"}
# Labels moved off their neighbours (q4_0, iq4_nl and turbo4 sit at 4.25-4.5 bits, KLD 0.045-0.054).
LABEL_OFFSETS = {("turbo4", "turbo4"): (-4, 2), ("iq4_nl", "iq4_nl"): (6, 2)}


def frontier(points: list) -> list:
    """The (bits, KLD) points no other point beats with as few bits and less KLD, by bits."""
    best, kept = float("inf"), []
    for bits, kld in sorted(points):
        if kld < best:
            best = kld
            kept.append((bits, kld))
    return kept


def plot(result: dict, path: Path) -> None:
    fig, (front, layers) = plt.subplots(1, 2, figsize=(14, 5.2), gridspec_kw={"width_ratios": [3, 2]})
    points = []
    for row in result["uniform"]:
        if row["cache_k"] == "f16" and row["cache_v"] == "f16":
            continue
        xy = (row["bits_per_value"], row["kld"])
        points.append(xy)
        front.scatter(*xy, color=FAMILY_COLORS[family(row["cache_k"], row["cache_v"])], marker="o")
        dx, dy = LABEL_OFFSETS.get((row["cache_k"], row["cache_v"]), (4, 2))
        front.annotate(f"{row['cache_k']}/{row['cache_v']}", xy, fontsize=7, ha="right" if dx < 0 else "left",
                       xytext=(dx, dy), textcoords="offset points")
    for m in result["mixes"]:
        xy = (m["bits_per_value"], m["kld"])
        points.append(xy)
        front.scatter(*xy, color="tab:green", marker="*", s=140, zorder=3)
        front.annotate(f"per-layer at {'/'.join(m['memory_of'])}", xy, fontsize=7, xytext=(4, -12),
                       textcoords="offset points", color="tab:green")
    front.plot(*zip(*frontier(points)), color="gray", lw=1, ls="--", zorder=1, label="frontier")
    front.set_xlabel("bits per cached value (K and V)")
    front.set_ylabel("KLD against the f16 cache")
    front.set_yscale("log")
    front.set_title(f"{result['model']}: upstream (blue), scalar turbo (orange), trellis turbo (red), "
                    "per-layer (green)", fontsize=9)
    front.legend(loc="upper right", fontsize=8)
    front.grid(alpha=0.3)
    n = len(result["layer_kld"]["K"])
    width = 0.4
    layers.bar([i - width / 2 for i in range(n)], result["layer_kld"]["K"], width, label="K")
    layers.bar([i + width / 2 for i in range(n)], result["layer_kld"]["V"], width, label="V")
    layers.set_xlabel("layer")
    layers.set_ylabel(f"KLD, only this layer at {result['probe']}")
    layers.set_title("sensitivity per layer", fontsize=9)
    layers.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def page(result: dict, name: str) -> str:
    lines = [f"# Per-layer cache types on {result['model']}", "",
             f"Produced by `python docs/results/kld_per_layer.py MODEL --chunks {result['chunks']} --name {name}` "
             f"({result['minutes']:.1f} min, 2 CPU threads): KLD against the f16 cache, c=512, "
             f"{result['chunks']} chunks of the Debian license texts, kv_transform auto. Sensitivities: "
             f"{result['sensitivity_chunks']} chunks, each layer's K or V alone at {result['probe']}; "
             f"the types a layer may take: {', '.join(result['ladder'])}.", "",
             "## Mixes at the memory of a uniform pair", "",
             "| memory of | K | V | bits/value | predicted KLD | KLD | target | met |",
             "| --- | --- | --- | ---: | ---: | ---: | --- | --- |"]
    for m in result["mixes"]:
        factor, against = m["target"]
        target = f"<= {factor:g}x {'/'.join(against)} = {m['target_kld']:.4f}"
        lines.append(f"| {'/'.join(m['memory_of'])} | `{m['cache_k']}` | `{m['cache_v']}` | "
                     f"{m['bits_per_value']:.3f} | {m['predicted_kld']:.4f} | {m['kld']:.4f} | {target} | "
                     f"{'yes' if m['met'] else 'no'} |")
    lines += ["", "## Uniform pairs (the same run)", "", "| K / V | bits/value | KLD |", "| --- | ---: | ---: |"]
    for row in result["uniform"]:
        lines.append(f"| {row['cache_k']} / {row['cache_v']} | {row['bits_per_value']:.3f} | {row['kld']:.4f} |")
    lines += ["", f"![frontier and sensitivities](kld-per-layer-{name}.png)", "",
              "## Sensitivity per layer", "",
              f"| layer | K alone at {result['probe']} | V alone at {result['probe']} |", "| ---: | ---: | ---: |"]
    for i, (k, v) in enumerate(zip(result["layer_kld"]["K"], result["layer_kld"]["V"])):
        lines.append(f"| {i} | {k:.5f} | {v:.5f} |")
    lines += ["", "Every type with every layer's K (V f16), and every layer's V (K f16):", "",
              "| type | K side | V side |", "| --- | ---: | ---: |"]
    for t in result["ladder"]:
        lines.append(f"| {t} | {result['type_kld']['K'][t]:.4f} | {result['type_kld']['V'][t]:.4f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=None)
    parser.add_argument("--chunks", type=int, default=10)
    parser.add_argument("--name", default="smollm2")
    parser.add_argument("--render", action="store_true", help="the page again from the JSON")
    args = parser.parse_args()
    json_path = HERE / f"kld-per-layer-{args.name}.json"
    if args.render:
        result = json.loads(json_path.read_text())
    else:
        result = run(args.model or default_model(), args.chunks)
        json_path.write_text(json.dumps(result, indent=1))
    plot(result, HERE / f"kld-per-layer-{args.name}.png")
    sys.stdout.write(page(result, args.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
