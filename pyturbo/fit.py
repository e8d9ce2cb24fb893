"""What fits in a memory budget: the longest context per K/V cache configuration, and the best one.

    python -m pyturbo.fit MODEL --memory 16GiB [-c N] [--cache-k T,..] [--cache-v T,..]
                          [--weights QUANT] [--json] [--plot out.png]

Everything comes from the GGUF header (pyturbo.memory.estimate): nothing is
loaded, so it answers for a 70B file on a laptop. With --memory: for each K/V
configuration the largest context that fits (capped at the training context),
and the same if the weights were another llama-quantize preset. With --ctx: the
memory each configuration needs for that context. Then one line: the
configuration with the best measured quality (KLD_TABLE) that fits, and a
warning line when that configuration's KLD is above KLD_WARNING.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Sequence

from ._cli import (ArgumentParser, add_cache_flags, add_ctx_flag, add_flash_attn_flag, add_swa_full_flag,
                   run_main)
from ._report import markdown_table, pyplot
from .allocation import CELL_PADDING
from .cache_types import cache_type
from .geometry import ModelGeometry, model_geometry
from .gguf import GGUFHeader, read_gguf_header
from .memory import estimate, max_context
from .units import GiB, format_size, parse_size
from .quant_presets import WEIGHT_QUANTS

PROG = "python -m pyturbo.fit"

DEFAULT_CONFIGS = (("f16", "f16"), ("q8_0", "q8_0"), ("q8_0", "q4_0"), ("q4_0", "q4_0"), ("q8_0", "turbo4"),
                   ("q8_0", "turbo3"), ("turbo4", "turbo4"), ("turbo3", "turbo3"), ("turbo2", "turbo2"))

# Mean KLD against the untransformed f16 cache, lower is better, with kv_transform="auto"
# (the default): docs/results/kld-smollm2-transforms.md (SmolLM2-135M, pyturbo.eval kld,
# c=512, 10 chunks of the Debian license texts; kld-smollm2.md has them without transforms).
# Update here when new measurements come in; a configuration not listed ranks
# after every listed one.
KLD_TABLE = {
    ("f16", "f16"): 0.0000,
    ("f16", "q8_0"): 0.0050,
    ("q8_0", "q8_0"): 0.0053,
    ("q5_0", "q5_0"): 0.0175,
    ("q4_0", "q4_0"): 0.0531,
    ("iq4_nl", "iq4_nl"): 0.0431,
    ("q8_0", "q4_0"): 0.0157,
    ("turbo4", "turbo4"): 0.0545,
    ("turbo3", "turbo3"): 0.1642,
    ("turbo2", "turbo2"): 0.6471,
    ("q8_0", "turbo4"): 0.0169,
    ("q8_0", "turbo3"): 0.0494,
    ("q8_0", "turbo2"): 0.1745,
}

# A recommendation whose KLD is above this gets a warning line: its output differs
# visibly from the f16 cache's (turbo2/turbo2 is 0.65, turbo3/turbo3 0.16, turbo4/turbo4 0.05).
KLD_WARNING = 0.1

# Models with this many query heads per KV head are fragile under a symmetric
# turbo K cache (symmetric turbo K is reported to collapse Qwen2.5, 7 query heads
# per KV head, while q8_0 K + turbo V stays within 1-2% PPL): q8_0-K pairs rank first there.
FRAGILE_GQA_RATIO = 6


@dataclass
class FitResult:
    """One K/V configuration against the budget (or at the asked context)."""

    type_k: str
    type_v: str
    bits_per_value: float      # mean of K and V
    kld: "float | None"        # from KLD_TABLE
    n_ctx: int                 # the asked context, or the largest that fits (0: none)
    weights: int
    kv_k: int
    kv_v: int
    compute: int
    total: int
    fits: "bool | None"        # within the budget (None without --memory)


@dataclass
class Plan:
    """Everything fit reports for one model."""

    model: str
    architecture: str
    n_layer: int
    n_head: int
    n_head_kv: int
    head_size: int
    n_ctx_train: int
    memory: "int | None"
    n_ctx: "int | None"
    weights_as: "str | None"
    results: list
    what_if: dict = field(default_factory=dict)   # weight quant -> list of FitResult
    recommendation: "dict | None" = None


def parse_configs(cache_k: "Sequence[str] | None", cache_v: "Sequence[str] | None") -> list:
    """(K, V) pairs: the default set, or every K of --cache-k with every V of --cache-v."""
    if not cache_k and not cache_v:
        return list(DEFAULT_CONFIGS)
    ks = cache_k or ["f16"]
    vs = cache_v or ["f16"]
    return [(cache_type(k).name, cache_type(v).name) for k, v in itertools.product(ks, vs)]


def quality_order(configs: Sequence[tuple], gqa_ratio: float) -> list:
    """configs from best to worst measured quality (KLD_TABLE); q8_0-K pairs before
    symmetric turbo caches on models with a GQA ratio of FRAGILE_GQA_RATIO or more."""
    known = [KLD_TABLE[c] for c in configs if c in KLD_TABLE]
    worst_q8_k = max((KLD_TABLE[c] for c in configs if c in KLD_TABLE and c[0] == "q8_0"), default=0.0)

    def key(config):
        kld = KLD_TABLE.get(config)
        if kld is None:
            # Unmeasured: after the measured ones, more bits first.
            bits = cache_type(config[0]).bits_per_value + cache_type(config[1]).bits_per_value
            return (1, max(known, default=0.0), -bits)
        symmetric_turbo = config[0] == config[1] and cache_type(config[0]).turbo
        if gqa_ratio >= FRAGILE_GQA_RATIO and symmetric_turbo:
            kld = max(kld, worst_q8_k + 1e-9)
        return (0, kld, 0.0)

    return sorted(configs, key=key)


def _result(est, memory: "int | None", n_ctx: int) -> FitResult:
    bits = (cache_type(est.cache_k).bits_per_value + cache_type(est.cache_v).bits_per_value) / 2
    return FitResult(type_k=est.cache_k, type_v=est.cache_v, bits_per_value=round(bits, 4),
                     kld=KLD_TABLE.get((est.cache_k, est.cache_v)), n_ctx=n_ctx, weights=est.weights,
                     kv_k=est.kv_k, kv_v=est.kv_v, compute=est.compute, total=est.total,
                     fits=None if memory is None else est.total <= memory)


def evaluate(header: GGUFHeader, configs: Sequence[tuple], memory: "int | None", n_ctx: "int | None",
             weights_as: "str | None", **kwargs) -> list:
    """One FitResult per configuration: at n_ctx if given, else at the largest context that fits."""
    results = []
    for k, v in configs:
        if n_ctx:
            est = estimate(header, n_ctx, k, v, weight_quant=weights_as, **kwargs)
            results.append(_result(est, memory, min(n_ctx, est.n_ctx)))
            continue
        best, est = max_context(header, memory, k, v, weight_quant=weights_as, **kwargs)
        if est is None:
            est = estimate(header, CELL_PADDING, k, v, weight_quant=weights_as, **kwargs)
        results.append(_result(est, memory, best))
    return results


def recommend(results: Sequence[FitResult], geometry: ModelGeometry, memory: int, n_ctx: "int | None") -> dict:
    """The best-quality configuration that fits the budget at the asked (else the training)
    context; if none does, the one that reaches the longest context. With a one-line reason."""
    target = n_ctx or geometry.n_ctx_train
    by_config = {(r.type_k, r.type_v): r for r in results}
    order = quality_order(list(by_config), geometry.gqa_ratio)
    for config in order:
        r = by_config[config]
        reaches = r.n_ctx if not n_ctx else (target if r.fits else 0)
        if reaches >= target and (r.fits or not n_ctx):
            kld = f"KLD {r.kld:g} vs f16" if r.kld is not None else "unmeasured quality"
            better = [f"{k}/{v}" for k, v in order[:order.index(config)]]
            reason = (f"{r.type_k}/{r.type_v}: the best measured quality ({kld}) that fits {target} tokens "
                      f"in {format_size(memory)} (needs {format_size(r.total)})")
            if better:
                reason += f"; {', '.join(better)} do not fit"
            if geometry.gqa_ratio >= FRAGILE_GQA_RATIO:
                reason += f"; GQA ratio {geometry.gqa_ratio:g}: q8_0-K pairs rank before symmetric turbo"
            return {"type_k": r.type_k, "type_v": r.type_v, "n_ctx": target, "total": r.total, "reason": reason,
                    "warning": quality_warning(r)}
    longest = max(order, key=lambda c: by_config[c].n_ctx)  # max() keeps the first, best-quality, of ties
    r = by_config[longest]
    if r.n_ctx == 0:
        r = min(results, key=lambda result: result.total)
        reason = (f"nothing fits in {format_size(memory)}: even {CELL_PADDING} tokens with {r.type_k}/{r.type_v} "
                  f"need {format_size(r.total)}; use smaller weights (see the what-if table) or more memory")
        return {"type_k": None, "type_v": None, "n_ctx": 0, "total": r.total, "reason": reason, "warning": None}
    reason = (f"{r.type_k}/{r.type_v}: no configuration fits {target} tokens in {format_size(memory)}; "
              f"this one reaches the longest context, {r.n_ctx} tokens")
    return {"type_k": r.type_k, "type_v": r.type_v, "n_ctx": r.n_ctx, "total": r.total, "reason": reason,
            "warning": quality_warning(r)}


def quality_warning(r: FitResult) -> "str | None":
    """A warning when the measured KLD of r's configuration is above KLD_WARNING, else None."""
    if r.kld is None or r.kld <= KLD_WARNING:
        return None
    return (f"{r.type_k}/{r.type_v} has a mean KLD of {r.kld:g} against the f16 cache in the measured table "
            f"(above {KLD_WARNING:g}): expect visibly different, worse output; a shorter context (-c), "
            "more memory or smaller weights (the what-if table) allows a better cache")


def plan(model: "str | os.PathLike", memory: "int | str | None" = None, n_ctx: "int | None" = None,
         configs: "Sequence[tuple] | None" = None, weights_as: "str | None" = None,
         what_if: Sequence[str] = WEIGHT_QUANTS, **kwargs) -> Plan:
    """fit's answer as data: per configuration the max context (with memory) or the memory
    needed (with n_ctx), what-if weight quants, and a recommendation (with memory)."""
    if memory is None and not n_ctx:
        raise ValueError("give a memory budget (--memory 16GiB), a context (--ctx 32768), or both")
    memory = None if memory is None else parse_size(memory)
    header = read_gguf_header(model)
    geometry = model_geometry(header)
    configs = list(configs or DEFAULT_CONFIGS)
    results = evaluate(header, configs, memory, n_ctx, weights_as, **kwargs)
    kv_layers = [layer for layer in geometry.layers if layer.has_kv]
    result = Plan(model=str(model), architecture=geometry.architecture, n_layer=geometry.n_layer,
                  n_head=geometry.n_head, n_head_kv=geometry.n_head_kv, head_size=geometry.head_size_k,
                  n_ctx_train=geometry.n_ctx_train, memory=memory, n_ctx=n_ctx, weights_as=weights_as,
                  results=results)
    for quant in what_if:
        result.what_if[quant] = evaluate(header, configs, memory, n_ctx, quant, **kwargs)
    if memory is not None and kv_layers:
        result.recommendation = recommend(results, geometry, memory, n_ctx)
    return result


# -- output --------------------------------------------------------------------------------

def _size_cell(n: int) -> str:
    return format_size(n)


def to_markdown(p: Plan) -> str:
    lines = [f"{os.path.basename(p.model)}: {p.architecture}, {p.n_layer} layers, {p.n_head} heads / "
             f"{p.n_head_kv} KV heads, head size {p.head_size}, training context {p.n_ctx_train}"]
    first = p.results[0] if p.results else None
    if first:
        weights = f"as {p.weights_as}" if p.weights_as else "as stored"
        budget = f"; budget {format_size(p.memory)}" if p.memory is not None else ""
        lines.append(f"weights {format_size(first.weights)} ({weights}){budget}")
    lines.append("")
    by_ctx = bool(p.n_ctx)
    if by_ctx:
        header = ["K / V", "bits/value", "KLD", "context", "KV", "compute", "total"]
        if p.memory is not None:
            header.append("fits")
    else:
        header = ["K / V", "bits/value", "KLD", "max context", "KV there", "total there"]
    rows = []
    for r in p.results:
        kld = "-" if r.kld is None else f"{r.kld:g}"
        if by_ctx:
            row = [f"{r.type_k}/{r.type_v}", f"{r.bits_per_value:g}", kld, str(r.n_ctx),
                   _size_cell(r.kv_k + r.kv_v), _size_cell(r.compute), _size_cell(r.total)]
            if p.memory is not None:
                row.append("yes" if r.fits else "no")
        else:
            fit = r.n_ctx > 0
            row = [f"{r.type_k}/{r.type_v}", f"{r.bits_per_value:g}", kld, str(r.n_ctx) if fit else "none",
                   _size_cell(r.kv_k + r.kv_v) if fit else "-", _size_cell(r.total) if fit else "-"]
        rows.append(row)
    lines.append(markdown_table(header, rows, [False] + [True] * (len(header) - 1)))
    if p.what_if:
        quants = list(p.what_if)
        what = "total memory" if by_ctx else "max context"
        lines.append(f"What if the weights were another llama-quantize preset ({what}; weights: "
                     + ", ".join(f"{q} {format_size(p.what_if[q][0].weights)}" for q in quants) + "):")
        lines.append("")
        rows = []
        for i, r in enumerate(p.results):
            cells = []
            for q in quants:
                alt = p.what_if[q][i]
                cells.append(_size_cell(alt.total) if by_ctx else (str(alt.n_ctx) if alt.n_ctx else "none"))
            rows.append([f"{r.type_k}/{r.type_v}"] + cells)
        lines.append(markdown_table(["K / V"] + quants, rows, [False] + [True] * len(quants)))
    if p.recommendation:
        lines.append(f"Recommendation: {p.recommendation['reason']}")
        if p.recommendation["warning"]:
            lines.append(f"Warning: {p.recommendation['warning']}")
    return "\n".join(lines) + "\n"


def to_json(p: Plan) -> str:
    return json.dumps(asdict(p), indent=2) + "\n"


def plot(header: GGUFHeader, configs: Sequence[tuple], memory: "int | None", path: str,
         max_ctx: "int | None" = None, weights_as: "str | None" = None, **kwargs) -> None:
    """Memory against context length, one line per configuration, the budget as a horizontal line."""
    plt = pyplot()
    geometry = model_geometry(header)
    top = max_ctx or geometry.n_ctx_train or 131072
    n_points = 48
    contexts = sorted({max(CELL_PADDING, round(top ** (i / (n_points - 1)) / CELL_PADDING) * CELL_PADDING)
                       for i in range(n_points)} | {top})
    fig, ax = plt.subplots(figsize=(8, 5))
    for k, v in configs:
        totals = [estimate(header, n, k, v, weight_quant=weights_as, **kwargs).total / GiB for n in contexts]
        ax.plot(contexts, totals, label=f"{k}/{v}")
    if memory is not None:
        ax.axhline(memory / GiB, color="black", linestyle="--", label=f"budget {format_size(memory)}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("memory (GiB)")
    ax.set_title(f"{os.path.basename(str(header.path))}: weights + KV cache + compute buffers")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- command line ----------------------------------------------------------------------------

def size_arg(text: str) -> int:
    import argparse

    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="What fits in a memory budget, from the GGUF header alone.")
    parser.add_argument("model", help="GGUF file (only its header is read)")
    parser.add_argument("--memory", "-m", type=size_arg, default=None,
                        help="memory budget: 16GiB, 16GB, 16000MB or bytes")
    add_ctx_flag(parser, None, "context length to size instead")
    add_cache_flags(parser, many=True)
    # Neither -ctk nor -ctv given: the standard set of K/V pairs (DEFAULT_CONFIGS), not f16/f16.
    parser.set_defaults(cache_k=None, cache_v=None)
    add_flash_attn_flag(parser)
    parser.add_argument("--weights", dest="weights_as", choices=WEIGHT_QUANTS, default=None,
                        help="size the weights as this llama-quantize preset instead of as stored")
    parser.add_argument("--n-seq", dest="n_seq", type=int, default=1, help="parallel sequences (default 1)")
    add_swa_full_flag(parser)
    parser.add_argument("-ub", "--ubatch-size", dest="n_ubatch", type=int, default=512,
                        help="physical batch size (default 512)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    parser.add_argument("--plot", metavar="PNG", help="draw memory against context, with the budget")
    return parser


def main(argv: "list[str] | None" = None) -> int:
    args = build_parser().parse_args(argv)
    if args.memory is None and not args.n_ctx:
        raise ValueError("give a memory budget (--memory 16GiB), a context (-c 32768), or both")
    if args.n_ctx is not None and args.n_ctx <= 0:
        raise ValueError(f"-c/--ctx-size must be a positive number of tokens, got {args.n_ctx}")
    configs = parse_configs(args.cache_k, args.cache_v)
    options = {"flash_attn": args.flash_attn, "n_seq": args.n_seq, "swa_full": args.swa_full,
               "n_ubatch": args.n_ubatch}
    result = plan(args.model, args.memory, args.n_ctx, configs, args.weights_as, **options)
    sys.stdout.write(to_json(result) if args.json else to_markdown(result))
    if args.plot:
        plot(read_gguf_header(args.model), configs, args.memory, args.plot, args.n_ctx, args.weights_as,
             **options)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(PROG, main))
