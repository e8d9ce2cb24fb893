"""Generate text from a GGUF model: python -m pyturbo.run [MODEL] -p PROMPT [-ctk T] [-ctv T] ...

Streams the continuation to stdout and a summary (speeds, cache types and sizes)
to stderr; --json prints one JSON object instead; --chat is an interactive chat.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ._cli import (ArgumentParser, add_batch_flags, add_cache_flags, add_common_flags, add_ctx_flag,
                   add_flash_attn_flag, add_kv_transform_flag, add_rpc_flags, add_swa_full_flag, run_main,
                   setup_logging)
from .assets import default_model
from .model import Model
from .units import MiB
from .weights import select_quant

PROG = "python -m pyturbo.run"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=None,
                        help="GGUF file (default: SmolLM2-135M-Instruct, fetched once)")
    parser.add_argument("-m", "--model", dest="model_flag", default=None, help="GGUF file (as llama.cpp's -m)")
    parser.add_argument("--quant", metavar="TYPE", default=None,
                        help="weight type to load (Q4_K_M, Q8_0, ...): picked from a folder or glob pattern "
                             "of quants, or quantized once from a 16/32-bit GGUF into the cache dir")
    parser.add_argument("-p", "--prompt", default="The capital of France is", help="prompt text")
    parser.add_argument("-n", "--n-predict", dest="n_predict", type=int, default=64,
                        help="tokens to generate (default 64)")
    add_ctx_flag(parser, 4096, "context size in tokens (default 4096, 0 = the model's)")
    add_cache_flags(parser)
    add_flash_attn_flag(parser)
    add_kv_transform_flag(parser)
    add_swa_full_flag(parser)
    add_batch_flags(parser)
    add_common_flags(parser)
    add_rpc_flags(parser)
    parser.add_argument("-s", "--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--temp", type=float, default=0.0, help="temperature (default 0 = greedy)")
    parser.add_argument("--top-k", type=int, default=40)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--context-shift", action="store_true",
                        help="when the context fills up, drop older tokens and keep generating")
    parser.add_argument("--chat", action="store_true", help="interactive multi-turn chat (Ctrl-D exits)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser


def summary_line(ctx) -> str:
    stats, kv = ctx.last_stats, ctx.kv_cache_bytes()
    return (f"prompt: {stats.n_prompt} tokens, {stats.prompt_tps:.1f} t/s | "
            f"generation: {stats.n_gen} tokens, {stats.gen_tps:.1f} t/s | "
            f"cache K {ctx.cache_k_spec} {kv['k'] / MiB:.2f} MiB, V {ctx.cache_v_spec} {kv['v'] / MiB:.2f} MiB "
            f"(n_ctx {ctx.n_ctx}, kv transform {ctx.kv_transform})")


def sampling(args) -> dict:
    return dict(temperature=args.temp, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                context_shift=args.context_shift)


def run_once(ctx, args) -> None:
    pieces = ctx.generate(args.prompt, args.n_predict, **sampling(args))
    if args.json:
        text = "".join(pieces)
        stats, kv = ctx.last_stats, ctx.kv_cache_bytes()
        print(json.dumps({
            "text": text, "n_prompt": stats.n_prompt, "n_gen": stats.n_gen,
            "prompt_tps": stats.prompt_tps, "gen_tps": stats.gen_tps,
            "cache_k": ctx.cache_k_spec, "cache_v": ctx.cache_v_spec,
            "kv_k_bytes": kv["k"], "kv_v_bytes": kv["v"], "n_ctx": ctx.n_ctx, "kv_transform": ctx.kv_transform,
            "n_batch": ctx.n_batch, "n_ubatch": ctx.n_ubatch,
            "stop_reason": stats.stop_reason,
        }))
        return
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    print(summary_line(ctx), file=sys.stderr)


def chat_loop(ctx, args) -> None:
    messages = []
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            sys.stdout.write("> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line:
            break
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.rstrip("\n")})
        reply = []
        for piece in ctx.chat(messages, args.n_predict, stream=True, **sampling(args)):
            reply.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": "".join(reply)})
        if args.verbose:
            print(summary_line(ctx), file=sys.stderr)


def model_path(args) -> "str | Path | None":
    """The GGUF file to load: the one named, or with --quant the file of that type (made once if needed)."""
    path = args.model or args.model_flag
    if args.quant is None:
        return path
    return select_quant(path if path is not None else default_model(), args.quant, threads=args.threads,
                        progress=True)


def main(argv: "list[str] | None" = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    with Model(model_path(args), n_gpu_layers=args.n_gpu_layers, rpc=args.rpc,
               tensor_split=args.tensor_split) as model, \
            model.context(n_ctx=args.n_ctx, cache_k=args.cache_k, cache_v=args.cache_v,
                          flash_attn=args.flash_attn, n_threads=args.threads, seed=args.seed,
                          kv_transform=args.kv_transform, swa_full=args.swa_full, n_batch=args.n_batch,
                          n_ubatch=args.n_ubatch) as ctx:
        if args.chat:
            chat_loop(ctx, args)
        else:
            run_once(ctx, args)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(PROG, main))
