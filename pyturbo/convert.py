"""From a Hugging Face checkpoint to a GGUF that runs: python -m pyturbo.convert HF_DIR

    python -m pyturbo.convert ~/models/SmolLM2-135M-Instruct --quant q4_K_M --memory 4GiB

HF_DIR is a model page's folder (config.json, *.safetensors, the tokenizer) or a
huggingface_hub cache folder (models--org--name). The pinned llama.cpp's own
convert_hf_to_gguf.py writes it as --outtype (f16 by default) to -o (default:
NAME-F16.gguf in the current folder); each --quant type is then made from that file
by pyturbo's quantize, beside it (NAME-Q4_K_M.gguf). One progress bar per stage on
stderr. It ends with what python -m pyturbo.info says of the last file and a
`Run it:` line; with --memory, the planner's recommendation for that budget
(python -m pyturbo.fit). Every file is written under a temporary name and renamed
when complete; existing outputs are refused unless --force.

Needs the `convert` extra: pip install "pyturbo[convert]" (torch, transformers,
sentencepiece). The Python API is pyturbo.hf_checkpoint.convert.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ._cli import ArgumentParser, add_threads_flag, add_verbose_flag, run_main, setup_logging, str_list
from .cache_types import cache_type, check_cache
from .errors import CacheTypeError, ConvertError, PyturboError
from .gguf import read_gguf_header
from .hf_checkpoint import OUTTYPE_BYTES_PER_WEIGHT, check_free_space, convert, converter_dir, inspect_checkpoint
from .units import parse_size
from .upstream.geometry import model_geometry
from .weights import WEIGHT_TYPES, quantize, weight_type

PROG = "python -m pyturbo.convert"

# The cache pairs a `Run it:` line without --memory suggests, the first the model can use: 8-bit keys
# (a low-bit K costs more than a low-bit V, README "Low-bit K and V") with turbo3 values, else plain
# q8_0 (head sizes without the rotation turbo needs), else f16.
RUN_IT_PAIRS = (("q8_0", "turbo3"), ("q8_0", "q8_0"), ("f16", "f16"))
RUN_IT_PROMPT = "Once upon a time"
RUN_IT_CONTEXT = 4096  # python -m pyturbo.run's default -c
# A budget to show in the `fit` hint when none was given.
EXAMPLE_BUDGET = "8GiB"


def output_paths(checkpoint_name: str, out: "str | None", outtype: str, quants: list) -> tuple:
    """The converted file's path and each quant's: -o, else NAME-OUTTYPE.gguf here; a quant replaces
    the outtype in the name (or is appended to it)."""
    converted = Path(out) if out else Path(f"{checkpoint_name}-{outtype.upper()}.gguf")
    stem = converted.stem
    suffix = f"-{outtype}"
    if stem.lower().endswith(suffix):
        stem = stem[:-len(suffix)]
    return converted, [converted.with_name(f"{stem}-{q}.gguf") for q in quants]


def quant_bytes(checkpoint, quant: str) -> int:
    """At most what a quant of the checkpoint takes: 8.5 bits per weight (Q8_0, the widest quant) for a
    quantized type, the converted size for a 16/32-bit one."""
    if weight_type(quant).is_float or quant == "COPY":
        return checkpoint.output_bytes("f16") * (2 if quant == "F32" else 1)
    return checkpoint.output_bytes("q8_0")


def run_it_line(path: Path) -> str:
    """`Run it:` with the first of RUN_IT_PAIRS this model's heads allow, in run's default context or
    the training context where that is shorter."""
    geometry = model_geometry(read_gguf_header(path))
    n_ctx = min(RUN_IT_CONTEXT, geometry.n_ctx_train) if geometry.n_ctx_train else RUN_IT_CONTEXT
    for k, v in RUN_IT_PAIRS:
        try:
            check_cache(cache_type(k), cache_type(v), "auto", geometry)
        except CacheTypeError:
            continue
        return f'Run it: python -m pyturbo.run {path} -c {n_ctx} -ctk {k} -ctv {v} -p "{RUN_IT_PROMPT}"'
    return f'Run it: python -m pyturbo.run {path} -c {n_ctx} -p "{RUN_IT_PROMPT}"'


def _tool(module: str, *args: str) -> str:
    """Another pyturbo command's output (commands are run, never imported, by each other)."""
    done = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise ConvertError(done.stderr.strip().splitlines()[-1] if done.stderr.strip()
                           else f"{module} failed with exit code {done.returncode}")
    return done.stdout


def planner_lines(path: Path, memory: str) -> list:
    """python -m pyturbo.fit's recommendation for this file and budget, and its `Run it:` line."""
    plan = json.loads(_tool("pyturbo.fit", str(path), "--memory", memory, "--json"))
    recommendation = plan.get("recommendation") or {}
    lines = [f"Recommendation for {memory}: {recommendation.get('reason', 'none')}"]
    if recommendation.get("warning"):
        lines.append(f"Warning: {recommendation['warning']}")
    if recommendation.get("flags"):
        lines.append(f"Run it: python -m pyturbo.run {path} {recommendation['flags']}")
    else:
        lines.append(run_it_line(path))
    return lines


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("hf_dir", metavar="HF_DIR",
                        help="a Hugging Face model folder (config.json, *.safetensors, tokenizer) or a "
                             "huggingface_hub cache folder (models--org--name)")
    parser.add_argument("-o", "--outfile", dest="out", metavar="OUT.gguf", default=None,
                        help="the converted GGUF (default: NAME-OUTTYPE.gguf in the current folder)")
    parser.add_argument("--outtype", choices=list(OUTTYPE_BYTES_PER_WEIGHT), default="f16",
                        help="the converter's output type (default f16)")
    parser.add_argument("--quant", action="append", type=str_list, default=[], metavar="TYPE[,TYPE]",
                        help=f"then quantize to each llama-quantize type, any case (e.g. q4_K_M, q8_0), "
                             f"beside OUT; repeatable. Types: {', '.join(WEIGHT_TYPES)}")
    parser.add_argument("--imatrix", metavar="FILE", default=None,
                        help="with --quant: an importance matrix from llama-imatrix")
    parser.add_argument("--memory", default=None, metavar="M",
                        help="also print the planner's recommendation for this budget (16GiB, 16GB, bytes)")
    parser.add_argument("--force", action="store_true", help="replace output files that exist")
    add_threads_flag(parser)
    add_verbose_flag(parser)
    return parser


def check_arguments(args) -> list:
    """The quant types asked for, by llama-quantize's names; every refusal before any work."""
    quants = [weight_type(name).name for group in args.quant for name in group]
    if quants and args.outtype == "q8_0":
        raise ValueError("--quant quantizes the converted file: convert to f16 or bf16 (--outtype), "
                         "not q8_0 (a second rounding)")
    if args.imatrix is not None and not quants:
        raise ValueError("--imatrix is for --quant: name the types to quantize to")
    if args.imatrix is not None and not Path(args.imatrix).is_file():
        raise ValueError(f"no such importance matrix file: {args.imatrix}")
    if args.memory is not None:
        parse_size(args.memory)
    return quants


def main(argv: "list[str] | None" = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    quants = check_arguments(args)
    checkpoint = inspect_checkpoint(args.hf_dir, converter_dir())
    converted, quantized = output_paths(checkpoint.name, args.out, args.outtype, quants)
    if len({p.resolve() for p in [converted, *quantized]}) < 1 + len(quantized):
        raise ValueError(f"two outputs would share a name: {converted}, {', '.join(map(str, quantized))}")
    for path in [converted, *quantized]:
        if path.exists() and not args.force:
            raise ConvertError(f"the output exists: {path}; pass --force to replace it")
    needed = checkpoint.output_bytes(args.outtype) + sum(quant_bytes(checkpoint, q) for q in quants)
    check_free_space(converted.parent, needed, f"{converted.name} and {len(quantized)} quant(s)")

    result = convert(checkpoint.path, converted, args.outtype, overwrite=args.force, progress=True,
                     verbose=args.verbose)
    print(result.summary())
    for path, quant in zip(quantized, quants):
        done = quantize(converted, path, quant, threads=args.threads, imatrix=args.imatrix, overwrite=args.force,
                        progress=True)
        print(done.summary())
    final = quantized[-1] if quantized else converted
    print()
    print(report(final, args.memory))
    return 0


def report(final: Path, memory: "str | None") -> str:
    """What info (and, with a budget, fit) say of the file made, with a `Run it:` line. The files are
    written by then: a model these header readers do not take costs the report, not the exit code."""
    try:
        lines = [_tool("pyturbo.info", str(final))]
        if memory is not None:
            lines += planner_lines(final, memory)
        else:
            lines += [run_it_line(final),
                      f"Plan a context for your memory: python -m pyturbo.fit {final} --memory {EXAMPLE_BUDGET}"]
    except (PyturboError, ValueError) as e:
        print(f"{PROG}: note: {final} is written, but pyturbo cannot describe it: {e}", file=sys.stderr)
        return f'Run it: python -m pyturbo.run {final} -p "{RUN_IT_PROMPT}"'
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(run_main(PROG, main))
