"""Speed of K/V cache types, the way llama-bench measures it, on pyturbo's own API.

    python -m pyturbo.bench MODEL -p 512 -n 128 -d 0,4096 -ctk f16,q8_0,turbo3 -ctv f16,turbo3 \\
        -fa on -t 2 -r 3 -o md --plot speed.png

Each test of the cartesian product (K type x V type x flash attention x depth x
test) runs once to warm up and then -r times; tokens/s are reported as mean and
standard deviation. pp<N> evaluates N random tokens as one prompt; tg<N>
generates N tokens one at a time; "@ d<D>" first fills the cache with D tokens
(not timed, done once per configuration and depth).
"""

from __future__ import annotations

import itertools
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Sequence

from tqdm import tqdm

from ._cli import (DEFAULT_CLI_N_BATCH, DEFAULT_CLI_N_UBATCH, ArgumentParser, add_batch_flags, add_cache_flags,
                   add_common_flags, add_flash_attn_flag, add_kv_transform_flag, add_rpc_flags, int_list, run_main,
                   setup_logging)
from ._report import OUTPUT_FORMATS, emit, markdown_table, pyplot
from .cache_types import cache_type, flash_attn_mode
from .host import default_threads
from .model import Model, open_model
from .units import MiB

PROG = "python -m pyturbo.bench"


@dataclass
class BenchResult:
    """One llama-bench style test: tokens/s over `repetitions` timed runs."""

    model: str
    type_k: str
    type_v: str
    n_prompt: int
    n_gen: int
    n_depth: int
    n_threads: int
    flash_attn: str
    test: str                  # llama-bench's name: pp512, tg128, pp512 @ d4096
    avg_ts: float
    stddev_ts: float
    kv_bytes: int              # K + V cache bytes of the context the test ran in
    n_ctx: int
    samples_ts: list = field(default_factory=list)
    kv_transform: str = "off"  # the exact K/V transforms applied (pyturbo.kv_transform)
    n_gpu_layers: int = 0      # layers offloaded to the GPUs or RPC workers (-1: all)
    rpc: str = ""              # the RPC workers, comma-separated (pyturbo.rpc)
    n_batch: int = DEFAULT_CLI_N_BATCH    # the context's logical batch (-b)
    n_ubatch: int = DEFAULT_CLI_N_UBATCH  # and physical batch (-ub)


def test_name(n_prompt: int, n_gen: int, n_depth: int) -> str:
    name = f"pp{n_prompt}" if n_prompt else f"tg{n_gen}"
    return f"{name} @ d{n_depth}" if n_depth else name


def random_tokens(rng: random.Random, n_vocab: int, n: int) -> list[int]:
    return [rng.randrange(n_vocab) for _ in range(n)]


def time_test(ctx, rng: random.Random, n_vocab: int, n_depth: int, n_prompt: int, n_gen: int) -> float:
    """Seconds for one run of a pp or tg test on top of the first n_depth cached tokens."""
    ctx.truncate(n_depth)
    if n_prompt:
        tokens = random_tokens(rng, n_vocab, n_prompt)
        started = time.perf_counter()
        ctx.decode(tokens)
        return time.perf_counter() - started
    tokens = random_tokens(rng, n_vocab, n_gen)
    started = time.perf_counter()
    for token in tokens:
        ctx.decode([token])
    return time.perf_counter() - started


def run(model: "Model | str | os.PathLike", n_prompt: Sequence[int] = (512,), n_gen: Sequence[int] = (128,),
        depths: Sequence[int] = (0,), cache_k: Sequence[str] = ("f16",), cache_v: Sequence[str] = ("f16",),
        flash_attn: Sequence[str] = ("auto",), n_threads: "int | None" = None, repetitions: int = 5,
        n_batch: int = DEFAULT_CLI_N_BATCH, n_ubatch: int = DEFAULT_CLI_N_UBATCH, seed: int = 0, progress: bool = True,
        kv_transform: "str | int" = "auto", n_gpu_layers: "int | None" = None,
        rpc: "str | Sequence[str] | None" = None,
        tensor_split: "Sequence[float] | None" = None) -> list[BenchResult]:
    """Run every (K, V, flash attention, depth, test) combination; see the module docstring."""
    if repetitions < 1:
        raise ValueError(f"repetitions must be >= 1, got {repetitions}")
    for n in (*n_prompt, *n_gen, *depths):
        if n < 0:
            raise ValueError(f"token counts and depths must be >= 0, got {n}")
    configs = [(cache_type(k).name, cache_type(v).name, fa)
               for k, v, fa in itertools.product(cache_k, cache_v, flash_attn)]
    for fa in flash_attn:
        flash_attn_mode(fa)  # refuses anything but on, off, auto
    tests = [(p, 0) for p in n_prompt if p > 0] + [(0, g) for g in n_gen if g > 0]
    if not tests:
        raise ValueError("nothing to run: give a prompt size (-p) or a generation length (-n) above 0")
    n_threads = n_threads or default_threads()
    n_ctx = max(depths) + max(max(p, g) for p, g in tests)
    results = []
    with open_model(model, n_gpu_layers=n_gpu_layers, rpc=rpc, tensor_split=tensor_split) as model:
        bar = tqdm(total=len(configs) * len(depths) * len(tests) * (repetitions + 1), desc="bench",
                   unit="run", file=sys.stderr, disable=not progress)
        for type_k, type_v, fa in configs:
            with model.context(n_ctx=n_ctx, cache_k=type_k, cache_v=type_v, flash_attn=fa,
                               n_threads=n_threads, n_batch=n_batch, n_ubatch=n_ubatch,
                               kv_transform=kv_transform) as ctx:
                kv = ctx.kv_cache_bytes()
                rng = random.Random(seed)
                for depth in depths:
                    ctx.reset()
                    ctx.decode(random_tokens(rng, model.n_vocab, depth))
                    for p, g in tests:
                        bar.set_postfix_str(f"{type_k}/{type_v} {test_name(p, g, depth)}")
                        time_test(ctx, rng, model.n_vocab, depth, p, g)  # warm-up
                        bar.update()
                        samples = []
                        for _ in range(repetitions):
                            samples.append((p or g) / time_test(ctx, rng, model.n_vocab, depth, p, g))
                            bar.update()
                        results.append(BenchResult(
                            model=model.path.name, type_k=type_k, type_v=type_v, n_prompt=p, n_gen=g,
                            n_depth=depth, n_threads=n_threads, flash_attn=fa, test=test_name(p, g, depth),
                            avg_ts=statistics.fmean(samples),
                            stddev_ts=statistics.stdev(samples) if len(samples) > 1 else 0.0,
                            kv_bytes=kv["k"] + kv["v"], n_ctx=ctx.n_ctx, samples_ts=samples,
                            kv_transform=ctx.kv_transform, n_gpu_layers=model.n_gpu_layers,
                            rpc=",".join(model.rpc),
                            n_batch=ctx.n_batch, n_ubatch=ctx.n_ubatch))
        bar.close()
    return results


def to_markdown(results: Sequence[BenchResult]) -> str:
    header = ["model", "threads", "type_k", "type_v", "fa", "KV MiB", "test", "t/s"]
    rows = [[r.model, r.n_threads, r.type_k, r.type_v, r.flash_attn, f"{r.kv_bytes / MiB:.2f}", r.test,
             f"{r.avg_ts:.2f} ± {r.stddev_ts:.2f}"] for r in results]
    return markdown_table(header, rows, [False, True, False, False, False, True, False, True])


def plot(results: Sequence[BenchResult], path: "str | os.PathLike") -> None:
    """Tokens/s against depth, one line per K/V pair, a panel per test (pp512, tg128, ...)."""
    plt = pyplot()
    kinds = list(dict.fromkeys(r.test.split(" @ ")[0] for r in results))
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4.5), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for pair in dict.fromkeys((r.type_k, r.type_v, r.flash_attn) for r in results):
            points = sorted((r.n_depth, r.avg_ts, r.stddev_ts) for r in results
                            if (r.type_k, r.type_v, r.flash_attn) == pair and r.test.split(" @ ")[0] == kind)
            label = f"{pair[0]}/{pair[1]}" + ("" if pair[2] == "on" else f" fa {pair[2]}")
            ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                        marker="o", capsize=3, label=label)
        ax.set_title(kind)
        ax.set_xlabel("depth (tokens already in the cache)")
        ax.set_ylabel("tokens/s")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(title="K/V", fontsize=8)
    fig.suptitle(f"{results[0].model}, {results[0].n_threads} threads")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="GGUF file")
    parser.add_argument("-p", "--n-prompt", type=int_list, default=[512], help="prompt sizes (default 512)")
    parser.add_argument("-n", "--n-gen", type=int_list, default=[128], help="generation lengths (default 128)")
    parser.add_argument("-d", "--n-depth", type=int_list, default=[0], help="depths (default 0)")
    add_cache_flags(parser, many=True)
    add_flash_attn_flag(parser, many=True)
    add_kv_transform_flag(parser)
    add_common_flags(parser)
    add_rpc_flags(parser)
    add_batch_flags(parser)
    parser.add_argument("-r", "--repetitions", type=int, default=5, help="timed runs per test (default 5)")
    parser.add_argument("-o", "--output", choices=OUTPUT_FORMATS, default="md", help="output format (default md)")
    parser.add_argument("--plot", metavar="PNG", help="also draw tokens/s against depth into this file")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random tokens (default 0)")
    return parser


def main(argv: "list[str] | None" = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    results = run(args.model, args.n_prompt, args.n_gen, args.n_depth, args.cache_k, args.cache_v,
                  args.flash_attn, args.threads, args.repetitions, args.n_batch, args.n_ubatch, args.seed,
                  kv_transform=args.kv_transform, n_gpu_layers=args.n_gpu_layers, rpc=args.rpc,
                  tensor_split=args.tensor_split)
    emit(results, args.output, to_markdown, args.plot, plot)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(PROG, main))
