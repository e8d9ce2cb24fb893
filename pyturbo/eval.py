"""Quality of K/V cache types: KLD against an f16 cache, and needle in a haystack.

    python -m pyturbo.eval kld MODEL [--text FILE] -c 512 [--chunks N] \\
        --configs f16/f16,q8_0/turbo3 -o md|json [--plot kld.png]
    python -m pyturbo.eval niah MODEL --lengths 1024,2048,4096 --depths 0.1,0.5,0.9 \\
        --configs f16/f16,q8_0/turbo3 [--trials N] -o md|json [--plot heat.png]

kld follows llama-perplexity --kl-divergence: the text is cut into chunks of -c
tokens (the first of each replaced by BOS when the model adds one), and the
second half of each chunk is scored; the f16/f16 cache is the reference.
"""

from __future__ import annotations

import math
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from ._cli import (ArgumentParser, add_ctx_flag, add_flash_attn_flag, add_kv_transform_flag, add_threads_flag,
                   add_verbose_flag, float_list, int_list, run_main, setup_logging)
from ._report import emit, markdown_table, pyplot
from .cache_types import kv_configs
from .errors import ContextOverflowError, PyturboError
from .host import default_threads
from .kl_divergence import KLDResult, kld, read_text
from .model import Model, open_model
from .upstream.cache_table import UPSTREAM_CACHE_TYPES

PROG = "python -m pyturbo.eval"
REFERENCE = ("f16", "f16")


@dataclass
class NeedleResult:
    """Passes of one K/V configuration at one haystack length and needle depth."""

    type_k: str
    type_v: str
    length: int
    depth: float
    trials: int
    passed: int
    kv_transform: str = "off"   # the exact K/V transforms applied to this configuration


def kld_to_markdown(results: Sequence[KLDResult]) -> str:
    header = ["K / V", "bits/value", "mean KLD", "KLD p99", "PPL", "PPL ratio", "same top token"]
    rows = [[f"{r.type_k} / {r.type_v}", f"{(r.bpv_k + r.bpv_v) / 2:g}", f"{r.kld:.4f}", f"{r.kld_p99:.4f}",
             f"{r.ppl:.4f}", f"{r.ppl_ratio:.4f}", f"{100 * r.same_top:.2f}%"] for r in results]
    return markdown_table(header, rows, [False] + [True] * 6)


def upstream_frontier(results: Sequence[KLDResult]) -> list[tuple[float, float]]:
    """(bits per value, KLD) points of the upstream types that no cheaper upstream point beats."""
    points = sorted(((r.bpv_k + r.bpv_v) / 2, r.kld) for r in results
                    if r.type_k in UPSTREAM_CACHE_TYPES and r.type_v in UPSTREAM_CACHE_TYPES
                    and (r.type_k, r.type_v) != REFERENCE)
    frontier, best = [], math.inf
    for bits, value in points:
        if value < best:
            frontier.append((bits, value))
            best = value
    return frontier


def plot_kld(results: Sequence[KLDResult], path: "str | os.PathLike", title: str = "") -> None:
    """KLD (log scale) against bits per value; the upstream types' frontier drawn as a line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    for r in results:
        if (r.type_k, r.type_v) == REFERENCE:  # KLD ~0 by definition: only float16 noise
            continue
        turbo = r.type_k.startswith("turbo") or r.type_v.startswith("turbo")
        bits = (r.bpv_k + r.bpv_v) / 2
        ax.scatter(bits, r.kld, marker="D" if turbo else "o", color="tab:red" if turbo else "tab:blue", zorder=3)
        ax.annotate(f"{r.type_k}/{r.type_v}", (bits, r.kld), textcoords="offset points", xytext=(5, 4), fontsize=8)
    frontier = upstream_frontier(results)
    if frontier:
        ax.step([p[0] for p in frontier], [p[1] for p in frontier], where="post", color="tab:blue",
                alpha=0.5, label="upstream frontier")
        ax.legend()
    ax.set_yscale("log")
    ax.set_xlabel("bits per value (mean of K and V)")
    ax.set_ylabel("mean KLD vs f16 cache (nats)")
    ax.set_title(title or "KLD against cache size")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- needle in a haystack ----------------------------------------------------------------------------

NAMES = ("Alice", "Bruno", "Chiara", "Dmitri", "Elena", "Farid", "Greta", "Hiroshi", "Ingrid", "Jamal",
         "Katya", "Lorenzo", "Mei", "Nadia", "Oscar", "Priya", "Quentin", "Rosa", "Sven", "Tomasz")
ANSWER_TOKENS = 16


def needle(rng: random.Random) -> tuple[str, str, str]:
    """(sentence to hide, question, expected answer) for one trial."""
    name = rng.choice(NAMES)
    code = f"{rng.randrange(10**6):06d}"
    return (f"The secret passcode of {name} is {code}.",
            f"What is the secret passcode of {name}? Answer with the six digits only.", code)


def haystack_prompt(ctx, filler: list[int], length: int, depth: float, sentence: str, question: str) -> list[int]:
    """Chat prompt of at most length - ANSWER_TOKENS tokens: filler with the sentence at `depth`."""
    def prompt_for(n_filler: int) -> list[int]:
        cut = int(round(depth * n_filler))
        hay = (ctx.detokenize(filler[:cut]) + " " + sentence + " " + ctx.detokenize(filler[cut:n_filler]))
        text = ctx.format_chat([{"role": "user", "content": hay.strip() + "\n\n" + question}])
        return ctx.tokenize(text, add_special=True, parse_special=True)

    budget = length - ANSWER_TOKENS
    n_filler = min(len(filler), budget)
    tokens = prompt_for(n_filler)
    while len(tokens) > budget:  # detokenize/tokenize may not round-trip exactly: shrink until it fits
        n_filler -= len(tokens) - budget + 8
        if n_filler <= 0:
            raise PyturboError(f"a haystack of {length} tokens leaves no room for filler text")
        tokens = prompt_for(n_filler)
    return tokens


def niah(model: "Model | str | os.PathLike", lengths: Sequence[int], depths: Sequence[float], configs,
         trials: int = 1, seed: int = 0, text: "str | os.PathLike | None" = None,
         n_threads: "int | None" = None, flash_attn: str = "auto", progress: bool = True,
         kv_transform: "str | int" = "auto") -> list[NeedleResult]:
    """Pass counts of each configuration at each haystack length and needle depth (greedy decoding)."""
    pairs = kv_configs(configs)
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    for depth in depths:
        if not 0.0 <= depth <= 1.0:
            raise ValueError(f"depths are fractions of the haystack in [0, 1], got {depth}")
    with open_model(model) as model:
        too_long = [n for n in lengths if n > model.n_ctx_train]
        if too_long:
            raise ContextOverflowError(
                f"haystack length {too_long[0]} exceeds the model's training context of "
                f"{model.n_ctx_train} tokens; use lengths up to {model.n_ctx_train}")
        if min(lengths) <= 2 * ANSWER_TOKENS:
            raise ValueError(f"haystack lengths must exceed {2 * ANSWER_TOKENS} tokens")
        filler_text = read_text(text)
        n_threads = n_threads or default_threads()
        results = []
        bar = tqdm(total=len(pairs) * len(lengths) * len(depths) * trials, desc="niah", unit="trial",
                   file=sys.stderr, disable=not progress)
        for type_k, type_v in pairs:
            for length in lengths:
                with model.context(n_ctx=length, cache_k=type_k.name, cache_v=type_v.name,
                                   flash_attn=flash_attn, n_threads=n_threads, kv_transform=kv_transform) as ctx:
                    filler = ctx.tokenize(filler_text, add_special=False)
                    # deepest needle first: each later prompt reuses the cached filler before its needle
                    for depth in sorted(depths, reverse=True):
                        bar.set_postfix_str(f"{type_k.name}/{type_v.name} {length} @ {depth:g}")
                        passed = 0
                        for trial in range(trials):
                            # the same needles for every configuration: seeded by (seed, length, depth, trial)
                            rng = random.Random(f"{seed}/{length}/{depth}/{trial}")
                            sentence, question, answer = needle(rng)
                            prompt = haystack_prompt(ctx, filler, length, depth, sentence, question)
                            reply = ctx.complete(prompt, max_tokens=ANSWER_TOKENS)
                            passed += answer in reply
                            bar.update()
                        results.append(NeedleResult(type_k.name, type_v.name, length, depth, trials, passed,
                                            ctx.kv_transform))
        bar.close()
        order = {(k.name, v.name, n, d): i for i, (k, v, n, d) in
                 enumerate((k, v, n, d) for k, v in pairs for n in lengths for d in depths)}
        return sorted(results, key=lambda r: order[r.type_k, r.type_v, r.length, r.depth])


def niah_to_markdown(results: Sequence[NeedleResult]) -> str:
    depths = sorted({r.depth for r in results})
    header = ["K / V", "length"] + [f"depth {d:g}" for d in depths] + ["all"]
    rows = []
    for key in dict.fromkeys((r.type_k, r.type_v, r.length) for r in results):
        cells = {r.depth: r for r in results if (r.type_k, r.type_v, r.length) == key}
        row = [f"{key[0]} / {key[1]}", key[2]]
        row += [f"{cells[d].passed}/{cells[d].trials}" if d in cells else "" for d in depths]
        row.append(f"{sum(c.passed for c in cells.values())}/{sum(c.trials for c in cells.values())}")
        rows.append(row)
    return markdown_table(header, rows, [False] + [True] * (len(depths) + 2))


def plot_niah(results: Sequence[NeedleResult], path: "str | os.PathLike") -> None:
    """A heat map per configuration: pass rate by haystack length (x) and needle depth (y)."""
    plt = pyplot()
    pairs = list(dict.fromkeys((r.type_k, r.type_v) for r in results))
    lengths = sorted({r.length for r in results})
    depths = sorted({r.depth for r in results})
    fig, axes = plt.subplots(1, len(pairs), figsize=(3.2 * len(pairs) + 1, 3.4), squeeze=False)
    for ax, pair in zip(axes[0], pairs):
        grid = [[math.nan] * len(lengths) for _ in depths]
        for r in results:
            if (r.type_k, r.type_v) == pair:
                grid[depths.index(r.depth)][lengths.index(r.length)] = r.passed / r.trials
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
        ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
        ax.set_xlabel("haystack tokens")
        ax.set_ylabel("needle depth")
        ax.set_title(f"{pair[0]} / {pair[1]}")
    fig.colorbar(image, ax=axes[0].tolist(), label="pass rate")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


# -- command line ------------------------------------------------------------------------------------

def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    def common(sub):
        sub.add_argument("model", help="GGUF file")
        sub.add_argument("--configs", required=True, help="comma-separated K/V pairs, e.g. f16/f16,q8_0/turbo3")
        sub.add_argument("--text", default=None, help="text file (default: the Debian license texts)")
        add_threads_flag(sub)
        add_flash_attn_flag(sub)
        add_kv_transform_flag(sub)
        sub.add_argument("-o", "--output", choices=("md", "json"), default="md")
        sub.add_argument("--plot", metavar="PNG", help="also draw a plot into this file")
        add_verbose_flag(sub)

    kld_parser = commands.add_parser("kld", help="KLD, PPL and same-top-token rate against the f16 cache")
    common(kld_parser)
    add_ctx_flag(kld_parser, 512, "chunk size in tokens (default 512)")
    kld_parser.add_argument("--chunks", type=int, default=None, help="chunks to score (default: all)")

    niah_parser = commands.add_parser("niah", help="needle in a haystack")
    common(niah_parser)
    niah_parser.add_argument("--lengths", type=int_list, default=[1024, 2048, 4096, 8192])
    niah_parser.add_argument("--depths", type=float_list, default=[0.1, 0.5, 0.9])
    niah_parser.add_argument("--trials", type=int, default=1)
    niah_parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: "list[str] | None" = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.command == "kld":
        results = kld(args.model, args.configs, args.text, args.n_ctx, args.chunks, args.threads, args.flash_attn,
                      kv_transform=args.kv_transform)
        title = f"{Path(args.model).name}, c={args.n_ctx}"
        emit(results, args.output, kld_to_markdown, args.plot, lambda records, path: plot_kld(records, path, title))
    else:
        results = niah(args.model, args.lengths, args.depths, args.configs, args.trials, args.seed, args.text,
                       args.threads, args.flash_attn, kv_transform=args.kv_transform)
        emit(results, args.output, niah_to_markdown, args.plot, plot_niah)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(PROG, main))
