"""Per-layer mixes at turbo3/turbo3's memory chosen by hand from the layer sensitivities of
kld-per-layer-smollm2.json, measured like the search's own mix (10 chunks, auto).

    python docs/results/kld_mix_trials.py [MODEL] >> docs/results/kld-per-layer-smollm2.md

Each mix raises the K layers that cost most when lowered (layer_kld K: 10, then 18, 19, 17,
16) from turbo3t to turbo4 and pays with as many V layers that cost least (V: 29, 7, 28, 4,
0) lowered to turbo2t: every row holds exactly turbo3/turbo3's bytes per cell.
"""

from __future__ import annotations

import sys

from pyturbo import kld_cache, layer_search, layer_types
from pyturbo.assets import default_model

K_UP = (10, 18, 19, 17, 16)
V_DOWN = (29, 7, 28, 4, 0)
REFERENCE = ("turbo3", "turbo3")


def mix(n: int, n_layer: int) -> tuple:
    k = "turbo3t," + ",".join(f"turbo4@{i}" for i in K_UP[:n])
    v = "turbo3t," + ",".join(f"turbo2t@{i}" for i in V_DOWN[:n])
    return tuple(layer_types.format_spec(layer_types.parse(s, n_layer).types) for s in (k, v))


def main() -> int:
    model = sys.argv[1] if len(sys.argv) > 1 else str(default_model())
    geometry = layer_search.sensitivities(model).geometry
    budget = layer_search.bytes_per_cell(geometry, *REFERENCE)
    mixes = [mix(n, geometry.n_layer) for n in (1, 2, 3, 4, 5)]
    measured = kld_cache.measure(model, mixes + [REFERENCE], chunks=10)
    reference = measured[REFERENCE].kld
    print("\n## Mixes by hand at turbo3/turbo3's memory\n")
    print(f"`python docs/results/kld_mix_trials.py` (10 chunks, auto; through the KLD cache): K layers raised "
          f"to turbo4 in the order {', '.join(map(str, K_UP))}, V layers lowered to turbo2t in the order "
          f"{', '.join(map(str, V_DOWN))}. turbo3/turbo3: {reference:.4f}.\n")
    print("| K | V | bytes/cell | KLD | vs turbo3/turbo3 | <= 0.6x |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for k, v in mixes:
        size = layer_search.bytes_per_cell(geometry, k, v)
        assert size <= budget, (k, v, size, budget)
        kld = measured[k, v].kld
        print(f"| `{k}` | `{v}` | {size} | {kld:.4f} | {kld / reference:.3f}x | {'yes' if kld <= 0.6 * reference else 'no'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
