"""What fits in a memory budget: the longest context per K/V cache configuration, and the best one.

    python -m pyturbo.fit [-m] MODEL --memory 16GiB [-c N] [--cache-k T,..] [--cache-v T,..]
                               [--weights QUANT] [-ub N] [--measure [--chunks N] [--text FILE]]
                               [--per-layer] [--json] [--plot out.png]

Memory comes from the GGUF header (pyturbo.memory.estimate): nothing is loaded,
so it answers for a 70B file on a laptop. With --memory: for each K/V
configuration the largest context that fits (capped at the training context),
and the same if the weights were another llama-quantize preset. Where the
compute buffer rather than the KV cache limits the context, a smaller n_ubatch
is searched (memory.max_context_over_ubatch) unless -ub is given. With --ctx:
the memory each configuration needs for that context. Then one line: the
configuration with the best quality that fits, with the flags that run it, and
a warning line when that configuration's KLD is above KLD_WARNING.

Quality is the KLD against the f16 cache: measured on this model with --measure
(pyturbo.kld_cache, kept per model file), else what earlier --measure runs left,
else the SmolLM2 table (KLD_TABLE). Every KLD names its source.

With --per-layer (and --memory), fit also measures how much each layer's K and V
cost when lowered (pyturbo.layer_search), chooses a type per layer in the
recommended pair's memory at the least predicted KLD, measures that mix, and
prints its spec as a `Run it:` line when it beats the pair.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Sequence

from . import kld_cache, layer_search, plan_plots
from ._cli import (ArgumentParser, add_cache_flags, add_ctx_flag, add_flash_attn_flag, add_swa_full_flag,
                   add_threads_flag, run_main)
from ._report import markdown_table
from .cache_types import cache_type
from .gguf import GGUFHeader, read_gguf_header
from .kld_reference import KLD_TABLE, REFERENCE_SOURCE
from .memory import UBATCH_CHOICES, estimate, max_context_over_ubatch
from .units import format_size, parse_size
from .upstream.allocation import CELL_PADDING, DEFAULT_N_UBATCH
from .upstream.geometry import ModelGeometry, model_geometry
from .upstream.quant_presets import WEIGHT_QUANTS

PROG = "python -m pyturbo.fit"

DEFAULT_CONFIGS = (("f16", "f16"), ("q8_0", "q8_0"), ("q8_0", "q4_0"), ("q4_0", "q4_0"), ("q8_0", "turbo4"),
                   ("q8_0", "turbo3"), ("q8_0", "turbo3t"), ("turbo4", "turbo4"), ("turbo3", "turbo3"),
                   ("turbo3t", "turbo3t"), ("turbo2", "turbo2"), ("turbo2t", "turbo2t"))


# Prefill tokens/s at each n_ubatch relative to 512: docs/results/ubatch-prefill-smollm2.md
# (SmolLM2-135M, pp512, 2 CPU threads; tests check this copy against that table).
UBATCH_PREFILL_SPEED = {512: 1.0, 256: 1.02, 128: 1.07, 64: 1.06, 32: 0.90}
UBATCH_PREFILL_TABLE = "docs/results/ubatch-prefill-smollm2.md"

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
    kld: "float | None"        # mean KLD against the f16 cache
    kld_source: "str | None"   # "measured: <model>, <n> chunks" or REFERENCE_SOURCE; None: unmeasured
    n_ctx: int                 # the asked context, or the largest that fits (0: none)
    weights: int
    kv_k: int
    kv_v: int
    compute: int
    total: int
    fits: "bool | None"        # within the budget (None without --memory)
    n_ubatch: int = DEFAULT_N_UBATCH   # the physical batch the figures are for


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
    per_layer: "dict | None" = None    # per_layer_choice()'s answer (--per-layer)


def parse_configs(cache_k: "Sequence[str] | None", cache_v: "Sequence[str] | None") -> list:
    """(K, V) pairs: the default set, or every K of --cache-k with every V of --cache-v."""
    if not cache_k and not cache_v:
        return list(DEFAULT_CONFIGS)
    ks = cache_k or ["f16"]
    vs = cache_v or ["f16"]
    return [(cache_type(k).name, cache_type(v).name) for k, v in itertools.product(ks, vs)]


def quality_order(configs: Sequence[tuple], gqa_ratio: float, klds: "dict | None" = None,
                  measured: "set | frozenset" = frozenset()) -> list:
    """configs from best to worst KLD (klds, default KLD_TABLE); q8_0-K pairs before
    symmetric turbo caches on models with a GQA ratio of FRAGILE_GQA_RATIO or more,
    unless the turbo pair's KLD was measured on the model itself (in `measured`)."""
    klds = KLD_TABLE if klds is None else klds
    known = [klds[c] for c in configs if klds.get(c) is not None]
    worst_q8_k = max((klds[c] for c in configs if klds.get(c) is not None and c[0] == "q8_0"), default=0.0)

    def key(config):
        kld = klds.get(config)
        if kld is None:
            # Unmeasured: after the measured ones, more bits first.
            bits = cache_type(config[0]).bits_per_value + cache_type(config[1]).bits_per_value
            return (1, max(known, default=0.0), -bits)
        symmetric_turbo = config[0] == config[1] and cache_type(config[0]).turbo
        if gqa_ratio >= FRAGILE_GQA_RATIO and symmetric_turbo and config not in measured:
            kld = max(kld, worst_q8_k + 1e-9)
        return (0, kld, 0.0)

    return sorted(configs, key=key)


def kld_sources(model: "str | os.PathLike", configs: Sequence[tuple], measure: bool = False,
                **measure_options) -> dict:
    """{(K, V): (KLD, source)}: measured on this model now (measure=True, through
    pyturbo.kld_cache, which keeps them), else what earlier measurements left, else
    the SmolLM2 table; (None, None) for a configuration none of them has."""
    name = os.path.basename(str(model))
    measured = kld_cache.measure(model, configs, **measure_options) if measure else kld_cache.cached(model)
    return {config: (measured[config].kld, measured[config].source(name)) if config in measured
            else kld_sources_from_table(config) for config in configs}


def kld_sources_from_table(config: tuple) -> tuple:
    """(KLD, source) of a configuration from the SmolLM2 table, or (None, None)."""
    return (KLD_TABLE[config], REFERENCE_SOURCE) if config in KLD_TABLE else (None, None)


def _result(est, memory: "int | None", n_ctx: int, quality: tuple, n_ubatch: int) -> FitResult:
    bits = (cache_type(est.cache_k).bits_per_value + cache_type(est.cache_v).bits_per_value) / 2
    return FitResult(type_k=est.cache_k, type_v=est.cache_v, bits_per_value=round(bits, 4),
                     kld=quality[0], kld_source=quality[1], n_ctx=n_ctx, weights=est.weights,
                     kv_k=est.kv_k, kv_v=est.kv_v, compute=est.compute, total=est.total,
                     fits=None if memory is None else est.total <= memory, n_ubatch=n_ubatch)


def evaluate(header: GGUFHeader, configs: Sequence[tuple], memory: "int | None", n_ctx: "int | None",
             weights_as: "str | None", qualities: "dict | None" = None, n_ubatch: "int | None" = None,
             **kwargs) -> list:
    """One FitResult per configuration: at n_ctx if given, else at the largest context that
    fits. n_ubatch None: with a budget, the largest of UBATCH_CHOICES that fits n_ctx, or
    that reaches (nearly) the longest context (memory.max_context_over_ubatch)."""
    qualities = qualities if qualities is not None else {c: kld_sources_from_table(c) for c in configs}
    choices = UBATCH_CHOICES if n_ubatch is None else (n_ubatch,)
    results = []
    for k, v in configs:
        quality = qualities[k, v]
        if n_ctx:
            for ub in choices if memory is not None else choices[:1]:
                est = estimate(header, n_ctx, k, v, weight_quant=weights_as, n_ubatch=ub, **kwargs)
                if memory is None or est.total <= memory:
                    break
            else:
                ub = choices[0]
                est = estimate(header, n_ctx, k, v, weight_quant=weights_as, n_ubatch=ub, **kwargs)
            results.append(_result(est, memory, min(n_ctx, est.n_ctx), quality, ub))
            continue
        found = max_context_over_ubatch(header, memory, k, v, choices=choices, weight_quant=weights_as, **kwargs)
        ub, est = found.n_ubatch, found.estimate
        if est is None:
            ub = choices[0]
            est = estimate(header, CELL_PADDING, k, v, weight_quant=weights_as, n_ubatch=ub, **kwargs)
        results.append(_result(est, memory, found.n_ctx, quality, ub))
    return results


def _quality_text(r: FitResult) -> str:
    return f"KLD {r.kld:.4g} vs f16, {r.kld_source}" if r.kld is not None else "unmeasured quality"


def run_flags(r: FitResult, n_ctx: int, swa_full: bool = False) -> str:
    """The pyturbo.run / llama.cpp flags that create the context r describes."""
    flags = f"-c {n_ctx} -ctk {r.type_k} -ctv {r.type_v}"
    if r.n_ubatch != DEFAULT_N_UBATCH:
        flags += f" -ub {r.n_ubatch}"
    return flags + (" --swa-full" if swa_full else "")


def prefill_cost(n_ubatch: int) -> "str | None":
    """What a smaller n_ubatch costs in prefill speed, from the measured table; None at the default."""
    if n_ubatch == DEFAULT_N_UBATCH or n_ubatch not in UBATCH_PREFILL_SPEED:
        return None
    return (f"-ub {n_ubatch} prefills at {UBATCH_PREFILL_SPEED[n_ubatch]:.2f}x the tokens/s of "
            f"-ub {DEFAULT_N_UBATCH} (SmolLM2-135M, 2 CPU threads: {UBATCH_PREFILL_TABLE}); "
            "generation speed does not depend on it")


def recommend(results: Sequence[FitResult], geometry: ModelGeometry, memory: int, n_ctx: "int | None",
              swa_full: bool = False) -> dict:
    """The best-quality configuration that fits the budget at the asked (else the training)
    context; if none does, the one that reaches the longest context. With a one-line
    reason that names where its KLD comes from, and the flags that run it."""
    target = n_ctx or geometry.n_ctx_train
    by_config = {(r.type_k, r.type_v): r for r in results}
    klds = {c: r.kld for c, r in by_config.items()}
    measured = {c for c, r in by_config.items() if r.kld_source and r.kld_source.startswith("measured")}
    order = quality_order(list(by_config), geometry.gqa_ratio, klds, measured)

    def answer(r: FitResult, reaches: int, reason: str) -> dict:
        return {"type_k": r.type_k, "type_v": r.type_v, "n_ctx": reaches, "n_ubatch": r.n_ubatch,
                "total": r.total, "kld": r.kld, "kld_source": r.kld_source,
                "flags": run_flags(r, reaches, swa_full), "reason": reason, "warning": quality_warning(r),
                "prefill": prefill_cost(r.n_ubatch)}

    for config in order:
        r = by_config[config]
        reaches = r.n_ctx if not n_ctx else (target if r.fits else 0)
        if reaches >= target and (r.fits or not n_ctx):
            better = [f"{k}/{v}" for k, v in order[:order.index(config)]]
            reason = (f"{r.type_k}/{r.type_v}: the best quality ({_quality_text(r)}) that fits {target} tokens "
                      f"in {format_size(memory)} (needs {format_size(r.total)})")
            if better:
                reason += f"; {', '.join(better)} do not fit"
            if geometry.gqa_ratio >= FRAGILE_GQA_RATIO and len(measured) < len(by_config):
                reason += f"; GQA ratio {geometry.gqa_ratio:g}: q8_0-K pairs rank before symmetric turbo"
            return answer(r, target, reason)
    longest = max(order, key=lambda c: by_config[c].n_ctx)  # max() keeps the first, best-quality, of ties
    r = by_config[longest]
    if r.n_ctx == 0:
        r = min(results, key=lambda result: result.total)
        reason = (f"nothing fits in {format_size(memory)}: even {CELL_PADDING} tokens with {r.type_k}/{r.type_v} "
                  f"need {format_size(r.total)}; use smaller weights (see the what-if table) or more memory")
        return {"type_k": None, "type_v": None, "n_ctx": 0, "n_ubatch": r.n_ubatch, "total": r.total, "kld": None,
                "kld_source": None, "flags": None, "reason": reason, "warning": None, "prefill": None}
    reason = (f"{r.type_k}/{r.type_v} ({_quality_text(r)}): no configuration fits {target} tokens in "
              f"{format_size(memory)}; this one reaches the longest context, {r.n_ctx} tokens")
    return answer(r, r.n_ctx, reason)


def per_layer_choice(model: "str | os.PathLike", recommendation: dict, geometry: ModelGeometry, *,
                     chunks: int, text=None, n_threads: "int | None" = None, progress: bool = True) -> dict:
    """A type per layer in the recommended pair's memory, of least predicted KLD (pyturbo.layer_search),
    measured once to check it; its flags when it beats the pair."""
    sens = layer_search.sensitivities(model, text=text, n_threads=n_threads, progress=progress)
    pair = (recommendation["type_k"], recommendation["type_v"])
    budget = layer_search.bytes_per_cell(geometry, *pair)
    choice = layer_search.search(sens, budget)
    measured = kld_cache.measure(model, [pair, (choice.cache_k, choice.cache_v)], chunks=chunks, text=text,
                                 n_threads=n_threads, progress=progress)
    kld, pair_kld = measured[choice.cache_k, choice.cache_v].kld, measured[pair].kld
    flags = None
    if kld < pair_kld:
        flags = recommendation["flags"].replace(f"-ctk {pair[0]} -ctv {pair[1]}",
                                                f"-ctk {choice.cache_k} -ctv {choice.cache_v}")
    return {"cache_k": choice.cache_k, "cache_v": choice.cache_v, "bits_per_value": round(choice.bits_per_value, 4),
            "bytes_per_cell": choice.bytes_per_cell, "pair_bytes_per_cell": budget,
            "predicted_kld": choice.predicted_kld, "kld": kld, "pair_kld": pair_kld, "chunks": chunks,
            "flags": flags}


def quality_warning(r: FitResult) -> "str | None":
    """A warning when the KLD of r's configuration is above KLD_WARNING, else None."""
    if r.kld is None or r.kld <= KLD_WARNING:
        return None
    return (f"{r.type_k}/{r.type_v} has a mean KLD of {r.kld:.4g} against the f16 cache ({r.kld_source}; "
            f"above {KLD_WARNING:g}): expect visibly different, worse output; a shorter context (-c), "
            "more memory or smaller weights (the what-if table) allows a better cache")


def plan(model: "str | os.PathLike", memory: "int | str | None" = None, n_ctx: "int | None" = None,
         configs: "Sequence[tuple] | None" = None, weights_as: "str | None" = None,
         what_if: Sequence[str] = WEIGHT_QUANTS, *, measure: bool = False, chunks: int = kld_cache.DEFAULT_CHUNKS,
         text: "str | os.PathLike | None" = None, n_threads: "int | None" = None, progress: bool = True,
         n_ubatch: "int | None" = None, per_layer: bool = False, **kwargs) -> Plan:
    """fit's answer as data: per configuration the max context (with memory) or the memory
    needed (with n_ctx), what-if weight quants, and a recommendation (with memory).

    measure: measure the configurations' KLD on this model first (chunks of the text,
    default the Debian license texts; kept in pyturbo's cache dir for the next call).
    n_ubatch: the physical batch to plan for; None searches memory.UBATCH_CHOICES.
    per_layer: with memory, also search a type per layer in the recommended pair's memory
    (per_layer_choice; measures this model's layers, which takes minutes)."""
    if memory is None and not n_ctx:
        raise ValueError("give a memory budget (--memory 16GiB), a context (--ctx 32768), or both")
    memory = None if memory is None else parse_size(memory)
    header = read_gguf_header(model)
    geometry = model_geometry(header)
    configs = [tuple(c) for c in configs or DEFAULT_CONFIGS]
    measure_options = dict(chunks=chunks, text=text, n_threads=n_threads, progress=progress) if measure else {}
    qualities = kld_sources(model, configs, measure, **measure_options)
    kwargs.update(qualities=qualities, n_ubatch=n_ubatch)
    results = evaluate(header, configs, memory, n_ctx, weights_as, **kwargs)
    kv_layers = [layer for layer in geometry.layers if layer.has_kv]
    result = Plan(model=str(model), architecture=geometry.architecture, n_layer=geometry.n_layer,
                  n_head=geometry.n_head, n_head_kv=geometry.n_head_kv, head_size=geometry.head_size_k,
                  n_ctx_train=geometry.n_ctx_train, memory=memory, n_ctx=n_ctx, weights_as=weights_as,
                  results=results)
    for quant in what_if:
        result.what_if[quant] = evaluate(header, configs, memory, n_ctx, quant, **kwargs)
    if memory is not None and kv_layers:
        result.recommendation = recommend(results, geometry, memory, n_ctx, kwargs.get("swa_full", False))
        if per_layer and result.recommendation["type_k"]:
            result.per_layer = per_layer_choice(model, result.recommendation, geometry, chunks=chunks, text=text,
                                                n_threads=n_threads, progress=progress)
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
        header = ["K / V", "bits/value", "KLD", "context", "-ub", "KV", "compute", "total"]
        if p.memory is not None:
            header.append("fits")
    else:
        header = ["K / V", "bits/value", "KLD", "max context", "-ub", "KV there", "total there"]
    header.append("KLD from")
    rows = []
    for r in p.results:
        kld = "-" if r.kld is None else f"{r.kld:.4g}"
        if by_ctx:
            row = [f"{r.type_k}/{r.type_v}", f"{r.bits_per_value:g}", kld, str(r.n_ctx), str(r.n_ubatch),
                   _size_cell(r.kv_k + r.kv_v), _size_cell(r.compute), _size_cell(r.total)]
            if p.memory is not None:
                row.append("yes" if r.fits else "no")
        else:
            fit = r.n_ctx > 0
            row = [f"{r.type_k}/{r.type_v}", f"{r.bits_per_value:g}", kld, str(r.n_ctx) if fit else "none",
                   str(r.n_ubatch), _size_cell(r.kv_k + r.kv_v) if fit else "-",
                   _size_cell(r.total) if fit else "-"]
        rows.append(row + [r.kld_source or "unmeasured"])
    lines.append(markdown_table(header, rows, [False] + [True] * (len(header) - 2) + [False]))
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
        if p.recommendation["flags"]:
            lines.append(f"Run it: python -m pyturbo.run {os.path.basename(p.model)} {p.recommendation['flags']}")
        if p.recommendation["prefill"]:
            lines.append(f"Prefill: {p.recommendation['prefill']}")
        if p.recommendation["warning"]:
            lines.append(f"Warning: {p.recommendation['warning']}")
    if p.per_layer:
        c = p.per_layer
        verdict = "better" if c["flags"] else "not better; keep the pair above"
        lines.append(f"Per layer, in the memory of {p.recommendation['type_k']}/{p.recommendation['type_v']}: "
                     f"K {c['cache_k']}, V {c['cache_v']} ({c['bits_per_value']:g} bits per value), KLD "
                     f"{c['kld']:.4g} against the pair's {c['pair_kld']:.4g} (measured: {c['chunks']} chunks): "
                     f"{verdict}")
        if c["flags"]:
            lines.append(f"Run it: python -m pyturbo.run {os.path.basename(p.model)} {c['flags']}")
    return "\n".join(lines) + "\n"


def to_json(p: Plan) -> str:
    return json.dumps(asdict(p), indent=2) + "\n"


# -- command line ----------------------------------------------------------------------------

def size_arg(text: str) -> int:
    import argparse

    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="What fits in a memory budget, from the GGUF header alone.")
    parser.add_argument("model", nargs="?", default=None, help="GGUF file (only its header is read)")
    parser.add_argument("-m", "--model", dest="model_flag", default=None, help="GGUF file (as llama.cpp's -m)")
    parser.add_argument("--memory", type=size_arg, default=None, help="memory budget: 16GiB, 16GB, 16000MB or bytes")
    add_ctx_flag(parser, None, "context length to size instead")
    add_cache_flags(parser, many=True)
    # Neither -ctk nor -ctv given: the standard set of K/V pairs (DEFAULT_CONFIGS), not f16/f16.
    parser.set_defaults(cache_k=None, cache_v=None)
    add_flash_attn_flag(parser)
    parser.add_argument("--weights", dest="weights_as", choices=WEIGHT_QUANTS, default=None,
                        help="size the weights as this llama-quantize preset instead of as stored")
    parser.add_argument("--n-seq", dest="n_seq", type=int, default=1, help="parallel sequences (default 1)")
    add_swa_full_flag(parser)
    parser.add_argument("-ub", "--ubatch-size", dest="n_ubatch", type=int, default=None,
                        help="physical batch size to plan for (default: the largest of "
                             f"{', '.join(map(str, UBATCH_CHOICES))} that reaches the longest context)")
    parser.add_argument("--measure", action="store_true",
                        help="measure each configuration's KLD on this model (kept in the cache dir for the "
                             "next call) instead of using the SmolLM2 table")
    parser.add_argument("--chunks", type=int, default=kld_cache.DEFAULT_CHUNKS,
                        help=f"with --measure: chunks of {kld_cache.DEFAULT_CHUNK_TOKENS} tokens to score "
                             f"(default {kld_cache.DEFAULT_CHUNKS})")
    parser.add_argument("--per-layer", dest="per_layer", action="store_true",
                        help="with --memory: also choose a cache type per layer in the recommended pair's memory, "
                             "from each layer's measured sensitivity (implies --measure; minutes per model, "
                             "kept in the cache dir)")
    parser.add_argument("--text", default=None, help="with --measure: a text file (default: the Debian license texts)")
    add_threads_flag(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    parser.add_argument("--plot", metavar="PNG", help="with --memory: max context and KLD per configuration; "
                                                      "with -c only: memory against context")
    return parser


def main(argv: "list[str] | None" = None) -> int:
    args = build_parser().parse_args(argv)
    if args.model and args.model_flag:
        raise ValueError(f"two models: {args.model} and -m {args.model_flag}")
    args.model = args.model or args.model_flag
    if not args.model:
        raise ValueError("give a GGUF file: python -m pyturbo.fit MODEL (or -m MODEL)")
    if args.memory is None and not args.n_ctx:
        raise ValueError("give a memory budget (--memory 16GiB), a context (-c 32768), or both")
    if args.n_ctx is not None and args.n_ctx <= 0:
        raise ValueError(f"-c/--ctx-size must be a positive number of tokens, got {args.n_ctx}")
    if args.chunks < 1:
        raise ValueError(f"--chunks must be at least 1, got {args.chunks}")
    configs = parse_configs(args.cache_k, args.cache_v)
    options = {"flash_attn": args.flash_attn, "n_seq": args.n_seq, "swa_full": args.swa_full}
    if args.per_layer and args.memory is None:
        raise ValueError("--per-layer chooses types within a memory budget: give --memory")
    result = plan(args.model, args.memory, args.n_ctx, configs, args.weights_as,
                  measure=args.measure or args.per_layer, chunks=args.chunks, text=args.text, n_threads=args.threads,
                  n_ubatch=args.n_ubatch, per_layer=args.per_layer, **options)
    sys.stdout.write(to_json(result) if args.json else to_markdown(result))
    if args.plot:
        if args.memory is not None and not args.n_ctx:
            plan_plots.plot_budget(result.results, args.memory, args.plot, os.path.basename(args.model))
        else:
            plan_plots.plot_memory(read_gguf_header(args.model), configs, args.memory, args.plot, args.n_ctx,
                                   args.weights_as, n_ubatch=args.n_ubatch or DEFAULT_N_UBATCH, **options)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(PROG, main))
